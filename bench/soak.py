#!/usr/bin/env python3
"""Soak one weights folder: a run saving every step, a sampler reading it, a second trainer.

    python bench/soak.py --minutes 10

For `--minutes` it runs three processes on one folder:

* a trainer: `train.py` at a tiny width, saving after every step;
* a sampler, in a loop: loads the newest checkpoint the way `predict.py` does
  (no lock, while saves and pruning go on), samples 2 images and checks their
  shape and that they are finite; then for a few seconds restores the newest
  checkpoint into that model again and again and reads every tensor of the
  newest checkpoint on record; every tenth round it runs `predict.py` itself;
* a contender, every few seconds: starts a second `train.py` on the folder
  (every other time with `--fresh`), which must be refused in one line.

Then it stops the trainer with SIGTERM and prints the counts as a table.
A corrupt read is a checkpoint that the sampler could not load, images that
are not finite, or a checkpoint still on record that could not be read in
full; a read that failed only because the trainer pruned that checkpoint
meanwhile is counted apart. Exits 1 unless there are no corrupt reads, every
second trainer was refused, and the trainer saved and stopped cleanly.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPOSITORY, os.path.join(REPOSITORY, "tests")]

import quality  # noqa: E402 (bench/, beside this file)
from conftest import synthetic_images, tiny_train_command  # noqa: E402

ENVIRONMENT = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
CONTENDER_PAUSE_SECONDS = 3.0
PREDICT_EVERY = 10
READ_SECONDS = 3.0


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--folder", help="work folder (default: a new temporary one)")
    parser.add_argument("--role", choices=("sampler", "contender"), help=argparse.SUPPRESS)
    parser.add_argument("--weights-dir", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    return parser.parse_args()


def train_command(weights_dir, data):
    return tiny_train_command(
        weights_dir, data, save_every=1, keep_checkpoints=3, max_steps=10**9, save_every_minutes=0
    )


def write_report(path, counts):
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(counts, file)
    os.replace(temporary, path)


# ---- the sampler


def sample_loop(arguments):
    import keras
    import numpy as np

    from tf_diffusion.checkpoint import CheckpointStore, load_for_sampling, read_in_full
    from tf_diffusion.sampling import Sampler

    counts = {
        "samples_read": 0,
        "restores": 0,
        "full_reads": 0,
        "pruned_during_read": 0,
        "predict_runs": 0,
        "corrupt": 0,
        "errors": [],
    }

    def corrupt(what, error):
        counts["corrupt"] += 1
        counts["errors"] = counts["errors"][-4:] + [f"{what}: {type(error).__name__}: {error}"]

    rounds = 0
    while not os.path.exists(arguments.stop_file):
        rounds += 1
        model = None
        try:  # what predict.py does: load the newest checkpoint, sample
            config, model = load_for_sampling(arguments.weights_dir)
            images = Sampler(model, config).sample(2, seed=rounds)
            finite = bool(np.isfinite(images).all())
            if images.shape != (2, 32, 32, 3) or not finite:
                raise ValueError(f"samples of shape {images.shape}, finite: {finite}")
            counts["samples_read"] += 1
        except Exception as error:  # noqa: BLE001 - any failure to read is what is counted
            corrupt("sampling", error)
        # Then, for a few seconds, restore into the same model again and again
        # (predict.py's reading, without building a model), and read the
        # newest checkpoint on record in full: many reads land on a save.
        until = time.monotonic() + READ_SECONDS
        while model is not None and time.monotonic() < until:
            name = "ema_model" if config.ema_decay > 0 else "model"
            try:
                quiet = CheckpointStore(arguments.weights_dir, {name: model}, say=lambda text: None)
                quiet.restore(expect_partial=True, reader=True)
                counts["restores"] += 1
            except Exception as error:  # noqa: BLE001
                corrupt("restoring", error)
            store = CheckpointStore(arguments.weights_dir, {})
            listed = store.candidates()
            try:
                read_in_full(listed[0])
                counts["full_reads"] += 1
            except Exception as error:  # noqa: BLE001
                if listed[0] in store.candidates():
                    corrupt(f"reading {os.path.basename(listed[0])}", error)
                else:
                    counts["pruned_during_read"] += 1
        if rounds % PREDICT_EVERY == 0:
            run_predict(arguments, counts, corrupt)
        keras.backend.clear_session()  # a new model each round: do not let them pile up
        write_report(arguments.report, counts)
    write_report(arguments.report, counts)


def run_predict(arguments, counts, corrupt):
    import numpy as np

    folder = os.path.dirname(arguments.report)
    npz = os.path.join(folder, "predict.npz")
    command = [
        sys.executable,
        os.path.join(REPOSITORY, "predict.py"),
        "--weights-dir",
        arguments.weights_dir,
        "--num",
        "2",
        "--npz",
        npz,
        "--out",
        os.path.join(folder, "predict.png"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=ENVIRONMENT)
    try:
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1:])
        with np.load(npz) as archive:
            if archive["x"].shape != (2, 32, 32, 3):
                raise ValueError(f"predict.py wrote shape {archive['x'].shape}")
        counts["predict_runs"] += 1
    except Exception as error:  # noqa: BLE001
        corrupt("predict.py", error)


# ---- the contender


def contend_loop(arguments):
    counts = {"attempts": 0, "refused": 0, "not_refused": []}
    command = train_command(arguments.weights_dir, arguments.data)
    while not os.path.exists(arguments.stop_file):
        fresh = ["--fresh"] if counts["attempts"] % 2 else []
        result = subprocess.run(command + fresh, capture_output=True, text=True, env=ENVIRONMENT)
        counts["attempts"] += 1
        lines = result.stderr.splitlines()
        if (
            result.returncode == 2
            and len(lines) == 1
            and lines[0].startswith("error: ")
            and "is in use by another training run" in lines[0]
        ):
            counts["refused"] += 1
        else:
            counts["not_refused"].append(f"exit {result.returncode}: {result.stderr[-300:]}")
        write_report(arguments.report, counts)
        time.sleep(CONTENDER_PAUSE_SECONDS)
    write_report(arguments.report, counts)


# ---- the conductor


def start_helper(role, folder, weights_dir, data, stop_file):
    report = os.path.join(folder, f"{role}.json")
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--role",
        role,
        "--weights-dir",
        weights_dir,
        "--data",
        data,
        "--stop-file",
        stop_file,
        "--report",
        report,
    ]
    log = open(os.path.join(folder, f"{role}.log"), "w")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENVIRONMENT), report


def read_report(path):
    with open(path) as file:
        return json.load(file)


def conduct(arguments):
    import numpy as np

    folder = arguments.folder or tempfile.mkdtemp(prefix="soak-")
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "cars.npz")
    np.savez(data, x=synthetic_images(64))
    weights_dir = os.path.join(folder, "run")
    stop_file = os.path.join(folder, "stop")
    if os.path.exists(stop_file):
        os.replace(stop_file, stop_file + ".old")
    command = train_command(weights_dir, data)
    print(f"bench/soak.py --minutes {arguments.minutes:g}: work folder {folder}", flush=True)

    trainer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT
    )
    pointer = os.path.join(weights_dir, "checkpoint")
    while trainer.poll() is None and not os.path.exists(pointer):
        time.sleep(0.1)  # until the first save
    started = time.monotonic()
    sampler, sampler_report = start_helper("sampler", folder, weights_dir, data, stop_file)
    contender, contender_report = start_helper("contender", folder, weights_dir, data, stop_file)
    while trainer.poll() is None and time.monotonic() - started < 60 * arguments.minutes:
        time.sleep(1.0)
    with open(stop_file, "w") as file:
        file.write("stop")
    for helper in (sampler, contender):
        helper.wait(timeout=600)
    elapsed = time.monotonic() - started
    if trainer.poll() is None:
        trainer.send_signal(signal.SIGTERM)
    _, stderr = trainer.communicate(timeout=600)

    from tf_diffusion.checkpoint import CheckpointStore, read_in_full
    from tf_diffusion.lock import LOCK_FILENAME

    store = CheckpointStore(weights_dir, {})
    saved = store.latest_step
    final_corrupt = []
    for path in store.candidates():
        try:
            read_in_full(path)
        except Exception as error:  # noqa: BLE001
            final_corrupt.append(f"{os.path.basename(path)}: {type(error).__name__}")
    sampling = read_report(sampler_report)
    contending = read_report(contender_report)
    stopped_cleanly = trainer.returncode == 130 and f"saved step {saved}" in stderr
    lock_left = os.path.exists(os.path.join(weights_dir, LOCK_FILENAME))
    corrupt = sampling["corrupt"] + len(final_corrupt)
    ok = (
        corrupt == 0
        and contending["attempts"] > 0
        and contending["refused"] == contending["attempts"]
        and stopped_cleanly
        and not lock_left
        and sampling["samples_read"] > 0
    )

    print(f"\ntrainer: `{shlex.join(command)}`")
    print(
        "second trainer: the same command, every other time with `--fresh`; "
        f"machine: {quality.machine()}\n"
    )
    print("| measure | count |")
    print("| --- | --- |")
    rows = [
        ("minutes", f"{elapsed / 60:.1f}"),
        ("saves (one per step)", saved),
        ("samples read (load as predict.py does, sample 2, check)", sampling["samples_read"]),
        ("restores into the loaded model (as predict.py reads)", sampling["restores"]),
        ("newest checkpoint on record read in full", sampling["full_reads"]),
        ("full reads whose checkpoint was pruned meanwhile", sampling["pruned_during_read"]),
        ("predict.py runs, output checked", sampling["predict_runs"]),
        (
            "second trainers refused / started",
            f"{contending['refused']} / {contending['attempts']}",
        ),
        ("corrupt reads", corrupt),
        (
            "trainer stopped by SIGTERM, saved, lock released",
            "yes" if stopped_cleanly and not lock_left else "NO",
        ),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    for problem in sampling["errors"] + contending["not_refused"] + final_corrupt:
        print(f"problem: {problem}")
    if not stopped_cleanly:
        print(f"trainer exit {trainer.returncode}: {stderr[-1000:]}")
    print(f"\n{'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def main():
    arguments = parse_arguments()
    if arguments.role == "sampler":
        return sample_loop(arguments)
    if arguments.role == "contender":
        return contend_loop(arguments)
    return conduct(arguments)


if __name__ == "__main__":
    sys.exit(main())
