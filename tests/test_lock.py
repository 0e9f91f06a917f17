"""One run, one writer: the lock a training run holds on its weights folder."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPOSITORY, tiny_flags

from tf_diffusion.config import UsageError
from tf_diffusion.lock import LOCK_FILENAME, RunLock, training_lock

ENVIRONMENT = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def write_lock(folder, age=0.0, **changes):
    """Another run's lock in `folder`, its heartbeat `age` s old; by default a live run's."""
    record = {
        "host": socket.gethostname(),
        "pid": os.getppid(),
        "started": "2030-01-02T03:04:05+00:00",
        "heartbeat": time.time() - age,
        "token": "another-run",
    }
    record.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILENAME).write_text(json.dumps(record))


def lock_record(folder):
    return json.loads((folder / LOCK_FILENAME).read_text())


def dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_run_refuses_a_second_one_in_one_line_that_names_it(tmp_path):
    run = tmp_path / "run"
    write_lock(run)
    with pytest.raises(UsageError) as error:
        with RunLock(str(run)):
            pass
    message = str(error.value)
    assert "\n" not in message
    for fragment in (
        f"`weights_dir` {run} is in use by another training run",
        f"PID {os.getppid()} on {socket.gethostname()}",
        "since 2030-01-02T03:04:05+00:00",
        f"delete {run / LOCK_FILENAME}",
    ):
        assert fragment in message
    assert lock_record(run)["token"] == "another-run"  # untouched


def test_the_lock_lives_as_long_as_the_run_and_beats(tmp_path):
    run = tmp_path / "new" / "run"
    with RunLock(str(run)) as lock:
        record = lock_record(run)
        assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(UsageError, match="is in use by another training run"):
            RunLock(str(run)).acquire()  # one lock per run: it is passed down, not taken again
        time.sleep(0.01)
        lock.beat()  # what each save does
        assert lock_record(run)["heartbeat"] > record["heartbeat"]
        assert lock_record(run)["token"] == record["token"]
    assert not (tmp_path / "new").exists()  # made only to hold the lock, so removed again


def test_the_lock_is_released_on_an_error_and_the_run_s_files_stay(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # what train.py's SIGINT and SIGTERM handlers raise
        with RunLock(str(run)):
            (run / "ckpt-1.index").write_text("saved")
            raise KeyboardInterrupt
    assert os.listdir(run) == ["ckpt-1.index"]


def test_the_heartbeat_thread_beats_every_interval(tmp_path):
    lock = RunLock(str(tmp_path / "run"), heartbeat_seconds=0.05).acquire()
    try:
        first = lock_record(tmp_path / "run")["heartbeat"]
        time.sleep(0.5)
        assert lock_record(tmp_path / "run")["heartbeat"] > first
    finally:
        lock.release()


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"pid": "dead"}, "is no longer running"),
        ({"pid": "mine"}, "it was left by this process"),
        ({"host": "elsewhere", "age": 600}, "its last heartbeat was 10 min"),
        ("garbled", "it cannot be read and has not changed for 16 min"),
    ],
    ids=["dead-process", "left-by-this-process", "quiet-other-host", "unreadable"],
)
def test_a_stale_lock_is_taken_over_with_a_one_line_warning(tmp_path, capsys, changes, reason):
    run = tmp_path / "run"
    if changes == "garbled":
        run.mkdir()
        (run / LOCK_FILENAME).write_text('{"host": "half a recor')
        old = time.time() - 1000
        os.utime(run / LOCK_FILENAME, (old, old))
    else:
        pids = {"dead": dead_pid, "mine": os.getpid}
        if changes.get("pid") in pids:
            changes = dict(changes, pid=pids[changes["pid"]]())
        write_lock(run, **changes)
    with RunLock(str(run)):
        assert lock_record(run)["pid"] == os.getpid()
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: ")
    assert f"`weights_dir` {run}: took over" in warning and reason in warning
    assert os.listdir(run) == []  # the old lock is not kept beside the new one


@pytest.mark.parametrize(
    "changes",
    [{"host": "elsewhere", "age": 5}, "garbled"],
    ids=["other-host-beating", "unreadable-but-new"],
)
def test_a_lock_that_may_be_live_is_not_taken(tmp_path, changes):
    run = tmp_path / "run"
    if changes == "garbled":
        run.mkdir()
        (run / LOCK_FILENAME).write_text("")  # a run that is creating it right now
    else:
        write_lock(run, **changes)
    with pytest.raises(UsageError, match="cannot be read|is in use by another training run"):
        with RunLock(str(run)):
            pass


def test_a_run_whose_lock_was_taken_over_stops_at_its_next_save(tmp_path):
    run = tmp_path / "run"
    with RunLock(str(run)) as lock:
        write_lock(run, token="took-it-over")  # a run elsewhere thought this one dead
        with pytest.raises(UsageError, match="another run has taken over .*without saving"):
            lock.beat()
    assert lock_record(run)["token"] == "took-it-over"  # and its lock stays


def test_only_the_chief_of_a_multi_worker_run_locks_the_folder(tmp_path):
    def tf_config(index):
        cluster = {"worker": ["host1:1234", "host2:1234"]}
        return {
            "TF_CONFIG": json.dumps(
                {"cluster": cluster, "task": {"type": "worker", "index": index}}
            )
        }

    with training_lock(str(tmp_path / "run"), "multi-worker", environ=tf_config(1)):
        assert not (tmp_path / "run").exists()
    with training_lock(str(tmp_path / "run"), "multi-worker", environ=tf_config(0)):
        assert (tmp_path / "run" / LOCK_FILENAME).exists()
    with training_lock(str(tmp_path / "run"), "none", environ=tf_config(1)):  # TF_CONFIG unused
        assert (tmp_path / "run" / LOCK_FILENAME).exists()


RACER = textwrap.dedent(
    """
    import os, sys, time
    from tf_diffusion.config import UsageError
    from tf_diffusion.lock import RunLock
    folder, go = sys.argv[1:]
    while not os.path.exists(go):
        time.sleep(0.001)
    try:
        lock = RunLock(folder).acquire()
    except UsageError:
        print("refused")
    else:
        print("won", flush=True)
        time.sleep(1.5)
        lock.release()
    """
)


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale-lock"])
def test_of_runs_that_start_together_exactly_one_gets_the_lock(tmp_path, stale):
    run, go = tmp_path / "run", tmp_path / "go"
    if stale:
        write_lock(run, pid=dead_pid())
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(run), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPOSITORY,
        )
        for _ in range(6)
    ]
    time.sleep(0.5)  # all of them waiting
    go.write_text("go")
    outputs = [racer.communicate(timeout=60) for racer in racers]
    assert sorted(stdout.strip() for stdout, _ in outputs) == ["refused"] * 5 + ["won"]
    assert "Traceback" not in "".join(stderr for _, stderr in outputs)


def train_command(weights_dir, npz_path, *extra):
    return [
        sys.executable,
        os.path.join(REPOSITORY, "train.py"),
        *tiny_flags(),
        f"--data={npz_path}",
        f"--weights-dir={weights_dir}",
        *extra,
    ]


def folder_contents(folder):
    """What a run leaves: its file names (logs aside), checkpoint steps and config.json."""
    names = sorted(name for name in os.listdir(folder) if name != "logs")
    config = json.loads((folder / "config.json").read_text())
    del config["weights_dir"]
    pointer = (folder / "checkpoint").read_text()
    steps = [
        line.split('"')[1]
        for line in pointer.splitlines()
        if line.startswith("all_model_checkpoint_paths")
    ]
    return names, steps, config


def test_a_second_train_py_is_refused_while_the_first_runs_and_changes_nothing(tmp_path, npz_path):
    run = tmp_path / "run"
    flags = ["--max-steps=4", "--save-every=1", "--keep-checkpoints=2"]
    first = subprocess.Popen(
        train_command(run, npz_path, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Half a second per save: the first run is still training when the second starts.
        env=dict(ENVIRONMENT, TF_DIFFUSION_SAVE_DELAY_SECONDS="0.5"),
    )
    try:
        assert first.stdout.readline().startswith("Starting a new")
        assert first.stdout.readline().startswith("step 1/4")
        second = subprocess.run(
            train_command(run, npz_path, *flags, "--fresh"),  # --fresh would move the run aside
            capture_output=True,
            text=True,
            env=ENVIRONMENT,
            timeout=120,
        )
        assert first.poll() is None, "the first run ended before the second was refused"
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert second.returncode == 2 and second.stdout == "", second.stderr
    assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: --weights-dir")
    assert (
        f"PID {first.pid}" in second.stderr and "is in use by another training run" in second.stderr
    )
    assert first.returncode == 0, stderr
    assert not any(name.startswith("run.old-") for name in os.listdir(tmp_path))

    # What the first run alone leaves: its last two saves, its settings, its one grid.
    names, steps, config = folder_contents(run)
    saves = [f"ckpt-{step}.{end}" for step in (3, 4) for end in ("data-00000-of-00001", "index")]
    assert names == ["checkpoint", *saves, "config.json", "samples-step-0000004.png"]
    assert steps == ["ckpt-3", "ckpt-4"] and config["max_steps"] == 4


def train_to_the_end(run, npz_path, *extra):
    """train.py on `run`, waited for; its output captured."""
    command = train_command(run, npz_path, *extra)
    return subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT, timeout=300)


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, npz_path):
    run = tmp_path / "run"
    killed = subprocess.Popen(
        train_command(run, npz_path, "--max-steps=100000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=ENVIRONMENT,
    )
    try:
        assert killed.stdout.readline().startswith("Starting a new")
        assert lock_record(run)["pid"] == killed.pid
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert lock_record(run)["pid"] == killed.pid  # left behind

    again = train_to_the_end(run, npz_path, "--max-steps=1")
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in again.stderr
    assert f"took over the lock of PID {killed.pid} on {socket.gethostname()}" in warnings[0]
    assert f"process {killed.pid} is no longer running" in warnings[0]
    assert "Done: step 1" in again.stdout
    assert not (run / LOCK_FILENAME).exists()


def test_a_lock_from_another_host_is_taken_over_at_90_s_and_refused_at_5_s(tmp_path, npz_path):
    """A Colab VM that reconnects is a new host: the lock of the one that vanished, quiet
    for a minute and a half, goes at once; one that beat 5 s ago may be a live run."""
    run = tmp_path / "run"
    write_lock(run, host="vanished-colab-vm", age=90)
    taken = train_to_the_end(run, npz_path, "--max-steps=1")
    assert taken.returncode == 0, taken.stderr
    warnings = [line for line in taken.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "on vanished-colab-vm" in warnings[0]
    assert "its last heartbeat was 90 s ago" in warnings[0]

    write_lock(run, host="live-colab-vm", age=5)
    refused = train_to_the_end(run, npz_path, "--max-steps=2")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: --weights-dir")
    assert "on live-colab-vm" in refused.stderr
    waited = int(re.search(r"last heartbeat (\d+) s ago", refused.stderr)[1])
    assert 5 <= waited < 30  # the time train.py takes to start, under load
    advice = re.search(
        r"If that run is dead, run again in (\d+) s, or delete (\S+) now$", refused.stderr
    )
    assert advice and advice[2] == str(run / LOCK_FILENAME)
    assert 60 - waited <= int(advice[1]) <= 61 - waited  # once it is stale (60 s, whole seconds)


def test_fresh_moves_the_old_run_aside_and_the_lock_stays_with_the_folder(tmp_path):
    from tf_diffusion.checkpoint import resolve_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "old-run.txt").write_text("the old run")
    with RunLock(str(run)) as lock:
        _, resumed, moved_to = resolve_config(str(run), fresh=True, lock=lock)
        assert not resumed and os.listdir(moved_to) == ["old-run.txt"]
        assert lock_record(run)["token"] == lock.record["token"]
        lock.beat()
    assert os.listdir(run) == []
