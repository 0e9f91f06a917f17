"""The command lines: flags made from `Config`, checks before TensorFlow loads, one-line errors.

Each setting's flag and help come from its `Config` field (`config.setting`),
as improved-diffusion's `add_dict_to_argparser` makes flags from one table,
so help is written once and the README's flag tables are generated from it:

    python -m tf_diffusion.cli --markdown train

Library errors name a setting as `name`, in backticks; `error_line` prints
the flag instead. Plain mistakes (a value out of range, a path that cannot
be written, a run folder that cannot be read) are reported in one line
before TensorFlow loads; so is a second training run on the same folder.
"""

import argparse
import dataclasses
import math
import os
import re
import signal
import sys

from tf_diffusion import TrainingDiverged, UsageError
from tf_diffusion.config import (
    CHOICES,
    RECIPES,
    SAMPLING_SETTINGS,
    Config,
    check_at_least,
    check_at_most,
)
from tf_diffusion.files import (
    best_run_directory,
    check_data_path,
    check_new_folder,
    load_run_config,
    temporary_path,
)
from tf_diffusion.lock import training_lock

# predict.py's --num: 50000 is the usual FID sample; past this, run again with another --seed.
MAX_SAMPLES = 100_000
# train.py's flags that are not `Config` settings.
SCRIPT_FLAGS = ("weights_dir", "recipe", "fresh", "quiet", "stop_at", "max_minutes")


def flag(name):
    """The command-line flag of a setting: `learning_rate_decay` is --lr-decay."""
    return "--" + name.replace("learning_rate", "lr").replace("_", "-")


def describe_default(name):
    """'default X', and each recipe that sets the setting `name` otherwise, from `Config`."""
    values = {recipe: getattr(Config.for_recipe(recipe), name) for recipe in RECIPES}
    default = values.pop("default")
    text = [f"default {show(default)}"]
    text += [f"{recipe} {show(value)}" for recipe, value in values.items() if value != default]
    return "; ".join(text)


def show(value):
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_setting(parser, name, default_text=None):
    """Add the flag of the `Config` setting `name`; left out, it keeps the run's (or recipe's)."""
    field = next(field for field in dataclasses.fields(Config) if field.name == name)
    metadata = field.metadata
    text = re.sub(r"`(\w+)`", lambda match: flag(match[1]), metadata["help"])
    help = f"{text} ({default_text or describe_default(name)})"
    if field.type is bool:
        action = argparse.BooleanOptionalAction
        parser.add_argument(flag(name), action=action, dest=name, default=None, help=help)
        return
    kind = metadata.get("type", field.type)
    metavar = None if name in CHOICES else {int: "N", float: "X"}.get(kind, "PATH")
    options = {"metavar": metadata.get("metavar", metavar), "choices": CHOICES.get(name)}
    parser.add_argument(
        flag(name), type=None if kind is str else kind, dest=name, help=help, **options
    )


def train_parser(description):
    parser = ArgumentParser(description=description)
    add = parser.add_argument
    add("--recipe", choices=CHOICES["recipe"], help="named set of defaults (default: default)")
    add(
        "--weights-dir", metavar="DIR", default="checkpoints", help="run folder to create or resume"
    )
    for field in dataclasses.fields(Config):
        if field.metadata["flag"]:
            add_setting(parser, field.name)
    add(
        "--stop-at",
        type=int,
        metavar="STEP",
        help="end this session at STEP, saved; "
        "--max-steps and the rate schedule stay (for training in chunks)",
    )
    add(
        "--max-minutes",
        type=float,
        metavar="M",
        help="end this session after M minutes of training, saved, the same way; run the same "
        "command to continue (for Colab's time limits)",
    )
    add(
        "--mixed-precision",
        action="store_const",
        const="mixed_float16",
        dest="precision",
        help="the same as --precision mixed_float16",
    )
    add("--fresh", action="store_true", help="move an existing run aside and start anew")
    add("--quiet", action="store_true", help="no progress bar: a plain line a minute")
    return parser


def predict_parser(description):
    parser = ArgumentParser(description=description)
    add = parser.add_argument
    add("--weights-dir", metavar="DIR", default="checkpoints", help="the run folder of train.py")
    add("--num", type=int, metavar="N", default=25, help="how many images (default 25)")
    add("--out", metavar="PATH", default="outputs/samples.png", help="path of the grid PNG")
    add("--grid", metavar="ROWSxCOLS", help="grid layout ROWSxCOLS (default: near square)")
    add("--npz", metavar="PATH", help="also write the images, uint8 (N, 32, 32, 3) under key x")
    add("--steps", action="store_true", help="also write the strip of denoising steps")
    add(
        "--gif",
        metavar="PATH",
        help="also write an animated GIF of the denoising, one frame per level",
    )
    add(
        "--seed",
        type=int,
        metavar="N",
        default=0,
        help="random seed of the starting noise (default 0)",
    )
    for name in SAMPLING_SETTINGS:
        add_setting(parser, name, default_text="default: the run's")
    add(
        "--evaluate",
        action="store_true",
        help="print FID and KID of the samples against as many training images",
    )
    add("--data", metavar="PATH", help="real images for --evaluate (default: the run's --data)")
    add(
        "--inception-weights",
        metavar="WEIGHTS",
        default="imagenet",
        help="InceptionV3 weights for --evaluate: "
        "imagenet (downloads), a local .h5 file or random (tests)",
    )
    add("--best", action="store_true", help="use the checkpoint with the lowest --track-kid KID")
    add(
        "--ema",
        metavar="DECAY",
        help="sample with this EMA of the weights, one the run keeps (its --ema-decay or "
        "--more-ema-decays), or none for the trained weights (default: its --ema-decay)",
    )
    add(
        "--export",
        metavar="DIR",
        help="instead of sampling, write DIR/generator "
        "(SavedModel), DIR/unet.keras and DIR/README.md",
    )
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but its error message stays on one line whatever the input."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message)}\n")


# Checks made before TensorFlow loads.


def check_train_arguments(arguments):
    """Check train.py's parsed arguments: ranges, the label, the paths."""
    settings = {name: value for name, value in arguments.items() if name not in SCRIPT_FLAGS}
    Config.for_recipe(arguments["recipe"] or "default", **settings)
    check_data_path(settings["data"])
    check_inception_weights(settings["inception_weights"])
    check_folder_path("weights_dir", arguments["weights_dir"])
    if arguments["stop_at"] is not None:
        check_at_least("stop_at", arguments["stop_at"], 1)
    if arguments["max_minutes"] is not None and not 0 < arguments["max_minutes"] < math.inf:
        raise UsageError(f"`max_minutes` must be a positive number, got {arguments['max_minutes']}")


def check_predict_arguments(arguments):
    """Check predict.py's parsed arguments: counts, layout, paths, the run's own ranges."""
    num = arguments["num"]
    check_at_least("num", num, 1)
    check_at_most("num", num, MAX_SAMPLES)
    if not 0 <= arguments["seed"] < 2**31:  # the exported sampler's seed is an int32
        raise UsageError(f"`seed` must be from 0 to {2**31 - 1}, got {arguments['seed']}")
    parse_grid(arguments["grid"], num)
    if arguments["evaluate"]:
        check_data_path(arguments["data"])
        check_inception_weights(arguments["inception_weights"])
    for name in ("out", "npz", "gif"):
        check_output_path(name, arguments[name])
    weights_dir = arguments["weights_dir"]
    if arguments["best"]:
        weights_dir = best_run_directory(weights_dir)
    changes = {name: arguments[name] for name in SAMPLING_SETTINGS}
    load_run_config(weights_dir, **changes).weights_name(arguments["ema"])
    if arguments["export"]:
        check_new_folder("export", arguments["export"])


def parse_grid(text, count):
    """predict.py's --grid 'ROWSxCOLS' as (rows, columns) for `count` images; None stays None."""
    if text is None:
        return None
    parts = str(text).lower().split("x")
    try:
        rows, columns = (int(part) if part.isdecimal() else 0 for part in parts)
    except ValueError:  # not two parts, or a number too long to read
        rows = columns = 0
    if rows < 1 or columns < 1:
        raise UsageError(f"`grid` {text!r} is not ROWSxCOLS, for example 4x8")
    if max(rows, columns) > count:
        raise UsageError(
            f"`grid` {text}: more rows or columns than the {count} images (`num`); "
            "choose a smaller grid"
        )
    return rows, columns


def check_inception_weights(weights):
    """Raise `UsageError` unless `weights` is 'imagenet', 'random' or an existing file."""
    if weights not in (None, "imagenet", "random") and not os.path.isfile(weights):
        raise UsageError(
            f"`inception_weights` {weights}: no such file; give 'imagenet' (downloaded once), "
            "the path of inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, or 'random'"
        )


def check_folder_path(name, folder):
    """Raise `UsageError` if `folder` cannot be a folder: empty, a file, or below a file."""
    if not folder:
        raise UsageError(f"`{name}` is empty; give a folder")
    existing = nearest_existing(folder)
    if existing == os.path.abspath(folder) and not os.path.isdir(existing):
        raise UsageError(f"`{name}` {folder} is a file, not a folder; choose a folder")
    if not os.path.isdir(existing):
        raise UsageError(
            f"`{name}` {folder} cannot be written ({existing} is a file); choose another folder"
        )


def check_output_path(name, path):
    """Raise `UsageError` unless a file can be written at `path` (missing folders are made later).

    Writes and removes a probe file beside it, or in the nearest folder that exists.
    """
    if not path:
        return
    if os.path.isdir(path) or not os.path.basename(path):
        raise UsageError(f"`{name}` {path} is a folder; give a file name, such as samples.png")
    folder = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise UsageError(
            f"`{name}` {path} cannot be written ({folder} is a file, not a folder); "
            "choose another path"
        )
    # The name the file's temporary copy will have, so that a name too long fails here.
    probe = os.path.join(folder, os.path.basename(temporary_path(path)))
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    except OSError as error:
        raise UsageError(
            f"`{name}` {path} cannot be written ({error.strerror or error}); choose another path"
        ) from None
    os.close(descriptor)
    os.remove(probe)


def nearest_existing(path):
    """`path` made absolute, or its nearest parent that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


# Errors, one line each.


def flag_names():
    """{setting or argument name: its flag}, from both scripts' parsers."""
    names = {}
    for parser in (train_parser(None), predict_parser(None)):
        for action in parser._actions:
            if action.option_strings:
                names.setdefault(action.dest, action.option_strings[0])
    return names


FLAGS = flag_names()


def with_flags(text):
    """`text` with each `setting` in backticks written as its flag."""
    return re.sub(r"`(\w+)`", lambda match: FLAGS.get(match[1], match[0]), text)


def printable(text):
    """`text` on one line: line breaks, control characters and undecodable bytes escaped."""
    return "".join(
        character if character.isprintable() else ascii(character)[1:-1] for character in text
    )


def error_line(error):
    """How the scripts report an error: one line, 'error: ...', naming flags."""
    return f"error: {printable(with_flags(str(error)))}"


def warn(text):
    print(f"warning: {printable(with_flags(text))}", file=sys.stderr, flush=True)


def checked(parser, check, argv=None):
    """The arguments of `argv`, parsed and checked before TensorFlow loads.

    A mistake prints one `error:` line (argparse's own come after the usage)
    and exits with status 2.
    """
    arguments = vars(parser.parse_args(argv))
    try:
        check(arguments)
    except UsageError as error:
        print(error_line(error), file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return arguments


def escape_unprintable_output():
    """Let stdout and stderr print any path (bytes that are not UTF-8 come out escaped)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


# What the scripts run.


def stop_gracefully(signal_number, frame):
    raise KeyboardInterrupt(f"signal {signal_number}")


def train(arguments):
    """Run train.py's checked `arguments`; return its exit status."""
    # Ctrl-C, and the SIGTERM that Colab, schedulers and `kill` send, both save
    # before stopping; a background job inherits SIGINT ignored, so set it here.
    signal.signal(signal.SIGINT, stop_gracefully)
    signal.signal(signal.SIGTERM, stop_gracefully)
    arguments = dict(arguments)
    script = {name: arguments.pop(name) for name in SCRIPT_FLAGS}
    try:
        # A second run on the folder is refused here, before TensorFlow loads.
        with training_lock(
            script["weights_dir"], arguments["distribute"], script["fresh"], warn=warn
        ) as lock:
            from tf_diffusion import commands

            commands.train(settings=arguments, lock=lock, **script)
    except UsageError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except TrainingDiverged as error:
        print(error_line(error), file=sys.stderr)
        return 1
    return 0


def predict(arguments):
    """Run predict.py's checked `arguments`; return its exit status."""
    try:
        from tf_diffusion import commands

        grid = parse_grid(arguments["grid"], arguments["num"])
        commands.predict(**{**arguments, "grid": grid})
    except UsageError as error:
        print(error_line(error), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


# The README's flag tables.


def markdown(parser):
    """A markdown table of `parser`'s flags and their help."""
    rows = ["| flag | what it sets |", "|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = " / ".join(action.option_strings)
        if action.choices:
            name += " " + "\\|".join(action.choices)
        elif action.nargs != 0:
            name += " " + (action.metavar or action.dest.upper())
        text = action.help.replace("|", "\\|")
        rows.append(f"| `{name}` | {text} |")
    return "\n".join(rows)


if __name__ == "__main__":
    command = argparse.ArgumentParser(description="Print a script's flags as a markdown table.")
    command.add_argument("--markdown", choices=("train", "predict"), required=True)
    script = command.parse_args().markdown
    print(markdown((train_parser if script == "train" else predict_parser)(None)))
