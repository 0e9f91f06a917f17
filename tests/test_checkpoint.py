import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPOSITORY, synthetic_images, tiny_config, tiny_flags, tiny_settings

from tf_diffusion import commands
from tf_diffusion.checkpoint import CheckpointStore, load_for_sampling, resolve_config
from tf_diffusion.cli import check_folder_path
from tf_diffusion.config import Config, UsageError
from tf_diffusion.data import scale_images
from tf_diffusion.files import load_config
from tf_diffusion.lock import RunLock
from tf_diffusion.trainer import Trainer


def train(weights_dir, npz_path, max_steps, **settings):
    overrides = tiny_settings(data=npz_path, max_steps=max_steps, **settings)
    return commands.train(str(weights_dir), None, overrides, quiet=True)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A tiny run trained to step 2, saved at steps 1 and 2, and its data. Tests take a copy."""
    folder = tmp_path_factory.mktemp("two-steps")
    data = str(folder / "cars.npz")
    np.savez(data, x=synthetic_images())
    train(folder / "run", data, 2, save_every=1)
    return folder / "run", data


@pytest.fixture
def run_at_2(two_steps, tmp_path):
    """A copy of the `two_steps` run in tmp_path/run, and its data."""
    source, data = two_steps
    shutil.copytree(source, tmp_path / "run")
    return tmp_path / "run", data


def checkpoint_tensors(path):
    """Every numeric tensor of a checkpoint (or a folder's newest), by name, but save_counter."""
    reader = tf.train.load_checkpoint(str(path))
    tensors = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_numpy_compatible and dtype != tf.string and "save_counter" not in name:
            tensors[name] = reader.get_tensor(name)
    names = " ".join(reader.get_variable_to_dtype_map())
    for part in ("model/", "ema_model/", "optimizer/", "iterations", "batches_seen"):
        assert part in names, f"the checkpoint holds no {part}"
    return tensors


def assert_same_tensors(first, second):
    assert sorted(first) == sorted(second)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def run_train(weights_dir, npz_path, max_steps, *extra):
    """train.py in a fresh process, as a real restart; deterministic ops, as in the issue."""
    command = [
        sys.executable,
        os.path.join(REPOSITORY, "train.py"),
        *tiny_flags(),
        "--quiet",
        f"--data={npz_path}",
        f"--weights-dir={weights_dir}",
        f"--max-steps={max_steps}",
        *extra,
    ]
    environment = dict(os.environ, TF_DETERMINISTIC_OPS="1", TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_sessions_ended_by_the_clock_and_by_step_end_exactly_where_a_straight_run_ends(
    tmp_path, npz_path, capsys
):
    """Two train.py sessions, each a real restart, in bfloat16 as this CPU trains by default:
    the first ends by --max-minutes, the second by --stop-at. Neither touches --max-steps, which
    the default's rate decays to, so they meet a straight run (which also saves on the way,
    and saving changes nothing) at the same step, bit for bit."""
    bfloat16 = "--precision=mixed_bfloat16"
    pieces = tmp_path / "pieces"
    started = time.monotonic()
    output = run_train(pieces, npz_path, 100000, "--max-minutes=0.1", bfloat16)
    assert time.monotonic() - started > 6  # at least the 6 s of training it was given
    stopped = re.search(r"Stopped after --max-minutes 0.1: step (\d+) saved in ", output)
    assert stopped, output
    reached = int(stopped[1])
    assert reached > 0 and f"ckpt-{reached}.index" in os.listdir(pieces)
    # The run's class, by its name in any case, is no change of settings.
    output = run_train(
        pieces, npz_path, 100000, f"--stop-at={reached + 3}", "--label=AutoMobile", bfloat16
    )
    assert (
        f"Resuming from step {reached} (ckpt-{reached}) in {pieces}, mixed_bfloat16, 1 " in output
    )
    with open(pieces / "config.json") as file:
        assert json.load(file)["max_steps"] == 100000  # the schedule's end is untouched
    settings = tiny_settings(data=npz_path, max_steps=100000, precision="mixed_bfloat16")
    assert commands.train(str(pieces), None, settings, stop_at=reached + 3) == reached + 3
    assert f"Already at step {reached + 3}, which reaches --stop-at" in capsys.readouterr().out
    straight = tmp_path / "straight"
    run_train(straight, npz_path, 100000, f"--stop-at={reached + 3}", "--save-every=2", bfloat16)
    resumed = checkpoint_tensors(pieces)
    assert_same_tensors(checkpoint_tensors(straight / f"ckpt-{reached + 3}"), resumed)
    iterations = [name for name in resumed if "iterations" in name]
    assert iterations and all(resumed[name] == reached + 3 for name in iterations)
    assert not any(name.startswith("loss_scale/") for name in resumed)  # bfloat16: no scaling


def test_resume_keeps_saved_settings_and_rejects_changed_ones(tmp_path, run_at_2):
    config, resumed, _ = resolve_config(str(tmp_path / "run"), overrides={"max_steps": 9})
    assert resumed and config.learning_rate == 2e-3 and config.width == 8 and config.max_steps == 9
    with pytest.raises(UsageError) as error:
        resolve_config(str(tmp_path / "run"), overrides={"width": 16, "batch_size": 8})
    message = str(error.value)
    assert "width is 8 there, 16 asked" in message and "batch_size is 4 there, 8 asked" in message
    assert "`fresh`" in message and "\n" not in message
    with pytest.raises(UsageError, match="recipe is 'default' there, 'classic' asked"):
        resolve_config(str(tmp_path / "run"), recipe="classic")


def test_fresh_moves_the_old_run_aside(tmp_path, run_at_2):
    before = sorted(os.listdir(tmp_path / "run"))
    config, resumed, moved_to = resolve_config(
        str(tmp_path / "run"), overrides={"width": 16}, fresh=True
    )
    assert not resumed and config.width == 16
    assert sorted(os.listdir(moved_to)) == before
    assert not os.path.exists(tmp_path / "run")


def test_unreadable_newest_checkpoint_falls_back_to_the_previous_one(run_at_2, capsys):
    run, npz_path = run_at_2
    state = tf.train.get_checkpoint_state(str(run))
    assert [os.path.basename(path) for path in state.all_model_checkpoint_paths] == [
        "ckpt-1",
        "ckpt-2",
    ]
    data_file = next(name for name in os.listdir(run) if name.startswith("ckpt-2.data"))
    with open(run / data_file, "r+b") as file:  # a save cut short by a lost Drive mount
        file.truncate(100)
    assert train(run, npz_path, 3) == 3
    output = capsys.readouterr().out
    assert "ckpt-2 is unreadable" in output and "falling back to ckpt-1" in output
    assert "Resuming from step 1" in output
    assert any(name.startswith("unreadable-ckpt-2") for name in os.listdir(run))


def test_a_half_written_save_is_invisible(run_at_2):
    run, npz_path = run_at_2
    # What a kill in the middle of the next save leaves: data without index or pointer.
    (run / "ckpt-3.data-00000-of-00001.tempstate123").write_bytes(b"partial")
    (run / "ckpt-3.data-00000-of-00001").write_bytes(b"partial")
    assert train(run, npz_path, 4) == 4
    assert os.path.basename(tf.train.latest_checkpoint(str(run))) == "ckpt-4"


def test_failed_save_keeps_the_last_good_checkpoint(run_at_2, monkeypatch):
    run, npz_path = run_at_2
    before = {
        name: (run / name).read_bytes() for name in os.listdir(run) if name.startswith("ckpt")
    }

    def disk_full(self, *arguments, **keywords):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    with pytest.raises(
        UsageError, match=r"saving step 3 failed \(no space left on device\).*ckpt-2"
    ):
        train(run, npz_path, 3)
    after = {name: (run / name).read_bytes() for name in os.listdir(run) if name.startswith("ckpt")}
    assert after == before
    assert tf.train.get_checkpoint_state(str(run)).model_checkpoint_path.endswith("ckpt-2")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_weights_dir_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(UsageError, match="cannot take the lock .*; choose a folder you can write"):
        RunLock(str(locked / "run")).acquire()


def test_weights_dir_that_is_a_file_is_a_usage_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_folder_path("weights_dir", str(path))


def test_config_is_saved_beside_the_checkpoint(run_at_2):
    run, npz_path = run_at_2
    with open(run / "config.json") as file:
        saved = json.load(file)
    assert Config.from_dict(saved) == load_config(str(run))
    assert saved["width"] == 8 and saved["data"] == npz_path


def test_store_without_checkpoints_restores_nothing(tmp_path):
    store = CheckpointStore(str(tmp_path), {"step": tf.Variable(0)})
    assert store.restore() is None


def test_a_checkpoint_from_another_model_is_an_error_and_nothing_is_moved(tmp_path):
    store = CheckpointStore(str(tmp_path), {"step": tf.Variable(3), "other": tf.Variable(1.0)})
    store.save(3, Config())
    before = sorted(os.listdir(tmp_path))
    newer_code = CheckpointStore(str(tmp_path), {"step": tf.Variable(0), "extra": tf.Variable(2.0)})
    with pytest.raises(UsageError, match="ckpt-3 does not fit this version's model"):
        newer_code.restore()
    assert sorted(os.listdir(tmp_path)) == before


def test_a_run_in_a_relative_folder_resumes(tmp_path, monkeypatch):
    # The default --weights-dir, "checkpoints", is relative to the working folder.
    monkeypatch.chdir(tmp_path)
    os.mkdir("checkpoints")
    CheckpointStore("checkpoints", {"step": tf.Variable(3)}).save(3, Config())
    step = tf.Variable(0)
    assert CheckpointStore("checkpoints", {"step": step}).restore() == "checkpoints/ckpt-3"
    assert int(step.numpy()) == 3


def test_a_float16_run_resumes_exactly_loss_scale_included(tmp_path, npz_path):
    """The exact-resume check above for a float16 run (which runs on CPU too).

    The run interrupted after step 1 is the straight run's folder cut back to
    ckpt-1: what a run stopped there leaves (saving changes nothing), for one
    process less. `--mixed-precision` is `--precision mixed_float16`.
    """
    precision = "--mixed-precision"
    straight = tmp_path / "straight"
    run_train(straight, npz_path, 2, "--save-every=1", precision)
    interrupted = tmp_path / "interrupted"
    shutil.copytree(straight, interrupted)
    for name in os.listdir(interrupted):
        if name.startswith("ckpt-2."):
            os.remove(interrupted / name)
    (interrupted / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n'
    )
    output = run_train(interrupted, npz_path, 2, precision)
    assert f"Resuming from step 1 (ckpt-1) in {interrupted}, mixed_float16, 1 thread" in output
    straight_1 = checkpoint_tensors(straight / "ckpt-1")
    straight_2 = checkpoint_tensors(straight / "ckpt-2")
    resumed = checkpoint_tensors(interrupted)
    assert_same_tensors(straight_2, resumed)
    scale, finite_steps = (f"loss_scale/{name}/.ATTRIBUTES/VARIABLE_VALUE" for name in LOSS_SCALE)
    assert straight_1[scale] == resumed[scale] == 2.0**15
    # The count of finite steps decides when the scale grows; a restarted one would be 1.
    assert (straight_1[finite_steps], resumed[finite_steps]) == (1, 2)
    assert json.loads((straight / "config.json").read_text())["precision"] == "mixed_float16"


LOSS_SCALE = ("dynamic_scale", "step_counter")


def test_a_run_may_switch_mixed_precision_when_it_resumes(tmp_path):
    def store(trainer):
        return CheckpointStore(str(tmp_path), trainer.trackables())

    float32 = Trainer(tiny_config())
    float32.batches_seen.assign(5)
    store(float32).save(1, float32.config)
    mixed = Trainer(tiny_config(precision="mixed_float16"))
    assert store(mixed).restore().endswith("ckpt-1")  # a checkpoint with no loss scale
    assert int(mixed.batches_seen.numpy()) == 5
    assert float(mixed.optimizer.dynamic_scale.numpy()) == 2.0**15  # it starts afresh
    for ours, saved in zip(mixed.model.weights, float32.model.weights):
        np.testing.assert_array_equal(ours.numpy(), saved.numpy())
    mixed.batches_seen.assign(7)
    mixed.optimizer.step_counter.assign(3)
    store(mixed).save(2, mixed.config)
    back = Trainer(tiny_config())
    assert store(back).restore().endswith("ckpt-2")  # its loss scale is left unread
    assert int(back.batches_seen.numpy()) == 7


def test_a_reader_starts_again_when_the_run_pruned_what_it_was_reading(tmp_path, monkeypatch):
    writer = CheckpointStore(str(tmp_path), {"step": tf.Variable(0)}, keep=2)
    for step in (1, 2, 3, 4):
        writer.checkpoint.step.assign(step)
        writer.save(step, Config())
    # What a reader listed just before the run saved twice and pruned both.
    stale = [str(tmp_path / "ckpt-2"), str(tmp_path / "ckpt-1")]
    listings = iter([stale])
    current = CheckpointStore.candidates
    monkeypatch.setattr(
        CheckpointStore, "candidates", lambda self: next(listings, None) or current(self)
    )
    before = sorted(os.listdir(tmp_path))
    step = tf.Variable(0)
    path = CheckpointStore(str(tmp_path), {"step": step}).restore(expect_partial=True, reader=True)
    assert path == str(tmp_path / "ckpt-4") and int(step.numpy()) == 4
    assert sorted(os.listdir(tmp_path)) == before  # a reader moves nothing


def test_every_kept_ema_averages_at_its_own_decay_and_predict_picks_one_by_name(tmp_path):
    # Caps of 0.1 and 0.2 bind from the first steps, where (1 + step) / (10 + step) is 0.1-0.25.
    config = tiny_config(ema_decay=0.2, more_ema_decays="0.1", learning_rate=1e-2)
    config = config.replace(weights_dir=str(tmp_path / "run"))
    trainer = Trainer(config)
    images = scale_images(synthetic_images(4))
    expected = {decay: [w.numpy() for w in trainer.model.weights] for decay in (0.1, 0.2)}
    for step in range(3):
        trainer.train_one(images)
        for most, averages in expected.items():
            decay = min(most, (1 + step + 1) / (10 + step + 1))
            for index, weight in enumerate(trainer.model.weights):
                averages[index] = decay * averages[index] + (1 - decay) * weight.numpy()
    assert list(config.emas) == [0.2, 0.1]
    for decay, averages in expected.items():
        kept = trainer.ema_models[decay].weights
        for average, weight in zip(averages, kept):
            np.testing.assert_allclose(weight.numpy(), average, rtol=1e-5, atol=1e-6)
    CheckpointStore(config.weights_dir, trainer.trackables()).save(trainer.step, config)

    for ema, weights in [(None, trainer.ema_models[0.2]), ("0.1", trainer.ema_models[0.1])]:
        _, model = load_for_sampling(config.weights_dir, ema)
        for loaded, saved in zip(model.weights, weights.weights):
            np.testing.assert_array_equal(loaded.numpy(), saved.numpy())
    _, model = load_for_sampling(config.weights_dir, "none")  # the trained weights
    np.testing.assert_array_equal(model.weights[0].numpy(), trainer.model.weights[0].numpy())
    with pytest.raises(UsageError, match=r"^`ema` 0.5: the run keeps no such EMA; .*0.2, 0.1, or"):
        load_for_sampling(config.weights_dir, "0.5")
