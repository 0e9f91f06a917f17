"""The diffusion process, in one place: the noise levels, how training mixes
noise into images and what the network learns to predict, and how one
sampling step removes noise.

Levels are numbered as in the classic recipe: level 0 is (almost) pure noise
and level `timesteps` is the clean image, so level `t + 1` is one step less
noisy than level `t`. An image at level `t` is

    signal_rates[t] * x + noise_rates[t] * noise

* Training (`draw_levels_and_noises`, `training_pair`): each example gets a
  random level and gaussian noise; the network sees the noisy image and its
  level, and is trained to output the next level's image ("next", the
  classic recipe) or the noise ("noise").
* Sampling (`sampling_levels`, `SAMPLER_STEPS`): from pure noise at level 0,
  one step per visited level up to the clean image.

Everything is written in TensorFlow ops, so that it runs inside the compiled
training step, the data pipeline and the sampler.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, Config, check_at_least, check_choice

# The cosine schedule keeps a little signal at level 0 so that the clean image
# can still be estimated from the noisiest input (as in keras.io's ddim.py).
COSINE_MIN_SIGNAL_RATE = 0.02


class NoiseSchedule:
    """Signal and noise rates for levels 0 (noise) to `timesteps` (clean)."""

    def __init__(self, kind="linear", timesteps=16):
        check_choice("schedule", kind)
        check_at_least("timesteps", timesteps, 1)
        self.kind = kind
        self.timesteps = int(timesteps)
        fraction_done = np.linspace(0.0, 1.0, self.timesteps + 1)
        if kind == "linear":
            # The classic recipe: time_bar = 1 - linspace(0, 1, timesteps + 1)
            # is the share of noise; the image gets the rest.
            noise_rates = 1.0 - fraction_done
            signal_rates = 1.0 - noise_rates
        else:
            # Cosine, variance preserving: signal**2 + noise**2 = 1, with the
            # angle falling linearly from arccos(min signal) to 0.
            angles = np.arccos(COSINE_MIN_SIGNAL_RATE) * (1.0 - fraction_done)
            signal_rates = np.cos(angles)
            noise_rates = np.sin(angles)
        self.signal_rates = tf.constant(signal_rates, tf.float32)
        self.noise_rates = tf.constant(noise_rates, tf.float32)

    @classmethod
    def from_config(cls, config):
        return cls(config.schedule, config.timesteps)

    def rates(self, levels, dtype=tf.float32):
        """Signal and noise rates of `levels`, shaped to broadcast over images."""
        levels = tf.cast(levels, tf.int32)
        signal = tf.reshape(tf.gather(self.signal_rates, levels), (-1, 1, 1, 1))
        noise = tf.reshape(tf.gather(self.noise_rates, levels), (-1, 1, 1, 1))
        return tf.cast(signal, dtype), tf.cast(noise, dtype)

    def mix(self, images, noises, levels):
        """The noisy images at `levels`."""
        signal, noise = self.rates(levels, images.dtype)
        return signal * images + noise * noises

    def forward_noise(self, images, levels, noises):
        """`(img_a, img_b)`: the images at `levels` and one level less noisy, same noise."""
        next_levels = tf.cast(levels, tf.int32) + 1
        return self.mix(images, noises, levels), self.mix(images, noises, next_levels)

    def generate_ts(self, count, generator=None):
        """`count` random levels in [0, timesteps), as int32."""
        generator = generator or tf.random.get_global_generator()
        return generator.uniform((count,), 0, self.timesteps, dtype=tf.int32)


# ---- training


def draw_levels_and_noises(seed, batch_number, batch_size, timesteps):
    """The levels and noise of training batch `batch_number`, a pure function of both numbers.

    Stateless random ops keyed by `(seed, batch_number)` give the same draw on
    any device and any number of replicas, and again after a resume.
    """
    levels = tf.random.stateless_uniform(
        (batch_size,), tf.stack([seed, 2 * batch_number]), 0, timesteps, dtype=tf.int32
    )
    noises = tf.random.stateless_normal(
        (batch_size, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS),
        tf.stack([seed, 2 * batch_number + 1]),
    )
    return levels, noises


def training_pair(schedule, prediction, images, levels, noises):
    """The network's input at `levels`, and the target its output is trained to match.

    "next" (the classic recipe): the same images one level less noisy.
    "noise": the noise that was mixed in.
    """
    if prediction == "next":
        return schedule.forward_noise(images, levels, noises)
    return schedule.mix(images, noises, levels), noises


# ---- sampling


def sampling_levels(timesteps, sampling_steps):
    """The `sampling_steps + 1` levels visited, evenly spaced from 0 (noise) to `timesteps`."""
    return np.round(np.linspace(0, timesteps, sampling_steps + 1)).astype(np.int32)


def next_level_step(schedule, output, images, level, next_level):
    """Classic: the network's output is already the image at the next level."""
    return output


def ddim_step(schedule, predicted_noises, images, level, next_level):
    """Deterministic DDIM (eta 0): estimate the clean image, then re-noise it to `next_level`.

    The estimate is clipped to [-1, 1]; the predicted noise is reused as the
    noise of the next level.
    """
    signal, noise = schedule.rates(tf.reshape(level, (1,)))
    next_signal, next_noise = schedule.rates(tf.reshape(next_level, (1,)))
    clean = tf.clip_by_value((images - noise * predicted_noises) / signal, -1.0, 1.0)
    return next_signal * clean + next_noise * predicted_noises


# One sampling step for each prediction target: the network's output at
# `level` and the current images to the images at `next_level`.
SAMPLER_STEPS = {"next": next_level_step, "noise": ddim_step}


# ---- the classic recipe's public functions


def default_schedule():
    return NoiseSchedule.from_config(Config())


def forward_noise(x, t, schedule=None, noise=None, generator=None):
    """Mix `x` with gaussian noise at levels `t` and `t + 1`.

    Returns `(img_a, img_b)`: `img_a` is `x` at level `t`, and `img_b` the same
    `x` with the same noise at level `t + 1`, one step less noisy.
    """
    schedule = schedule or default_schedule()
    x = tf.convert_to_tensor(x, tf.float32)
    if noise is None:
        generator = generator or tf.random.get_global_generator()
        noise = generator.normal(tf.shape(x))
    return schedule.forward_noise(x, t, noise)


def generate_ts(num, schedule=None, generator=None):
    """`num` random levels in [0, timesteps)."""
    return (schedule or default_schedule()).generate_ts(num, generator)
