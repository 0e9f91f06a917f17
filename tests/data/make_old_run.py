#!/usr/bin/env python3
"""Make a tiny run folder as an older version of tf-diffusion saved it (tests/test_legacy_run.py).

    python tests/data/make_old_run.py legacy-run     # was run at commit 9ba6198
    python tests/data/make_old_run.py default-run    # was run at commit 4a79aa5

Each was run once, at the commit named above, and its output is checked in, so that the
tests prove that run folders written by that version still resume and sample exactly as
they did then:

* `legacy-run`: the first version's default recipe (its config.json still has
  `time_embedding`, since removed);
* `default-run`: today's default recipe the commit before the method moved into
  `diffusion.py`, where time runs from the clean image; levels then counted from the
  noise. In float32, so that any CPU computes the same.

It writes tests/data/NAME (trained to step 6 on the tests' synthetic images; only its
checkpoint and config.json are kept) and NAME-expected.npz: float samples at step 6 and,
after resuming to step 8 in a copy, at step 8.
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

TINY = {"width": 4, "batch_size": 4, "timesteps": 20, "sampling_steps": 4}
SETTINGS = {
    "legacy-run": {**TINY, "learning_rate": 3e-3, "save_every": 1000, "keep_checkpoints": 1},
    "default-run": {
        **TINY,
        **{"warmup_steps": 0, "precision": "float32", "sampling_precision": "float32"},
        "keep_checkpoints": 1,
    },
}
SAMPLES = {"num": 4, "seed": 0}


def samples(weights_dir):
    from tf_diffusion.checkpoint import load_for_sampling
    from tf_diffusion.sampling import Sampler

    config, model = load_for_sampling(weights_dir)
    return Sampler(model, config).sample(SAMPLES["num"], seed=SAMPLES["seed"])


def main(name):
    from tf_diffusion import commands

    target = os.path.join(HERE, name)
    shutil.rmtree(target, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        data = os.path.join(scratch, "images.npz")
        np.savez(data, x=synthetic_images())
        run = os.path.join(scratch, "run")
        commands.train(run, None, dict(SETTINGS[name], data=data, max_steps=6), quiet=True)
        at_6 = samples(run)
        os.makedirs(target)
        for file_name in os.listdir(run):
            if file_name in ("checkpoint", "config.json") or file_name.startswith("ckpt-"):
                shutil.copy(os.path.join(run, file_name), target)
        commands.train(run, None, {"data": data, "max_steps": 8}, quiet=True)
        at_8 = samples(run)
    np.savez(os.path.join(HERE, f"{name}-expected.npz"), step_6=at_6, step_8=at_8)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "default-run")
