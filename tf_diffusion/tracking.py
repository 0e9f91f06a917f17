"""Quality while training runs (`--track-kid N`): KID and FID at round ends, the best checkpoint.

At each round end the run's sampler draws N images, always from the same
noise (the run's seed), and they are measured against N training images of
the class, chosen once, on InceptionV3 features (`metrics.QualityTracker`,
which computes the real images' features once). KID and FID go to
TensorBoard and to `quality.json` in the weights folder. When the KID is the
lowest so far, the checkpoint is also saved into `best/`, through the same
`CheckpointStore` as the others: its files first, then the pointer, so a
crash leaves the previous best whole. `predict.py --best` samples from it.

Only measurements made the same way (as many samples, the same sampler,
spacing and sampling steps, the same Inception weights) are compared; after
a change, the next one starts a new best.
"""

import json
import os
import time

import numpy as np

from tf_diffusion.checkpoint import CheckpointStore
from tf_diffusion.config import BEST_FOLDER
from tf_diffusion.files import write_json
from tf_diffusion.metrics import QualityTracker

QUALITY_FILENAME = "quality.json"
# What makes two measurements comparable.
MEASURED_WITH = ("samples", "real", "inception_weights", "sampler", "spacing", "sampling_steps")


def read_records(weights_dir):
    """The measurements of the run in `weights_dir`, oldest first ([] if there are none)."""
    try:
        with open(os.path.join(weights_dir, QUALITY_FILENAME)) as file:
            return json.load(file)["measurements"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return []


def record_at(weights_dir, step):
    """The measurement of the run in `weights_dir` at `step`, or None."""
    return next((r for r in read_records(weights_dir) if r["step"] == step), None)


class KidTracker:
    """Measures the sampling model at each round end and keeps the best checkpoint."""

    def __init__(self, trainer, config, images, sampler, progress):
        self.started = time.monotonic()
        self.config = config
        self.sampler = sampler
        self.progress = progress
        chosen = np.random.default_rng(config.seed).permutation(len(images))[: config.track_kid]
        self.quality = QualityTracker(images[chosen], config.inception_weights)
        best_dir = os.path.join(config.weights_dir, BEST_FOLDER)
        os.makedirs(best_dir, exist_ok=True)
        self.best = CheckpointStore(best_dir, trainer.trackables(), keep=1)
        self.seconds = time.monotonic() - self.started
        progress.message(
            f"`track_kid` {config.track_kid}: InceptionV3 ({config.inception_weights}) and the "
            f"features of {len(chosen)} training images took {self.seconds:.0f} s"
        )

    def best_record(self, record):
        """The record of the checkpoint in best/, if it was measured as `record` was."""
        best = record_at(self.config.weights_dir, self.best.latest_step)
        if best and all(best.get(key) == record[key] for key in MEASURED_WITH):
            return best
        return None

    def __call__(self, step):
        start = time.monotonic()
        scores = self.quality(self.sampler.sample(self.config.track_kid, seed=self.config.seed))
        record = {
            "step": step,
            "kid": scores["kid"],
            "kid_std": scores["kid_std"],
            "fid": scores["fid"],
            "samples": scores["generated"],
            "real": scores["real"],
            "inception_weights": self.config.inception_weights,
            "sampler": self.config.sampler,
            "spacing": self.config.spacing,
            "sampling_steps": self.config.sampling_steps,
        }
        best = self.best_record(record)
        records = [r for r in read_records(self.config.weights_dir) if r["step"] != step]
        write_json(
            os.path.join(self.config.weights_dir, QUALITY_FILENAME),
            {"measurements": records + [record]},
        )
        improved = best is None or record["kid"] < best["kid"]
        if improved:
            self.best.save(step, self.config)
        self.seconds += time.monotonic() - start
        share = self.seconds / max(time.monotonic() - self.started - self.seconds, 1e-9)
        self.progress.scalars(step, {"kid": record["kid"], "fid": record["fid"]})
        self.progress.message(
            f"step {step}: KID {record['kid']:.4g}  FID {record['fid']:.4g}  ({record['samples']} "
            f"samples vs {record['real']} training images"
            + (f"; the lowest so far, saved in {self.best.directory}" if improved else "")
            + f"). Tracking has taken {self.seconds:.0f} s, {share:.1%} of the training time"
        )
        return record
