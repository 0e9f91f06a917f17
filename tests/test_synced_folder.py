"""The faults of a weights folder synced file by file (Google Drive), injected one at a time.

Each fault either makes the run fall back to the newest whole checkpoint and
save again past it, or stops it with one line that says what to do; nothing
that was whole is lost or overwritten. Most tests drive `CheckpointStore`,
which `train.py` saves and resumes through, on a small stand-in model; the
first runs `train.py`'s command in-process, as the issue's user did.
"""

import contextlib
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_settings

from tf_diffusion import commands
from tf_diffusion.checkpoint import CheckpointStore, resolve_config
from tf_diffusion.config import Config, UsageError
from tf_diffusion.files import load_run_config
from tf_diffusion.lock import RunLock

DATA = "ckpt-{}.data-00000-of-00001"
INDEX = "ckpt-{}.index"


def stand_in(step=0):
    """What a checkpoint holds, in small: a step and some weights that depend on it."""
    return {"step": tf.Variable(step), "weights": tf.Variable(tf.fill([256], float(step)))}


def saved_run(folder, steps=(1, 2, 3)):
    """A folder with a checkpoint at each of `steps`, as a run saving on schedule leaves it."""
    trackables = stand_in()
    store = CheckpointStore(str(folder), trackables)
    for step in steps:
        trackables["step"].assign(step)
        trackables["weights"].assign(tf.fill([256], float(step)))
        store.save(step, Config())
    return str(folder)


def resume(folder, **keywords):
    """A new store on `folder` that restores, as a resumed run does: (store, path, step)."""
    trackables = stand_in()
    store = CheckpointStore(folder, trackables, **keywords)
    path = store.restore()
    step = int(trackables["step"].numpy())
    np.testing.assert_array_equal(trackables["weights"].numpy(), np.full(256, float(step)))
    return store, path, step


def save(store, step):
    store.checkpoint.step.assign(step)
    store.checkpoint.weights.assign(tf.fill([256], float(step)))
    return store.save(step, Config())


def on_record(folder):
    """The checkpoint names the pointer file lists, oldest first."""
    state = tf.train.get_checkpoint_state(folder)
    return [os.path.basename(path) for path in state.all_model_checkpoint_paths]


def contents(folder, prefix="ckpt-"):
    """The bytes of every file in `folder` whose name starts with `prefix`, by name."""
    paths = {name: os.path.join(folder, name) for name in os.listdir(folder)}
    return {
        name: open(path, "rb").read()
        for name, path in paths.items()
        if name.startswith(prefix) and os.path.isfile(path)
    }


def test_a_lost_data_file_is_saved_again_and_the_next_run_is_already_there(
    tmp_path, npz_path, capsys
):
    """The issue's commands: the newest checkpoint's data file never arrived; `train.py` run
    again falls back, saves that step anew, and a third run is already at the end."""
    run = tmp_path / "run"
    settings = tiny_settings(data=npz_path, max_steps=3, save_every=1)
    assert commands.train(str(run), None, settings, quiet=True) == 3
    os.remove(run / DATA.format(3))
    capsys.readouterr()
    assert commands.train(str(run), None, {}, quiet=True) == 3
    output = capsys.readouterr().out
    assert "falling back to ckpt-2" in output and f"Done: step 3 saved in {run}" in output
    assert INDEX.format(3) in os.listdir(run) and DATA.format(3) in os.listdir(run)
    assert on_record(str(run)) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert commands.train(str(run), None, {}, quiet=True) == 3
    assert "Already at step 3, which reaches --max-steps 3" in capsys.readouterr().out


def test_an_index_without_its_data_falls_back_and_the_pointer_follows(tmp_path, capsys):
    folder = saved_run(tmp_path / "run")
    os.remove(os.path.join(folder, DATA.format(3)))
    store, path, step = resume(folder)
    assert (os.path.basename(path), step) == ("ckpt-2", 2)
    output = capsys.readouterr().out
    assert "ckpt-3 is unreadable (no such file or directory); falling back to ckpt-2" in output
    assert "unreadable-" + INDEX.format(3) in os.listdir(folder)  # moved aside, not deleted
    assert store.latest_step == 2 and on_record(folder) == ["ckpt-1", "ckpt-2"]
    save(store, 3)  # the lost step, saved again when the run reaches it
    assert on_record(folder) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert resume(folder)[2] == 3


def test_data_without_its_index_is_not_a_checkpoint_and_its_step_is_saved_anew(tmp_path):
    folder = saved_run(tmp_path / "run")
    with open(os.path.join(folder, DATA.format(4)), "wb") as file:  # its index never arrived
        file.write(b"\0" * 100)
    store, path, step = resume(folder)
    assert step == 3
    save(store, 4)
    assert resume(folder)[2] == 4


def test_a_missing_pointer_file_resumes_from_the_newest_checkpoint_on_disk(tmp_path):
    folder = saved_run(tmp_path / "run")
    os.remove(os.path.join(folder, "checkpoint"))
    config, resumed, _ = resolve_config(folder)  # not a new run over the old one's files
    assert resumed
    store, path, step = resume(folder)
    assert step == 3 and on_record(folder) == ["ckpt-1", "ckpt-2", "ckpt-3"]


def test_a_stale_pointer_file_resumes_from_the_newest_whole_checkpoint(tmp_path):
    """The pointer of an earlier save arrived last: it names ckpt-2, but ckpt-3 is whole."""
    folder = saved_run(tmp_path / "run", steps=(1, 2))
    stale = open(os.path.join(folder, "checkpoint")).read()
    saved_run(folder, steps=(3,))
    with open(os.path.join(folder, "checkpoint"), "w") as file:
        file.write(stale)
    before = contents(folder)
    store, path, step = resume(folder)
    assert step == 3 and on_record(folder) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert contents(folder) == before  # nothing whole moved or rewritten


def test_a_pointer_naming_a_checkpoint_that_is_gone_falls_back(tmp_path, capsys):
    folder = saved_run(tmp_path / "run", steps=(1, 2, 3, 4))
    for name in (INDEX.format(4), DATA.format(4)):
        os.remove(os.path.join(folder, name))
    store, path, step = resume(folder)
    assert step == 3 and "falling back to ckpt-3" in capsys.readouterr().out
    assert store.latest_step == 3 and on_record(folder) == ["ckpt-2", "ckpt-3"]
    save(store, 4)
    assert on_record(folder) == ["ckpt-2", "ckpt-3", "ckpt-4"] and resume(folder)[2] == 4


def test_a_checkpoint_that_appears_after_the_run_started_is_moved_aside_not_overwritten(
    tmp_path, capsys
):
    folder = saved_run(tmp_path / "run")
    late = tmp_path / "late"  # ckpt-3's files, still on their way when the run starts
    late.mkdir()
    for name in (INDEX.format(3), DATA.format(3)):
        shutil.move(os.path.join(folder, name), late / name)
    store, path, step = resume(folder)
    assert step == 2
    arrived = {}
    for name in (INDEX.format(3), DATA.format(3)):
        arrived[name] = (late / name).read_bytes()
        shutil.copy(late / name, os.path.join(folder, name))
    save(store, 3)
    assert "ckpt-3 appeared in" in capsys.readouterr().out
    for name, data in arrived.items():
        with open(os.path.join(folder, "late-" + name), "rb") as file:
            assert file.read() == data
    assert resume(folder)[2] == 3


@contextlib.contextmanager
def read_only(folder):
    """Make `folder` read-only, as a Drive that lost its mount or quota does: for root, which
    permissions do not stop, a read-only bind mount over it; for others, its mode."""
    if os.geteuid() != 0:
        mode = os.stat(folder).st_mode
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, mode)
        return
    if subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode:
        pytest.skip("root here cannot bind-mount a folder read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", folder], check=True)
        yield
    finally:
        subprocess.run(["umount", folder], check=True)


def test_a_folder_turned_read_only_mid_run_stops_with_one_line(tmp_path):
    folder = saved_run(tmp_path / "run")
    lock = RunLock(folder)
    lock.acquire()
    try:
        store = resume(folder, before_save=lock.beat)[0]
        before = contents(folder)
        with read_only(folder), pytest.raises(UsageError) as error:
            save(store, 4)
    finally:
        lock.release()
    message = str(error.value)
    assert message.startswith(f"`weights_dir` {folder}: saving step 4 failed (")
    assert "read-only file system" in message or "permission denied" in message
    assert "(ckpt-3) is intact" in message and "Make the folder writable" in message
    assert "\n" not in message and "{{" not in message and "Op:" not in message
    assert contents(folder) == before
    assert resume(folder)[2] == 3


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (a tmpfs; root only), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    if subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("a small disk needs root to mount a tmpfs")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_disk_that_fills_mid_save_stops_with_one_line_and_resumes_once_there_is_room(
    small_disk,
):
    folder = str(small_disk / "run")
    trackables = {"step": tf.Variable(1), "weights": tf.Variable(tf.zeros([120_000]))}
    store = CheckpointStore(folder, trackables)  # 480 kB a checkpoint
    store.save(1, Config())
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 200_000))  # room for the config, not the next save
    before = contents(folder)
    with pytest.raises(UsageError) as error:
        store.save(2, Config())
    assert str(error.value) == (
        f"`weights_dir` {folder}: saving step 2 failed (no space left on device); the last "
        "good checkpoint (ckpt-1) is intact. Free some space (on Google Drive, empty the bin "
        "or raise the quota), then run the same command to resume"
    )
    assert contents(folder) == before and on_record(folder) == ["ckpt-1"]
    filler.unlink()
    store.save(2, Config())
    assert on_record(folder) == ["ckpt-1", "ckpt-2"]


def test_a_save_is_read_back_before_it_counts(tmp_path, monkeypatch):
    folder = saved_run(tmp_path / "run", steps=(1,))
    store = resume(folder)[0]
    write = tf.train.CheckpointManager.save

    def torn(manager, *arguments, **keywords):  # the data file arrives cut short
        path = write(manager, *arguments, **keywords)
        with open(path + ".data-00000-of-00001", "r+b") as file:
            file.truncate(8)
        return path

    monkeypatch.setattr(tf.train.CheckpointManager, "save", torn)
    with pytest.raises(UsageError, match=r"saving step 2 failed \(.*\(ckpt-1\) is intact"):
        save(store, 2)


def test_a_truncated_config_stops_with_one_line_and_changes_nothing(tmp_path):
    folder = saved_run(tmp_path / "run")
    path = os.path.join(folder, "config.json")
    text = open(path).read()
    with open(path, "w") as file:
        file.write(text[: len(text) // 2])
    before = contents(folder, prefix="")
    for load in (resolve_config, load_run_config):
        with pytest.raises(UsageError) as error:
            load(folder)
        message = str(error.value)
        assert message.startswith(f"`weights_dir` {folder}: config.json is truncated or not ")
        assert "`fresh`" in message and "\n" not in message
    assert contents(folder, prefix="") == before


def test_checkpoints_without_a_config_are_not_taken_for_a_new_run(tmp_path):
    folder = saved_run(tmp_path / "run")
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(UsageError, match="has checkpoints but no config.json; restore"):
        resolve_config(folder)
