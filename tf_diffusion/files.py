"""A run's files: written so that a reader never sees half of one, and read without TensorFlow.

Every file the project writes goes through `atomic_path`: it is written under
a temporary name beside its target, synced to disk, and only then renamed
over the target; a failure removes the temporary file. A run killed in the
middle leaves the old file, or none, never a torn one. The run folder's
config is read back here too, so that the command lines check it before
TensorFlow loads.
"""

import contextlib
import json
import os

from tf_diffusion import UsageError
from tf_diffusion.config import BEST_FOLDER, CONFIG_FILENAME, Config


def temporary_path(path):
    """The name `path` is written under before it is renamed into place (one per process)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path to write `path` to; on leaving the block it is synced and renamed."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def write_atomically(path, data):
    """Write `data` (str or bytes) to `path` atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(data)


def write_json(path, values):
    """Write `values` to `path` as indented JSON, atomically."""
    write_atomically(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def check_new_folder(name, directory):
    """Raise `UsageError` if `directory` (the setting `name`) exists and is not an empty folder."""
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise UsageError(
            f"`{name}` {directory} already exists and is not an empty folder; "
            "choose a new folder (nothing is overwritten)"
        )


def load_config(directory):
    """The config saved in `directory`, or None if it has none."""
    path = os.path.join(directory, CONFIG_FILENAME)
    try:
        with open(path, encoding="utf-8") as file:
            values = json.load(file)
    except FileNotFoundError:
        return None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise UsageError(
            f"`weights_dir` {directory}: {CONFIG_FILENAME} is truncated or not valid JSON "
            f"({error}); restore it (Google Drive keeps earlier versions of a file) or start "
            "anew with `fresh` (the old run is moved aside)"
        ) from None
    except OSError as error:
        raise UsageError(
            f"`weights_dir` {directory}: {CONFIG_FILENAME} cannot be read "
            f"({error.strerror or error}); restore it or start anew with `fresh`"
        ) from None
    return Config.from_dict(values)


def save_config(config, directory):
    """Write `config` as `directory`/config.json, atomically."""
    write_json(os.path.join(directory, CONFIG_FILENAME), config.to_dict())


def best_run_directory(weights_dir):
    """The folder of the best checkpoint that `track_kid` keeps in `weights_dir`."""
    best = os.path.join(weights_dir, BEST_FOLDER)
    if os.path.isdir(weights_dir) and not os.path.isfile(os.path.join(best, CONFIG_FILENAME)):
        raise UsageError(
            f"`best`: `weights_dir` {weights_dir} has no best checkpoint; "
            "train it with `track_kid` N to keep one"
        )
    return best


def load_run_config(weights_dir, **changes):
    """The config saved in `weights_dir` with predict-time `changes`, checked without TensorFlow."""
    if weights_dir and os.path.exists(weights_dir) and not os.path.isdir(weights_dir):
        raise UsageError(f"`weights_dir` {weights_dir} is a file, not a run folder")
    if not weights_dir or not os.path.isdir(weights_dir):
        raise UsageError(f"`weights_dir` {weights_dir}: no such folder; train first with train.py")
    config = load_config(weights_dir)
    if config is None and os.path.exists(os.path.join(weights_dir, "checkpoint")):
        raise UsageError(
            f"`weights_dir` {weights_dir} has checkpoints but no {CONFIG_FILENAME}; "
            "it was not written by tf-diffusion"
        )
    if config is None:
        raise no_checkpoint_error(weights_dir)
    return config.replace(weights_dir=weights_dir, **changes)


def no_checkpoint_error(weights_dir):
    return UsageError(
        f"`weights_dir` {weights_dir} has no checkpoint; train first with "
        f"'python train.py --weights-dir {weights_dir}'"
    )


def check_data_path(data):
    """Raise `UsageError` unless `data` is 'tfds' or an existing path."""
    if data not in (None, "", "tfds") and not os.path.exists(data):
        raise missing_data_error(data)


def missing_data_error(data):
    return UsageError(
        f"`data` {data}: no such file or folder; give an .npz file, an image folder, or 'tfds'"
    )
