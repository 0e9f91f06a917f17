"""Fuzz train.py's and predict.py's command lines: each is accepted or refused in one line.

A few hundred argument vectors, drawn with a fixed seed, go through the very
function each script runs before TensorFlow loads (`checked_arguments`:
argparse, then the checks in `tf_diffusion.config`): flags of the wrong type,
empty, negative, zero, huge, NaN and infinite values, paths that are files,
folders, missing, below a file, unwritable or not UTF-8, and unknown names.
Each one must either pass, silently, or exit 2 with exactly one `error:` line
(argparse prints its usage above it), and never raise. A few of the refused
ones then go through the real scripts, with TensorFlow made unimportable.
"""

import contextlib
import importlib.util
import io
import os
import random
import re
import shutil
import subprocess
import sys
import traceback

import pytest
from conftest import REPOSITORY

VECTORS_PER_SCRIPT = 300
SEED = 13
ERROR_LINE = re.compile(r"^(\S+: )?error: ")

NUMBERS = [
    "0",
    "1",
    "2",
    "3",
    "8",
    "25",
    "-1",
    "-5",
    "0.5",
    "1.5",
    "-0.0",
    "1e-3",
    "4294967296",
    "1" + "0" * 30,
    "9" * 5000,
    "1e308",
    "-1e308",
    "1e999",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "0x10",
    "1_000",
    " 7 ",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: int() reads it
    "\u00b2",  # SUPERSCRIPT TWO: a digit that int() refuses
    "",
]
WORDS = [
    "",
    " ",
    "abc",
    "automobile",
    "AutoMobile",
    "zebra",
    "default",
    "classic",
    "none",
    "mirrored",
    "true",
    "-",
    "x" * 300,
    "line\nbreak",
    "tab\there",
    "\u00e9t\u00e9",
    os.fsdecode(b"\xff\xfe"),
    "4x8",
    "2x2",
    "0x0",
    "4by4",
    "99999999999999x1",
    "\u00b2x\u00b2",
]
UNKNOWN = [
    "--bogus",
    "--widht=8",
    "-x",
    "positional",
    "--weights",  # an abbreviation argparse accepts: it needs a value
    "--s",  # ambiguous
    os.fsdecode(b"--\xff"),
    "--label\n",
    "--help-me",
]
PATH_FLAGS = {"data", "weights_dir", "out", "npz", "gif", "inception_weights"}


def load_script(name):
    """train.py or predict.py as a module, as they run before TensorFlow loads."""
    path = os.path.join(REPOSITORY, name)
    spec = importlib.util.spec_from_file_location(f"{name[:-3]}_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_paths(root):
    """Paths of every kind, and one trained run (the legacy run, copied)."""
    run = root / "run"
    shutil.copytree(os.path.join(REPOSITORY, "tests", "data", "legacy-run"), run)
    (root / "file.npz").write_bytes(b"not an npz")
    (root / "empty").mkdir()
    garbled = {"garbled": "{not json", "list": "[1, 2]", "wrong-type": '{"width": "wide"}'}
    for name, text in garbled.items():
        folder = root / f"config-{name}"
        folder.mkdir()
        (folder / "config.json").write_text(text)
        (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    not_utf8 = os.path.join(os.fsencode(root), b"run-\xff")
    os.mkdir(not_utf8)
    return [
        str(run),
        str(root / "file.npz"),
        str(root / "file.npz" / "below-a-file.png"),
        str(root / "empty"),
        str(root / "missing" / "deeper" / "x.png"),
        str(root / "missing.npz"),
        str(root / "config-garbled"),
        str(root / "config-list"),
        str(root / "config-wrong-type"),
        os.fsdecode(not_utf8),
        os.fsdecode(not_utf8 + b"/samples-\xfe.png"),
        str(root / ("n" * 300 + ".png")),
        "/proc/x.png",
        "/proc",
        "/",
        ".",
        "",
        "relative.png",
    ]


def option_actions(parser):
    return [
        action
        for action in parser._actions
        if action.option_strings and action.dest != "help"  # --help prints and exits 0
    ]


def draw_value(chooser, action, paths):
    if action.dest in PATH_FLAGS and chooser.random() < 0.7:
        return chooser.choice(paths)
    if action.choices and chooser.random() < 0.5:
        return chooser.choice(list(action.choices))
    if action.type in (int, float) and chooser.random() < 0.7:
        return chooser.choice(NUMBERS)
    return chooser.choice(NUMBERS + WORDS + paths)


def draw_vector(chooser, script, parser, paths, run):
    """One argument vector: a few flags with drawn values, maybe an unknown one."""
    arguments = []
    if script == "predict.py" and chooser.random() < 0.8:
        arguments += ["--weights-dir", run]  # so that most get past the run's own checks
    for action in chooser.sample(option_actions(parser), chooser.randint(1, 4)):
        flag = chooser.choice(action.option_strings)
        if action.nargs == 0:
            arguments.append(flag if chooser.random() < 0.8 else f"{flag}={chooser.choice(WORDS)}")
            continue
        value = draw_value(chooser, action, paths)
        if chooser.random() < 0.05:
            arguments.append(flag)  # the value forgotten
        elif chooser.random() < 0.5:
            arguments.append(f"{flag}={value}")
        else:
            arguments += [flag, value]
    if chooser.random() < 0.1:
        arguments.insert(chooser.randint(0, len(arguments)), chooser.choice(UNKNOWN))
    return arguments


def outcome(script, argv):
    """(exit status, stdout, stderr) of the script's checks on `argv`, run in this process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            script.checked_arguments(argv)
            status = 0
        except SystemExit as exit:
            status = exit.code
        except BaseException:
            pytest.fail(f"{argv!r} raised:\n{traceback.format_exc()}")
    return status, stdout.getvalue(), stderr.getvalue()


def error_line(argv, status, stdout, stderr):
    """The one error line of a refusal; fails unless the output is exactly that (and usage)."""
    assert status == 2, (argv, status, stderr)
    assert stdout == "", (argv, stdout)
    lines = stderr.splitlines()
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1 and lines[-1] == errors[0], (argv, stderr)
    usage = lines[:-1]
    assert not usage or (
        usage[0].startswith("usage: ") and all(line.startswith(" ") for line in usage[1:])
    ), (argv, stderr)
    assert errors[0].isprintable(), (argv, errors[0])  # no stray line break or raw bytes
    return errors[0]


def tree(root):
    return sorted(
        os.path.join(folder, name)
        for folder, folders, files in os.walk(os.fsencode(root))
        for name in folders + files
    )


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """(work folder, {script: [(argv, status, error line or None)]}), every vector checked."""
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # relative paths are probed here, and left as they were
        paths = make_paths(root)
        before = tree(root)
        patch.setitem(sys.modules, "tensorflow", None)  # importing it would fail the test
        chooser = random.Random(SEED)
        results = {}
        for name in ("train.py", "predict.py"):
            script = load_script(name)
            parser = script.make_parser()
            results[name] = []
            for _ in range(VECTORS_PER_SCRIPT):
                argv = draw_vector(chooser, name, parser, paths, paths[0])
                status, stdout, stderr = outcome(script, argv)
                if status == 0:
                    assert stdout == stderr == "", (argv, stdout, stderr)
                    results[name].append((argv, 0, None))
                else:
                    error = error_line(argv, status, stdout, stderr)
                    results[name].append((argv, status, error))
        assert tree(root) == before  # the checks wrote nothing (their probes are gone)
    return root, results


@pytest.fixture
def vectors(fuzzed):
    return fuzzed[1]


def test_every_vector_is_accepted_or_refused_in_one_line(vectors):
    for name, results in vectors.items():
        refused = [error for _, status, error in results if status]
        assert len(results) == VECTORS_PER_SCRIPT
        # Both outcomes occur, in numbers, and the refusals come from many checks.
        assert len(refused) >= 50 and len(results) - len(refused) >= 20, name
        assert any(error.startswith("error: ") for error in refused)  # our own checks
        assert any(": error: argument" in error for error in refused)  # argparse's
    assert sum(len(results) for results in vectors.values()) >= 300


# Inputs that once raised a traceback, ran into a crash long after, or were taken silently.
KNOWN = [
    ("predict.py", ["--num", "0"], "--num must be at least 1, got 0"),
    ("predict.py", ["--num=-5"], "--num must be at least 1, got -5"),
    ("predict.py", ["--num", "1" + "0" * 30], "--num must be at most 100000"),
    ("predict.py", ["--sampling-steps", "0"], "--sampling-steps must be at least 1, got 0"),
    ("predict.py", ["--out", "/proc/x.png"], "--out /proc/x.png cannot be written"),
    ("predict.py", ["--npz", "{file}/x.npz"], "file.npz is a file, not a folder"),
    ("predict.py", ["--gif", "{root}"], "is a folder; give a file name"),
    ("predict.py", ["--out", "{root}/" + "n" * 300 + ".png"], "cannot be written (File name"),
    ("predict.py", ["--grid", "1x100"], "more rows or columns than the 25 images"),
    ("predict.py", ["--grid", "\u00b2x\u00b2"], "is not ROWSxCOLS"),
    ("predict.py", ["--seed=-1"], "--seed must be from 0 to 2147483647, got -1"),
    ("predict.py", ["--evaluate", "--inception-weights", "{root}/none.h5"], "no such file"),
    ("predict.py", ["--weights-dir", "{file}"], "is a file, not a run folder"),
    ("predict.py", ["--weights-dir", "{root}/config-garbled"], "is truncated or not valid JSON"),
    ("predict.py", ["--weights-dir", "{root}/config-list"], "not a JSON object"),
    ("predict.py", ["--weights-dir", "{root}/config-wrong-type"], "'wide', not a whole number"),
    ("train.py", ["--label", "\u00b2"], "--label '\u00b2' is not a CIFAR-10 class"),
    ("train.py", ["--label=--5"], "--label '--5' is not a CIFAR-10 class"),
    ("train.py", ["--lr", "nan"], "--lr must be a positive number, got nan"),
    ("train.py", ["--lr", "inf"], "--lr must be a positive number, got inf"),
    ("train.py", ["--lr-decay", "nan"], "--lr-decay must be in (0, 1]"),
    ("train.py", ["--ema-decay", "nan"], "--ema-decay must be in [0, 1), got nan"),
    ("train.py", ["--save-every-minutes", "inf"], "--save-every-minutes must be a number"),
    ("train.py", ["--seed", "4294967296"], "--seed must be from 0 to 4294967295"),
    ("train.py", ["--width", "1" + "0" * 30], "--width must be at most 1024"),
    ("train.py", ["--timesteps", "1000000"], "--timesteps must be at most 100000"),
    ("train.py", ["--weights-dir", ""], "--weights-dir is empty"),
    ("train.py", ["--weights-dir", "{file}"], "file.npz is a file, not a folder"),
    ("train.py", ["--weights-dir", "{file}/run"], "cannot be written"),
    ("train.py", ["--data", "line\nbreak"], "--data line\\nbreak: no such file"),
    ("train.py", ["--data", os.fsdecode(b"\xff")], "--data \\udcff: no such file"),
    ("train.py", ["line\nbreak"], "unrecognized arguments: line\\nbreak"),
]


@pytest.mark.parametrize("script, argv, fragment", KNOWN, ids=[str(k[1])[:40] for k in KNOWN])
def test_inputs_that_crashed_or_slipped_through_are_refused_in_one_line(
    fuzzed, script, argv, fragment
):
    root = fuzzed[0]
    argv = [part.format(root=root, file=root / "file.npz") for part in argv]
    if script == "predict.py" and "--weights-dir" not in argv:
        argv = ["--weights-dir", str(root / "run"), *argv]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        status, stdout, stderr = outcome(load_script(script), argv)
    assert fragment in error_line(argv, status, stdout, stderr)


def run_without_tensorflow(tmp_path, script, arguments, cwd):
    blocker = tmp_path / "no-tensorflow"
    (blocker / "tensorflow").mkdir(parents=True, exist_ok=True)
    (blocker / "tensorflow" / "__init__.py").write_text("raise ImportError('TensorFlow loaded')\n")
    return subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, script), *arguments],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(blocker)),
        cwd=cwd,
        timeout=60,
    )


def test_refusals_are_the_same_through_the_real_scripts(fuzzed, tmp_path):
    # The first refusal of each kind: argparse's, and our own checks' of each script.
    root, vectors = fuzzed
    samples = {}
    for name, results in vectors.items():
        for argv, _, error in results:
            if not error:
                continue
            kind = (name, "argparse" if ": error: argument" in error else error[:20])
            if kind not in samples and len(samples) < 6:
                samples[kind] = (name, argv, error)
    assert len(samples) >= 4
    for name, argv, error in samples.values():
        result = run_without_tensorflow(tmp_path, name, argv, cwd=root)
        stderr = result.stderr.decode("utf-8", "backslashreplace")
        assert result.returncode == 2 and "Traceback" not in stderr, (argv, stderr)
        real = error_line(argv, 2, "", stderr)
        assert real.split("error: ", 1)[1] == error.split("error: ", 1)[1], (argv, real, error)
