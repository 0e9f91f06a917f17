#!/usr/bin/env python3
"""Kill train.py with SIGKILL at random moments, and check that every run resumes.

    python bench/fault_injection.py --kills 20

Each trial starts `train.py` at a tiny width with a save after every step (so
that much of the time is spent saving, and many kills land mid-save), kills it
with SIGKILL after a random delay, then checks the weights folder:

* every checkpoint that the `checkpoint` pointer file lists must load in full
  (a corrupt one counts as a failure, even though resume would fall back);
* the same command, run again without a kill, must resume from the step of
  the newest checkpoint and reach `--max-steps`.

Prints one table row per trial and the totals.
"""

import argparse
import os
import random
import shlex
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
    checkpoint_step,
)

STEPS_PER_TRIAL = 40


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--folder", help="work folder (default: a new temporary one)")
    return parser.parse_args()


def newest_step(weights_dir):
    return CheckpointStore(weights_dir, {}).latest_step


def corrupt_checkpoints(weights_dir):
    """The listed checkpoints that cannot be read in full."""
    import tensorflow as tf

    bad = []
    for path in CheckpointStore(weights_dir, {}).candidates():
        try:
            reader = tf.train.load_checkpoint(path)
            for name in reader.get_variable_to_dtype_map():
                reader.get_tensor(name)
        except Exception as error:  # noqa: BLE001 - any failure to read is corruption here
            bad.append(f"{os.path.basename(path)}: {type(error).__name__}")
    return bad


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
    data = os.path.join(folder, "cars.npz")
    random_numbers = np.random.default_rng(0)
    np.savez(data, x=random_numbers.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8))
    weights_dir = os.path.join(folder, "run")
    chooser = random.Random(arguments.seed)

    def command(max_steps):
        return tiny_train_command(
            weights_dir, data, batch_size=8, save_every=1, keep_checkpoints=3, max_steps=max_steps
        )

    print(f"bench/fault_injection.py: {arguments.kills} SIGKILLs, work folder {folder}")
    print(f"command: {' '.join(shlex.quote(part) for part in command('N'))}")
    print(
        "| trial | killed s after first save | step before | step after kill | "
        "left mid-save files | "
        "corrupt | resumed from | reached | ok |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    totals = {"resumed": 0, "corrupt": 0, "reached": 0, "mid_save": 0}
    max_steps = 0
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
        after_kill = newest_step(weights_dir)
        # Files of a save that the pointer does not name yet: the kill came mid-save.
        leftovers = [
            name
            for name in os.listdir(weights_dir)
            if "_temp" in name
            or "tempstate" in name
            or (
                name.endswith(".index")
                and checkpoint_step(name.removesuffix(".index")) > after_kill
            )
        ]
        corrupt = corrupt_checkpoints(weights_dir)
        resume = subprocess.run(command(max_steps), capture_output=True, text=True, timeout=600)
        expected = f"Resuming from step {after_kill}" if after_kill else "Starting a new"
        resumed = resume.returncode == 0 and expected in resume.stdout
        reached = newest_step(weights_dir)
        ok = resumed and not corrupt and reached == max_steps
        totals["resumed"] += resumed
        totals["corrupt"] += len(corrupt)
        totals["reached"] += reached == max_steps
        totals["mid_save"] += bool(leftovers)
        resumed_from = expected.replace("Resuming from step ", "") if resumed else "FAILED"
        print(
            f"| {trial} | {killed_after:.1f} | {before} | {after_kill} | {len(leftovers)} | "
            f"{', '.join(corrupt) or 0} | {resumed_from} | {reached}/{max_steps} | "
            f"{'yes' if ok else 'NO'} |",
            flush=True,
        )
        if not resumed:
            print(resume.stderr[-2000:])
    kills = arguments.kills
    print(
        f"\n{totals['resumed']}/{kills} successful resumes, {totals['corrupt']} corrupt "
        f"checkpoints, {totals['reached']}/{kills} resumed runs reached --max-steps; "
        f"{totals['mid_save']} kills left a save half-written (invisible to the next run)"
    )
    return (
        0
        if totals["resumed"] == kills and not totals["corrupt"] and totals["reached"] == kills
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
