#!/usr/bin/env python3
"""Make tests/data/legacy-run/: a tiny run folder written by an older version of tf-diffusion.

It was run once, at commit 9ba6198 (before `Config.time_embedding` was
removed), and its output is checked in, so that tests/test_legacy_run.py can
prove that run folders written by that version still resume and sample
exactly as they did then:

    python tests/data/make_legacy_run.py

It writes the run (trained to step 6 on the tests' synthetic images; only its
checkpoint and config.json are kept) and `expected.npz`: float samples at
step 6 and, after resuming to step 8 in a copy, at step 8.
"""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402
from conftest import synthetic_images  # noqa: E402

SETTINGS = {
    "width": 4,
    "batch_size": 4,
    "timesteps": 20,
    "sampling_steps": 4,
    "learning_rate": 3e-3,
    "save_every": 1000,
    "keep_checkpoints": 1,
}
SAMPLES = {"num": 4, "seed": 0}


def samples(weights_dir):
    from tf_diffusion.checkpoint import load_for_sampling
    from tf_diffusion.sampling import Sampler

    config, model = load_for_sampling(weights_dir)
    return Sampler(model, config).sample(SAMPLES["num"], seed=SAMPLES["seed"])


def main():
    from tf_diffusion import commands

    target = os.path.join(HERE, "legacy-run")
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "images.npz")
        np.savez(data, x=synthetic_images())
        run = os.path.join(scratch, "run")
        commands.train(run, None, dict(SETTINGS, data=data, max_steps=6), quiet=True)
        at_6 = samples(run)
        os.makedirs(target)
        for name in os.listdir(run):
            if name == "checkpoint" or name == "config.json" or name.startswith("ckpt-"):
                shutil.copy(os.path.join(run, name), target)
        commands.train(run, None, {"data": data, "max_steps": 8}, quiet=True)
        at_8 = samples(run)
    np.savez(os.path.join(HERE, "legacy-run-expected.npz"), step_6=at_6, step_8=at_8)


if __name__ == "__main__":
    main()
