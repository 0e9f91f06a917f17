"""--track-kid: KID and FID at round ends in TensorBoard, the best checkpoint, predict --best."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import script_main

from tf_diffusion.checkpoint import CheckpointStore, load_for_sampling
from tf_diffusion.config import Config, UsageError
from tf_diffusion.files import load_config
from tf_diffusion.images import to_uint8
from tf_diffusion.sampling import Sampler


def logged_scalars(weights_dir):
    """{tag: {step: value}} of the scalars in the run's TensorBoard logs."""
    scalars = {}
    for path in glob.glob(os.path.join(weights_dir, "logs", "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    number = float(tf.make_ndarray(value.tensor))
                    scalars.setdefault(value.tag, {})[event.step] = number
    return scalars


def test_track_kid_logs_kid_and_fid_at_each_round_end_and_keeps_the_lowest_kid(tracked_run):
    scalars = logged_scalars(tracked_run)
    assert sorted(scalars["kid"]) == [2, 4] and sorted(scalars["fid"]) == [2, 4]
    with open(tracked_run / "quality.json") as file:
        records = json.load(file)["measurements"]
    assert [record["step"] for record in records] == [2, 4]
    for record in records:
        assert record["kid"] == pytest.approx(scalars["kid"][record["step"]], rel=1e-5)
        assert record["fid"] == pytest.approx(scalars["fid"][record["step"]], rel=1e-5)
        assert record["samples"] == record["real"] == 4
    lowest = min(records, key=lambda record: record["kid"])
    best = tracked_run / "best"
    assert CheckpointStore(str(best), {}).latest_step == lowest["step"]
    assert (best / f"ckpt-{lowest['step']}.index").exists()
    assert len(glob.glob(str(best / "ckpt-*.index"))) == 1
    assert load_config(str(best)).track_kid == 4


def test_predict_best_samples_from_the_best_checkpoint(tracked_run, tmp_path, capsys):
    npz = tmp_path / "best.npz"
    arguments = ["--weights-dir", str(tracked_run), "--best", "--num", "4", "--npz", str(npz)]
    assert script_main("predict.py")([*arguments, "--out", str(tmp_path / "best.png")]) == 0
    assert f"4 samples from {tracked_run / 'best'}" in capsys.readouterr().out
    config, model = load_for_sampling(str(tracked_run / "best"))
    expected = to_uint8(Sampler(model, config).sample(4, seed=0))
    np.testing.assert_array_equal(np.load(npz)["x"], expected)


def test_track_kid_is_refused_where_only_one_worker_could_save_the_best():
    with pytest.raises(UsageError, match="not available with `distribute` multi-worker"):
        Config(track_kid=500, distribute="multi-worker")
    Config(track_kid=500, distribute="mirrored")


def test_a_config_saved_before_track_kid_existed_loads_with_tracking_off():
    saved = Config().to_dict()
    del saved["track_kid"], saved["inception_weights"]
    config = Config.from_dict(saved)
    assert config.track_kid == 0 and config.inception_weights == "imagenet"


def test_best_moves_only_to_a_lower_kid_measured_the_same_way(tmp_path, monkeypatch):
    """Scripted KIDs 0.5, 0.3, 0.4: best/ holds step 4; after a change of Inception weights
    the old best is not comparable, so the next measurement (0.9) starts a new best."""
    import io

    from conftest import tiny_config

    from tf_diffusion import tracking
    from tf_diffusion.loop import Progress

    kids = iter([0.5, 0.3, 0.4, 0.9])

    class ScriptedQuality:
        def __init__(self, real, weights):
            self.real = len(real)

        def __call__(self, generated):
            kid = next(kids)
            return {"kid": kid, "kid_std": 0.0, "fid": 100 * kid, "generated": 4, "real": 4}

    class Parts:  # the trainer's trackables and the sampler, without a network
        weights = tf.Variable(0.0)

        def trackables(self):
            return {"weights": self.weights}

        def sample(self, num, seed):
            return np.zeros((num, 32, 32, 3), np.float32)

    monkeypatch.setattr(tracking, "QualityTracker", ScriptedQuality)
    stream = io.StringIO()
    progress = Progress(0, 8, 4, stream=stream)
    images = np.zeros((10, 32, 32, 3), np.uint8)
    parts = Parts()

    def best_after(config, steps):
        tracker = tracking.KidTracker(parts, config, images, parts, progress)
        for step in steps:
            parts.weights.assign(float(step))
            tracker(step)
        best = CheckpointStore(str(tmp_path / "best"), parts.trackables())
        best.restore()
        return best.latest_step, float(parts.weights.numpy())

    config = tiny_config(weights_dir=str(tmp_path), track_kid=4, inception_weights="random")
    assert best_after(config, [2, 4, 6]) == (4, 4.0)
    assert "step 4: KID 0.3" in stream.getvalue() and "lowest so far" in stream.getvalue()
    assert best_after(config.replace(inception_weights="imagenet"), [8]) == (8, 8.0)
    assert [r["step"] for r in tracking.read_records(str(tmp_path))] == [2, 4, 6, 8]


@pytest.mark.parametrize(
    "script, arguments, fragments",
    [
        ("predict.py", ["--best"], ["--best: --weights-dir", "has no best checkpoint"]),
        ("predict.py", ["--seed", "2147483648"], ["--seed must be from 0 to 2147483647"]),
        ("predict.py", ["--export", "RUN"], ["run already exists and is not an empty folder"]),
        ("train.py", ["--track-kid", "1"], ["--track-kid must be 0 (off) or at least 2, got 1"]),
        ("train.py", ["--inception-weights", "x.h5"], ["--inception-weights x.h5: no such file"]),
    ],
    ids=["best", "seed", "export", "track-kid", "inception-weights"],
)
def test_new_flags_are_checked_before_tensorflow_loads(tmp_path, script, arguments, fragments):
    import shutil

    from conftest import REPOSITORY
    from test_cli import assert_usage_error, run_without_tensorflow

    run_folder = tmp_path / "run"
    shutil.copytree(os.path.join(REPOSITORY, "tests", "data", "legacy-run"), run_folder)
    arguments = [str(run_folder) if argument == "RUN" else argument for argument in arguments]
    result = run_without_tensorflow(tmp_path, script, "--weights-dir", run_folder, *arguments)
    assert result.stderr.count("\n") == 1, result.stderr  # exactly one line
    assert_usage_error(result, *fragments)
