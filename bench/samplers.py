#!/usr/bin/env python3
"""FID against model evaluations per image, for each sampler, on one run's weights.

    python bench/samplers.py --weights-dir runs/quality/default --num 1000
    python bench/samplers.py --weights-dir DIR --evaluations 10,15,25,50 \\
        --samplers ddim:uniform,dpm-solver++:edm,heun:edm

Each sampler samples `--num` images with `predict.py` from the same seed at
about each number of network evaluations per image: DDIM and DPM-Solver++(2M)
take one per step, Heun two per step and one on the last, so it gets the most
steps that fit. `bench/fid.py` (FID and KID on the standard FID Inception
network, run with --fid-python or $FID_PYTHON) scores them against the images
trained on and, where bench/quality.py left one beside the run, the validation
split. The last two columns are each FID over 50-step DDIM's from the same
weights (the reference that "15 evaluations as good as 50" was judged against)
and over the best FID in the table. `--precisions
float32,mixed_bfloat16` repeats every sampler with the network in bfloat16
(`predict.py --sampling-precision`); the seconds are predict.py's whole run,
beside the `tf.matmul` float32 peak measured just before it.
"""

import argparse
import json
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import quality  # noqa: E402 (also puts the repository on the path)

from tf_diffusion.diffusion import network_evaluations  # noqa: E402

REFERENCE = ("ddim", "uniform", 50, "float32")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", required=True, help="a run folder with a checkpoint")
    parser.add_argument(
        "--evaluations", default="10,15,25,50", help="network evaluations per image"
    )
    parser.add_argument(
        "--samplers",
        default="ddim:uniform,dpm-solver++:uniform,dpm-solver++:edm,heun:edm",
        help="comma list of SAMPLER:SPACING",
    )
    parser.add_argument(
        "--precisions",
        default="float32",
        help="comma list of predict.py --sampling-precision values, each tried with every sampler",
    )
    parser.add_argument("--num", type=int, default=1000, help="samples per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference",
        help="the images trained on (.npz); default: train-split.npz beside the run if there "
        "is one (bench/quality.py writes it), else the run's --data and --label, written to "
        "OUT_DIR/reference.npz",
    )
    parser.add_argument(
        "--validation",
        help="validation images (.npz); default: validation-split.npz beside the run, if any",
    )
    parser.add_argument("--out-dir", help="default: WEIGHTS_DIR-samplers")
    quality.add_fid_python(parser)
    arguments = parser.parse_args()
    if not os.path.isdir(arguments.weights_dir):
        parser.error(f"--weights-dir: {arguments.weights_dir} is not a folder; pass a run folder")
    try:
        arguments.evaluations = [int(value) for value in arguments.evaluations.split(",")]
    except ValueError:
        parser.error(f"--evaluations: {arguments.evaluations!r} is not a comma list of integers")
    if min(arguments.evaluations) < 1:
        parser.error("--evaluations: each must be 1 or more")
    pairs = [pair.split(":") for pair in arguments.samplers.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        parser.error(f"--samplers: {arguments.samplers!r} is not a comma list of SAMPLER:SPACING")
    arguments.samplers = [tuple(pair) for pair in pairs]
    arguments.precisions = arguments.precisions.split(",")
    if not arguments.fid_python:
        parser.error("--fid-python (or $FID_PYTHON) is needed to score the samples")
    if arguments.validation is None:
        arguments.validation = quality.beside_run(arguments.weights_dir, "validation-split.npz")
    arguments.out_dir = arguments.out_dir or arguments.weights_dir.rstrip("/") + "-samplers"
    return arguments


def steps_for(sampler, evaluations):
    """The most sampling steps that spend at most `evaluations` network calls per image."""
    steps = range(1, evaluations + 1)  # one step is one evaluation, whatever the sampler
    return max(step for step in steps if network_evaluations(sampler, step) <= evaluations)


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.out_dir, exist_ok=True)
    log = os.path.join(arguments.out_dir, "log.txt")
    if arguments.reference is None:
        arguments.reference = quality.trained_images(arguments.weights_dir, arguments.out_dir)
    settings = {
        (sampler, spacing, steps_for(sampler, evaluations), precision)
        for sampler, spacing in arguments.samplers
        for evaluations in arguments.evaluations
        for precision in arguments.precisions
    }
    settings = [REFERENCE, *sorted(settings - {REFERENCE})]
    import tensorflow as tf
    from speed import matmul_peak

    rows = []
    for sampler, spacing, steps, precision in settings:
        prefix = os.path.join(arguments.out_dir, f"{sampler}-{spacing}-{steps}-{precision}")
        flags = ["--sampler", sampler, "--spacing", spacing, "--sampling-precision", precision]
        peak = matmul_peak(tf)  # just before: machines of this kind differ by up to 2x
        seconds, command = quality.sample(
            arguments.weights_dir, prefix, arguments, steps, log, flags=flags
        )
        on_train, on_validation = quality.score_both(
            prefix + ".npz", arguments, log, arguments.reference, arguments.validation
        )
        rows.append(
            {
                "sampler": sampler,
                "spacing": spacing,
                "steps": steps,
                "precision": precision,
                "evaluations": network_evaluations(sampler, steps),
                "sample_seconds": seconds,
                "peak": peak,
                "fid": quality.number(on_train, "fid"),
                "kid": quality.number(on_train, "kid"),
                "fid_validation": quality.number(on_validation, "fid"),
                "command": command,
            }
        )
        print_table(rows, arguments)
        with open(os.path.join(arguments.out_dir, "samplers.json"), "w") as file:
            json.dump({"machine": quality.machine(), "rows": rows}, file, indent=2)


def print_table(rows, arguments):
    show = quality.show
    reference = rows[0]["fid"]
    best = min((row["fid"] for row in rows if row["fid"]), default=None)
    print(
        f"\nbench/samplers.py, {quality.machine()}; weights {arguments.weights_dir}; "
        f"{arguments.num} samples, seed {arguments.seed}, vs {arguments.reference}"
        + (" and the validation split" if arguments.validation else "")
    )
    print(
        f"| sampler | spacing | steps | precision | evaluations per image | "
        f"predict.py --num {arguments.num} s | matmul GFLOP/s just before | FID | KID x1e3 | "
        "FID validation | "
        "FID / 50-step DDIM | FID / best here |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = ("evaluations", "sampler", "spacing", "precision")
    for row in sorted(rows, key=lambda row: [row[key] for key in order]):
        kid = quality.thousandths(row["kid"])
        ratio = row["fid"] / reference if row["fid"] and reference else None
        to_best = row["fid"] / best if row["fid"] and best else None
        print(
            f"| {row['sampler']} | {row['spacing']} | {row['steps']} | {row['precision']} | "
            f"{row['evaluations']} | {row['sample_seconds']:.0f} | {row['peak']:.0f} | "
            f"{show(row['fid'], '{:.1f}')} | "
            f"{show(kid, '{:.1f}')} | {show(row['fid_validation'], '{:.1f}')} | "
            f"{show(ratio, '{:.2f}')} | {show(to_best, '{:.2f}')} |"
        )
    print("commands:")
    for row in rows:
        print(f"  {row['command']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
