"""One place for every setting: the `Config` dataclass, its choices and ranges, the recipes.

A `Config` is saved as `config.json` beside each checkpoint, so that resuming,
sampling and evaluation replay the training setup exactly. Every choice and
range is checked here, once: the command lines take their `choices` from
`CHOICES`, and a change made at predict time goes through `Config.replace`,
which validates it. Nothing here needs TensorFlow, so `train.py` and
`predict.py` report plain mistakes before it loads.
"""

import argparse
import dataclasses
import json
import math
import os
import sys

CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

CONFIG_FILENAME = "config.json"
BEST_FOLDER = "best"  # in the weights folder: the checkpoint with the lowest tracked KID
IMAGE_SIZE = 32
IMAGE_CHANNELS = 3
WRITE_PROBE = ".write-probe"
# predict.py's --num: 50000 is the usual FID sample; past this, run again with another --seed.
MAX_SAMPLES = 100_000


class UsageError(ValueError):
    """Bad input from the user: the message is one line that says what to do."""


@dataclasses.dataclass
class Config:
    """Every setting of a run. The defaults are the "default" recipe."""

    recipe: str = "default"  # Named set of defaults, see RECIPES
    # Data.
    label: int = 1  # CIFAR-10 class to learn, 0-9
    data: str = "tfds"  # "tfds", an .npz file or an image folder
    # Network and diffusion process.
    architecture: str = "residual"  # U-Net kind: "classic" or "residual"
    width: int = 32  # Channels at 32 px; the deeper levels multiply it
    attention: bool = False  # Self-attention at 8x8 (residual U-Net)
    time_conditioning: str = "scale-shift"  # Level into each block: "bias" or "scale-shift" (AdaGN)
    embedding_max_frequency: float = 100.0  # Top frequency of the level embedding, in cycles
    schedule: str = "cosine"  # How signal falls with the level: "linear" or "cosine"
    timesteps: int = 1000  # Number of noise levels; level `timesteps` is the clean image
    prediction: str = "velocity"  # Target: "next" level's image, "noise", "velocity", "image"
    loss_weighting: str = "min-snr"  # Weight of each level in the MAE: "none" or "min-snr"
    min_snr_gamma: float = 5.0  # The SNR above which "min-snr" stops weighting a level higher
    level_distribution: str = "uniform"  # Training levels: "uniform" or "log-normal" in log sigma
    level_mean: float = -1.2  # "log-normal": mean of log(noise / signal), as EDM's P_mean
    level_std: float = 1.2  # "log-normal": its standard deviation, as EDM's P_std
    noise_keys: str = "tagged"  # Random keys: "tagged" per stream, or v1's "shared" ones
    flip: bool = False  # Mirror each training image left-right at random (needs tagged keys)
    # Optimisation.
    batch_size: int = 8  # Global batch, split over the replicas
    learning_rate: float = 2e-3  # Adam's peak rate (the classic: its first round's)
    learning_rate_decay: float = 0.9  # Factor applied to the rate after each round
    learning_rate_floor: float = 1e-6  # The rate never decays below this
    learning_rate_schedule: str = "cosine"  # "rounds" (x decay per round) or "cosine" to max_steps
    warmup_steps: int = 100  # Steps of linear warm-up from 0 to learning_rate
    round_steps: int = 5000  # Steps per round: rate decay and a sample grid at each end
    ema_decay: float = 0.999  # EMA of the weights used for sampling; 0 turns it off
    seed: int = 0  # Seeds the initial weights, data order, levels and noise
    max_steps: int = 50000  # Train until this many steps; a resumed run continues to it
    # Checkpoints.
    weights_dir: str = "checkpoints"  # The run folder: checkpoints, config.json, logs, grids
    save_every: int = 1000  # Save every N steps
    save_every_minutes: float = 10.0  # Also save every M minutes; 0 turns it off
    keep_checkpoints: int = 3  # Numbered checkpoints kept in the folder
    # Sampling.
    sampling_steps: int = 15  # Denoising steps, from pure noise to the image
    sampler: str = "dpm-solver++"  # (2M), "ddim" or "heun" (EDM; 2 evaluations a step)
    spacing: str = "uniform"  # Levels visited: "uniform" or "edm" (rho = 7 in sigma)
    # Quality tracking.
    track_kid: int = 0  # KID and FID of N samples vs N training images at each round end; 0 is off
    inception_weights: str = "imagenet"  # InceptionV3 weights: "imagenet", a .h5 file or "random"
    # Hardware.
    # Keras dtype policy of training: "float32", "mixed_float16" (GPU; loss scaling),
    # "mixed_bfloat16" (GPU, or a CPU with AVX512-BF16 or AMX), or "auto": mixed_bfloat16 on
    # such a CPU with no GPU, else float32. Weights and sampling stay float32.
    precision: str = "auto"
    xla: bool = False  # Compile the training step with XLA (GPU)
    distribute: str = "none"  # tf.distribute strategy, see CHOICES
    scale_learning_rate: bool = False  # Multiply learning_rate by the number of replicas
    steps_per_call: int = 1  # Training steps per compiled call

    # Settings that may change when a run is resumed; every other one is part
    # of what the checkpoint means and must stay the same.
    RESUMABLE_CHANGES = (
        "data",
        "max_steps",
        "weights_dir",
        "save_every",
        "save_every_minutes",
        "keep_checkpoints",
        "sampling_steps",
        "sampler",
        "spacing",
        "track_kid",
        "inception_weights",
        "precision",
        "xla",
        "distribute",
        "steps_per_call",
    )

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise `UsageError` naming the first setting that is out of range."""
        for name in CHOICES:
            check_choice(name, getattr(self, name))
        for name in AT_LEAST_ONE:
            check_at_least(name, getattr(self, name), 1)
        for name, maximum in AT_MOST.items():
            check_at_most(name, getattr(self, name), maximum)
        check_at_least("max_steps", self.max_steps, 0)
        check_at_least("warmup_steps", self.warmup_steps, 0)
        check_positive("min_snr_gamma", self.min_snr_gamma)
        check_positive("embedding_max_frequency", self.embedding_max_frequency)
        if not 0 < self.level_std < 100 or not -100 < self.level_mean < 100:
            raise UsageError(
                f"--level-mean {self.level_mean} and --level-std {self.level_std} must be finite "
                "numbers, the standard deviation positive"
            )
        if self.warmup_steps and self.learning_rate_schedule != "cosine":
            raise UsageError("--warmup-steps comes with --lr-schedule cosine; add it or drop both")
        if self.flip and self.noise_keys != "tagged":
            raise UsageError("--flip draws its own random stream: it needs --noise-keys tagged")
        if self.prediction == "next":
            needed = {"loss_weighting": "none", "sampler": "ddim", "spacing": "uniform"}
            wrong = [
                f"{flag(name)} {getattr(self, name)}"
                for name, value in needed.items()
                if getattr(self, name) != value
            ]
            if wrong:
                raise UsageError(
                    f"{', '.join(wrong)}: a model that predicts the next level (recipe "
                    f"{self.recipe!r}) takes every level in turn; pass "
                    + " ".join(f"{flag(name)} {value}" for name, value in needed.items())
                )
        check_seed(self.seed)
        if not 0 <= self.save_every_minutes < math.inf:
            raise UsageError(
                "--save-every-minutes must be a number of minutes, 0 or more (0 turns it off), "
                f"got {self.save_every_minutes}"
            )
        if not 0 < self.learning_rate < math.inf:
            raise UsageError(f"--lr must be a positive number, got {self.learning_rate}")
        if not 0 < self.learning_rate_decay <= 1:
            raise UsageError(
                f"--lr-decay must be in (0, 1] (1 keeps the rate), got {self.learning_rate_decay}"
            )
        if not 0 <= self.learning_rate_floor < math.inf:
            raise UsageError(
                f"learning_rate_floor must be a number, 0 or more, got {self.learning_rate_floor}"
            )
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.prediction == "next" and self.sampling_steps != self.timesteps:
            raise UsageError(
                f"--sampling-steps {self.sampling_steps}: a model that predicts the next level "
                f"(recipe {self.recipe!r}) must take all {self.timesteps} steps; leave the flag out"
            )
        if self.track_kid == 1 or self.track_kid < 0:
            raise UsageError(f"--track-kid must be 0 (off) or at least 2, got {self.track_kid}")
        if self.track_kid and self.distribute == "multi-worker":
            raise UsageError(
                "--track-kid is not available with --distribute multi-worker (every worker would "
                "have to save the best checkpoint); leave it out"
            )
        if self.sampling_steps > self.timesteps:
            raise UsageError(
                f"--sampling-steps {self.sampling_steps} is more than the {self.timesteps} "
                "noise levels the model was trained on; choose a smaller number"
            )
        self.label = parse_label(self.label)

    @classmethod
    def for_recipe(cls, recipe="default", **overrides):
        """The config of a recipe, with the given settings changed (None keeps the recipe's)."""
        check_choice("recipe", recipe)
        values = dict(RECIPES[recipe])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(recipe=recipe, **values)

    def replace(self, **changes):
        """A copy with `changes`, validated; a change of None keeps the current value."""
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
        )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """A config from saved `values`; a setting they lack takes its first version's value.

        A config.json without a setting was written before the setting
        existed, so the value that reproduces that version is the right one,
        whatever today's default.
        """
        if not isinstance(values, dict):
            raise UsageError(
                f"{CONFIG_FILENAME} holds {type(values).__name__}, not a JSON object of settings; "
                "restore it or start anew with --fresh"
            )
        values = {key: value for key, value in values.items() if key not in RETIRED_SETTINGS}
        if isinstance(values.get("mixed_precision"), bool):  # before --precision: on or off
            values["precision"] = "mixed_float16" if values.pop("mixed_precision") else "float32"
        values = {**FIRST_VERSION, **values}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"config.json has settings this version does not know ({', '.join(unknown)}); "
                "update tf-diffusion or use another --weights-dir"
            )
        for field in dataclasses.fields(cls):
            if field.name in values and not has_type(values[field.name], field.type):
                raise UsageError(
                    f"{CONFIG_FILENAME}: {field.name} is {values[field.name]!r}, not "
                    f"{TYPE_NAMES[field.type]}; restore it or start anew with --fresh"
                )
        return cls(**values)

    def save(self, directory):
        """Write config.json into `directory` atomically (a reader never sees half a file)."""
        write_json(os.path.join(directory, CONFIG_FILENAME), self.to_dict())

    @classmethod
    def load(cls, directory):
        """The config saved in `directory`, or None if it has none."""
        path = os.path.join(directory, CONFIG_FILENAME)
        try:
            with open(path, encoding="utf-8") as file:
                values = json.load(file)
        except FileNotFoundError:
            return None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise UsageError(
                f"--weights-dir {directory}: {CONFIG_FILENAME} is not valid JSON ({error}); "
                "restore it or start anew with --fresh"
            ) from None
        except OSError as error:
            raise UsageError(
                f"--weights-dir {directory}: {CONFIG_FILENAME} cannot be read "
                f"({error.strerror or error}); restore it or start anew with --fresh"
            ) from None
        return cls.from_dict(values)

    def differences(self, other):
        """Names of the settings that may not change on resume and differ from `other`."""
        return [
            field.name
            for field in dataclasses.fields(self)
            if field.name not in self.RESUMABLE_CHANGES
            and getattr(self, field.name) != getattr(other, field.name)
        ]


# The values of the settings added after the first release that reproduce it.
FIRST_VERSION = {
    "time_conditioning": "bias",
    "embedding_max_frequency": 1000.0,
    "loss_weighting": "none",
    "min_snr_gamma": 5.0,
    "level_distribution": "uniform",
    "level_mean": -1.2,
    "level_std": 1.2,
    "noise_keys": "shared",
    "flip": False,
    "learning_rate_schedule": "rounds",
    "warmup_steps": 0,
    "sampler": "ddim",
    "spacing": "uniform",
    "track_kid": 0,
    "inception_weights": "imagenet",
}

# Each recipe is a set of overrides on top of the `Config` field defaults.
RECIPES = {
    # The improved recipe, the winner of bench/sweep.py: cosine schedule with
    # 1000 levels, v-prediction with min-SNR weights on the MAE, a level
    # embedding that does not alias, residual blocks with GroupNorm scaled and
    # shifted by the level (AdaGN), Adam at 2e-3 after a 100-step warm-up at
    # batch 8 (eight times v1's steps for the same images), EMA weights, 15
    # steps of DPM-Solver++(2M) to sample, and bfloat16 compute where the CPU
    # has it ("auto").
    "default": {},
    # The default recipe as it was first released, kept by name for comparisons.
    "v1": {
        **FIRST_VERSION,
        "architecture": "residual",
        "width": 32,
        "attention": False,
        "schedule": "cosine",
        "timesteps": 1000,
        "prediction": "noise",
        "batch_size": 64,
        "learning_rate": 1e-3,
        "learning_rate_decay": 0.9,
        "learning_rate_floor": 1e-6,
        "round_steps": 5000,
        "ema_decay": 0.999,
        "sampling_steps": 50,
        "precision": "float32",
    },
    # The classic "diffusion from scratch" recipe, reproduced exactly.
    "classic": {
        **FIRST_VERSION,
        "architecture": "classic",
        "width": 128,
        "attention": False,
        "schedule": "linear",
        "timesteps": 16,
        "prediction": "next",
        "batch_size": 128,
        "learning_rate": 8e-4,
        "learning_rate_decay": 0.9,
        "learning_rate_floor": 1e-6,
        "round_steps": 5000,
        "ema_decay": 0.0,
        "sampling_steps": 16,
        "precision": "float32",
    },
}

# The allowed values of every setting that is a choice; the command lines use these too.
CHOICES = {
    "recipe": tuple(RECIPES),
    "architecture": ("classic", "residual"),
    "schedule": ("linear", "cosine"),
    "prediction": ("next", "noise", "velocity", "image"),
    "loss_weighting": ("none", "min-snr"),
    "time_conditioning": ("bias", "scale-shift"),
    "level_distribution": ("uniform", "log-normal"),
    "noise_keys": ("shared", "tagged"),
    "learning_rate_schedule": ("rounds", "cosine"),
    "sampler": ("ddim", "dpm-solver++", "heun"),
    "spacing": ("uniform", "edm"),
    "distribute": ("none", "mirrored", "multi-worker", "tpu"),
    "precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
}

# Upper bounds: past these a setting means nothing for 32x32 images (or exhausts memory), or
# overflows a TensorFlow int32 shape. The seed's range is `check_seed`'s.
AT_MOST = {
    "width": 1024,
    "timesteps": 100_000,
    "batch_size": 2**31 - 1,
    "steps_per_call": 2**31 - 1,
}

TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}

AT_LEAST_ONE = (
    "width",
    "timesteps",
    "batch_size",
    "round_steps",
    "save_every",
    "keep_checkpoints",
    "sampling_steps",
    "steps_per_call",
)

# Settings that older versions saved and this one no longer has, with the reason they can go.
RETIRED_SETTINGS = {
    # Never read: the architecture alone decides the embedding ("raw" for the
    # classic U-Net, "sinusoidal" for the residual one), so dropping it
    # changes nothing in how an old run trains or samples.
    "time_embedding": "decided by the architecture",
}


def write_json(path, values):
    """Write `values` as JSON to `path` atomically: a temporary file, synced, then renamed."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(values, file, indent=2, sort_keys=True)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def flag(name):
    """The command-line flag of a `Config` setting."""
    return "--" + name.replace("learning_rate", "lr").replace("_", "-")


def check_choice(name, value):
    """Raise `UsageError` unless `value` is one of `CHOICES[name]`."""
    if value not in CHOICES[name]:
        raise UsageError(f"{flag(name)} {value!r} is not one of: {', '.join(CHOICES[name])}")


def check_at_least(name, value, minimum):
    """Raise `UsageError` unless `value` >= `minimum` (`name` is a setting or a flag)."""
    if not value >= minimum:
        name = name if name.startswith("--") else flag(name)
        text = "at least 1" if minimum == 1 else f"{minimum} or more"
        raise UsageError(f"{name} must be {text}, got {value}")


def check_positive(name, value):
    """Raise `UsageError` unless the setting `name` is a finite number above 0."""
    if not 0 < value < math.inf:
        raise UsageError(f"{flag(name)} must be positive and finite, got {value}")


def check_at_most(name, value, maximum):
    """Raise `UsageError` unless `value` <= `maximum` (`name` is a setting or a flag)."""
    if not value <= maximum:
        name = name if name.startswith("--") else flag(name)
        raise UsageError(f"{name} must be at most {maximum}, got {value}")


def check_seed(seed):
    """Raise `UsageError` unless `seed` is one NumPy, Keras and TensorFlow all take."""
    if not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be from 0 to {2**32 - 1}, got {seed}")


def has_type(value, kind):
    """Whether a value read from config.json has the type of a `Config` field."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def parse_label(value):
    """A CIFAR-10 label from 0-9 or a class name (any case)."""
    if isinstance(value, bool):
        value = str(value)
    text = str(value).strip()
    if text.lower() in CIFAR10_CLASS_NAMES:
        return CIFAR10_CLASS_NAMES.index(text.lower())
    try:
        number = int(text)
    except ValueError:
        number = None
    if number is not None and 0 <= number < len(CIFAR10_CLASS_NAMES):
        return number
    raise UsageError(
        f"--label {value!r} is not a CIFAR-10 class; use 0-9 or one of: "
        + ", ".join(CIFAR10_CLASS_NAMES)
    )


def check_data_path(data):
    """Raise `UsageError` unless `data` is 'tfds' or an existing path."""
    if data not in (None, "", "tfds") and not os.path.exists(data):
        raise missing_data_error(data)


def missing_data_error(data):
    return UsageError(
        f"--data {data}: no such file or folder; give an .npz file, an image folder, or 'tfds'"
    )


def parse_grid(text, count=None):
    """'ROWSxCOLS' to (rows, columns); None picks a near-square layout for `count`."""
    if text is None:
        columns = math.ceil(math.sqrt(count))
        return math.ceil(count / columns), columns
    parts = str(text).lower().split("x")
    try:
        rows, columns = (int(part) if part.isdecimal() else 0 for part in parts)
    except ValueError:  # not two parts, or a number too long to read
        rows = columns = 0
    if rows < 1 or columns < 1:
        raise UsageError(f"--grid {text!r} is not ROWSxCOLS, for example 4x8")
    if count is not None and max(rows, columns) > count:
        raise UsageError(
            f"--grid {text}: more rows or columns than the {count} images (--num); "
            "choose a smaller grid"
        )
    return rows, columns


def check_inception_weights(weights):
    """Raise `UsageError` unless `weights` is 'imagenet', 'random' or an existing file."""
    if weights not in (None, "imagenet", "random") and not os.path.isfile(weights):
        raise UsageError(
            f"--inception-weights {weights}: no such file; give 'imagenet' (downloaded once), "
            "the path of inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, or 'random'"
        )


def check_sampling_seed(seed):
    """Raise `UsageError` unless `seed` is 0 or more and fits the exported sampler's int32."""
    if not 0 <= seed < 2**31:
        raise UsageError(f"--seed must be from 0 to {2**31 - 1}, got {seed}")


def check_arguments(recipe, overrides, weights_dir="checkpoints"):
    """Check train.py's settings without TensorFlow: ranges, the label, the paths."""
    Config.for_recipe(recipe or "default", **overrides)
    check_data_path(overrides.get("data"))
    check_inception_weights(overrides.get("inception_weights"))
    check_folder_path("--weights-dir", weights_dir)


def check_predict_arguments(
    weights_dir="checkpoints",
    num=25,
    out=None,
    grid=None,
    npz=None,
    steps=False,
    gif=None,
    seed=0,
    evaluate=False,
    data=None,
    inception_weights="imagenet",
    best=False,
    export=None,
    **changes,
):
    """Check predict.py's arguments without TensorFlow: counts, layout, paths, the run's ranges.

    `changes` are the predict-time settings (`sampling_steps`, `sampler`, `spacing`).
    """
    check_at_least("--num", num, 1)
    check_at_most("--num", num, MAX_SAMPLES)
    check_sampling_seed(seed)
    parse_grid(grid, num)
    if evaluate:
        check_data_path(data)
        check_inception_weights(inception_weights)
    for name, path in (("--out", out), ("--npz", npz), ("--gif", gif)):
        check_output_path(name, path)
    if best:
        weights_dir = best_run_directory(weights_dir)
    load_run_config(weights_dir, **changes)
    if export:
        check_export_folder(export)


def check_export_folder(directory):
    """Raise `UsageError` if `directory` exists and is not an empty folder."""
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise UsageError(
            f"--export {directory} already exists and is not an empty folder; "
            "choose a new folder (nothing is overwritten)"
        )


def best_run_directory(weights_dir):
    """The folder of the best checkpoint that --track-kid keeps in `weights_dir`."""
    best = os.path.join(weights_dir, BEST_FOLDER)
    if os.path.isdir(weights_dir) and not os.path.isfile(os.path.join(best, CONFIG_FILENAME)):
        raise UsageError(
            f"--best: --weights-dir {weights_dir} has no best checkpoint; "
            "train it with --track-kid N to keep one"
        )
    return best


def check_folder_path(name, folder):
    """Raise `UsageError` if `folder` cannot be a folder: empty, a file, or below a file."""
    if not folder:
        raise UsageError(f"{name} is empty; give a folder")
    existing = nearest_existing(folder)
    if existing == os.path.abspath(folder) and not os.path.isdir(existing):
        raise UsageError(f"{name} {folder} is a file, not a folder; choose a folder")
    if not os.path.isdir(existing):
        raise UsageError(
            f"{name} {folder} cannot be written ({existing} is a file); choose another folder"
        )


def check_output_path(name, path):
    """Raise `UsageError` unless a file can be written at `path` (missing folders are made later).

    Writes and removes a probe file beside it, or in the nearest folder that exists.
    """
    if not path:
        return
    if os.path.isdir(path) or not os.path.basename(path):
        raise UsageError(f"{name} {path} is a folder; give a file name, such as samples.png")
    folder = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder):
        raise UsageError(
            f"{name} {path} cannot be written ({folder} is a file, not a folder); "
            "choose another path"
        )
    # The same name that the file's temporary copy will have, so a name too long fails here.
    probe = os.path.join(folder, "." + os.path.basename(path) + ".tmp")
    try:
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    except OSError as error:
        raise UsageError(
            f"{name} {path} cannot be written ({error.strerror or error}); choose another path"
        ) from None
    os.close(descriptor)
    os.remove(probe)


def check_writable(directory, name="--weights-dir"):
    """Create `directory` if needed and prove that files can be written in it."""
    check_folder_path(name, directory)
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, WRITE_PROBE)
        with open(probe, "w") as file:
            file.write("ok")
        os.remove(probe)
    except OSError as error:
        raise UsageError(
            f"{name} {directory} cannot be written ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from None


def nearest_existing(path):
    """`path` made absolute, or its nearest parent that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def load_run_config(weights_dir, **changes):
    """The config saved in `weights_dir` with predict-time `changes`, checked without TensorFlow."""
    if weights_dir and os.path.exists(weights_dir) and not os.path.isdir(weights_dir):
        raise UsageError(f"--weights-dir {weights_dir} is a file, not a run folder")
    if not weights_dir or not os.path.isdir(weights_dir):
        raise UsageError(f"--weights-dir {weights_dir}: no such folder; train first with train.py")
    config = Config.load(weights_dir)
    if config is None and os.path.exists(os.path.join(weights_dir, "checkpoint")):
        raise UsageError(
            f"--weights-dir {weights_dir} has checkpoints but no {CONFIG_FILENAME}; "
            "it was not written by tf-diffusion"
        )
    if config is None:
        raise no_checkpoint_error(weights_dir)
    return config.replace(weights_dir=weights_dir, **changes)


def no_checkpoint_error(weights_dir):
    return UsageError(
        f"--weights-dir {weights_dir} has no checkpoint; train first with "
        f"'python train.py --weights-dir {weights_dir}'"
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but its error message stays on one line whatever the input."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {printable(message)}\n")


def printable(text):
    """`text` on one line: line breaks, control characters and undecodable bytes escaped."""
    return "".join(
        character if character.isprintable() else ascii(character)[1:-1] for character in text
    )


def error_line(error):
    """How the scripts report a `UsageError`: one line, 'error: ...'."""
    return f"error: {printable(str(error))}"


def exit_with_error(error):
    """Print `error` as one `error:` line and exit with status 2, as argparse does."""
    print(error_line(error), file=sys.stderr, flush=True)
    raise SystemExit(2)


def escape_unprintable_output():
    """Let stdout and stderr print any path (bytes that are not UTF-8 come out escaped)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
