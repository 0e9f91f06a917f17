#!/usr/bin/env python3
"""Sample quality of recipes trained on the same compute budget, side by side.

    python bench/quality.py --cpu-minutes 64 --num 1000
    python bench/quality.py --recipes v2,default --wall-minutes 60   # as users train

The images of one class (`--data`: CIFAR-10 through tensorflow-datasets by
default, or an .npz or image folder; `--label`) are split once into
OUT_DIR/train-split.npz and OUT_DIR/validation-split.npz, the last
`--validation-size` images, which no recipe trains on. Each recipe is trained
by `train.py` in its own process on the training split with the same seed,
until that process has used `--cpu-minutes` of CPU time (user + system, all
threads; so other work on the machine does not change a recipe's share), then
stopped with Ctrl-C (SIGINT), which saves. With `--wall-minutes` instead,
each recipe trains as a user's train.py does, on all the cores, one recipe
after the other, for that many minutes of training (`train.py --max-minutes`),
and the `tf.matmul` peak is measured again just before each one. Each run then samples `--num`
images with `predict.py`, and `bench/fid.py` (FID and KID on the standard FID
Inception network, run with the Python given by --fid-python or $FID_PYTHON:
a venv with requirements-fid.txt) scores them against the training split and
against the validation split. One table comes out, with the exact commands,
the `tf.matmul` peak measured in the same run and each recipe's training
GFLOP/s.
"""

import argparse
import concurrent.futures
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import psutil

BENCH = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCH)
sys.path[:0] = [REPOSITORY, BENCH]
FID_TOOL = os.path.join(BENCH, "fid.py")
VALIDATION_SIZE = 500


def add_fid_python(parser):
    """The option that names the Python which runs bench/fid.py."""
    parser.add_argument(
        "--fid-python",
        default=os.environ.get("FID_PYTHON"),
        help="Python of the venv with requirements-fid.txt installed, which runs bench/fid.py "
        "(default $FID_PYTHON)",
    )


def add_data_arguments(parser):
    """--data and --label, as train.py takes them."""
    parser.add_argument(
        "--data",
        default="tfds",
        help="tfds (CIFAR-10 through tensorflow-datasets, downloaded the first time), "
        "an .npz file (key x) or a folder of images",
    )
    parser.add_argument(
        "--label",
        default="automobile",
        help="the CIFAR-10 class to take from --data tfds, 0-9 or a name (default automobile)",
    )


def beside_run(weights_dir, file_name):
    """`file_name` in the folder that holds the run `weights_dir` (where this bench writes
    train-split.npz and validation-split.npz), or None if it is not there."""
    path = os.path.join(os.path.dirname(weights_dir.rstrip("/")), file_name)
    return path if os.path.exists(path) else None


def trained_images(weights_dir, out_dir):
    """An .npz of the images the run in `weights_dir` trained on: train-split.npz beside it if
    there is one (bench/quality.py writes it), else the data and label of its config.json,
    written to `out_dir`/reference.npz."""
    beside = beside_run(weights_dir, "train-split.npz")
    if beside:
        return beside
    with open(os.path.join(weights_dir, "config.json")) as file:
        config = json.load(file)
    reference = os.path.join(out_dir, "reference.npz")
    if not os.path.exists(reference):
        from tf_diffusion.cli import error_line
        from tf_diffusion.data import load_images

        try:
            images = load_images(config["data"], config["label"])
        except ValueError as error:
            sys.exit(f"{error_line(error)} (the run's data; pass --reference PATH.npz instead)")
        np.savez(reference, x=images)
    return reference


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", default="classic,default", help="comma list; '' for --candidate runs alone"
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=FLAGS",
        help="also train a candidate: NAME for the table, FLAGS for train.py (e.g. "
        "'batch-16=--recipe default --batch-size 16'); repeat for more",
    )
    parser.add_argument(
        "--cpu-minutes",
        type=float,
        default=64.0,
        help="CPU time each recipe trains for (2 cores: about half as many wall minutes)",
    )
    parser.add_argument(
        "--wall-minutes",
        type=float,
        help="instead of --cpu-minutes: train each recipe as train.py does, on all the cores, "
        "one after the other, for M minutes of training (train.py --max-minutes M)",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="train the recipes at the same time, each on an equal share of the cores",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help="train.py --max-steps for every recipe: a cosine rate decays to it, and a recipe "
        "that reaches it within the budget stops there (default: none, the budget alone)",
    )
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    parser.add_argument(
        "--sampling-steps",
        default="10,25,50",
        help="sampling steps to evaluate for recipes that choose them",
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--validation-size",
        type=int,
        default=VALIDATION_SIZE,
        help="the last N images, never trained on, are a second reference; 0 trains on all",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=os.path.join(REPOSITORY, "runs", "quality"))
    add_fid_python(parser)
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate the runs already in --out-dir"
    )
    arguments = parser.parse_args()
    if arguments.max_steps is not None and arguments.max_steps < 1:
        parser.error(f"--max-steps: {arguments.max_steps} is not 1 or more")
    if arguments.wall_minutes is not None and not (
        0 < arguments.wall_minutes < math.inf and not arguments.parallel
    ):
        parser.error(
            f"--wall-minutes {arguments.wall_minutes}: pass minutes > 0, without --parallel"
        )
    if arguments.validation_size < 0:
        parser.error(f"--validation-size: {arguments.validation_size} is negative; pass 0 or more")
    recipes = [recipe for recipe in arguments.recipes.split(",") if recipe]  # "": candidates only
    arguments.flags = {recipe: ["--recipe", recipe] for recipe in recipes}
    for candidate in arguments.candidate:
        name, separator, flags = candidate.partition("=")
        if not separator or not name or not flags or "/" in name or name in arguments.flags:
            parser.error(
                f"--candidate {candidate!r}: give NAME=FLAGS with a new NAME without '/', "
                "e.g. 'batch-16=--recipe default --batch-size 16'"
            )
        arguments.flags[name] = shlex.split(flags)
    if not arguments.flags:
        parser.error("--recipes '': give a recipe or a --candidate to train")
    return arguments


def split_data(data, label, out_dir, validation_size=VALIDATION_SIZE):
    """Write the training split (all but the last `validation_size` images of `data`) and the
    validation split, unless they are there; their paths (the second None for size 0)."""
    from tf_diffusion.cli import error_line
    from tf_diffusion.config import parse_label
    from tf_diffusion.data import load_images

    train_path = os.path.join(out_dir, "train-split.npz")
    validation_path = os.path.join(out_dir, "validation-split.npz") if validation_size else None
    if not all(os.path.exists(path) for path in (train_path, validation_path) if path):
        try:
            images = load_images(data, parse_label(label))
        except ValueError as error:  # the data's one-line message
            sys.exit(error_line(error))
        if not 0 <= validation_size < len(images):
            sys.exit(f"error: --validation-size {validation_size} leaves no images in {data}")
        np.savez(train_path, x=images[: len(images) - validation_size])
        if validation_path:
            np.savez(validation_path, x=images[-validation_size:])
    return train_path, validation_path


def training_work(weights_dir):
    """GFLOP of one training image (3 forward passes) of the run in `weights_dir`."""
    from speed import forward_flops

    from tf_diffusion.checkpoint import load_run_config
    from tf_diffusion.model import make_model

    return 3 * forward_flops(make_model(load_run_config(weights_dir))) / 1e9


def training_gflops(weights_dir, images, cpu_seconds):
    """Training GFLOP/s of a run, comparable with the `tf.matmul` peak of this process.

    The work is spread over the CPU time the run spent and counted per as many
    threads as the peak used (all cores, or TF_NUM_INTRAOP_THREADS when set, as
    for runs side by side), so the % of peak holds on a loaded machine.
    """
    peak_threads = int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or os.cpu_count()
    return training_work(weights_dir) * images / (cpu_seconds / peak_threads)


def machine():
    """The line every bench prints about the machine: the CPU's model, its cores, whether it has
    bfloat16 instructions (they decide what `--precision auto` trains in) and Python's version."""
    from tf_diffusion.hardware import cpu_has_bfloat16

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(
                line.split(":", 1)[1].strip() for line in file if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    bfloat16 = "bfloat16 instructions" if cpu_has_bfloat16() else "no bfloat16 instructions"
    return f"{cpu}, {os.cpu_count()} cores, {bfloat16}, Python {platform.python_version()}"


def train(flags, weights_dir, arguments, log, threads=None):
    """Run train.py with `flags` until it spends the CPU budget or ends; (steps, wall s, command,
    CPU s spent).

    `threads` caps TensorFlow's threads in that process (for recipes trained side by side).
    """
    command = [
        sys.executable,
        "train.py",
        *flags,
        "--data",
        arguments.data,
        "--weights-dir",
        weights_dir,
        "--seed",
        str(arguments.seed),
        *([] if "--max-steps" in flags else ["--max-steps", "10000000"]),
        *(["--max-minutes", f"{arguments.wall_minutes:g}"] if arguments.wall_minutes else []),
        "--save-every-minutes",
        "10",
        "--quiet",
    ]
    budget = math.inf if arguments.wall_minutes else arguments.cpu_minutes * 60
    start = time.monotonic()
    with open(log, "a") as output:
        environment = dict(os.environ)
        if threads:
            environment.update(
                TF_NUM_INTRAOP_THREADS=str(threads),
                TF_NUM_INTEROP_THREADS=str(threads),
                OMP_NUM_THREADS=str(threads),
            )
        process = subprocess.Popen(
            command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
        watched = psutil.Process(process.pid)
        cpu_seconds = 0.0
        while process.poll() is None:
            try:
                times = watched.cpu_times()
            except psutil.NoSuchProcess:  # ended between the poll and the reading
                break
            cpu_seconds = times.user + times.system
            if cpu_seconds >= budget:
                process.send_signal(signal.SIGINT)  # train.py saves, then exits
                break
            time.sleep(2)
        process.wait()
    wall = time.monotonic() - start
    with open(os.path.join(weights_dir, "checkpoint")) as file:
        latest = file.readline().split('"')[1]
    steps = int(latest.rsplit("-", 1)[1])
    shown = " ".join(shlex.quote(part) for part in command)
    if 0 < cpu_seconds < budget:
        ended = f"{shown}  # ended by itself after {cpu_seconds / 60:.1f} CPU-minutes"
        if arguments.wall_minutes:
            ended += f", {wall / 60:.1f} wall-minutes"
        return steps, wall, ended, cpu_seconds
    stopped = f"{shown}  # stopped with SIGINT after {arguments.cpu_minutes:g} CPU-minutes"
    return steps, wall, stopped, budget


def sample(weights_dir, out_prefix, arguments, sampling_steps, log, flags=()):
    """predict.py `--num` images from `weights_dir` into `out_prefix`.npz; (wall s, command)."""
    command = [
        sys.executable,
        "predict.py",
        "--weights-dir",
        weights_dir,
        "--num",
        str(arguments.num),
        "--npz",
        out_prefix + ".npz",
        "--out",
        out_prefix + ".png",
        "--grid",
        "8x8",
        "--seed",
        str(arguments.seed),
    ]
    if sampling_steps:
        command += ["--sampling-steps", str(sampling_steps)]
    command += list(flags)
    start = time.monotonic()
    with open(log, "a") as output:
        subprocess.run(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - start, " ".join(shlex.quote(part) for part in command)


def score(npz, arguments, log, reference, tag=""):
    """bench/fid.py's results (keys fid, kid, ...) for the images in `npz` against the .npz
    `reference`; {} without --fid-python."""
    if not arguments.fid_python:
        return {}
    report = npz[:-4] + (f"-{tag}" if tag else "") + "-fid.json"
    # Beside the reference: every bench that scores against it reads its features back.
    cache = os.path.join(os.path.dirname(os.path.abspath(reference)), "fid-features")
    command = [
        arguments.fid_python,
        FID_TOOL,
        npz,
        reference,
        "--json",
        report,
        "--cache-dir",
        cache,
    ]
    with open(log, "a") as output:
        subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=True)
    with open(report) as file:
        return json.load(file)


def score_both(npz, arguments, log, reference, validation=None):
    """`score` against `reference`, and against `validation` when there is one ({} if not)."""
    on_reference = score(npz, arguments, log, reference=reference)
    on_validation = {}
    if validation:
        on_validation = score(npz, arguments, log, reference=validation, tag="validation")
    return on_reference, on_validation


def number(results, *keys):
    value = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def train_recipes(recipes, arguments, log, data):
    """Train each recipe (side by side with --parallel).

    Returns {recipe: (steps, wall s, command, CPU s, peak)} and the threads per recipe;
    peak is the `tf.matmul` GFLOP/s measured just before a recipe trained alone, else None.
    """
    import tensorflow as tf
    from speed import matmul_peak

    runs = {}
    for recipe in recipes:
        weights_dir = os.path.join(arguments.out_dir, recipe)
        if arguments.skip_training:
            with open(os.path.join(weights_dir, "bench-training.json")) as file:
                record = json.load(file)  # older ones lack the CPU time (it was the budget)
                record += [arguments.cpu_minutes * 60, None][len(record) - 3 :]  # and the peak
                runs[recipe] = tuple(record[:5])
        elif os.path.exists(weights_dir):
            sys.exit(f"error: {weights_dir} exists; move it away or pass --skip-training")
    pending = [recipe for recipe in recipes if recipe not in runs]
    training = argparse.Namespace(**dict(vars(arguments), data=data))
    threads = max(1, os.cpu_count() // len(pending)) if arguments.parallel and pending else None

    def run(recipe):
        weights_dir = os.path.join(arguments.out_dir, recipe)
        flags = list(arguments.flags[recipe])
        if arguments.max_steps:
            flags += ["--max-steps", str(arguments.max_steps)]
        peak = None if threads else matmul_peak(tf)  # alone: the machine as this recipe finds it
        result = (*train(flags, weights_dir, training, log, threads), peak)
        with open(os.path.join(weights_dir, "bench-training.json"), "w") as file:
            json.dump(result, file)
        return result

    with concurrent.futures.ThreadPoolExecutor(len(pending) if threads else 1) as pool:
        runs.update(zip(pending, pool.map(run, pending)))
    return runs, threads


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.out_dir, exist_ok=True)
    log = os.path.join(arguments.out_dir, "log.txt")
    train_data, validation_data = split_data(
        arguments.data, arguments.label, arguments.out_dir, arguments.validation_size
    )
    import tensorflow as tf
    from speed import matmul_peak

    peak = matmul_peak(tf)
    recipes = list(arguments.flags)
    runs, threads = train_recipes(recipes, arguments, log, train_data)
    rows = []
    for recipe in recipes:
        steps, wall, train_command, cpu_seconds, recipe_peak = runs[recipe]
        weights_dir = os.path.join(arguments.out_dir, recipe)
        with open(os.path.join(weights_dir, "config.json")) as file:
            config = json.load(file)
        images = steps * config["batch_size"]
        gflops = training_gflops(weights_dir, images, cpu_seconds)
        choices = [None]
        if config["prediction"] != "next":
            choices = [int(value) for value in arguments.sampling_steps.split(",")]
        for sampling_steps in choices:
            prefix = os.path.join(
                arguments.out_dir, f"{recipe}-samples-{sampling_steps or config['timesteps']}"
            )
            sample_seconds, sample_command = sample(
                weights_dir, prefix, arguments, sampling_steps, log
            )
            results, on_validation = score_both(
                prefix + ".npz", arguments, log, train_data, validation_data
            )
            rows.append(
                {
                    "recipe": recipe,
                    "width": config["width"],
                    "batch": config["batch_size"],
                    "steps": steps,
                    "images": images,
                    "cpu_minutes": cpu_seconds / 60,
                    "peak": recipe_peak or peak,
                    "threads": threads,
                    "train_seconds": wall,
                    "gflops": gflops,
                    "sampling_steps": sampling_steps or config["timesteps"],
                    "sample_seconds": sample_seconds,
                    "fid": number(results, "fid"),
                    "kid": number(results, "kid"),
                    "fid_validation": number(on_validation, "fid"),
                    "kid_validation": number(on_validation, "kid"),
                    "train_command": train_command,
                    "sample_command": sample_command,
                }
            )
            print_table(rows, arguments, peak)
    with open(os.path.join(arguments.out_dir, "results.json"), "w") as file:
        json.dump({"machine": machine(), "matmul_peak": peak, "rows": rows}, file, indent=2)


def show(value, pattern):
    """`value` formatted by `pattern`, or an empty table cell when there is none."""
    return "" if value is None else pattern.format(value)


def thousandths(kid):
    """A KID in the tables' unit (x1e3); None when it was not measured."""
    return None if kid is None else 1e3 * kid


def print_table(rows, arguments, peak):
    trained_on = "all the automobiles"
    if arguments.validation_size:
        trained_on = f"all but the last {arguments.validation_size} automobiles (validation)"
    budget = f"budget {arguments.cpu_minutes:g} CPU-minutes per recipe"
    if arguments.wall_minutes:
        budget = f"each trained alone on all cores for {arguments.wall_minutes:g} minutes"
    if rows[0]["threads"]:
        budget += f", trained side by side on {rows[0]['threads']} thread(s) each"
    print(
        f"\nbench/quality.py, {machine()}; tf.matmul peak {peak:.0f} GFLOP/s in this run; "
        f"trained on {trained_on}; {arguments.num} samples vs the images trained on "
        f"and vs the validation split; {budget}"
    )
    print(
        "| recipe | width | batch | CPU-min | steps | images seen | train wall s | img/s | "
        "matmul peak GFLOP/s | GFLOP/s (% of peak) | sampling steps | "
        f"sample {arguments.num} s | FID | KID x1e3 | "
        "FID validation | KID validation x1e3 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        kid, kid_validation = thousandths(row["kid"]), thousandths(row["kid_validation"])
        print(
            f"| {row['recipe']} | {row['width']} | {row['batch']} | {row['cpu_minutes']:.1f} | "
            f"{row['steps']} | {row['images']:,} | {row['train_seconds']:.0f} | "
            f"{row['images'] / row['train_seconds']:.1f} | {row['peak']:.0f} | "
            f"{row['gflops']:.0f} ({100 * row['gflops'] / row['peak']:.0f}%) | "
            f"{row['sampling_steps']} | "
            f"{row['sample_seconds']:.1f} | {show(row['fid'], '{:.1f}')} | {show(kid, '{:.1f}')} | "
            f"{show(row['fid_validation'], '{:.1f}')} | {show(kid_validation, '{:.1f}')} |"
        )
    for baseline in ("classic", "v1", "v2"):
        reference = {
            row["sampling_steps"]: row for row in rows if row["recipe"] == baseline and row["fid"]
        }
        for row in rows:
            other = reference.get(row["sampling_steps"]) or next(iter(reference.values()), None)
            if other and row["recipe"] != baseline and row["fid"]:
                print(
                    f"{row['recipe']} at {row['sampling_steps']} steps: FID ratio to {baseline} "
                    f"at {other['sampling_steps']} {row['fid'] / other['fid']:.2f}"
                )
    print("commands:")
    for row in rows:
        print(f"  {row['train_command']}\n  {row['sample_command']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
