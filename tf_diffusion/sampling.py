"""Sampling: from gaussian noise to images, in one compiled loop.

The run's sampler (`diffusion.SAMPLERS`: DPM-Solver++(2M) by default, DDIM or
Heun; the classic recipe's own in `legacy.py`) walks `config.sampling_steps`
steps over the times `diffusion.sampling_times` gives, from t = T (noise) to
t = 0 (the image). Fewer steps are faster and a little less sharp.

The whole denoising loop is one `tf.function` over a batch, with no
per-step Python or `model.predict` overhead; a large `num` runs in batches.
The starting noise of each batch is a pure function of the seed and the
batch's first image (`sampling_noises`), so the exported sampler
(`export.py`) reproduces these images from the same seed.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, check_at_least
from tf_diffusion.diffusion import sampling_times
from tf_diffusion.legacy import sampler_for, schedule_for

# Images denoised together in one call of the compiled loop.
SAMPLING_BATCH_SIZE = 500
# Philox counter steps that `tf.random.Generator.normal` reserves per value it draws.
PHILOX_STEPS_PER_VALUE = 256
PHILOX = 1  # the algorithm number of Philox in TensorFlow's random ops
IMAGE_VALUES = IMAGE_SIZE * IMAGE_SIZE * IMAGE_CHANNELS


def sampling_noises(seed, start, count):
    """The starting noise of images `start` to `start + count` of a sample drawn with `seed`.

    Bit for bit what `tf.random.Generator.from_seed(seed).normal` gave when the
    batches were drawn one after another, but stateless: the Philox counter of
    a batch is worked out from `seed` and `start` (from_seed puts the seed in
    the counter's low word and its sign in the high word and the key, and each
    draw moves the counter on by 256 per value). So the same seed gives the
    same images here and in the exported sampler, without a shared state.
    """
    seed = tf.cast(seed, tf.int64)
    sign = tf.where(seed < 0, tf.constant(-1, tf.int64), tf.constant(0, tf.int64))
    low = seed + tf.cast(start, tf.int64) * (PHILOX_STEPS_PER_VALUE * IMAGE_VALUES)
    carry = tf.cast((seed < 0) & (low >= 0), tf.int64)  # the 64-bit low word wrapped around
    return tf.raw_ops.StatelessRandomNormalV2(
        shape=tf.stack([count, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS]),
        key=tf.bitcast(tf.reshape(sign, (1,)), tf.uint64),
        counter=tf.bitcast(tf.stack([low, sign + carry]), tf.uint64),
        alg=PHILOX,
    )


class Sampler:
    """A compiled denoising loop for one model and its config.

    `config.sampling_steps` sets the steps; change it with
    `config.replace(sampling_steps=...)`, which checks it against the run.
    """

    def __init__(self, model, config, jit_compile=None):
        self.model = model
        self.config = config
        self.schedule = schedule_for(config)
        self.times = sampling_times(self.schedule, config.sampling_steps, config.spacing)
        self.sampling_steps = len(self.times) - 1
        self.walk = sampler_for(model, self.schedule, config)
        self._run = tf.function(self._denoise, jit_compile=jit_compile, reduce_retracing=True)

    def _denoise(self, noises, keep_frames):
        return self.run_steps(noises, tf.constant(self.times), keep_frames)

    def run_steps(self, noises, times, keep_frames=False):
        """Denoise `noises` from times[0] to times[-1] (a tensor) with the run's sampler; the
        images in [-1, 1], and with `keep_frames` every step's images, else the images again.
        """
        frames = tf.TensorArray(tf.float32, size=tf.shape(times)[0] if keep_frames else 0)
        if keep_frames:
            frames = frames.write(0, noises)
        images, frames = self.walk(noises, times, frames)
        return tf.clip_by_value(images, -1.0, 1.0), frames.stack() if keep_frames else images

    def sample(self, num, seed=0, batch_size=SAMPLING_BATCH_SIZE, keep_frames=False):
        """`num` images in [-1, 1], and with `keep_frames` every level's images too."""
        check_at_least("num", num, 1)
        results, all_frames = [], []
        for start in range(0, num, batch_size):
            noises = sampling_noises(seed, start, min(batch_size, num - start))
            images, frames = self._run(noises, keep_frames)
            results.append(images.numpy())
            if keep_frames:
                all_frames.append(frames.numpy())
        images = np.concatenate(results)
        if keep_frames:
            return images, np.concatenate(all_frames, axis=1)
        return images


def predict(
    model, config, num=25, seed=0, sampling_steps=None, batch_size=SAMPLING_BATCH_SIZE, **changes
):
    """`num` generated images in [-1, 1], shape (num, 32, 32, 3).

    `changes` are other predict-time settings, such as `sampler` or `spacing`.
    """
    config = config.replace(sampling_steps=sampling_steps, **changes)
    return Sampler(model, config).sample(num, seed, batch_size)


def predict_step(model, config, num=8, seed=0, sampling_steps=None, **changes):
    """`(images, frames, times)`: the final images, every step's images
    (shape (steps + 1, num, 32, 32, 3), starting with the noise) and the time t of each frame.
    """
    sampler = Sampler(model, config.replace(sampling_steps=sampling_steps, **changes))
    images, frames = sampler.sample(num, seed, keep_frames=True)
    return images, frames, sampler.times
