#!/usr/bin/env python3
"""Break a weights folder as a crash or a synced folder does, and check that every run resumes.

    python bench/fault_injection.py --kills 100

First the faults of a folder synced file by file (Google Drive), one per row,
each on a copy of a tiny run saved at steps 2, 4 and 6 and then `train.py` run
as a user runs it again (root only: the read-only folder, a bind mount, and the
full disk, a small tmpfs). Each fault must either fall back to the newest whole
checkpoint and save again past it, or stop with one line that says what to do
and carries no TensorFlow internals; nothing whole is lost.

Then `--kills` trials: each starts `train.py` at a tiny width with a save after
every step (so that much of the time is spent saving, and many kills land
mid-save), kills it with SIGKILL after a random delay, then checks the folder:

* every checkpoint that the `checkpoint` pointer file lists must load in full
  (a corrupt one counts as a failure, even though resume would fall back);
* the same command, run again without a kill, must resume from the newest
  checkpoint that reads in full, on record or on disk (anything older is a lost
  checkpoint), and reach `--max-steps`.

Prints a table for each part and the totals; exits 1 on any failure.
"""

import argparse
import contextlib
import hashlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPOSITORY, os.path.join(REPOSITORY, "tests")]

from conftest import tiny_train_command  # noqa: E402

from tf_diffusion.checkpoint import (  # noqa: E402
    SAVE_DELAY_VARIABLE,
    CheckpointStore,
    checkpoint_files,
    checkpoint_step,
    on_disk,
    read_in_full,
)

STEPS_PER_TRIAL = 40


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILL trials (default 20)")
    parser.add_argument("--no-faults", action="store_true", help="skip the synced-folder faults")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--folder", help="work folder (default: a new temporary one)")
    return parser.parse_args()


def newest_step(weights_dir):
    return CheckpointStore(weights_dir, {}).latest_step


def corrupt_checkpoints(weights_dir):
    """The listed checkpoints whose files are there but cannot be read in full."""
    return [
        os.path.basename(path)
        for path in CheckpointStore(weights_dir, {}).candidates()
        if checkpoint_files(path) and not reads_in_full(path)
    ]


def pruned_but_listed(weights_dir):
    """The listed checkpoints with no file left: TensorFlow's manager writes the pointer, then
    deletes the oldest checkpoint, then writes the pointer again; a kill between the two
    leaves the pointer naming a checkpoint it has just pruned on purpose."""
    return [
        os.path.basename(path)
        for path in CheckpointStore(weights_dir, {}).candidates()
        if not checkpoint_files(path)
    ]


def reads_in_full(path):
    try:
        read_in_full(path)
    except Exception:  # noqa: BLE001 - any failure to read means: not whole
        return False
    return True


def newest_whole_step(weights_dir):
    """The step of the newest checkpoint, on record or on disk, that reads in full; or 0."""
    for path in CheckpointStore(weights_dir, {}).listing(reader=False):
        if reads_in_full(path):
            return checkpoint_step(path)
    return 0


def read_text(path):
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def main():
    arguments = parse_arguments()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    folder = arguments.folder or tempfile.mkdtemp(prefix="fault-injection-")
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "cars.npz")
    random_numbers = np.random.default_rng(0)
    np.savez(data, x=random_numbers.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8))
    print(f"bench/fault_injection.py --kills {arguments.kills}: work folder {folder}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, uid {os.geteuid()}\n")
    ok = True
    if not arguments.no_faults:
        ok = synced_folder_faults(folder, data) and ok
    if arguments.kills:
        ok = kill_trials(arguments, folder, data) and ok
    return 0 if ok else 1


# ---- the faults of a synced folder

FAULT_STEPS = 10  # each fault's train.py runs to this step, from a run saved at 2, 4 and 6


def fault_command(weights_dir, data, max_steps=FAULT_STEPS):
    return tiny_train_command(
        weights_dir, data, save_every=2, keep_checkpoints=10, max_steps=max_steps
    )


def whole_files(weights_dir):
    """The hashes of the files of every checkpoint in `weights_dir` that reads in full."""
    hashes = set()
    for path in on_disk(weights_dir):
        if reads_in_full(path):
            for name in os.listdir(weights_dir):
                if name.startswith(os.path.basename(path) + "."):
                    with open(os.path.join(weights_dir, name), "rb") as file:
                        hashes.add(hashlib.sha256(file.read()).hexdigest())
    return hashes


def all_hashes(weights_dir):
    hashes = set()
    for name in os.listdir(weights_dir):
        path = os.path.join(weights_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as file:
                hashes.add(hashlib.sha256(file.read()).hexdigest())
    return hashes


def remove(weights_dir, *names):
    for name in names:
        os.remove(os.path.join(weights_dir, name))


def files_of(step):
    return [f"ckpt-{step}.index", f"ckpt-{step}.data-00000-of-00001"]


@contextlib.contextmanager
def mounted(*commands, undo):
    """Run the mount `commands` (root only); yield whether they worked; then `undo`."""
    worked = all(subprocess.run(c, capture_output=True).returncode == 0 for c in commands)
    try:
        yield worked
    finally:
        if worked:
            subprocess.run(undo, check=True)


def run_user_command(command, during=None):
    """train.py as a user runs it; `during(process)` is called once it has resumed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = process.stdout.readline()
    if during is not None:
        during(process)
    stdout, stderr = process.communicate(timeout=600)
    return process.returncode, first + stdout, stderr


def synced_folder_faults(folder, data):
    """One row per fault; returns whether every fault kept its rule."""
    base = os.path.join(folder, "base")
    subprocess.run(fault_command(base, data, 6), check=True, capture_output=True)
    print("## The faults of a synced folder")
    print(f"command: {shlex.join(fault_command('RUN', data))}")
    print("| fault | rule | outcome | whole files lost | corrupt | ok |")
    print("|---|---|---|---|---|---|")
    ok = True
    for name, rule, fault in FAULTS:
        run = os.path.join(folder, name.replace(" ", "-"))
        shutil.copytree(base, run)
        outcome, expected = fault(run, data)
        lost = len(WHOLE_BEFORE.pop(run, set()) - all_hashes(run))
        corrupt = corrupt_checkpoints(run)
        good = expected and not lost and not corrupt
        ok = ok and good
        print(
            f"| {name} | {rule} | {outcome} | {lost} | {', '.join(corrupt) or 0} | "
            f"{'yes' if good else 'NO'} |",
            flush=True,
        )
    print()
    return ok


WHOLE_BEFORE = {}


def resumes_from(step, during=None, prepare=None):
    """A fault whose rule is: resume from `step`, save again past it, reach the end."""

    def check(run, data):
        if prepare is not None:
            prepare(run)
        WHOLE_BEFORE[run] = whole_files(run)
        code, stdout, stderr = run_user_command(fault_command(run, data), during and during(run))
        resumed = f"Resuming from step {step} (ckpt-{step})" in stdout
        reached = newest_step(run) == FAULT_STEPS and newest_whole_step(run) == FAULT_STEPS
        outcome = f"exit {code}, resumed from {step if resumed else '?'}, " + (
            f"reached {FAULT_STEPS}" if reached else f"stopped at {newest_step(run)}"
        )
        if code:
            outcome += f": {stderr.strip().splitlines()[-1][:200] if stderr.strip() else ''}"
        return outcome, code == 0 and resumed and reached

    return check


def stops_with_one_line(expected, during=None, prepare=None, then_resumes=None):
    """A fault whose rule is: stop with one line containing `expected`, no TF internals;
    with `then_resumes`, the same command resumes once it is undone."""

    def check(run, data):
        if prepare is not None:
            prepare(run)
        WHOLE_BEFORE[run] = whole_files(run)
        code, stdout, stderr = run_user_command(fault_command(run, data), during and during(run))
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        line = lines[-1] if lines else stderr.strip()[-200:]
        clean = (
            code != 0
            and len(lines) == 1
            and expected in line
            and "{{" not in line
            and "Traceback" not in stderr
        )
        outcome = f"exit {code}: `{line}`"
        if then_resumes is not None:
            then_resumes(run)
            code, stdout, _ = run_user_command(fault_command(run, data))
            again = code == 0 and newest_whole_step(run) == FAULT_STEPS
            outcome += f"; after the fix: {'reached ' + str(FAULT_STEPS) if again else 'FAILED'}"
            clean = clean and again
        return outcome, clean

    return check


def pointer_of_step_4(run):
    """Write the pointer file as it was after the save of step 4 (a stale copy)."""
    with open(os.path.join(run, "checkpoint"), "w") as file:
        file.write('model_checkpoint_path: "ckpt-4"\n')
        file.write('all_model_checkpoint_paths: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-4"\n')


def arrives_late(run):
    """ckpt-6's files are on their way: moved out now, back once train.py has resumed."""
    late = run + ".late"
    os.makedirs(late)
    for name in files_of(6):
        shutil.move(os.path.join(run, name), os.path.join(late, name))

    def during(process):
        for name in files_of(6):
            shutil.copy(os.path.join(late, name), os.path.join(run, name))

    return during


def goes_read_only(run):
    def during(process):
        time.sleep(0.5)  # it trains and saves on; then Drive's quota or mount goes
        subprocess.run(["mount", "--bind", run, run], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", run], check=True)

    return during


def read_only_fault(run, data):
    """A long run whose folder turns read-only half a second after it resumed."""
    if os.geteuid() != 0:
        return "skipped: needs root for a read-only bind mount", True
    WHOLE_BEFORE[run] = whole_files(run)
    try:
        command = fault_command(run, data, max_steps=10**6)
        code, stdout, stderr = run_user_command(command, goes_read_only(run))
    finally:
        subprocess.run(["umount", run], capture_output=True)
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    line = lines[-1] if lines else stderr.strip()[-200:]
    clean = code != 0 and len(lines) == 1 and "read-only file system" in line and "{{" not in line
    code, stdout, _ = run_user_command(fault_command(run, data, max_steps=newest_step(run) + 2))
    again = code == 0 and "Resuming from step" in stdout
    return f"exit 2: `{line}`; writable again: {'resumed' if again else 'FAILED'}", clean and again


def disk_full_fault(run, data):
    if os.geteuid() != 0:
        return "skipped: needs root to mount a small tmpfs", True
    disk = run + ".disk"
    os.makedirs(disk)
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", disk]
    with mounted(mount, undo=["umount", disk]) as worked:
        if not worked:
            return "skipped: cannot mount a tmpfs here", True
        small = os.path.join(disk, "run")
        shutil.copytree(run, small)
        filler = os.path.join(disk, "filler")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(filler, "wb") as file:
            file.write(b"\0" * (free - 300_000))  # less than one checkpoint
        check = stops_with_one_line(
            "no space left on device", then_resumes=lambda run: os.remove(filler)
        )
        outcome, good = check(small, data)
        lost = len(WHOLE_BEFORE.pop(small) - all_hashes(small))
        shutil.rmtree(run)
        shutil.copytree(small, run)
    return outcome + (f"; {lost} whole files lost" if lost else ""), good and not lost


FAULTS = [
    (
        "index without its data",
        "fall back to ckpt-4, save 6 again",
        resumes_from(4, prepare=lambda run: remove(run, files_of(6)[1])),
    ),
    (
        "data without its index",
        "resume from ckpt-4 (ckpt-6 is not whole)",
        resumes_from(4, prepare=lambda run: remove(run, files_of(6)[0])),
    ),
    (
        "pointer file missing",
        "resume from the newest on disk, ckpt-6",
        resumes_from(6, prepare=lambda run: remove(run, "checkpoint")),
    ),
    (
        "pointer file stale",
        "resume from the newest whole, ckpt-6",
        resumes_from(6, prepare=pointer_of_step_4),
    ),
    (
        "pointer names a gone checkpoint",
        "fall back to ckpt-4, save 6 again",
        resumes_from(4, prepare=lambda run: remove(run, *files_of(6))),
    ),
    (
        "files appear after the start",
        "resume from ckpt-4; the late ckpt-6 moved aside, not overwritten",
        resumes_from(4, during=arrives_late),
    ),
    (
        "folder turns read-only mid-run",
        "stop with one line; resume once writable",
        read_only_fault,
    ),
    (
        "disk fills mid-save",
        "stop with one line; resume once there is room",
        disk_full_fault,
    ),
    (
        "config.json truncated",
        "stop with one line, change nothing",
        stops_with_one_line(
            "config.json is truncated",
            prepare=lambda run: open(os.path.join(run, "config.json"), "r+").truncate(100),
        ),
    ),
]


# ---- SIGKILL at random moments


def kill_trials(arguments, folder, data):
    """`--kills` SIGKILL trials, one row each; returns whether every one resumed whole."""
    weights_dir = os.path.join(folder, "run")
    chooser = random.Random(arguments.seed)

    def command(max_steps):
        return tiny_train_command(
            weights_dir, data, batch_size=8, save_every=1, keep_checkpoints=3, max_steps=max_steps
        )

    print(f"## {arguments.kills} SIGKILLs")
    print(f"command: {shlex.join(command('N'))}")
    print(
        "| trial | killed s after first save | step before | on record after kill | "
        "newest whole | left mid-save files | pruned, still listed | corrupt | resumed from | "
        "reached | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {"resumed": 0, "corrupt": 0, "lost": 0, "reached": 0, "mid_save": 0, "pruned": 0}
    for trial in range(1, arguments.kills + 1):
        before = newest_step(weights_dir)
        max_steps = before + STEPS_PER_TRIAL
        # The kill comes at a random moment after the run has started training
        # (TensorFlow itself takes seconds to load).
        delay = chooser.uniform(0.0, 4.0)
        # Every other trial pauses 0.5 s inside each save, after the files and
        # before the pointer, so that those kills land mid-save.
        environment = dict(os.environ)
        if trial % 2 == 0:
            environment[SAVE_DELAY_VARIABLE] = "0.5"
        process = subprocess.Popen(
            command(max_steps),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=environment,
        )
        process.stdout.readline()  # "Starting a new ..." or "Resuming from step ..."
        pointer = os.path.join(weights_dir, "checkpoint")
        first_save = read_text(pointer)
        while process.poll() is None and read_text(pointer) == first_save:
            time.sleep(0.005)  # until this run has taken and saved its first step
        started = time.monotonic()
        while process.poll() is None and time.monotonic() - started < delay:
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
        killed_after = time.monotonic() - started
        on_record = newest_step(weights_dir)
        whole = newest_whole_step(weights_dir)  # the pointer may lag a save whose files are done
        # Files of a save that the pointer does not name yet: the kill came mid-save.
        leftovers = [
            name
            for name in os.listdir(weights_dir)
            if "_temp" in name
            or "tempstate" in name
            or (
                name.endswith(".index") and checkpoint_step(name.removesuffix(".index")) > on_record
            )
        ]
        corrupt = corrupt_checkpoints(weights_dir)
        pruned = pruned_but_listed(weights_dir)
        resume = subprocess.run(command(max_steps), capture_output=True, text=True, timeout=600)
        started_from = resume.stdout.split("Resuming from step ", 1)[-1].split(" ", 1)[0]
        started_from = int(started_from) if started_from.isdigit() else 0
        resumed = resume.returncode == 0 and (
            f"Resuming from step {started_from}" in resume.stdout
            or "Starting a new" in resume.stdout
        )
        lost = resumed and started_from < whole
        reached = newest_step(weights_dir)
        ok = resumed and not lost and not corrupt and reached == max_steps
        totals["resumed"] += resumed
        totals["corrupt"] += len(corrupt)
        totals["lost"] += lost
        totals["reached"] += reached == max_steps
        totals["mid_save"] += bool(leftovers)
        totals["pruned"] += bool(pruned)
        print(
            f"| {trial} | {killed_after:.1f} | {before} | {on_record} | {whole} | "
            f"{len(leftovers)} | {', '.join(pruned) or 0} | {', '.join(corrupt) or 0} | "
            f"{started_from if resumed else 'FAILED'} | {reached}/{max_steps} | "
            f"{'yes' if ok else 'NO'} |",
            flush=True,
        )
        if not resumed:
            print(resume.stderr[-2000:])
    kills = arguments.kills
    print(
        f"\n{totals['resumed']}/{kills} successful resumes, {totals['corrupt']} corrupt "
        f"checkpoints, {totals['lost']} lost (resumed below the newest whole one), "
        f"{totals['reached']}/{kills} resumed runs reached --max-steps; {totals['mid_save']} "
        "kills left a save half-written (invisible to the next run), "
        f"{totals['pruned']} a pruned checkpoint still listed (skipped; the pointer is rewritten)"
    )
    return (
        totals["resumed"] == kills
        and not totals["corrupt"]
        and not totals["lost"]
        and totals["reached"] == kills
    )


if __name__ == "__main__":
    sys.exit(main())
