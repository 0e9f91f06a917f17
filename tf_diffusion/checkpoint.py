"""Saving and restoring a run: TF checkpoints plus `config.json` in the weights folder.

A save either completes or is invisible. `tf.train.CheckpointManager` writes
a new numbered checkpoint (`ckpt-<step>.index` and `.data-*`, each written to
a temporary name and renamed) and only then rewrites the small `checkpoint`
pointer file, atomically. A run killed in the middle of a save leaves the
pointer on the previous checkpoint. If the newest checkpoint cannot be read,
`restore` falls back to the one before it, says so, and moves the unreadable
files aside (never deleting them). A reader (`predict.py`) takes no lock and
moves nothing; when the run it reads prunes a checkpoint under it, it reads
the pointer again. Each save first renews the run's lock (`lock.py`).
"""

import datetime
import os
import shutil
import time

import tensorflow as tf

from tf_diffusion import UsageError
from tf_diffusion.config import Config
from tf_diffusion.files import load_config, load_run_config, no_checkpoint_error, save_config
from tf_diffusion.lock import LOCK_FILENAME
from tf_diffusion.model import make_model
from tf_diffusion.training import dtype_policy, sampling_policy

CHECKPOINT_PREFIX = "ckpt"
# Objects a checkpoint may lack: only mixed_float16 runs save their loss scale,
# and a run may switch --precision when it resumes (it then starts afresh).
OPTIONAL_OBJECTS = ("loss_scale",)
# How often a reader starts again from the newest checkpoint when the run pruned the one it read.
READER_REREADS = 20
# Seconds to pause inside each save, between the files and the pointer (tests only).
SAVE_DELAY_VARIABLE = "TF_DIFFUSION_SAVE_DELAY_SECONDS"


def has_checkpoint(directory):
    return bool(directory) and tf.train.get_checkpoint_state(directory) is not None


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
    `training.device_defaults`) go under the overrides of a new run only; a
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
    saved = load_config(directory) if has_checkpoint(directory) else None
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

    def __init__(self, directory, trackables, keep=3, before_save=None):
        """`before_save()` runs first in each save: the run's lock renews its heartbeat there,
        and stops the save if another run has taken the folder over."""
        self.directory = directory
        self.before_save = before_save
        self.trackables = dict(trackables)
        self.checkpoint = tf.train.Checkpoint(**trackables)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory, max_to_keep=keep, checkpoint_name=CHECKPOINT_PREFIX
        )

    def candidates(self):
        """The checkpoints on record, newest first."""
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
        """The step of the newest checkpoint on record, or 0 if there is none."""
        candidates = self.candidates()
        return checkpoint_step(candidates[0]) if candidates else 0

    def restore(self, say=print, expect_partial=False, reader=False):
        """Load the newest readable checkpoint; return its path, or None if there is none.

        A checkpoint whose files cannot be read is moved aside and the one
        before it is tried. One that reads but does not fit the model (another
        version of the code) is an error: nothing is moved. A `reader` (predict,
        which takes no lock while a run may be saving) moves nothing either: a
        read that fails because the run saved and pruned meanwhile starts again
        from the newest checkpoint.
        """
        candidates = self.candidates()
        index, rereads = 0, 0
        while index < len(candidates):
            path = candidates[index]
            name = os.path.basename(path)
            try:
                status = self.checkpoint_for(path).restore(path)
            except Exception as error:  # any failure to read means: try the one before
                newest = self.candidates() if reader and rereads < READER_REREADS else candidates
                if newest != candidates:
                    candidates, index, rereads = newest, 0, rereads + 1
                    continue
                reason = first_line(error)
                if index + 1 == len(candidates):
                    raise UsageError(
                        f"`weights_dir` {self.directory}: no readable checkpoint ({name}: "
                        f"{reason}); start anew with `fresh`"
                    ) from None
                say(
                    f"warning: checkpoint {name} is unreadable ({reason}); "
                    f"falling back to {os.path.basename(candidates[index + 1])}"
                )
                if not reader:
                    quarantine(path)
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
            return path
        return None

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
        """Write checkpoint `ckpt-<step>` and config.json; the pointer moves last."""
        options = None
        delay = float(os.environ.get(SAVE_DELAY_VARIABLE, 0) or 0)
        if delay > 0:
            # Fault-injection hook: wait after the files are written, before the
            # pointer moves, so that a kill can land in the middle of a save.
            options = tf.train.CheckpointOptions(
                experimental_write_callbacks=[lambda path: time.sleep(delay)]
            )
        if self.before_save is not None:
            self.before_save()
        try:
            save_config(config, self.directory)
            path = self.manager.save(checkpoint_number=step, options=options)
        except (OSError, tf.errors.OpError) as error:
            reason = getattr(error, "strerror", None) or first_line(error)
            latest = self.manager.latest_checkpoint
            kept = os.path.basename(latest) if latest else "none"
            raise UsageError(
                f"`weights_dir` {self.directory}: saving step {step} failed ({reason}); "
                f"the last good checkpoint ({kept}) is intact. Free space or fix the folder, "
                "then run again to resume"
            ) from None
        return path


def first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def checkpoint_step(path):
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def quarantine(path):
    """Move the files of an unreadable checkpoint aside (renamed, never deleted)."""
    folder, name = os.path.split(path)
    for file_name in os.listdir(folder):
        if file_name == name + ".index" or file_name.startswith(name + ".data-"):
            os.replace(
                os.path.join(folder, file_name), os.path.join(folder, "unreadable-" + file_name)
            )


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
