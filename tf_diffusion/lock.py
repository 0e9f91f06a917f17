"""One writer per run folder: the lock a training run holds on its weights folder.

A run creates `train.lock` (O_EXCL) before it writes there, and removes it however it ends: JSON
of its host, PID, start, command, token and heartbeat (Unix seconds, every `HEARTBEAT_SECONDS`
and at each save). Another run is refused in one line unless the lock is stale (this host: its
process is gone; another host, or unreadable: quiet for `STALE_SECONDS`), when it is renamed
away, so one run alone takes it over, with a warning. A run that finds another's token stops.
"""

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time

from tf_diffusion import UsageError
from tf_diffusion.config import CONFIG_FILENAME
from tf_diffusion.files import write_atomically

LOCK_FILENAME = "train.lock"
HEARTBEAT_SECONDS = 15.0  # so that a reconnected Colab VM (a new host) resumes within a minute:
STALE_SECONDS = 60.0  # a lock from another host with no heartbeat for this long is a dead run's
RECORD = dict(host=str, pid=int, started=str, heartbeat=(int, float), token=str)  # as read


class RunLock:
    """The lock on one folder: `acquire` (or `with`), `beat` before each save, `release`."""

    def __init__(
        self, directory, heartbeat_seconds=HEARTBEAT_SECONDS, stale_seconds=STALE_SECONDS, warn=None
    ):
        self.directory, self.path = directory, os.path.join(directory, LOCK_FILENAME)
        self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
        self.warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr, flush=True))
        self.token = os.urandom(16).hex()  # in the lock file; names the heartbeat thread
        self.record = self.lost = self.thread = None  # lost: why the lock is no longer ours
        self.created_folders, self.mutex, self.stopped = [], threading.Lock(), threading.Event()

    def acquire(self):
        """Take the lock, or raise `UsageError` naming the run that holds it."""
        folder = os.path.abspath(self.directory)
        while not os.path.lexists(folder) and os.path.dirname(folder) != folder:  # deepest first
            self.created_folders.append(folder)
            folder = os.path.dirname(folder)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self.record = dict(host=socket.gethostname(), pid=os.getpid(), token=self.token)
        self.record.update(started=started, heartbeat=time.time(), command=" ".join(sys.argv))
        try:
            os.makedirs(self.directory, exist_ok=True)
            self.take()
        except BaseException as error:
            self.release()  # removes the folders made for the lock
            if not isinstance(error, OSError):
                raise
            raise UsageError(
                f"`weights_dir` {self.directory}: cannot take the lock {self.path} "
                f"({error.strerror or error}); choose a folder you can write to"
            ) from None
        self.thread = threading.Thread(target=self.heartbeat, name=self.token, daemon=True)
        self.thread.start()
        return self

    __enter__ = acquire

    def __exit__(self, *exception):
        self.release()

    def take(self):
        """Create the lock file, taking over a stale one; raise `UsageError` if it is live."""
        for _ in range(10):  # each retry means the file changed under us: other runs moving
            if self.create():
                return
            contents, holder, age = read_lock(self.path)
            if contents is None:
                continue  # released meanwhile
            reason = self.stale_reason(holder, age)
            if reason is None:
                break
            claimed = f"{self.path}.stale-{self.token}"
            with contextlib.suppress(FileNotFoundError):  # another run renamed it first
                os.rename(self.path, claimed)  # of the runs that found it stale, one renames it
                moved = read_lock(claimed)[0]
                os.remove(claimed)
                if moved != contents:  # the new lock of the run that did: put it back
                    self.create(moved)  # with O_EXCL, so never over yet another run's
                elif self.create():
                    taken = f"the lock of {describe(holder)}" if holder else "an unreadable lock"
                    self.warn(f"`weights_dir` {self.directory}: took over {taken}: {reason}")
                    return
        held = f"{describe(holder)}, last heartbeat" if holder else "its lock unreadable, changed"
        dead = f"delete {self.path}"  # or, for another host's lock, wait until it is stale:
        if holder is None or holder["host"] != socket.gethostname():
            dead = f"run again in {format_age(self.stale_seconds - age + 1)}, or {dead} now"
        raise UsageError(
            f"`weights_dir` {self.directory} is in use by another training run ({held} "
            f"{format_age(age)} ago); wait for it to end or use another `weights_dir`. "
            f"If that run is dead, {dead}"
        )

    def stale_reason(self, holder, age):
        """Why the lock of `holder` (None: unreadable), quiet for `age` s, is stale, or None."""
        if holder is None or holder["host"] != socket.gethostname():
            quiet = f"its last heartbeat was {format_age(age)} ago"
            unread = f"it cannot be read and has not changed for {format_age(age)}"
            return None if age <= self.stale_seconds else quiet if holder else unread
        if holder["pid"] == os.getpid():  # live while its heartbeat thread runs
            names = {thread.name for thread in threading.enumerate()}
            return None if holder["token"] in names else "it was left by this process"
        try:
            os.kill(holder["pid"], 0)
        except (ProcessLookupError, OverflowError):
            return f"process {holder['pid']} is no longer running"
        except PermissionError:  # it runs, under another user
            return None

    def create(self, contents=None):
        """Create the lock file (O_EXCL) holding `contents`, or this run's record; False if any."""
        try:
            with open(self.path, "xb") as file:
                file.write(json.dumps(self.record).encode() if contents is None else contents)
        except FileExistsError:
            return False
        return True

    def holds(self, path):
        return (read_lock(path)[1] or {}).get("token") == self.token

    def beat(self):
        """Renew the heartbeat; raise `UsageError` if another run has taken the lock over."""
        with self.mutex:
            holder = read_lock(self.path)[1]
            self.record["heartbeat"] = time.time()
            if self.lost is None and holder is None and self.create():
                return  # deleted by hand (or being claimed) while this run lives: put back
            if self.lost or holder is None or holder["token"] != self.token:
                self.lost = self.lost or (
                    f"`weights_dir` {self.directory}: another run has taken over {self.path} "
                    f"({describe(holder) if holder else 'unreadable'}); stopped without saving"
                )
                raise UsageError(self.lost)
            write_atomically(self.path, json.dumps(self.record))

    def heartbeat(self):
        while not self.stopped.wait(self.heartbeat_seconds) and not self.lost:
            with contextlib.suppress(OSError, UsageError):  # a drive that hiccups: beat again
                self.beat()

    def moved_aside(self, target):
        """After `--fresh` moved the folder (and this lock) to `target`: lock the new folder."""
        with self.mutex:
            os.makedirs(self.directory, exist_ok=True)
            if not self.holds(self.path):  # ours if a heartbeat wrote it in as the folder moved
                self.take()
            if self.holds(os.path.join(target, LOCK_FILENAME)):
                os.remove(os.path.join(target, LOCK_FILENAME))

    def release(self):
        """Stop the heartbeat; remove the lock file if it is still this run's, and its folders."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        with contextlib.suppress(OSError):  # a lock left behind goes stale: the next run takes it
            if self.holds(self.path):
                os.remove(self.path)
        for folder in self.created_folders:  # one the run wrote in stays, and so its parents
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def training_lock(weights_dir, distribute=None, fresh=False, environ=None, warn=None):
    """The `RunLock` on `weights_dir`, or no lock (None) for a multi-worker task not the chief."""
    if distribute is None and not fresh:  # the setting saved in `weights_dir`, read unchecked
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(os.path.join(weights_dir, CONFIG_FILENAME), encoding="utf-8") as file:
                distribute = json.load(file).get("distribute")
    task = tf_config_task(os.environ if environ is None else environ)
    if distribute == "multi-worker" and task is not None and not is_chief_task(*task):
        return contextlib.nullcontext()
    return RunLock(weights_dir, warn=warn)


def is_chief_task(task_type, task_id, job_names):
    """Whether a cluster task writes the run's files: the chief, or worker 0 if there is none."""
    first_worker = task_type == "worker" and int(task_id or 0) == 0 and "chief" not in job_names
    return not task_type or task_type == "chief" or first_worker


def tf_config_task(environ):
    """(type, index, job names) of this process from TF_CONFIG; None if it is malformed."""
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
        task = tf_config.get("task") or {}
        return task.get("type"), int(task.get("index") or 0), list(tf_config.get("cluster") or {})
    except (ValueError, TypeError, AttributeError):
        return None  # TensorFlow reports a malformed TF_CONFIG itself


def read_lock(path):
    """(bytes, record or None, s since its heartbeat or else its change) of a lock file, if any."""
    try:
        with open(path, "rb") as file:
            contents, age = file.read(), time.time() - os.fstat(file.fileno()).st_mtime
    except FileNotFoundError:
        return None, None, 0.0
    with contextlib.suppress(ValueError, TypeError, KeyError):  # incomplete, or not a record
        record = json.loads(contents)
        if record["pid"] > 0 and all(isinstance(record[key], kind) for key, kind in RECORD.items()):
            return contents, record, time.time() - record["heartbeat"]
    return contents, None, age


def describe(holder):
    return f"PID {holder['pid']} on {holder['host']} since {holder['started']}"


def format_age(seconds):
    return f"{max(0, int(seconds))} s" if seconds < 120 else f"{int(seconds) // 60} min"
