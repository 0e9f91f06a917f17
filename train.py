#!/usr/bin/env python3
"""Train a one-class CIFAR-10 diffusion model, resuming from --weights-dir if it holds a run.

    python train.py --label automobile
    python train.py --data ../shared/data/cifar10_automobile_train.npz --width 16 --max-steps 100

Settings left out keep the values saved in the run's config.json (or the
recipe's defaults for a new run); see README.md for every flag.
"""

import argparse
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tf_diffusion.config import (  # noqa: E402 (no TensorFlow)
    CHOICES,
    RECIPES,
    ArgumentParser,
    Config,
    UsageError,
    check_arguments,
    check_at_least,
    error_line,
    escape_unprintable_output,
    exit_with_error,
)
from tf_diffusion.lock import training_lock  # noqa: E402


def parse_arguments(argv=None):
    return make_parser().parse_args(argv)


def defaults(name):
    """'default X' for the setting `name`, and each recipe that sets it otherwise, from `Config`."""
    values = {recipe: getattr(Config.for_recipe(recipe), name) for recipe in RECIPES}
    default = values.pop("default")
    others = [f"; {recipe} {value:g}" for recipe, value in values.items() if value != default]
    return f"default {default:g}" + "".join(others)


def make_parser():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument

    def switch(name, help, **keywords):  # --name / --no-name; left out keeps the run's value
        add(name, action=argparse.BooleanOptionalAction, default=None, help=help, **keywords)

    add("--recipe", choices=CHOICES["recipe"], help="named set of defaults (default: default)")
    add("--label", help="CIFAR-10 class, 0-9 or a name such as automobile (default 1)")
    add("--data", help="'tfds' (default: download CIFAR-10), an .npz file or an image folder")
    add("--weights-dir", default="checkpoints", help="run folder to create or resume")
    add("--batch-size", type=int, help=f"global batch ({defaults('batch_size')})")
    add("--width", type=int, help=f"base channels of the U-Net ({defaults('width')})")
    switch("--attention", "self-attention at 8x8 (residual network)")
    add("--time-conditioning", choices=CHOICES["time_conditioning"], help="level into blocks")
    add("--embedding-max-frequency", type=float, help="top frequency of the level embedding")
    add("--timesteps", type=int, help=f"noise levels ({defaults('timesteps')})")
    add("--prediction", choices=CHOICES["prediction"], help="what the network learns to output")
    add("--loss-weighting", choices=CHOICES["loss_weighting"], help="weight of each level")
    add(
        "--min-snr-gamma",
        type=float,
        help=f"SNR cap of --loss-weighting min-snr ({defaults('min_snr_gamma')})",
    )
    add("--level-distribution", choices=CHOICES["level_distribution"], help="training levels")
    add("--level-mean", type=float, help="log-normal levels: mean of log(noise/signal)")
    add("--level-std", type=float, help="log-normal levels: its standard deviation")
    add("--noise-keys", choices=CHOICES["noise_keys"], help="random keys of the data streams")
    switch("--flip", "mirror training images left-right at random")
    add("--max-steps", type=int, help="total steps to reach; a resumed run continues up to it")
    add(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="end this session at STEP, saved; --max-steps and the rate schedule stay (chunks)",
    )
    add("--round-steps", type=int, help="steps per round: a sample grid, rounds' rate decay")
    add(
        "--lr",
        type=float,
        dest="learning_rate",
        help=f"peak learning rate ({defaults('learning_rate')})",
    )
    add("--lr-decay", type=float, dest="learning_rate_decay", help="factor after each round")
    add(
        "--lr-schedule",
        choices=CHOICES["learning_rate_schedule"],
        dest="learning_rate_schedule",
        help="rounds (x --lr-decay each round) or cosine (to --max-steps)",
    )
    add("--warmup-steps", type=int, help="linear warm-up steps of --lr-schedule cosine")
    add("--ema-decay", type=float, help="EMA of the weights for sampling; 0 is off")
    add("--seed", type=int, help="random seed of the data order, levels and noise")
    add("--save-every", type=int, help=f"save every N steps ({defaults('save_every')})")
    add(
        "--save-every-minutes",
        type=float,
        help=f"also save every M minutes ({defaults('save_every_minutes')})",
    )
    add(
        "--keep-checkpoints",
        type=int,
        help=f"how many checkpoints to keep ({defaults('keep_checkpoints')})",
    )
    add("--sampling-steps", type=int, help="denoising steps for the round sample grids")
    add("--sampler", choices=CHOICES["sampler"], help="sampler of the round grids")
    add("--spacing", choices=CHOICES["spacing"], help="levels the sampler visits")
    add(
        "--steps-per-call",
        type=int,
        help=f"training steps per compiled call ({defaults('steps_per_call')})",
    )
    add(
        "--track-kid",
        type=int,
        metavar="N",
        help="at each round end, KID and FID of N samples vs N training images, and best/ (0: off)",
    )
    add(
        "--inception-weights",
        help="InceptionV3 weights for --track-kid: imagenet (default; downloads), an .h5 file "
        "or random (tests)",
    )
    add(
        "--precision",
        choices=CHOICES["precision"],
        help="Keras dtype policy of training (weights stay float32); auto (default): "
        "mixed_bfloat16 on a CPU with AVX512-BF16/AMX and no GPU, else float32",
    )
    add(
        "--mixed-precision",
        action="store_const",
        const="mixed_float16",
        dest="precision",
        help="the same as --precision mixed_float16",
    )
    switch("--xla", "compile the training step with XLA (GPU)")
    add("--distribute", choices=CHOICES["distribute"], help="tf.distribute strategy (default none)")
    switch("--scale-lr", "multiply --lr by the number of replicas", dest="scale_learning_rate")
    add("--fresh", action="store_true", help="move an existing run aside and start anew")
    add("--quiet", action="store_true", help="no progress bar: a plain line a minute")
    return parser


def checked_arguments(argv=None):
    """train.py's arguments, parsed and checked before TensorFlow loads.

    A mistake prints one `error:` line (argparse's own come after the usage)
    and exits with status 2.
    """
    arguments = vars(parse_arguments(argv))
    settings = {name: value for name, value in arguments.items() if name not in SCRIPT_FLAGS}
    try:
        check_arguments(arguments["recipe"], settings, arguments["weights_dir"])
        if arguments["stop_at"] is not None:
            check_at_least("--stop-at", arguments["stop_at"], 1)
    except UsageError as error:
        exit_with_error(error)
    return arguments


# The flags that are not `Config` settings.
SCRIPT_FLAGS = ("weights_dir", "recipe", "fresh", "quiet", "stop_at")


def stop_gracefully(signal_number, frame):
    raise KeyboardInterrupt(f"signal {signal_number}")


def main(argv=None):
    escape_unprintable_output()
    arguments = checked_arguments(argv)  # plain mistakes are reported before TensorFlow loads
    # Ctrl-C, and the SIGTERM that Colab, schedulers and `kill` send, both save
    # before stopping; a background job inherits SIGINT ignored, so set it here.
    signal.signal(signal.SIGINT, stop_gracefully)
    signal.signal(signal.SIGTERM, stop_gracefully)

    weights_dir = arguments.pop("weights_dir")
    recipe = arguments.pop("recipe")
    fresh = arguments.pop("fresh")
    quiet = arguments.pop("quiet")
    stop_at = arguments.pop("stop_at")
    try:
        # A second run on the folder is refused here, before TensorFlow loads.
        with training_lock(weights_dir, arguments["distribute"], fresh):
            from tf_diffusion import commands
            from tf_diffusion.training import TrainingDiverged

            commands.train(
                weights_dir, recipe, arguments, fresh=fresh, quiet=quiet, stop_at=stop_at
            )
    except UsageError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except TrainingDiverged as error:
        print(error_line(error), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
