#!/usr/bin/env python3
"""Would a longer average of the weights sample better? FID of one run's weights, three ways.

    python bench/ema.py --weights-dir runs/quality/default --num 500

From the newest checkpoint of a run: the EMA weights it samples with, the raw
trained weights, and the mean of the EMA weights of its oldest and newest kept
checkpoints (a longer average than the EMA). Each samples `--num` images from
the same noise with the run's sampler (or `--sampler`, `--sampling-steps`),
and `bench/fid.py` (FID and KID on the standard FID Inception network, run
with --fid-python or $FID_PYTHON) scores them against the images trained on
(train-split.npz beside the run if bench/quality.py left one, else the run's
--data and --label).
"""

import argparse
import os
import sys

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
    """{name: (model, description)} for the EMA, the raw and the averaged EMA weights."""
    import tensorflow as tf

    from tf_diffusion.checkpoint import checkpoint_step, load_sampling_checkpoint
    from tf_diffusion.model import make_model

    config, ema_model, step = load_sampling_checkpoint(weights_dir)
    _, raw_model, _ = load_sampling_checkpoint(weights_dir, ema_decay=0.0)
    paths = tf.train.get_checkpoint_state(weights_dir).all_model_checkpoint_paths
    oldest = min(paths, key=checkpoint_step)
    oldest_ema = make_model(config)
    tf.train.Checkpoint(ema_model=oldest_ema).restore(oldest).expect_partial()
    averaged = make_model(config)
    averaged.set_weights(
        [(old + new) / 2 for old, new in zip(oldest_ema.get_weights(), ema_model.get_weights())]
    )
    return config, {
        "ema": (ema_model, f"EMA ({config.ema_decay}) at step {step}"),
        "raw": (raw_model, f"trained weights at step {step}"),
        "mean": (averaged, f"mean of the EMA at steps {checkpoint_step(oldest)} and {step}"),
    }


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
    print("| weights | FID | KID x1e3 |\n|---|---|---|")
    for name, (model, description) in models.items():
        npz = os.path.join(arguments.out_dir, f"{name}.npz")
        save_npz(to_uint8(predict(model, config, arguments.num, arguments.seed)), npz)
        scores = quality.score(npz, arguments, log, reference=arguments.reference)
        kid = quality.number(scores, "kid")
        print(
            f"| {description} | {quality.show(quality.number(scores, 'fid'), '{:.1f}')} | "
            f"{quality.show(None if kid is None else 1e3 * kid, '{:.1f}')} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
