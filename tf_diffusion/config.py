"""One place for every setting: the `Config` dataclass, its choices and ranges, the recipes.

A `Config` is saved as `config.json` beside each checkpoint, so that resuming, sampling and
evaluation replay the training setup exactly. Each setting's help is written once, in its
field; the command lines make their flags from it (`cli.py`). Every choice and range is checked
here, once, also for a change made at predict time (`Config.replace`). No TensorFlow here.
"""

import dataclasses
import math

from tf_diffusion import UsageError

CIFAR10_CLASS_NAMES = (
    *("airplane", "automobile", "bird", "cat", "deer"),
    *("dog", "frog", "horse", "ship", "truck"),
)

CONFIG_FILENAME = "config.json"
BEST_FOLDER = "best"  # in the weights folder: the checkpoint with the lowest tracked KID
IMAGE_SIZE = 32
IMAGE_CHANNELS = 3


def setting(default, help, flag=True, resumable=False, minimum=None, maximum=None, **options):
    """A `Config` field and its one description (the flag's help, the README's table).

    `flag=False`: no flag (a recipe sets it). `resumable`: it may change when a run resumes.
    """
    metadata = dict(help=help, flag=flag, resumable=resumable, minimum=minimum, maximum=maximum)
    return dataclasses.field(default=default, metadata={**metadata, **options})


# Past these a setting means nothing for 32x32 images, exhausts memory, or overflows int32.
INT32 = 2**31 - 1


@dataclasses.dataclass
class Config:
    """Every setting of a run. The defaults are the "default" recipe."""

    recipe: str = setting("default", "named set of defaults, see RECIPES", flag=False)
    # Data.
    label: int = setting(
        1, "CIFAR-10 class: 0-9 or a name such as automobile", type=str, metavar="CLASS"
    )
    data: str = setting(
        "tfds", "'tfds' (downloads CIFAR-10), an .npz (key x) or an image folder", resumable=True
    )
    # Network and diffusion process.
    architecture: str = setting("residual", "U-Net kind: classic or residual", flag=False)
    width: int = setting(
        32, "channels at 32 px; the lower resolutions multiply it", minimum=1, maximum=1024
    )
    block_depth: int = setting(
        1, "residual blocks per resolution, down and up (residual U-Net)", minimum=1, maximum=8
    )
    attention: bool = setting(False, "self-attention at 8x8 (residual U-Net)")
    time_conditioning: str = setting("scale-shift", "the level into each block: bias, or AdaGN")
    embedding_max_frequency: float = setting(100.0, "top frequency of the level embedding")
    schedule: str = setting("cosine", "how signal falls with the level", flag=False)
    timesteps: int = setting(1000, "noise levels", minimum=1, maximum=100_000)
    prediction: str = setting("velocity", "what the network outputs")
    loss: str = setting("mse", "the error on the target: absolute (mae) or squared (mse)")
    loss_weighting: str = setting("min-snr", "weight of each level in the loss")
    min_snr_gamma: float = setting(5.0, "the SNR above which min-snr stops weighting a level up")
    level_distribution: str = setting("uniform", "training levels: uniform, or log-normal sigma")
    level_mean: float = setting(-1.2, "log-normal levels: mean of log(noise/signal)")
    level_std: float = setting(1.2, "log-normal levels: its standard deviation")
    noise_keys: str = setting("tagged", "random keys: tagged per stream, or v1's shared ones")
    flip: bool = setting(False, "mirror training images left-right at random")
    # Optimisation.
    batch_size: int = setting(8, "global batch, split over the replicas", minimum=1, maximum=INT32)
    learning_rate: float = setting(2e-3, "Adam's peak learning rate")
    learning_rate_decay: float = setting(0.9, "factor on the rate after each round (rounds)")
    learning_rate_floor: float = setting(1e-6, "the rate never decays below this", flag=False)
    learning_rate_schedule: str = setting(
        "cosine", "rounds (x `learning_rate_decay` each round) or cosine (to `max_steps`)"
    )
    warmup_steps: int = setting(100, "linear warm-up steps of the cosine schedule", minimum=0)
    round_steps: int = setting(5000, "steps per round: a sample grid at each end", minimum=1)
    ema_decay: float = setting(0.999, "EMA of the weights that sampling uses; 0 is off")
    more_ema_decays: str = setting(
        "", "more EMAs to keep, as decays (0.9995,0.9999); predict.py --ema picks", metavar="LIST"
    )
    seed: int = setting(0, "seeds the initial weights, data order, levels and noise")
    max_steps: int = setting(
        50000, "total steps; a resumed run continues up to it", resumable=True, minimum=0
    )
    # Checkpoints.
    weights_dir: str = setting("checkpoints", "the run folder", flag=False, resumable=True)
    save_every: int = setting(1000, "save every N steps", resumable=True, minimum=1)
    save_every_minutes: float = setting(10.0, "also save every M minutes; 0 is off", resumable=True)
    keep_checkpoints: int = setting(3, "checkpoints kept", resumable=True, minimum=1)
    # Sampling.
    sampling_steps: int = setting(15, "denoising steps of the sampler", resumable=True, minimum=1)
    sampler: str = setting("dpm-solver++", "the sampler: its update rule", resumable=True)
    spacing: str = setting("uniform", "levels the sampler visits", resumable=True)
    sampling_precision: str = setting(
        "auto",
        "Keras dtype policy of the network when predict.py samples (round-end grids stay "
        "float32, and exports unless it is given); auto: mixed_bfloat16 where `precision` auto "
        "trains in it, else float32",
        resumable=True,
    )
    # Quality tracking.
    track_kid: int = setting(
        0, "KID and FID of N samples at round ends; 0 is off", resumable=True, metavar="N"
    )
    inception_weights: str = setting(
        "imagenet",
        "InceptionV3 weights of `track_kid`: imagenet (downloads), an .h5, or random",
        resumable=True,
    )
    # Hardware.
    precision: str = setting(
        "auto",
        "Keras dtype policy of training (weights stay float32; sampling: `sampling_precision`); "
        "auto: mixed_bfloat16 on a GPU of compute capability 8.0+ or a CPU with AVX512-BF16 or "
        "AMX, mixed_float16 on a 7.x GPU, else float32",
        resumable=True,
    )
    xla: bool = setting(False, "compile the training step with XLA (GPU)", resumable=True)
    distribute: str = setting("none", "tf.distribute strategy", resumable=True)
    scale_learning_rate: bool = setting(False, "multiply `learning_rate` by the replicas")
    steps_per_call: int = setting(
        1, "training steps per compiled call", resumable=True, minimum=1, maximum=INT32
    )
    op_threads: int = setting(
        1, "threads a CPU op may use; 0: all (TensorFlow's choice)", resumable=True, minimum=0
    )

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raise `UsageError` naming the first setting that is out of range."""
        for name in CHOICES:
            check_choice(name, getattr(self, name))
        for field in dataclasses.fields(self):
            if field.metadata["minimum"] is not None:
                check_at_least(field.name, getattr(self, field.name), field.metadata["minimum"])
            if field.metadata["maximum"] is not None:
                check_at_most(field.name, getattr(self, field.name), field.metadata["maximum"])
        for name, (holds, what) in RANGES.items():
            if not holds(getattr(self, name)):
                raise UsageError(f"`{name}` must be {what}, got {getattr(self, name)}")
        if self.warmup_steps and self.learning_rate_schedule != "cosine":
            raise UsageError(
                "`warmup_steps` comes with `learning_rate_schedule` cosine; add it or drop both"
            )
        if self.flip and self.noise_keys != "tagged":
            raise UsageError("`flip` draws its own random stream: it needs `noise_keys` tagged")
        if self.prediction == "next":
            needed = {"loss_weighting": "none", "sampler": "ddim", "spacing": "uniform"}
            wrong = [
                f"`{name}` {getattr(self, name)}"
                for name, value in needed.items()
                if getattr(self, name) != value
            ]
            if wrong:
                raise UsageError(
                    f"{', '.join(wrong)}: a model that predicts the next level (recipe "
                    f"{self.recipe!r}) takes every level in turn; pass "
                    + " ".join(f"`{name}` {value}" for name, value in needed.items())
                )
        if self.prediction == "next" and self.sampling_steps != self.timesteps:
            raise UsageError(
                f"`sampling_steps` {self.sampling_steps}: a model that predicts the next level "
                f"(recipe {self.recipe!r}) must take all {self.timesteps} steps; leave it out"
            )
        if self.track_kid and self.distribute == "multi-worker":
            raise UsageError(
                "`track_kid` is not available with `distribute` multi-worker (every worker would "
                "have to save the best checkpoint); leave it out"
            )
        if self.sampling_steps > self.timesteps:
            raise UsageError(
                f"`sampling_steps` {self.sampling_steps} is more than the {self.timesteps} "
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
                "restore it or start anew with `fresh`"
            )
        values = {key: value for key, value in values.items() if key not in RETIRED_SETTINGS}
        if isinstance(values.get("mixed_precision"), bool):  # before `precision`: on or off
            values["precision"] = "mixed_float16" if values.pop("mixed_precision") else "float32"
        values = {**FIRST_VERSION, **values}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"config.json has settings this version does not know ({', '.join(unknown)}); "
                "update tf-diffusion or use another `weights_dir`"
            )
        for field in dataclasses.fields(cls):
            if field.name in values and not has_type(values[field.name], field.type):
                raise UsageError(
                    f"{CONFIG_FILENAME}: {field.name} is {values[field.name]!r}, not "
                    f"{TYPE_NAMES[field.type]}; restore it or start anew with `fresh`"
                )
        return cls(**values)

    @property
    def emas(self):
        """{decay: name in the checkpoint} of every EMA kept, sampling's ("ema_model") first."""
        names = {self.ema_decay: "ema_model"} if self.ema_decay > 0 else {}
        for decay in decays(self.more_ema_decays):
            names.setdefault(decay, f"ema_model_{decay:g}".replace(".", "_"))
        return names

    def weights_name(self, ema=None):
        """The checkpoint's name of the weights to sample with. `ema`: a decay the run keeps
        ("0.9999"), "none" for the trained weights, or None for `ema_decay`'s (if it is on)."""
        if ema is None:
            return self.emas.get(self.ema_decay, "model")
        if ema == "none":
            return "model"
        try:
            return self.emas[float(ema)]
        except (ValueError, KeyError):
            kept = "".join(f"{decay:g}, " for decay in self.emas)
            raise UsageError(
                f"`ema` {ema}: the run keeps no such EMA; give one of {kept}or none (the trained "
                "weights)"
            ) from None

    def differences(self, other):
        """Names of the settings that may not change on resume and differ from `other`."""
        return [
            field.name
            for field in dataclasses.fields(self)
            if not field.metadata["resumable"]
            and getattr(self, field.name) != getattr(other, field.name)
        ]


# The values of the settings added after the first release that reproduce it.
FIRST_VERSION = {
    **{"time_conditioning": "bias", "embedding_max_frequency": 1000.0, "loss_weighting": "none"},
    **{"min_snr_gamma": 5.0, "level_distribution": "uniform", "level_mean": -1.2, "level_std": 1.2},
    **{"noise_keys": "shared", "flip": False, "learning_rate_schedule": "rounds"},
    **{"warmup_steps": 0, "sampler": "ddim", "spacing": "uniform", "track_kid": 0},
    **{"inception_weights": "imagenet", "op_threads": 0, "more_ema_decays": ""},
    **{"sampling_precision": "float32", "loss": "mae", "block_depth": 1},
}

# Each recipe is a set of overrides on top of the `Config` field defaults. v1 and the classic
# spell out every setting they depend on, so that a new default never changes them.
RECIPES = {
    # The default: cosine schedule with 1000 levels,
    # v-prediction with min-SNR weights on the squared error, a level embedding that does not
    # alias, residual blocks with GroupNorm scaled and shifted by the level (AdaGN), Adam at 2e-3
    # after a 100-step warm-up at batch 8 (eight times v1's steps for the same images), EMA
    # weights, 15 steps of DPM-Solver++(2M) to sample, bfloat16 where the CPU has it ("auto",
    # in training and in sampling), one thread per CPU op. A new run on a GPU takes
    # hardware.GPU_DEFAULTS instead (batch 128, 3e-3, XLA; not measured).
    "default": {},
    # The default recipe before one thread per op, the squared error and bfloat16 sampling,
    # kept by name as the control (docs/experiments.md): every setting it depends on.
    "v2": {
        **{"architecture": "residual", "width": 32, "attention": False, "schedule": "cosine"},
        **{"time_conditioning": "scale-shift", "embedding_max_frequency": 100.0, "flip": False},
        **{"timesteps": 1000, "prediction": "velocity", "loss_weighting": "min-snr"},
        **{"min_snr_gamma": 5.0, "level_distribution": "uniform", "noise_keys": "tagged"},
        **{"batch_size": 8, "learning_rate": 2e-3, "learning_rate_schedule": "cosine"},
        **{"warmup_steps": 100, "learning_rate_floor": 1e-6, "ema_decay": 0.999},
        **{"sampler": "dpm-solver++", "sampling_steps": 15, "spacing": "uniform"},
        **{"sampling_precision": "float32", "precision": "auto", "op_threads": 0},
        **{"more_ema_decays": "", "loss": "mae", "block_depth": 1, "level_mean": -1.2},
        **{"level_std": 1.2, "learning_rate_decay": 0.9, "round_steps": 5000},
    },
    # The default recipe as it was first released, kept by name for comparisons.
    "v1": {
        **FIRST_VERSION,
        **{"architecture": "residual", "width": 32, "attention": False, "schedule": "cosine"},
        **{"timesteps": 1000, "prediction": "noise", "batch_size": 64, "learning_rate": 1e-3},
        **{"learning_rate_decay": 0.9, "learning_rate_floor": 1e-6, "round_steps": 5000},
        **{"ema_decay": 0.999, "sampling_steps": 50, "precision": "float32"},
    },
    # The classic "diffusion from scratch" recipe, reproduced exactly.
    "classic": {
        **FIRST_VERSION,
        **{"architecture": "classic", "width": 128, "attention": False, "schedule": "linear"},
        **{"timesteps": 16, "prediction": "next", "batch_size": 128, "learning_rate": 8e-4},
        **{"learning_rate_decay": 0.9, "learning_rate_floor": 1e-6, "round_steps": 5000},
        **{"ema_decay": 0.0, "sampling_steps": 16, "precision": "float32"},
    },
}

# The settings of one run rather than of a recipe: where its data is and how it is kept, how
# long it trains, and how the hardware runs it. A recipe kept by name (every one but the
# default) pins every other setting, so that a new field's default never changes it.
RUN_SETTINGS = (
    *("recipe", "label", "data", "seed", "max_steps", "weights_dir", "save_every"),
    *("save_every_minutes", "keep_checkpoints", "track_kid", "inception_weights", "xla"),
    *("distribute", "scale_learning_rate", "steps_per_call"),
)

# The allowed values of every setting that is a choice; the command lines use these too.
CHOICES = {
    "recipe": tuple(RECIPES),
    "architecture": ("classic", "residual"),
    "schedule": ("linear", "cosine"),
    "prediction": ("next", "noise", "velocity", "image"),
    "loss": ("mae", "mse"),
    "loss_weighting": ("none", "min-snr"),
    "time_conditioning": ("bias", "scale-shift"),
    "level_distribution": ("uniform", "log-normal"),
    "noise_keys": ("shared", "tagged"),
    "learning_rate_schedule": ("rounds", "cosine"),
    "sampler": ("ddim", "dpm-solver++", "heun"),
    "spacing": ("uniform", "edm"),
    "distribute": ("none", "mirrored", "multi-worker", "tpu"),
    "precision": ("auto", "float32", "mixed_float16", "mixed_bfloat16"),
    "sampling_precision": ("auto", "float32", "mixed_bfloat16"),
}

# The settings predict.py may change for one sampling (all `resumable`).
SAMPLING_SETTINGS = ("sampling_steps", "sampler", "spacing", "sampling_precision")

# What each number that has no plain minimum must be (the command lines pass NaN and inf through).
RANGES = {
    "min_snr_gamma": (lambda value: 0 < value < math.inf, "positive and finite"),
    "embedding_max_frequency": (lambda value: 0 < value < math.inf, "positive and finite"),
    "level_mean": (lambda value: -100 < value < 100, "a finite number, from -100 to 100"),
    "level_std": (lambda value: 0 < value < 100, "a positive finite number, below 100"),
    "seed": (lambda value: 0 <= value < 2**32, f"from 0 to {2**32 - 1}"),
    "save_every_minutes": (lambda value: 0 <= value < math.inf, "a number of minutes, 0 or more"),
    "learning_rate": (lambda value: 0 < value < math.inf, "a positive number"),
    "learning_rate_decay": (lambda value: 0 < value <= 1, "in (0, 1] (1 keeps the rate)"),
    "learning_rate_floor": (lambda value: 0 <= value < math.inf, "0 or more"),
    "ema_decay": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "more_ema_decays": (lambda text: decays(text) is not None, "decays in (0, 1), such as 0.9999"),
    "track_kid": (lambda value: value == 0 or value >= 2, "0 (off) or at least 2"),
}

TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}

# Settings that older versions saved and this one no longer has, with the reason they can go.
RETIRED_SETTINGS = {
    # Never read: the architecture alone decides the embedding ("raw" for the
    # classic U-Net, "sinusoidal" for the residual one), so dropping it
    # changes nothing in how an old run trains or samples.
    "time_embedding": "decided by the architecture",
}


def check_choice(name, value):
    """Raise `UsageError` unless `value` is one of `CHOICES[name]`."""
    if value not in CHOICES[name]:
        raise UsageError(f"`{name}` {value!r} is not one of: {', '.join(CHOICES[name])}")


def check_at_least(name, value, minimum):
    """Raise `UsageError` unless the setting `name`'s `value` is `minimum` or more."""
    if not value >= minimum:
        text = "at least 1" if minimum == 1 else f"{minimum} or more"
        raise UsageError(f"`{name}` must be {text}, got {value}")


def check_at_most(name, value, maximum):
    """Raise `UsageError` unless the setting `name`'s `value` is `maximum` or less."""
    if not value <= maximum:
        raise UsageError(f"`{name}` must be at most {maximum}, got {value}")


def decays(text):
    """The decays of `more_ema_decays` ("0.9995,0.9999") as floats; None if one is not a decay."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        return None
    return values if all(0 < value < 1 for value in values) else None


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
        f"`label` {value!r} is not a CIFAR-10 class; use 0-9 or one of: "
        + ", ".join(CIFAR10_CLASS_NAMES)
    )
