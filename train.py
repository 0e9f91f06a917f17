#!/usr/bin/env python3
"""Train a one-class CIFAR-10 diffusion model, resuming from --weights-dir if it holds a run.

    python train.py --label automobile
    python train.py --data cars.npz --width 16 --max-steps 100

Settings left out keep the values saved in the run's config.json (or the
recipe's defaults for a new run). Every flag is in README.md.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_diffusion import cli  # noqa: E402 (no TensorFlow yet: mistakes are reported first)


def make_parser():
    return cli.train_parser(__doc__.split("\n\n")[0])


def checked_arguments(argv=None):
    return cli.checked(make_parser(), cli.check_train_arguments, argv)


def main(argv=None):
    cli.escape_unprintable_output()
    return cli.train(checked_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
