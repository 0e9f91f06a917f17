"""A run folder written by an older version still resumes and samples exactly as it did then."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from conftest import REPOSITORY, synthetic_images

from tf_diffusion import commands
from tf_diffusion.checkpoint import load_for_sampling
from tf_diffusion.sampling import Sampler

LEGACY = os.path.join(REPOSITORY, "tests", "data")


def samples(weights_dir):
    config, model = load_for_sampling(str(weights_dir))
    return Sampler(model, config).sample(4, seed=0)


@pytest.mark.parametrize(
    "folder, tolerance_at_8",
    [
        # Written at commit 9ba6198 (its config.json has time_embedding), the first version.
        ("legacy-run", 1e-4),
        # Written at commit 4a79aa5, today's default recipe before the method moved into
        # diffusion.py: its levels counted from the noise, and the network is still given them.
        ("default-run", 1e-5),
    ],
)
def test_a_run_saved_by_an_older_version_resumes_and_samples_as_before(
    tmp_path, folder, tolerance_at_8
):
    run = tmp_path / "run"
    shutil.copytree(os.path.join(LEGACY, folder), run)
    expected = np.load(os.path.join(LEGACY, f"{folder}-expected.npz"))
    np.testing.assert_allclose(samples(run), expected["step_6"], atol=1e-5)

    data = tmp_path / "images.npz"
    np.savez(data, x=synthetic_images())
    assert commands.train(str(run), None, {"data": str(data), "max_steps": 8}, quiet=True) == 8
    np.testing.assert_allclose(samples(run), expected["step_8"], atol=tolerance_at_8)


# The first version's `Config` field defaults, for the settings it had.
FIRST_DEFAULT = {
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
    "precision": "float32",  # then the mixed_precision switch, off
}


def test_settings_added_since_the_first_version_take_its_values_when_missing(tmp_path):
    """A config.json from the first version never takes a newer default for a setting it lacks."""
    from tf_diffusion.config import FIRST_VERSION, RECIPES, Config

    with open(os.path.join(LEGACY, "legacy-run", "config.json")) as file:
        saved = json.load(file)
    assert not set(FIRST_VERSION) & set(saved)
    config = Config.from_dict(saved)
    for name, value in FIRST_VERSION.items():
        assert getattr(config, name) == value
    # The v1 recipe is that first version's default: what Config() was then (9ba6198),
    # whatever today's field defaults.
    v1 = Config.for_recipe("v1")
    assert {name: getattr(v1, name) for name in RECIPES["v1"]} == {
        **FIRST_VERSION,
        **FIRST_DEFAULT,
    }


def test_every_setting_has_a_value_for_runs_saved_before_it_existed():
    """A new `Config` field needs the value that reproduces the first version in FIRST_VERSION:
    else a config.json saved before the field existed would take today's default on resume."""
    from tf_diffusion.config import FIRST_VERSION, RETIRED_SETTINGS, Config

    with open(os.path.join(LEGACY, "legacy-run", "config.json")) as file:
        first = set(json.load(file)) - set(RETIRED_SETTINGS) - {"mixed_precision"} | {"precision"}
    fields = [field.name for field in dataclasses.fields(Config)]
    missing = [name for name in fields if name not in first and name not in FIRST_VERSION]
    assert not missing, f"add the first version's value of {missing} to FIRST_VERSION"
    assert set(FIRST_VERSION) <= set(fields) and not set(FIRST_VERSION) & first


@pytest.mark.parametrize("recipe", ["v2", "v1", "classic"])
def test_a_recipe_kept_by_name_pins_every_setting_but_the_runs_own(recipe):
    """v2, v1 and the classic are controls: a new field's default must not change them."""
    from tf_diffusion.config import RECIPES, RUN_SETTINGS, Config

    fields = [field.name for field in dataclasses.fields(Config)]
    unpinned = [name for name in fields if name not in set(RECIPES[recipe]) | set(RUN_SETTINGS)]
    assert not unpinned, f"recipe {recipe!r} takes today's default of {unpinned}; pin them"
    assert set(RUN_SETTINGS) <= set(fields)  # no setting named there by mistake


@pytest.mark.parametrize("saved, precision", [(True, "mixed_float16"), (False, "float32")])
def test_the_old_mixed_precision_switch_reads_as_its_precision(saved, precision):
    """config.json saved `mixed_precision` true or false before --precision replaced it."""
    from tf_diffusion.config import Config

    with open(os.path.join(LEGACY, "legacy-run", "config.json")) as file:
        values = json.load(file)
    assert values["mixed_precision"] is False
    values["mixed_precision"] = saved
    config = Config.from_dict(values)
    assert config.precision == precision and not hasattr(config, "mixed_precision")
