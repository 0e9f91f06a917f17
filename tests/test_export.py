"""predict.py --export: a SavedModel sampler that needs only TensorFlow, a .keras U-Net, a card."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPOSITORY, script_main, tiny_config

from tf_diffusion.checkpoint import load_for_sampling
from tf_diffusion.export import make_generator
from tf_diffusion.images import to_uint8
from tf_diffusion.model import make_model
from tf_diffusion.sampling import Sampler

# Runs in a fresh interpreter, in an empty folder, with PYTHONPATH cleared.
LOAD_AND_GENERATE = """
import sys

import numpy as np
import tensorflow as tf

try:
    import tf_diffusion
except ModuleNotFoundError:
    pass
else:
    sys.exit(f"tf_diffusion is importable from {tf_diffusion.__file__}")
generator = tf.saved_model.load(sys.argv[1])
images = generator.generate(num=8, seed=0, steps=4).numpy()
served = generator.signatures["serving_default"](
    num=tf.constant(8), seed=tf.constant(0), steps=tf.constant(4)
)
assert list(served) == ["images"]
np.testing.assert_array_equal(served["images"].numpy(), images)
np.save(sys.argv[2], images)
"""


@pytest.fixture(scope="module")
def exported(tracked_run, tmp_path_factory):
    """The export of the tracked run, from a copy that samples in bfloat16: exports stay float32."""
    folder = tmp_path_factory.mktemp("export")
    run = shutil.copytree(tracked_run, folder / "run")
    settings = json.loads((run / "config.json").read_text())
    settings["sampling_precision"] = "mixed_bfloat16"
    (run / "config.json").write_text(json.dumps(settings))
    arguments = ["--weights-dir", str(run), "--export", str(folder / "cars")]
    assert script_main("predict.py")(arguments) == 0
    return folder / "cars"


def test_the_generator_loads_without_tf_diffusion_and_gives_predicts_images(
    tracked_run, exported, tmp_path
):
    npz = tmp_path / "predicted.npz"
    arguments = ["--weights-dir", str(tracked_run), "--num", "8", "--seed", "0"]
    arguments += ["--sampling-steps", "4", "--npz", str(npz), "--out", str(tmp_path / "grid.png")]
    arguments += ["--sampling-precision", "float32"]  # as the model card's command
    assert script_main("predict.py")(arguments) == 0
    predicted = np.load(npz)["x"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, str(exported / "generator"), "generated.npy"],
        cwd=elsewhere,
        env=dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    generated = np.load(elsewhere / "generated.npy")
    assert generated.dtype == np.uint8 and generated.shape == (8, 32, 32, 3)
    assert generated.std() > 10  # pictures, not a constant
    difference = np.abs(generated.astype(int) - predicted.astype(int))
    assert difference.max() <= 1  # within 1/255 per pixel


def test_the_keras_file_loads_in_safe_mode_and_matches_the_checkpoint(tracked_run, exported):
    unet = keras.saving.load_model(str(exported / "unet.keras"), safe_mode=True)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in unet.layers)
    assert unet.dtype_policy.name == "float32"  # though the run samples in bfloat16
    _, model = load_for_sampling(str(tracked_run))  # the EMA weights
    images = tf.random.stateless_normal((4, 32, 32, 3), (1, 2))
    levels = tf.constant([[0.0], [3.0], [11.0], [20.0]])
    expected = model([images, levels]).numpy()
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(unet([images, levels]).numpy(), expected, atol=1e-5, rtol=0)


LOAD_KERAS_FILE = """
import sys
import tf_diffusion  # nothing else of the package: this alone registers its layers
import keras
unet = keras.saving.load_model(sys.argv[1], safe_mode=True)
print(unet.name, unet.count_params())
"""


def test_importing_the_package_is_enough_to_load_the_keras_file_from_another_folder(
    exported, tmp_path
):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_KERAS_FILE, str(exported / "unet.keras")],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=REPOSITORY, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "residual_unet"


def test_the_model_card_says_what_the_model_is_and_how_to_load_it(exported):
    card = (exported / "README.md").read_text()
    for fragment in [
        "| recipe | default (residual U-Net, width 8, 1 block a resolution) |",
        "| training | velocity prediction, mse loss, min-snr weights |",
        "| class | 1 (automobile) |",
        "| steps trained | 4 |",
        "| images seen | 16 (4 steps of 4) |",
        "| data | `images.npz` (class 1) |",
        "| sampler | DPM-Solver++(2M), 5 steps over uniform-spaced levels by default",
        "| quality | FID ",  # measured by --track-kid at step 4
        'generator = tf.saved_model.load("generator")',
        "images = generator.generate(num=16, seed=0, steps=5).numpy()",
        "python predict.py --num 16 --seed 0 --sampling-steps 5 "
        "--sampler dpm-solver++ --spacing uniform --sampling-precision float32\n",
        "keras.saving.load_model",
    ]:
        assert fragment in card
    assert sorted(os.listdir(exported)) == ["README.md", "generator", "unet.keras"]


def test_steps_zero_takes_the_default_and_bad_steps_are_refused(exported):
    generator = tf.saved_model.load(str(exported / "generator"))
    by_default = generator.generate(num=2, seed=3, steps=0).numpy()
    np.testing.assert_array_equal(by_default, generator.generate(num=2, seed=3, steps=5).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="steps must be from 1 to 20"):
        generator.generate(num=2, seed=3, steps=21)
    with pytest.raises(tf.errors.InvalidArgumentError, match="num must be at least 1"):
        generator.generate(num=0, seed=3, steps=5)


@pytest.mark.parametrize("sampler, spacing", [("dpm-solver++", "uniform"), ("heun", "edm")])
def test_the_generator_runs_each_sampler_as_predict_does_at_any_steps(
    tracked_run, sampler, spacing
):
    config, model = load_for_sampling(str(tracked_run), sampler=sampler, spacing=spacing)
    generate, _ = make_generator(model, config)
    for steps in [3, 7]:
        expected = Sampler(model, config.replace(sampling_steps=steps)).sample(3, seed=2)
        generated = generate(num=3, seed=2, steps=steps).numpy()
        assert np.abs(generated.astype(int) - to_uint8(expected).astype(int)).max() <= 1


def test_a_classic_generator_takes_all_levels():
    config = tiny_config("classic")
    model = make_model(config)
    generate, _ = make_generator(model, config)
    expected = to_uint8(Sampler(model, config).sample(2, seed=1))
    np.testing.assert_array_equal(generate(num=2, seed=1, steps=0).numpy(), expected)
    np.testing.assert_array_equal(generate(num=2, seed=1, steps=16).numpy(), expected)
    with pytest.raises(tf.errors.InvalidArgumentError, match="takes all 16 steps; pass 0 or 16"):
        generate(num=2, seed=1, steps=8)


def test_an_export_never_overwrites_a_folder_nor_leaves_half_of_one(
    tracked_run, tmp_path, capsys, monkeypatch
):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    main = script_main("predict.py")
    with pytest.raises(SystemExit) as exit:  # refused before TensorFlow loads, as argparse does
        main(["--weights-dir", str(tracked_run), "--export", str(taken)])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --export {taken} already exists") and error.count("\n") == 1

    from tf_diffusion import export
    from tf_diffusion.config import UsageError

    with pytest.raises(UsageError, match="already exists and is not an empty folder"):
        export.export_run(str(tracked_run), str(taken))  # checked here too, not only by predict.py
    assert os.listdir(taken) == ["mine.txt"] and (taken / "mine.txt").read_text() == "keep me"

    def fail(*arguments):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export, "model_card", fail)  # after the SavedModel and unet.keras
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_run(str(tracked_run), str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]  # neither new/ nor a partial folder
