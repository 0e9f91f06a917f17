"""train.py and predict.py end to end, as a user runs them, at a tiny width."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPOSITORY, tiny_flags
from PIL import Image


def run(script, *arguments, cwd=None, **environment):
    """Run a script of the repository as a user does, with `environment` added."""
    return subprocess.run(
        [sys.executable, os.path.join(REPOSITORY, script), *map(str, arguments)],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **environment),
        timeout=300,
        cwd=cwd,
    )


def assert_usage_error(result, *fragments):
    """Exit 2, one line on stderr that starts with 'error:' and names the problem, no traceback."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_then_predict_writes_the_run_and_every_picture(tmp_path, npz_path):
    weights = tmp_path / "W"
    first = run(
        "train.py",
        "--label",
        "1",
        "--data",
        npz_path,
        "--weights-dir",
        weights,
        *tiny_flags(),
        "--max-steps",
        "4",
    )
    assert first.returncode == 0, first.stderr
    assert "Starting a new 'default' run" in first.stdout and "step 4/4" in first.stdout
    assert "1 thread per op" in first.stdout  # the cores run independent ops side by side
    assert (weights / "config.json").exists() and (weights / "ckpt-4.index").exists()
    assert (weights / "samples-step-0000004.png").exists()
    # Resuming, with the class by its name, is test_checkpoint's sessions test.

    out = tmp_path / "out"
    result = run(
        "predict.py",
        "--weights-dir",
        weights,
        "--num",
        "16",
        "--npz",
        out / "s.npz",
        "--out",
        out / "grid.png",
        "--steps",
        "--gif",
        out / "d.gif",
        "--grid",
        "2x8",
    )
    assert result.returncode == 0, result.stderr
    with np.load(out / "s.npz") as archive:
        assert archive["x"].shape == (16, 32, 32, 3) and archive["x"].dtype == np.uint8
    grid = Image.open(out / "grid.png")
    assert grid.width > 3 * grid.height  # 2 rows of 8
    assert Image.open(out / "grid_steps.png").size[0] > 0
    with Image.open(out / "d.gif") as gif:
        assert gif.n_frames == 5 + 1  # the noise, then one frame per level visited


def test_unknown_label_names_list_the_choices():
    result = run("train.py", "--label", "zebra")
    assert_usage_error(result, "--label 'zebra'", "airplane, automobile, bird", "truck")
    assert_usage_error(run("train.py", "--label", "12"), "--label '12'")
    # A name in any case works: test_checkpoint's sessions test resumes with --label AutoMobile.


def test_bad_data_is_reported_before_anything_is_written(tmp_path):
    weights = tmp_path / "W"
    assert_usage_error(
        run("train.py", "--data", tmp_path / "missing.npz", "--weights-dir", weights),
        "--data",
        "missing.npz",
        "no such file",
    )
    gray = tmp_path / "gray.npz"
    np.savez(gray, x=np.zeros((10, 32, 32), np.uint8))
    assert_usage_error(run("train.py", "--data", gray, "--weights-dir", weights), "grayscale")
    few = tmp_path / "few.npz"
    np.savez(few, x=np.zeros((3, 32, 32, 3), np.uint8))
    assert_usage_error(
        run("train.py", "--data", few, "--weights-dir", weights, "--batch-size", "4"),
        "--batch-size 4 is more than the 3",
    )
    assert not weights.exists()


def test_weights_dir_that_cannot_be_written(tmp_path, npz_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = run(
        "train.py",
        "--data",
        npz_path,
        "--weights-dir",
        blocker / "run",
        *tiny_flags(),
        "--max-steps",
        "1",
    )
    assert_usage_error(result, "--weights-dir", "cannot be written")
    assert blocker.read_text() == "a file where a folder should be"


def test_predict_without_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_usage_error(
        run("predict.py", "--weights-dir", tmp_path / "empty"), "has no checkpoint", "train.py"
    )
    assert_usage_error(run("predict.py", "--weights-dir", tmp_path / "nowhere"), "no such folder")
    assert_usage_error(run("predict.py", "--grid", "4by4"), "--grid")


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_ctrl_c_and_sigterm_save_before_stopping(tmp_path, npz_path, signal_number):
    weights = tmp_path / "W"
    command = [
        sys.executable,
        os.path.join(REPOSITORY, "train.py"),
        "--data",
        npz_path,
        "--weights-dir",
        weights,
        *tiny_flags(),
        "--max-steps",
        "100000",
        "--save-every",
        "100000",
        "--save-every-minutes",
        "0",
    ]
    # Started the way a shell starts a background job: with SIGINT ignored.
    process = subprocess.Popen(
        list(map(str, command)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert "Starting a new" in process.stdout.readline()
        assert process.stdout.readline().startswith("step 1/")  # training has begun
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Interrupted: saved step" in stderr and "Traceback" not in stderr
    step = int(stderr.split("Interrupted: saved step ")[1].split()[0])
    assert step >= 1 and (weights / f"ckpt-{step}.index").exists()


def run_without_tensorflow(tmp_path, script, *arguments):
    """Run `script` where importing TensorFlow fails, to prove a check happens before it loads."""
    blocker = tmp_path / "no-tensorflow"
    (blocker / "tensorflow").mkdir(parents=True, exist_ok=True)
    (blocker / "tensorflow" / "__init__.py").write_text(
        "raise ImportError('TensorFlow was imported before the check')\n"
    )
    return run(script, *arguments, PYTHONPATH=str(blocker))


@pytest.mark.parametrize(
    "arguments, fragments",
    [
        (["--sampling-steps", "0"], ["--sampling-steps must be at least 1, got 0"]),
        (["--sampling-steps", "5000"], ["--sampling-steps 5000 is more than the 20 noise levels"]),
        (["--num", "0"], ["--num must be at least 1"]),
        (["--grid", "4by4"], ["--grid '4by4'"]),
        (["--evaluate", "--data", "missing.npz"], ["--data missing.npz: no such file"]),
        (["--ema", "0.9999"], ["--ema 0.9999: the run keeps no such EMA", "0.999, or none"]),
    ],
    ids=["steps-0", "steps-5000", "num-0", "grid", "data", "ema"],
)
def test_predict_reports_bad_arguments_before_tensorflow_loads(tmp_path, arguments, fragments):
    run_folder = tmp_path / "run"
    shutil.copytree(os.path.join(REPOSITORY, "tests", "data", "legacy-run"), run_folder)
    result = run_without_tensorflow(tmp_path, "predict.py", "--weights-dir", run_folder, *arguments)
    assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
    assert_usage_error(result, *fragments)


def test_train_reports_bad_arguments_before_tensorflow_loads(tmp_path):
    result = run_without_tensorflow(tmp_path, "train.py", "--label", "12")
    assert result.stderr.count("\n") == 1, result.stderr
    assert_usage_error(result, "--label '12'")
