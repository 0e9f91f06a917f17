"""Saving and restoring a run: TF checkpoints plus `config.json` in the weights folder.

A save either completes or is invisible. `tf.train.CheckpointManager` writes
a new numbered checkpoint (`ckpt-<step>.index` and `.data-*`, each written to
a temporary name and renamed) and only then rewrites the small `checkpoint`
pointer file, atomically. A run killed in the middle of a save leaves the
pointer on the previous checkpoint. Each save first renews the run's lock
(`lock.py`), and is read back before the run says it is saved.

A folder synced file by file (Google Drive) can lose or delay any file. So the
run that holds the lock trusts the files over the pointer: it resumes from the
newest checkpoint on disk or on record that reads whole, moves the unreadable
ones aside (renamed, never deleted), and rewrites the pointer to match. A
whole checkpoint that appears only after the run started is moved aside too
before the run saves that step, never overwritten. A reader (`predict.py`)
takes no lock, trusts the pointer and moves nothing; when the run it reads
prunes a checkpoint under it, it reads the pointer again.
"""

import datetime
import os
import re
import shutil
import time

import tensorflow as tf

from tf_diffusion import UsageError
from tf_diffusion.config import CONFIG_FILENAME, Config
from tf_diffusion.files import (
    load_config,
    load_run_config,
    no_checkpoint_error,
    save_config,
    write_atomically,
)
from tf_diffusion.hardware import dtype_policy, sampling_policy
from tf_diffusion.lock import LOCK_FILENAME
from tf_diffusion.model import make_model

CHECKPOINT_PREFIX = "ckpt"
POINTER_FILENAME = "checkpoint"  # tf.train.CheckpointManager's name for it
CHECKPOINT_INDEX = re.compile(rf"{CHECKPOINT_PREFIX}-(\d+)\.index")
# Objects a checkpoint may lack: only mixed_float16 runs save their loss scale,
# and a run may switch --precision when it resumes (it then starts afresh).
OPTIONAL_OBJECTS = ("loss_scale",)
# How often a reader starts again from the newest checkpoint when the run pruned the one it read.
READER_REREADS = 20
# Seconds to pause inside each save, between the files and the pointer (tests only).
SAVE_DELAY_VARIABLE = "TF_DIFFUSION_SAVE_DELAY_SECONDS"


def has_checkpoint(directory):
    """Whether `directory` holds a run's checkpoint: on record, or its files alone."""
    if not directory or not os.path.isdir(directory):
        return False
    return tf.train.get_checkpoint_state(directory) is not None or bool(on_disk(directory))


def on_disk(directory):
    """The paths of the checkpoints whose index file is in `directory`, newest first."""
    steps = [CHECKPOINT_INDEX.fullmatch(name) for name in os.listdir(directory)]
    steps = sorted((int(match[1]) for match in steps if match), reverse=True)
    return [os.path.join(directory, f"{CHECKPOINT_PREFIX}-{step}") for step in steps]


def checkpoint_files(path):
    """The names of the files of checkpoint `path` (ckpt-N) in its folder: index and data."""
    folder, name = os.path.split(path)
    if not os.path.isdir(folder):
        return []
    return [
        file_name
        for file_name in sorted(os.listdir(folder))
        if file_name == name + ".index" or file_name.startswith(name + ".data-")
    ]


def is_whole(path):
    """Whether checkpoint `path` has its index and every data shard the shards' names count."""
    files = checkpoint_files(path)
    shards = [name.rsplit("-of-", 1) for name in files if ".data-" in name]
    if os.path.basename(path) + ".index" not in files or not shards:
        return False
    return len(shards) == int(shards[0][1]) and all(len(shard) == 2 for shard in shards)


def move_aside(directory):
    """Rename `directory` to `<directory>.old-<timestamp>` and return the new name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = f"{directory.rstrip(os.sep)}.old-{stamp}"
    suffix = 1
    while os.path.exists(target):
        suffix += 1
        target = f"{directory.rstrip(os.sep)}.old-{stamp}-{suffix}"
    shutil.move(directory, target)
    return target


def resolve_config(directory, recipe=None, overrides=None, fresh=False, lock=None, defaults=None):
    """The config of the run in `directory`: the saved one, or a new one.

    `overrides` are the settings the user gave explicitly. A saved run keeps
    its settings unless overridden; overriding one that defines the
    checkpoint (the model shape, the data, the optimiser) is an error that
    names each differing setting. `defaults` (this machine's,
    `hardware.device_defaults`) go under the overrides of a new run only; a
    saved run keeps its own values. With `fresh`, an existing run is moved
    aside and a new one starts, and `lock`, the folder's, is taken again on
    the new folder. Returns `(config, resumed, moved_to)`.
    """
    overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
    moved_to = None
    if fresh and os.path.isdir(directory) and set(os.listdir(directory)) - {LOCK_FILENAME}:
        moved_to = move_aside(directory)
        if lock is not None:  # the lock went with the old folder: take it on the new one
            lock.moved_aside(moved_to)
    found = has_checkpoint(directory)
    saved = load_config(directory) if found else None
    if found and saved is None:
        raise UsageError(
            f"`weights_dir` {directory} has checkpoints but no {CONFIG_FILENAME}; restore that "
            "file, or start anew with `fresh` (the old run is moved aside)"
        )
    if saved is None:
        settings = {**(defaults or {}), **overrides}
        config = Config.for_recipe(recipe or "default", weights_dir=directory, **settings)
        return config, False, moved_to
    if recipe is not None and recipe != saved.recipe:
        overrides["recipe"] = recipe
    config = saved.replace(**overrides, weights_dir=directory)
    differing = saved.differences(config)
    if differing:
        details = ", ".join(
            f"{name} is {getattr(saved, name)!r} there, {getattr(config, name)!r} asked"
            for name in differing
        )
        raise UsageError(
            f"`weights_dir` {directory} holds a run with other settings ({details}); "
            "leave those flags out to resume, use another `weights_dir`, or add `fresh` "
            "to move the old run aside"
        )
    return config, True, moved_to


class CheckpointStore:
    """The numbered checkpoints of one run and its `config.json`."""

    def __init__(self, directory, trackables, keep=3, before_save=None, say=print):
        """`before_save()` runs first in each save: the run's lock renews its heartbeat there,
        and stops the save if another run has taken the folder over. `say` prints warnings."""
        self.directory = directory
        self.keep = keep
        self.before_save = before_save
        self.say = say
        self.trackables = dict(trackables)
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = self.new_manager()
        # The step of the checkpoint this store restored, or wrote and read back; 0 if none.
        self.saved_step = 0

    def new_manager(self):
        """A manager that takes the pointer file as it is now (it prunes what that lists)."""
        return tf.train.CheckpointManager(
            self.checkpoint,
            self.directory,
            max_to_keep=self.keep,
            checkpoint_name=CHECKPOINT_PREFIX,
        )

    def candidates(self):
        """The checkpoints on record in the pointer file, newest first."""
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        # get_checkpoint_state has already put the folder in front of relative paths.
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
            paths.append(state.model_checkpoint_path)
        return sorted(set(paths), key=checkpoint_step, reverse=True)

    @property
    def latest_step(self):
        """The step of the newest checkpoint on record in the pointer file, or 0 if none."""
        candidates = self.candidates()
        return checkpoint_step(candidates[0]) if candidates else 0

    def restore(self, expect_partial=False, reader=False):
        """Load the newest readable checkpoint; return its path, or None if there is none.

        The run's writer tries every checkpoint on record or on disk, newest
        first: one whose files cannot be read is moved aside and the one before
        it is tried, and the pointer file is then rewritten to list what is on
        disk. One that reads but does not fit the model (another version of the
        code) is an error: nothing is moved. A `reader` (predict, which takes no
        lock while a run may be saving) tries what the pointer lists and moves
        nothing: a read that fails because the run saved and pruned meanwhile
        starts again from the newest checkpoint.
        """
        listed = self.listing(reader)
        candidates, index, rereads = listed, 0, 0
        while index < len(candidates):
            path = candidates[index]
            name = os.path.basename(path)
            try:
                status = self.checkpoint_for(path).restore(path)
            except Exception as error:  # any failure to read means: try the one before
                newest = self.listing(reader) if reader and rereads < READER_REREADS else candidates
                if newest != candidates:
                    candidates, index, rereads = newest, 0, rereads + 1
                    continue
                reason = file_error_reason(error)
                if index + 1 == len(candidates):
                    raise UsageError(
                        f"`weights_dir` {self.directory}: no readable checkpoint ({name}: "
                        f"{reason}); start anew with `fresh` (the old run is moved aside)"
                    ) from None
                self.say(
                    f"warning: checkpoint {name} is unreadable ({reason}); "
                    f"falling back to {os.path.basename(candidates[index + 1])}"
                )
                if not reader:
                    quarantine(path, "unreadable-")
                index += 1
                continue
            if not expect_partial:
                try:
                    status.assert_existing_objects_matched()
                except AssertionError as error:
                    raise UsageError(
                        f"`weights_dir` {self.directory}: {name} does not fit this version's "
                        f"model ({first_line(error)[:200]}); use the tf-diffusion version that "
                        "wrote it, or start anew with `fresh`"
                    ) from None
            # What the file holds beyond this run's objects (the loss scale of a
            # mixed_float16 run resumed in float32) is left unread, silently.
            status.expect_partial()
            if not reader:
                self.record(path)
            self.saved_step = checkpoint_step(path)
            return path
        return None

    def listing(self, reader):
        """What `restore` tries, newest first: the reader's is the pointer file's."""
        listed = self.candidates()
        if not reader and os.path.isdir(self.directory):
            listed = sorted(set(listed + on_disk(self.directory)), key=checkpoint_step)[::-1]
        return listed

    def record(self, restored):
        """Make the pointer file list the whole checkpoints on disk up to `restored`, and take
        it up in a new manager, which prunes from that list. A pointer that agrees stays."""
        step = checkpoint_step(restored)
        kept = [path for path in reversed(on_disk(self.directory)) if checkpoint_step(path) <= step]
        kept = [path for path in kept if is_whole(path)]
        state = tf.train.get_checkpoint_state(self.directory)
        if state is not None and state.model_checkpoint_path == restored:
            if list(state.all_model_checkpoint_paths) == kept:
                return
        # The pointer file in TensorFlow's text format, names relative to the folder; the
        # manager prunes the listed checkpoints saved after last_preserved_timestamp.
        times = [os.path.getmtime(path + ".index") for path in kept]
        lines = [f'model_checkpoint_path: "{os.path.basename(restored)}"']
        lines += [f'all_model_checkpoint_paths: "{os.path.basename(path)}"' for path in kept]
        lines += [f"all_model_checkpoint_timestamps: {time!r}" for time in times]
        lines += [f"last_preserved_timestamp: {min(times) - 1!r}"]
        write_atomically(os.path.join(self.directory, POINTER_FILENAME), "\n".join(lines) + "\n")
        self.manager = self.new_manager()

    def checkpoint_for(self, path):
        """What to restore `path` into: every object, less the optional ones the file lacks."""
        optional = [name for name in OPTIONAL_OBJECTS if name in self.trackables]
        if not optional:
            return self.checkpoint
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        missing = [name for name in optional if name not in saved]
        if not missing:
            return self.checkpoint
        present = {key: value for key, value in self.trackables.items() if key not in missing}
        return tf.train.Checkpoint(**present)

    def save(self, step, config):
        """Write checkpoint `ckpt-<step>` and config.json, the pointer last, and read it back."""
        options = None
        delay = float(os.environ.get(SAVE_DELAY_VARIABLE, 0) or 0)
        if delay > 0:
            # Fault-injection hook: wait after the files are written, before the
            # pointer moves, so that a kill can land in the middle of a save.
            options = tf.train.CheckpointOptions(
                experimental_write_callbacks=[lambda path: time.sleep(delay)]
            )
        try:
            if self.before_save is not None:
                self.before_save()
            late = os.path.join(self.directory, f"{CHECKPOINT_PREFIX}-{step}")
            if is_whole(late):  # a synced copy of an earlier session's save, arrived late
                mark = quarantine(late, "late-")
                self.say(
                    f"warning: {os.path.basename(late)} appeared in {self.directory} after this "
                    f"run started; moved it aside as {mark}{os.path.basename(late)}.*"
                )
            save_config(config, self.directory)
            path = self.manager.save(checkpoint_number=step, options=options)
        except (OSError, tf.errors.OpError) as error:
            raise self.save_failed(step, file_error_reason(error)) from None
        try:
            read_in_full(path)
        except Exception as error:  # any failure to read it back: torn on its way to disk
            reason = f"it does not read back: {file_error_reason(error)}"
            raise self.save_failed(step, reason) from None
        self.saved_step = step
        return path

    def save_failed(self, step, reason):
        """The one-line error of a save of `step` that failed for `reason`."""
        kept = (
            f"the last good checkpoint ({CHECKPOINT_PREFIX}-{self.saved_step}) is intact"
            if self.saved_step
            else "no checkpoint was saved before it"
        )
        return UsageError(
            f"`weights_dir` {self.directory}: saving step {step} failed ({reason}); {kept}. "
            f"{REMEDIES.get(reason, REMEDY)}, then run the same command to resume"
        )


def read_in_full(path):
    """Read every tensor of checkpoint `path`, so that a torn or mismatched file raises."""
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_dtype_map():
        reader.get_tensor(name)


# The causes of a failed save in plain words, as the system words them, and what to do.
FREE_SPACE = "Free some space (on Google Drive, empty the bin or raise the quota)"
WRITABLE = "Make the folder writable (on Colab, mount Google Drive again)"
REMEDY = "Check the folder (on Colab, that Google Drive is still mounted)"
REMEDIES = {
    "no space left on device": FREE_SPACE,
    "disk quota exceeded": FREE_SPACE,
    "read-only file system": WRITABLE,
    "permission denied": WRITABLE,
    "no such file or directory": REMEDY,
}


def file_error_reason(error):
    """What went wrong with a file, in one line without TensorFlow's op names."""
    text = getattr(error, "strerror", None) or getattr(error, "message", None) or str(error)
    for cause in REMEDIES:
        if cause in text.lower():
            return cause
    text = re.sub(r"\{\{[^}]*\}\}|\s*\[Op:\w+\]", "", first_line(text)).strip()
    return text or type(error).__name__


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def checkpoint_step(path):
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def quarantine(path, mark):
    """Move the files of checkpoint `path` aside, each renamed with `mark` in front (or
    `mark` numbered, where that name is taken: nothing is overwritten); return the mark."""
    folder = os.path.dirname(path)
    files = checkpoint_files(path)
    taken, number = mark, 1
    while any(os.path.exists(os.path.join(folder, taken + name)) for name in files):
        number += 1
        taken = f"{mark.rstrip('-')}{number}-"
    for name in files:
        os.replace(os.path.join(folder, name), os.path.join(folder, taken + name))
    return taken


def load_for_sampling(directory, ema=None, **changes):
    """The config (with predict-time `changes`) and sampling model of the run in `directory`:
    its `ema_decay`'s weights, or those `ema` names (`Config.weights_name`)."""
    config, model, _ = load_sampling_checkpoint(directory, ema, **changes)
    return config, model


def load_sampling_checkpoint(directory, ema=None, **changes):
    """`load_for_sampling`, and the step of the checkpoint it restored."""
    config = load_run_config(directory, **changes)
    name = config.weights_name(ema)
    if not has_checkpoint(directory):
        raise no_checkpoint_error(directory)
    with dtype_policy(sampling_policy(config.sampling_precision)):
        model = make_model(config)  # the weights stay float32 under a mixed policy
    store = CheckpointStore(directory, {name: model})
    path = store.restore(expect_partial=True, reader=True)
    return config, model, checkpoint_step(path)
