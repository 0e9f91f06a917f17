"""tf-diffusion: train a diffusion model on one CIFAR-10 class with Keras, and sample from it.

The public names are imported on first use, so that `tf_diffusion.config`
(and the command-line checks built on it) load without TensorFlow.
"""

import importlib

_EXPORTS = {
    "CIFAR10_CLASS_NAMES": "tf_diffusion.config",
    "Config": "tf_diffusion.config",
    "UsageError": "tf_diffusion.config",
    "parse_label": "tf_diffusion.config",
    "NoiseSchedule": "tf_diffusion.schedule",
    "forward_noise": "tf_diffusion.schedule",
    "generate_ts": "tf_diffusion.schedule",
    "make_model": "tf_diffusion.model",
    "Trainer": "tf_diffusion.training",
    "predict": "tf_diffusion.sampling",
    "predict_step": "tf_diffusion.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tf_diffusion' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
