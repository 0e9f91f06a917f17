import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tf_diffusion.config import Config  # noqa: E402

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A run small enough to train a few steps in well under a second.
# No warm-up: the few steps of a test would all be warm-up, at a rate near 0. float32, not the
# default "auto", in training and sampling, so that the tests compute the same on every CPU;
# bfloat16 has its own tests.
TINY_RUN = {
    "width": 8,
    "batch_size": 4,
    "timesteps": 20,
    "sampling_steps": 5,
    "warmup_steps": 0,
    "precision": "float32",
    "sampling_precision": "float32",
}


def tiny_settings(**changes):
    """The tiny run's settings, as `commands.train` takes them, with `changes`."""
    return dict(TINY_RUN, **changes)


def tiny_flags(**changes):
    """The tiny run's settings as train.py flags, with `changes`."""
    return [
        f"--{name.replace('_', '-')}={value}" for name, value in tiny_settings(**changes).items()
    ]


def tiny_train_command(weights_dir, data, **changes):
    """The train.py command line of a quiet tiny run on `data`, with `changes`."""
    return [
        sys.executable,
        os.path.join(REPOSITORY, "train.py"),
        "--data",
        str(data),
        "--weights-dir",
        str(weights_dir),
        *tiny_flags(**changes),
        "--quiet",
    ]


def tiny_config(recipe="default", **overrides):
    """The tiny run's `Config` (the classic recipe keeps its 16 levels)."""
    settings = tiny_settings(seed=0, save_every=1000)
    if recipe == "classic":
        del settings["timesteps"], settings["sampling_steps"]
    settings.update(overrides)
    return Config.for_recipe(recipe, **settings)


def synthetic_images(count=24, seed=0):
    """uint8 images with some structure: a bright square on a dark, coloured background."""
    random = np.random.default_rng(seed)
    images = random.integers(0, 60, size=(count, 32, 32, 3), dtype=np.uint8)
    for index in range(count):
        top, left = random.integers(4, 20, size=2)
        images[index, top : top + 8, left : left + 8] = 230
    return images


@pytest.fixture
def images():
    return synthetic_images()


@pytest.fixture
def npz_path(tmp_path, images):
    path = tmp_path / "cars.npz"
    np.savez(path, x=images)
    return str(path)


def script_main(name):
    """The `main(argv)` of a script of the repository (train.py, predict.py), run in-process."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPOSITORY, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="session")
def tracked_run(tmp_path_factory):
    """A tiny run trained to step 4 with round ends at steps 2 and 4 and --track-kid 4, on
    random-weight InceptionV3 (nothing is downloaded). Tests read it; none may change it.
    """
    from tf_diffusion import commands

    folder = tmp_path_factory.mktemp("tracked")
    data = folder / "images.npz"
    np.savez(data, x=synthetic_images())
    settings = tiny_settings(
        data=str(data), max_steps=4, round_steps=2, track_kid=4, inception_weights="random"
    )
    commands.train(str(folder / "run"), None, settings, quiet=True)
    return folder / "run"
