#!/usr/bin/env python3
"""Train many variants of the recipe on a short CPU budget each, and rank them by FID.

    python bench/sweep.py --cpu-minutes 8 --fid-python fidvenv/bin/python
    python bench/sweep.py --variants v1,velocity --cpu-minutes 8 ...

The real images of one class (`--data`, `--label`: by default CIFAR-10's 5000
training automobiles, through tensorflow-datasets) are split once: training
sees all but the last 500, and the last 500 are a validation split that no
variant ever trains on. Each
variant is `train.py` with its flags, stopped with SIGINT when its process
has used `--cpu-minutes` of CPU time (as in bench/quality.py). It then
samples `--num` images with `predict.py` at `--sampling-steps`, and
`bench/fid.py` (FID and KID on the standard FID Inception network, run with
--fid-python or $FID_PYTHON) scores them against the training images (4500
of the automobiles) and against the 500 validation images.

FID against the training images rewards copying; a variant that gains there
but not on the validation split has learned the training set, not the class.
FID with 500 reference images is biased upwards, so compare the validation
column only with itself.

Results are appended to `--out-dir/sweep.json` as each variant ends, so an
interrupted sweep can be continued: variants already there are skipped.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(BENCH)
sys.path[:0] = [REPOSITORY, BENCH]

import quality  # noqa: E402

VALIDATION_SIZE = quality.VALIDATION_SIZE

# Each variant: the train.py flags that make it, on top of --recipe v1's defaults.
# BUDGET_STEPS stands for the steps that v1 reached on the same budget, so that
# a schedule that decays to --max-steps ends where the budget does.
BUDGET_STEPS = "{budget_steps}"
COMBINED = [
    "--prediction",
    "velocity",
    "--loss-weighting",
    "min-snr",
    "--noise-keys",
    "tagged",
    "--embedding-max-frequency",
    "100",
    "--time-conditioning",
    "scale-shift",
    "--lr",
    "2e-3",
]
COSINE_TO_BUDGET = ["--lr-schedule", "cosine", "--warmup-steps", "100", "--max-steps", BUDGET_STEPS]
DEFAULT = [*COMBINED, "--lr-schedule", "cosine", "--warmup-steps", "100", "--max-steps", "50000"]
VARIANTS = {
    "v1": [],
    "tagged-keys": ["--noise-keys", "tagged"],
    "velocity": ["--prediction", "velocity"],
    "velocity-min-snr": ["--prediction", "velocity", "--loss-weighting", "min-snr"],
    "noise-min-snr": ["--loss-weighting", "min-snr"],
    "log-normal": ["--level-distribution", "log-normal", "--noise-keys", "tagged"],
    "cosine-lr-2e-3": [
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "100",
        "--lr",
        "2e-3",
        "--max-steps",
        BUDGET_STEPS,
    ],
    "flip": ["--flip", "--noise-keys", "tagged"],
    "scale-shift": ["--time-conditioning", "scale-shift"],
    "embedding-100": ["--embedding-max-frequency", "100"],
    "attention": ["--attention"],
    "lr-2e-3": ["--lr", "2e-3"],
    # Combinations: v-prediction with min-SNR, the two fixes (tagged keys, an
    # embedding that does not alias), AdaGN, a higher rate with a warm-up.
    # Warm-up, then constant: the cosine decays to the sweep's --max-steps 10000000.
    "combined-constant": [*COMBINED, "--lr-schedule", "cosine", "--warmup-steps", "100"],
    "combined-cosine": [*COMBINED, *COSINE_TO_BUDGET],
    "combined-cosine-bias": [
        *[flag for flag in COMBINED if flag not in ("--time-conditioning", "scale-shift")],
        *COSINE_TO_BUDGET,
    ],
    "combined-cosine-flip": [*COMBINED, *COSINE_TO_BUDGET, "--flip"],
    # The default recipe as it stands, and changes to it that spend the same CPU otherwise.
    "default": DEFAULT,
    "default-batch-32": [*DEFAULT, "--batch-size", "32"],
    "default-lr-4e-3": [*DEFAULT, "--lr", "4e-3"],
}


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of names")
    parser.add_argument("--cpu-minutes", type=float, default=8.0, help="training budget each")
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    parser.add_argument("--sampling-steps", type=int, default=25)
    quality.add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-steps",
        type=int,
        help="the steps a schedule decays to (default: those v1 reached in this sweep)",
    )
    parser.add_argument("--out-dir", default=os.path.join(REPOSITORY, "runs", "sweep"))
    quality.add_fid_python(parser)
    arguments = parser.parse_args()
    unknown = [name for name in arguments.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not arguments.fid_python:
        parser.error("--fid-python (or $FID_PYTHON) is needed to score the samples")
    return arguments


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.out_dir, exist_ok=True)
    log = os.path.join(arguments.out_dir, "log.txt")
    record = os.path.join(arguments.out_dir, "sweep.json")
    rows = []
    if os.path.exists(record):
        with open(record) as file:
            rows = json.load(file)["rows"]
    train_path, validation_path = quality.split_data(
        arguments.data, arguments.label, arguments.out_dir, VALIDATION_SIZE
    )
    import tensorflow as tf
    from speed import matmul_peak

    peak = matmul_peak(tf)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True
    ).stdout.strip()
    for name in arguments.variants.split(","):
        if any(row["variant"] == name for row in rows):
            continue
        weights_dir = os.path.join(arguments.out_dir, name)
        if os.path.exists(weights_dir):
            sys.exit(f"error: {weights_dir} exists but has no result; move it away first")
        flags = ["--recipe", "v1", *VARIANTS[name]]
        if BUDGET_STEPS in flags:
            reached = [row["steps"] for row in rows if row["variant"] == "v1"]
            if arguments.budget_steps:
                reached = [arguments.budget_steps]
            if not reached:
                sys.exit(f"error: variant {name} needs --budget-steps or v1's steps; run v1 first")
            flags[flags.index(BUDGET_STEPS)] = str(reached[0])
        training = argparse.Namespace(**dict(vars(arguments), data=train_path))
        steps, wall, train_command, cpu_seconds = quality.train(flags, weights_dir, training, log)
        prefix = os.path.join(arguments.out_dir, f"{name}-samples")
        sample_seconds, _ = quality.sample(
            weights_dir, prefix, arguments, arguments.sampling_steps, log
        )
        on_train, on_validation = quality.score_both(
            prefix + ".npz", arguments, log, train_path, validation_path
        )
        with open(os.path.join(weights_dir, "config.json")) as file:
            batch = json.load(file)["batch_size"]
        rows.append(
            {
                "variant": name,
                "flags": " ".join(shlex.quote(flag) for flag in flags[2:]),  # after --recipe v1
                "steps": steps,
                "images": steps * batch,
                "cpu_minutes": arguments.cpu_minutes,
                "wall_seconds": wall,
                "gflops": quality.training_gflops(weights_dir, steps * batch, cpu_seconds),
                "sample_seconds": sample_seconds,
                "fid_train": quality.number(on_train, "fid"),
                "kid_train": quality.thousandths(quality.number(on_train, "kid")),
                "fid_validation": quality.number(on_validation, "fid"),
                "kid_validation": quality.thousandths(quality.number(on_validation, "kid")),
                "commit": commit,
                "command": train_command,
            }
        )
        with open(record, "w") as file:
            json.dump({"machine": quality.machine(), "rows": rows}, file, indent=2)
        print_table(rows, arguments, peak)


def print_table(rows, arguments, peak):
    show = quality.show
    print(
        f"\nbench/sweep.py, {quality.machine()}; tf.matmul peak {peak:.0f} GFLOP/s in this run; "
        f"{arguments.num} samples at {arguments.sampling_steps} DDIM steps vs the 4500 training "
        f"and the {VALIDATION_SIZE} validation automobiles"
    )
    print(
        "| variant | flags | CPU-min | steps | images seen | GFLOP/s (% of peak) | "
        "FID train | KID train x1e3 | FID validation | KID validation x1e3 | commit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda row: row["fid_train"] or float("inf")):
        print(
            f"| {row['variant']} | `{row['flags']}` | {row['cpu_minutes']:g} | {row['steps']} | "
            f"{row['images']:,} | {row['gflops']:.0f} ({100 * row['gflops'] / peak:.0f}%) | "
            f"{show(row['fid_train'], '{:.1f}')} | {show(row['kid_train'], '{:.1f}')} | "
            f"{show(row['fid_validation'], '{:.1f}')} | "
            f"{show(row['kid_validation'], '{:.1f}')} | {row['commit']} |"
        )
    print("train commands:")
    for row in rows:
        print(f"  {row['variant']}: {row['command']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
