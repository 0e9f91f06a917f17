"""Sampling: from gaussian noise to images, in one compiled loop.

* A model that predicts the next level (the classic recipe) is applied once
  per level, from level 0 to `timesteps`.
* A model that predicts the noise is stepped deterministically (DDIM, eta 0)
  over `sampling_steps` evenly spaced levels: at each one the clean image is
  estimated (and clipped to [-1, 1]), then re-noised to the next level with
  the predicted noise. Fewer steps are faster and a little less sharp.

The whole denoising loop is one `tf.function` over a batch, with no
per-step Python or `model.predict` overhead; a large `num` runs in batches.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, UsageError
from tf_diffusion.schedule import NoiseSchedule

DEFAULT_BATCH_SIZE = 500


def sampling_levels(timesteps, sampling_steps):
    """The `sampling_steps + 1` levels visited, from 0 (noise) to `timesteps` (clean)."""
    if not 1 <= sampling_steps <= timesteps:
        raise UsageError(
            f"--sampling-steps must be between 1 and {timesteps}, got {sampling_steps}"
        )
    return np.round(np.linspace(0, timesteps, sampling_steps + 1)).astype(np.int32)


class Sampler:
    """A compiled denoising loop for one model and its config."""

    def __init__(self, model, config, sampling_steps=None, jit_compile=None):
        self.model = model
        self.config = config
        self.schedule = NoiseSchedule.from_config(config)
        steps = sampling_steps or config.sampling_steps
        if config.prediction == "next":
            if sampling_steps not in (None, config.timesteps):
                raise UsageError(
                    f"--sampling-steps {sampling_steps}: a model that predicts the next level "
                    f"(recipe {config.recipe!r}) takes all {config.timesteps} steps; leave it out"
                )
            steps = config.timesteps
        self.levels = sampling_levels(config.timesteps, steps)
        self.sampling_steps = steps
        self._run = tf.function(self._denoise, jit_compile=jit_compile, reduce_retracing=True)

    def _model_output(self, images, level):
        levels = tf.fill((tf.shape(images)[0], 1), tf.cast(level, tf.float32))
        return tf.cast(self.model([images, levels], training=False), tf.float32)

    def _step(self, images, level, next_level):
        if self.config.prediction == "next":
            return self._model_output(images, level)
        noises = self._model_output(images, level)
        signal, noise = self.schedule.rates(tf.reshape(level, (1,)))
        next_signal, next_noise = self.schedule.rates(tf.reshape(next_level, (1,)))
        clean = tf.clip_by_value((images - noise * noises) / signal, -1.0, 1.0)
        return next_signal * clean + next_noise * noises

    def _denoise(self, noises, keep_frames):
        levels = tf.constant(self.levels)
        steps = len(self.levels) - 1
        frames = tf.TensorArray(tf.float32, size=steps + 1 if keep_frames else 0)
        if keep_frames:
            frames = frames.write(0, noises)
        images = noises
        for index in tf.range(steps):
            images = self._step(images, levels[index], levels[index + 1])
            if keep_frames:
                frames = frames.write(index + 1, images)
        return tf.clip_by_value(images, -1.0, 1.0), frames.stack() if keep_frames else images

    def sample(self, num, seed=0, batch_size=DEFAULT_BATCH_SIZE, keep_frames=False):
        """`num` images in [-1, 1], and with `keep_frames` every level's images too."""
        if num < 1:
            raise UsageError(f"--num must be at least 1, got {num}")
        generator = tf.random.Generator.from_seed(seed)
        results, all_frames = [], []
        for start in range(0, num, batch_size):
            count = min(batch_size, num - start)
            noises = generator.normal((count, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS))
            images, frames = self._run(noises, keep_frames)
            results.append(images.numpy())
            if keep_frames:
                all_frames.append(frames.numpy())
        images = np.concatenate(results)
        if keep_frames:
            return images, np.concatenate(all_frames, axis=1)
        return images


def predict(model, config, num=25, seed=0, sampling_steps=None, batch_size=DEFAULT_BATCH_SIZE):
    """`num` generated images in [-1, 1], shape (num, 32, 32, 3)."""
    return Sampler(model, config, sampling_steps).sample(num, seed, batch_size)


def predict_step(model, config, num=8, seed=0, sampling_steps=None):
    """`(images, frames, levels)`: the final images, every step's images
    (shape (steps + 1, num, 32, 32, 3), starting with the noise) and the level of each frame.
    """
    sampler = Sampler(model, config, sampling_steps)
    images, frames = sampler.sample(num, seed, keep_frames=True)
    return images, frames, sampler.levels
