"""tf-diffusion: train a diffusion model on one CIFAR-10 class with Keras, and sample from it.

The public names are imported on first use, so that `tf_diffusion.config`
and `tf_diffusion.cli` (the scripts' checks, made before TensorFlow loads)
load without TensorFlow. Importing the package is still enough to load an
exported `unet.keras`: the project's Keras layers are registered as soon as
Keras is loaded, now or later.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys


class UsageError(ValueError):
    """Bad input: one line that names the setting, what is wrong with it, and what to do.

    Library code names a setting as `name` in backticks, as `Config` spells
    it; the command lines print the flag (`tf_diffusion.cli.error_line`).
    """


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says how to go on from the last save."""


_EXPORTS = {
    "CIFAR10_CLASS_NAMES": "tf_diffusion.config",
    "Config": "tf_diffusion.config",
    "parse_label": "tf_diffusion.config",
    "NoiseSchedule": "tf_diffusion.diffusion",
    "forward_noise": "tf_diffusion.legacy",
    "generate_ts": "tf_diffusion.legacy",
    "make_model": "tf_diffusion.model",
    "Trainer": "tf_diffusion.trainer",
    "predict": "tf_diffusion.sampling",
    "predict_step": "tf_diffusion.sampling",
}

__all__ = sorted([*_EXPORTS, "TrainingDiverged", "UsageError"])


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


class _RegisterLayersWithKeras(importlib.abc.MetaPathFinder):
    """Import `tf_diffusion.model` (which registers its layers) right after Keras loads."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load_keras = spec.loader.exec_module

        def exec_module(module):
            load_keras(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            importlib.import_module("tf_diffusion.model")

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    importlib.import_module("tf_diffusion.model")
else:
    sys.meta_path.insert(0, _RegisterLayersWithKeras())
