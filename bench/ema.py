#!/usr/bin/env python3
"""Which average of the weights samples best? FID of each EMA a run keeps, on the same weights.

    python bench/ema.py --weights-dir runs/hour/default --num 1000

From the newest checkpoint of a run: the raw trained weights and every EMA
it keeps (`--ema-decay` and `--more-ema-decays`, what `predict.py --ema`
chooses from). Each samples `--num` images from the same noise with the
run's sampler (or `--sampler`, `--sampling-steps`), and `bench/fid.py` (FID
and KID on the standard FID Inception network, run with --fid-python or
$FID_PYTHON) scores them against the images trained on (train-split.npz
beside the run if bench/quality.py left one, else the run's --data and
--label) and against validation-split.npz when it is there.
"""

import argparse
import os
import sys

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import quality  # noqa: E402 (also puts the repository on the path)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", required=True, help="a run folder with checkpoints")
    parser.add_argument("--num", type=int, default=500, help="samples per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", help="default: the run's")
    parser.add_argument("--sampling-steps", type=int, help="default: the run's")
    parser.add_argument(
        "--reference",
        help="the images trained on (.npz); default: train-split.npz beside the run if there "
        "is one, else the run's --data and --label, written to OUT_DIR/reference.npz",
    )
    parser.add_argument("--out-dir", help="default: WEIGHTS_DIR-ema")
    quality.add_fid_python(parser)
    arguments = parser.parse_args()
    if not os.path.isdir(arguments.weights_dir):
        parser.error(f"--weights-dir: {arguments.weights_dir} is not a folder; pass a run folder")
    if not arguments.fid_python:
        parser.error("--fid-python (or $FID_PYTHON) is needed to score the samples")
    arguments.out_dir = arguments.out_dir or arguments.weights_dir.rstrip("/") + "-ema"
    return arguments


def weight_sets(weights_dir):
    """The run's config and {name: (model, description)}: the trained weights, then each EMA."""
    from tf_diffusion.checkpoint import load_sampling_checkpoint

    config, raw_model, step = load_sampling_checkpoint(weights_dir, "none")
    models = {"none": (raw_model, f"trained weights at step {step}")}
    for decay in config.emas:
        _, model, _ = load_sampling_checkpoint(weights_dir, f"{decay:g}")
        same = next(
            (name for name, (other, _) in models.items() if same_weights(model, other)), None
        )
        if same:  # two EMAs still warming up are one average
            print(f"EMA {decay:g} has the same weights as {same} at step {step}: not sampled")
            continue
        sampling = " (the run samples with it)" if decay == config.ema_decay else ""
        # Until (1 + step) / (10 + step) reaches the decay, an EMA averages a ninth of the steps.
        warming_up = step * (1 - decay) <= 9
        length = (10 + step) / 9 if warming_up else 1 / (1 - decay)
        length = f"about {length:,.0f} steps{' (still warming up)' if warming_up else ''}"
        models[f"{decay:g}"] = (model, f"EMA {decay:g}, {length}{sampling}")
    return config, models


def same_weights(model, other):
    return all(
        np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights(), strict=True)
    )


def fid_and_kid(scores):
    """Two table cells, FID and KID x1e3, empty where there is no score."""
    fid, kid = quality.number(scores, "fid"), quality.number(scores, "kid")
    return quality.show(fid, "{:.1f}"), quality.show(quality.thousandths(kid), "{:.1f}")


def main():
    arguments = parse_arguments()
    os.makedirs(arguments.out_dir, exist_ok=True)
    log = os.path.join(arguments.out_dir, "log.txt")
    if arguments.reference is None:
        arguments.reference = quality.trained_images(arguments.weights_dir, arguments.out_dir)
    from tf_diffusion.commands import save_npz
    from tf_diffusion.images import to_uint8
    from tf_diffusion.sampling import predict

    config, models = weight_sets(arguments.weights_dir)
    changes = {"sampler": arguments.sampler} if arguments.sampler else {}
    config = config.replace(sampling_steps=arguments.sampling_steps, **changes)
    print(
        f"\nbench/ema.py, {quality.machine()}; {arguments.weights_dir}; {arguments.num} samples, "
        f"seed {arguments.seed}, {config.sampler} {config.sampling_steps} steps, "
        f"vs {arguments.reference}"
    )
    validation = quality.beside_run(arguments.weights_dir, "validation-split.npz")
    print(
        "| predict.py --ema | weights | FID | KID x1e3 | FID validation | KID validation x1e3 |\n"
        "|---|---|---|---|---|---|"
    )
    samples = {}
    for name, (model, _) in models.items():  # all the sampling first, then all the scoring
        samples[name] = os.path.join(arguments.out_dir, f"ema-{name}.npz")
        save_npz(to_uint8(predict(model, config, arguments.num, arguments.seed)), samples[name])
    for name, (_, description) in models.items():
        on_train, on_validation = quality.score_both(
            samples[name], arguments, log, arguments.reference, validation
        )
        cells = [cell for scores in (on_train, on_validation) for cell in fid_and_kid(scores)]
        print(f"| {name} | {description} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
