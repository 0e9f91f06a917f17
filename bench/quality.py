#!/usr/bin/env python3
"""Sample quality of recipes trained on the same compute budget, side by side.

    python bench/quality.py --cpu-minutes 64 --num 1000

Each recipe is trained by `train.py` in its own process on the same data with
the same seed, until that process has used `--cpu-minutes` of CPU time (user +
system, all threads; so other work on the machine does not change a recipe's
share), then stopped with Ctrl-C (SIGINT), which saves. Each run then samples
`--num` images with `predict.py`, and the standard FID Inception network
(`../shared/tools/quality.py`, run with the Python given by --quality-python
or $QUALITY_PYTHON) scores them against the training images. One table
comes out, with the exact commands.
"""

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time

import psutil

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPOSITORY, "..", "shared", "data", "cifar10_automobile_train.npz")
QUALITY_TOOL = os.path.join(REPOSITORY, "..", "shared", "tools", "quality.py")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="classic,default")
    parser.add_argument(
        "--cpu-minutes",
        type=float,
        default=64.0,
        help="CPU time each recipe trains for (2 cores: about half as many wall minutes)",
    )
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    parser.add_argument(
        "--sampling-steps",
        default="10,25,50",
        help="sampling steps to evaluate for recipes that choose them",
    )
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=os.path.join(REPOSITORY, "runs", "quality"))
    parser.add_argument(
        "--quality-python",
        default=os.environ.get("QUALITY_PYTHON"),
        help="Python of the venv where ../shared/tools/quality.py's needs are installed",
    )
    parser.add_argument(
        "--skip-training", action="store_true", help="evaluate the runs already in --out-dir"
    )
    return parser.parse_args()


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def train(flags, weights_dir, arguments, log):
    """Run train.py with `flags` until it spends the CPU budget; return (steps, wall s, command)."""
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
        "--save-every-minutes",
        "10",
        "--quiet",
    ]
    budget = arguments.cpu_minutes * 60
    start = time.monotonic()
    with open(log, "a") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        while process.poll() is None:
            times = watched.cpu_times()
            if times.user + times.system >= budget:
                process.send_signal(signal.SIGINT)  # train.py saves, then exits
                break
            time.sleep(2)
        process.wait()
    wall = time.monotonic() - start
    with open(os.path.join(weights_dir, "checkpoint")) as file:
        latest = file.readline().split('"')[1]
    steps = int(latest.rsplit("-", 1)[1])
    shown = " ".join(shlex.quote(part) for part in command)
    return (
        steps,
        wall,
        f"{shown}  # stopped with SIGINT after {arguments.cpu_minutes:g} CPU-minutes",
    )


def sample(weights_dir, out_prefix, arguments, sampling_steps, log):
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
    start = time.monotonic()
    with open(log, "a") as output:
        subprocess.run(command, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT, check=True)
    return time.monotonic() - start, " ".join(shlex.quote(part) for part in command)


def score(npz, arguments, log, reference=None, tag=""):
    """FID and KID of the images in `npz` against `reference` (default: the 5000 automobiles)."""
    if not arguments.quality_python:
        return {}
    report = npz[:-4] + (f"-{tag}" if tag else "") + "-quality.json"
    command = [
        arguments.quality_python,
        QUALITY_TOOL,
        npz,
        *([reference] if reference else []),
        "--metrics",
        "fid,kid",
        "--json",
        report,
        "--quiet",
    ]
    with open(log, "a") as output:
        subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=True)
    with open(report) as file:
        return json.load(file)


def number(results, *keys):
    value = results
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.out_dir, exist_ok=True)
    log = os.path.join(arguments.out_dir, "log.txt")
    rows = []
    for recipe in arguments.recipes.split(","):
        weights_dir = os.path.join(arguments.out_dir, recipe)
        record = os.path.join(weights_dir, "bench-training.json")
        if arguments.skip_training:
            with open(record) as file:
                steps, wall, train_command = json.load(file)
        else:
            if os.path.exists(weights_dir):
                sys.exit(f"error: {weights_dir} exists; move it away or pass --skip-training")
            steps, wall, train_command = train(["--recipe", recipe], weights_dir, arguments, log)
            with open(record, "w") as file:
                json.dump([steps, wall, train_command], file)
        with open(os.path.join(weights_dir, "config.json")) as file:
            config = json.load(file)
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
            results = score(prefix + ".npz", arguments, log)
            rows.append(
                {
                    "recipe": recipe,
                    "width": config["width"],
                    "batch": config["batch_size"],
                    "steps": steps,
                    "train_seconds": wall,
                    "sampling_steps": sampling_steps or config["timesteps"],
                    "sample_seconds": sample_seconds,
                    "fid": number(results, "fid"),
                    "kid": number(results, "kid_mean"),
                    "train_command": train_command,
                    "sample_command": sample_command,
                }
            )
            print_table(rows, arguments)
    with open(os.path.join(arguments.out_dir, "results.json"), "w") as file:
        json.dump({"machine": machine(), "rows": rows}, file, indent=2)


def show(value, pattern):
    """`value` formatted by `pattern`, or an empty table cell when there is none."""
    return "" if value is None else pattern.format(value)


def print_table(rows, arguments):
    print(
        f"\nbench/quality.py, {machine()}; {arguments.num} samples vs the "
        f"5000 training automobiles; budget {arguments.cpu_minutes:g} CPU-minutes per recipe"
    )
    print(
        "| recipe | width | batch | steps | images seen | train wall s | sampling steps | "
        f"sample {arguments.num} s | FID | KID x1e3 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        seen = row["steps"] * row["batch"] if row["steps"] is not None else None
        kid = row["kid"] * 1e3 if row["kid"] is not None else None
        print(
            f"| {row['recipe']} | {row['width']} | {row['batch']} | {show(row['steps'], '{}')} | "
            f"{show(seen, '{:,}')} | {show(row['train_seconds'], '{:.0f}')} | "
            f"{row['sampling_steps']} | "
            f"{row['sample_seconds']:.1f} | {show(row['fid'], '{:.1f}')} | {show(kid, '{:.1f}')} |"
        )
    classic = [row for row in rows if row["recipe"] == "classic" and row["fid"]]
    for row in rows:
        if classic and row["recipe"] != "classic" and row["fid"]:
            print(
                f"{row['recipe']} at {row['sampling_steps']} steps: FID ratio to classic "
                f"{row['fid'] / classic[0]['fid']:.2f}"
            )
    print("commands:")
    for row in rows:
        print(f"  {row['train_command']}\n  {row['sample_command']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
