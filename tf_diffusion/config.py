"""One place for every setting: the `Config` dataclass, the recipes, and class names.

A `Config` is saved as `config.json` beside each checkpoint, so that resuming,
sampling and evaluation replay the training setup exactly.
"""

import dataclasses
import json
import os

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
IMAGE_SIZE = 32
IMAGE_CHANNELS = 3


class UsageError(ValueError):
    """Bad input from the user: the message is one line that says what to do."""


@dataclasses.dataclass
class Config:
    """Every setting of a run. The defaults are the "default" recipe."""

    recipe: str = "default"
    # data
    label: int = 1
    data: str = "tfds"
    # model and noise schedule
    architecture: str = "residual"  # "classic" or "residual"
    width: int = 32
    attention: bool = False
    time_embedding: str = "sinusoidal"  # "raw" or "sinusoidal"
    schedule: str = "cosine"  # "linear" or "cosine"
    timesteps: int = 1000
    prediction: str = "noise"  # "next" (classic) or "noise"
    # optimisation
    batch_size: int = 64
    learning_rate: float = 1e-3
    learning_rate_decay: float = 0.9
    learning_rate_floor: float = 1e-6
    round_steps: int = 5000
    ema_decay: float = 0.999  # 0 turns EMA off
    seed: int = 0
    max_steps: int = 50000
    # checkpoints
    weights_dir: str = "checkpoints"
    save_every: int = 1000
    save_every_minutes: float = 10.0
    keep_checkpoints: int = 3
    # sampling
    sampling_steps: int = 50
    # hardware
    mixed_precision: bool = False
    xla: bool = False
    distribute: str = "none"  # "none", "mirrored", "multi-worker" or "tpu"
    scale_learning_rate: bool = False
    steps_per_call: int = 1

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
        "mixed_precision",
        "xla",
        "distribute",
        "steps_per_call",
    )

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise `UsageError` naming the first setting that is out of range."""
        choices = {
            "recipe": RECIPES,
            "architecture": ("classic", "residual"),
            "time_embedding": ("raw", "sinusoidal"),
            "schedule": ("linear", "cosine"),
            "prediction": ("next", "noise"),
            "distribute": ("none", "mirrored", "multi-worker", "tpu"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(
                    f"--{_flag(name)} {getattr(self, name)!r} is not one of: {', '.join(allowed)}"
                )
        positive = (
            "width",
            "timesteps",
            "batch_size",
            "round_steps",
            "save_every",
            "keep_checkpoints",
            "sampling_steps",
            "steps_per_call",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise UsageError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise UsageError(f"--max-steps must be 0 or more, got {self.max_steps}")
        if not self.learning_rate > 0:
            raise UsageError(f"--lr must be positive, got {self.learning_rate}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.save_every_minutes < 0:
            raise UsageError(
                f"--save-every-minutes must be 0 (off) or more, got {self.save_every_minutes}"
            )
        if self.prediction == "next" and self.sampling_steps != self.timesteps:
            raise UsageError(
                f"--sampling-steps {self.sampling_steps}: a model that predicts the next level "
                f"(recipe {self.recipe!r}) must take all {self.timesteps} steps; leave the flag out"
            )
        if self.sampling_steps > self.timesteps:
            raise UsageError(
                f"--sampling-steps {self.sampling_steps} is more than the {self.timesteps} "
                "noise levels the model was trained on; choose a smaller number"
            )
        self.label = parse_label(self.label)

    @classmethod
    def for_recipe(cls, recipe="default", **overrides):
        """The config of a recipe, with the given settings changed."""
        if recipe not in RECIPES:
            raise UsageError(f"--recipe {recipe!r} is not one of: {', '.join(RECIPES)}")
        values = dict(RECIPES[recipe])
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(recipe=recipe, **values)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"config.json has settings this version does not know ({', '.join(unknown)}); "
                "update tf-diffusion or use another --weights-dir"
            )
        return cls(**values)

    def save(self, directory):
        """Write config.json into `directory` atomically (a reader never sees half a file)."""
        path = os.path.join(directory, CONFIG_FILENAME)
        temporary = path + ".tmp"
        with open(temporary, "w") as file:
            json.dump(self.to_dict(), file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    @classmethod
    def load(cls, directory):
        path = os.path.join(directory, CONFIG_FILENAME)
        try:
            with open(path) as file:
                values = json.load(file)
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as error:
            raise UsageError(
                f"--weights-dir {directory}: {CONFIG_FILENAME} is not valid JSON ({error}); "
                "restore it or start anew with --fresh"
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


# Each recipe is a set of overrides on top of the `Config` field defaults.
RECIPES = {
    # The improved recipe: cosine schedule with 1000 levels, noise prediction
    # with deterministic (DDIM) sampling, a sinusoidal time embedding,
    # residual blocks with GroupNorm and EMA weights.
    "default": {},
    # The classic "diffusion from scratch" recipe, reproduced exactly.
    "classic": {
        "architecture": "classic",
        "width": 128,
        "attention": False,
        "time_embedding": "raw",
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
    },
}


def parse_label(value):
    """A CIFAR-10 label from 0-9 or a class name (any case)."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        text = str(value)
    else:
        text = str(value).strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if 0 <= number < len(CIFAR10_CLASS_NAMES):
            return number
    elif text.lower() in CIFAR10_CLASS_NAMES:
        return CIFAR10_CLASS_NAMES.index(text.lower())
    raise UsageError(
        f"--label {value!r} is not a CIFAR-10 class; use 0-9 or one of: "
        + ", ".join(CIFAR10_CLASS_NAMES)
    )


def check_data_path(data):
    """Raise `UsageError` unless `data` is 'tfds' or an existing path."""
    if data not in (None, "", "tfds") and not os.path.exists(data):
        raise UsageError(
            f"--data {data}: no such file or folder; give an .npz file, an image folder, or 'tfds'"
        )


def check_arguments(recipe, overrides):
    """Check command-line settings that need no TensorFlow: ranges, the label, the data path."""
    values = {key: value for key, value in overrides.items() if value is not None}
    Config.for_recipe(recipe or "default", **values)
    check_data_path(values.get("data"))


def _flag(name):
    if name == "learning_rate":
        return "lr"
    return name.replace("_", "-")
