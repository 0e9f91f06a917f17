#!/usr/bin/env python3
"""Generate images from a trained run, and show how noise turns into them.

python predict.py --steps
python predict.py --weights-dir W --num 1000 --npz samples.npz --sampling-steps 25
python predict.py --weights-dir W --num 1000 --evaluate
python predict.py --weights-dir W --best --export exported/cars
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_diffusion.config import (  # noqa: E402 (no TensorFlow)
    CHOICES,
    ArgumentParser,
    UsageError,
    check_predict_arguments,
    error_line,
    escape_unprintable_output,
    exit_with_error,
)


def parse_arguments(argv=None):
    return make_parser().parse_args(argv)


def make_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--weights-dir", default="checkpoints", help="the run folder written by train.py")
    add("--num", type=int, default=25, help="how many images (default 25)")
    add("--out", default="outputs/samples.png", help="path of the grid PNG")
    add("--grid", help="grid layout ROWSxCOLS (default: near square)")
    add("--npz", help="also write the images, uint8 (N, 32, 32, 3) under key x")
    add("--steps", action="store_true", help="also write the strip of denoising steps")
    add("--gif", help="also write an animated GIF of the denoising, one frame per level")
    add("--seed", type=int, default=0, help="random seed of the starting noise")
    add("--sampling-steps", type=int, help="denoising steps (default: the run's)")
    add("--sampler", choices=CHOICES["sampler"], help="sampler (default: the run's)")
    add("--spacing", choices=CHOICES["spacing"], help="levels visited (default: the run's)")
    add(
        "--evaluate",
        action="store_true",
        help="print FID and KID of the samples against as many training images",
    )
    add("--data", help="real images for --evaluate (default: the run's --data)")
    add(
        "--inception-weights",
        default="imagenet",
        help="InceptionV3 weights for --evaluate: 'imagenet' (downloads), a local .h5 file "
        "or 'random' (tests)",
    )
    add("--best", action="store_true", help="use the checkpoint with the lowest --track-kid KID")
    add(
        "--export",
        metavar="DIR",
        help="instead of sampling, write DIR/generator (SavedModel), DIR/unet.keras, DIR/README.md",
    )
    return parser


def checked_arguments(argv=None):
    """predict.py's arguments, parsed and checked before TensorFlow loads.

    A mistake prints one `error:` line (argparse's own come after the usage)
    and exits with status 2.
    """
    arguments = vars(parse_arguments(argv))
    try:
        check_predict_arguments(**arguments)
    except UsageError as error:
        exit_with_error(error)
    return arguments


def main(argv=None):
    escape_unprintable_output()
    arguments = checked_arguments(argv)  # plain mistakes are reported before TensorFlow loads
    try:
        from tf_diffusion import commands

        commands.predict(**arguments)
    except UsageError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
