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

from tf_diffusion import cli  # noqa: E402 (no TensorFlow yet: mistakes are reported first)


def make_parser():
    return cli.predict_parser(__doc__.split("\n\n")[0])


def checked_arguments(argv=None):
    return cli.checked(make_parser(), cli.check_predict_arguments, argv)


def main(argv=None):
    cli.escape_unprintable_output()
    return cli.predict(checked_arguments(argv))


if __name__ == "__main__":
    sys.exit(main())
