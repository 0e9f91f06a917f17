"""One writer per run folder: the lock a training run holds on its weights folder.

A training run creates `train.lock` in its weights folder before it writes
anything else there, and removes it when it ends: normally, on Ctrl-C or
SIGTERM, or on an error. The file names the run (host, PID, start time) and
carries a heartbeat, renewed at each save and every minute. A second run on
the folder is refused with one line that names the holder. A lock whose
process is gone (same host), or whose heartbeat is older than
`STALE_SECONDS` (another host, as when two machines share a Drive folder), is
taken over with a one-line warning. Readers such as `predict.py` take no lock.

The file is created with O_EXCL, so two runs that start together cannot
both get it; a heartbeat replaces it with a complete new copy (a temporary
file renamed over it), so a reader never sees half a record. Nothing here
needs TensorFlow: `train.py` takes the lock before TensorFlow loads.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

from tf_diffusion.config import CONFIG_FILENAME, UsageError, check_writable, printable

LOCK_FILENAME = "train.lock"
HEARTBEAT_SECONDS = 60.0
# A lock from another host with no heartbeat for this long belongs to a dead run.
STALE_SECONDS = 300.0

# The locks this process holds, by path: train.py takes the lock, then commands.train holds it too.
_held = {}


class RunLock:
    """The lock on one weights folder: `acquire`, `beat` at each save, `release` at the end."""

    def __init__(self, directory, heartbeat_seconds=HEARTBEAT_SECONDS, stale_seconds=STALE_SECONDS):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILENAME)
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        self.record = None
        self.lost = None  # why the lock stopped being ours, once another run took it
        self.created_folders = []  # made to hold the lock; removed at the end if still empty
        self.mutex = threading.Lock()
        self.stopped = threading.Event()
        self.thread = None

    def acquire(self):
        """Take the lock, or raise `UsageError` naming the run that holds it."""
        self.created_folders = missing_folders(self.directory)
        check_writable(self.directory)
        self.record = new_record()
        try:
            self.take()
        except OSError as error:
            remove_empty_folders(self.created_folders)
            raise UsageError(
                f"--weights-dir {self.directory}: cannot take the lock {self.path} "
                f"({error.strerror or error}); choose a folder you can write to"
            ) from None
        except BaseException:
            remove_empty_folders(self.created_folders)
            raise
        self.thread = threading.Thread(
            target=self.beat_every_minute, name="tf-diffusion-lock", daemon=True
        )
        self.thread.start()
        return self

    def take(self):
        if os.path.isdir(self.path):
            raise UsageError(
                f"--weights-dir {self.directory}: {self.path} is a folder, where the lock file "
                "goes; move it away and run again"
            )
        for _ in range(10):  # each retry means the file changed under us: another run moved
            if create_exclusively(self.path, self.record):
                return
            contents = read_bytes(self.path)
            if contents is None:
                continue  # released meanwhile
            holder, age = parse_record(contents), file_age(self.path)
            reason = self.stale_reason(holder, age)
            if reason is None:
                raise UsageError(refusal(self.directory, self.path, holder, age))
            if not claim(self.path, contents, self.record["token"]):
                continue
            self.record["took_over"] = holder or "an unreadable lock file"
            if create_exclusively(self.path, self.record):
                taken = f"the lock of {describe(holder)}" if holder else "an unreadable lock file"
                warn(f"--weights-dir {self.directory}: took over {taken}: {reason}")
                return
        raise UsageError(
            f"--weights-dir {self.directory}: could not take {self.path}, other runs keep "
            "taking it; start one training run at a time on a folder"
        )

    def stale_reason(self, holder, age):
        """Why the lock described by `holder` (None: unreadable) is stale, or None if it is live."""
        if holder is None:
            if age < self.stale_seconds:
                return None
            return f"it cannot be read and has not changed for {format_age(age)}"
        if holder["host"] == socket.gethostname():
            if holder["pid"] == os.getpid():
                held = {lock.record["token"] for lock in _held.values()}
                return None if holder["token"] in held else "it was left by this process"
            if not process_exists(holder["pid"]):
                return f"process {holder['pid']} is no longer running"
            return None
        quiet = time.time() - holder["heartbeat"]
        if quiet > self.stale_seconds:
            return f"its last heartbeat was {format_age(quiet)} ago"
        return None

    def beat(self):
        """Renew the heartbeat; raise `UsageError` if another run has taken the lock over."""
        with self.mutex:
            if self.lost:
                raise UsageError(self.lost)
            holder = parse_record(read_bytes(self.path) or b"")
            if holder is None and not os.path.exists(self.path):
                # Deleted by hand while this run lives: put it back unless another run has.
                if create_exclusively(self.path, self.record):
                    return
                holder = parse_record(read_bytes(self.path) or b"")
            if holder is None or holder["token"] != self.record["token"]:
                self.lost = (
                    f"--weights-dir {self.directory}: another run has taken over {self.path} "
                    f"({describe(holder) if holder else 'unreadable'}); this run stopped without "
                    "saving, so as not to write over that run's files"
                )
                raise UsageError(self.lost)
            self.record["heartbeat"] = time.time()
            write_atomically(self.path, self.record)

    def beat_every_minute(self):
        while not self.stopped.wait(self.heartbeat_seconds):
            try:
                self.beat()
            except UsageError:
                return  # the next save reports it
            except OSError:
                pass  # a network drive that hiccups: try again in a minute

    def moved_aside(self, target):
        """After `--fresh` moved the folder (and this lock) to `target`: lock the new folder."""
        with self.mutex:
            os.makedirs(self.directory, exist_ok=True)
            if not create_exclusively(self.path, self.record):
                self.lost = refusal(self.directory, self.path, *read_holder(self.path))
                raise UsageError(self.lost)
            remove_if_ours(os.path.join(target, LOCK_FILENAME), self.record["token"])

    def release(self):
        """Stop the heartbeat and remove the lock file if it is still this run's."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        with self.mutex:
            try:
                remove_if_ours(self.path, self.record["token"])
            except OSError as error:  # the run's own outcome matters more than this
                warn(f"could not remove {self.path} ({error.strerror or error}); delete it")
        remove_empty_folders(self.created_folders)


@contextlib.contextmanager
def holding_lock(directory, **options):
    """Hold the lock on `directory` inside the block (once, if this process holds it already)."""
    key = lock_key(directory)
    if key in _held:
        yield _held[key]
        return
    lock = RunLock(directory, **options).acquire()
    _held[key] = lock
    try:
        yield lock
    finally:
        del _held[key]
        lock.release()


def training_lock(weights_dir, distribute=None, fresh=False, environ=None):
    """The lock a training run holds on `weights_dir`: none for a worker that is not the chief.

    `distribute` is the --distribute flag (None: the run's saved setting).
    """
    if distribute is None and not fresh:
        distribute = saved_setting(weights_dir, "distribute")
    if distribute == "multi-worker":
        task = tf_config_task(os.environ if environ is None else environ)
        if task is not None and not is_chief_task(*task):
            return contextlib.nullcontext()
    return holding_lock(weights_dir)


def heartbeat(directory):
    """Renew the lock on `directory` if this process holds it (called at each save)."""
    lock = _held.get(lock_key(directory))
    if lock is not None:
        lock.beat()


def moved_aside(directory, target):
    """`--fresh` moved `directory` to `target`: if this process held its lock, lock it again."""
    lock = _held.get(lock_key(directory))
    if lock is not None:
        lock.moved_aside(target)


def is_chief_task(task_type, task_id, job_names):
    """Whether a cluster task writes the run's files: the chief, or worker 0 if there is none."""
    if not task_type or task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and "chief" not in job_names


def tf_config_task(environ):
    """(type, index, job names) of this process from TF_CONFIG, or None without one."""
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task") or {}
        return task.get("type"), int(task.get("index") or 0), list(tf_config.get("cluster") or {})
    except (ValueError, TypeError, AttributeError):
        return None  # TensorFlow reports a malformed TF_CONFIG itself


def lock_key(directory):
    return os.path.realpath(os.path.join(directory, LOCK_FILENAME))


def new_record():
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "heartbeat": now,
        "token": uuid.uuid4().hex,
        "command": " ".join(sys.argv),
    }


def parse_record(contents):
    """The record in a lock file's bytes, or None if they are not one."""
    try:
        record = json.loads(contents.decode("utf-8"))
    except ValueError:
        return None
    fields = {"host": str, "pid": int, "started": str, "heartbeat": (int, float), "token": str}
    if not isinstance(record, dict) or not all(
        isinstance(record.get(name), kind) for name, kind in fields.items()
    ):
        return None
    if isinstance(record["pid"], bool) or record["pid"] <= 0:
        return None
    return record


def read_holder(path):
    """(record or None, age in seconds) of the lock file at `path`."""
    return parse_record(read_bytes(path) or b""), file_age(path)


def describe(holder):
    return f"PID {holder['pid']} on {holder['host']} since {holder['started']}"


def refusal(directory, path, holder, age):
    if holder is None:
        return (
            f"--weights-dir {directory} has a lock file that cannot be read ({path}, changed "
            f"{format_age(age)} ago): a training run may be starting there. If none is, "
            f"delete {path} and run again"
        )
    quiet = max(0.0, time.time() - holder["heartbeat"])
    return (
        f"--weights-dir {directory} is in use by another training run ({describe(holder)}, "
        f"last heartbeat {format_age(quiet)} ago); wait for it to end or use another "
        f"--weights-dir. If that run is dead, delete {path} and run again"
    )


def warn(text):
    print(f"warning: {printable(text)}", file=sys.stderr, flush=True)


def format_age(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def create_exclusively(path, record):
    """Create the lock file at `path` holding `record`; False if one exists already."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    return True


def write_atomically(path, record):
    temporary = f"{path}.{record['token']}.tmp"
    with open(temporary, "w") as file:
        json.dump(record, file)
    os.replace(temporary, path)


def claim(path, contents, token):
    """Move the stale lock file at `path` out of the way, if it still holds `contents`.

    Renaming is atomic: of two runs that both found the same stale lock, one
    renames it and the other finds it gone. A file that changed since it was
    judged stale (its run beat, or another run took over) is put back.
    """
    claimed = f"{path}.stale-{token}"
    try:
        os.rename(path, claimed)
    except FileNotFoundError:
        return False
    if read_bytes(claimed) == contents:
        os.remove(claimed)  # a dead run's lock: its record goes into the new one
        return True
    try:
        os.link(claimed, path)  # fails if yet another lock appeared: never overwrite one
        os.remove(claimed)
    except FileExistsError:
        pass
    except OSError:  # no hard links on this drive
        if not os.path.exists(path):
            os.rename(claimed, path)
    return False


def remove_if_ours(path, token):
    record = parse_record(read_bytes(path) or b"")
    if record is not None and record["token"] == token:
        os.remove(path)


def read_bytes(path):
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return None


def file_age(path):
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def missing_folders(directory):
    """`directory` and its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(directory)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders):
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty: the run wrote something there
            return


def saved_setting(weights_dir, name):
    """A setting from the run's config.json, read without checks; None if there is none."""
    try:
        with open(os.path.join(weights_dir, CONFIG_FILENAME), encoding="utf-8") as file:
            return json.load(file).get(name)
    except (OSError, ValueError, AttributeError):
        return None
