"""The noise schedule: how much signal and noise each level holds.

Levels are numbered as in the classic recipe: level 0 is (almost) pure noise
and level `timesteps` is the clean image, so level `t + 1` is one step less
noisy than level `t`. A noisy image at level `t` is

    signal_rates[t] * x + noise_rates[t] * noise

Everything here is written in TensorFlow ops so that it runs inside the
compiled training step and sampler.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion.config import Config, UsageError

# The cosine schedule keeps a little signal at level 0 so that the clean image
# can still be estimated from the noisiest input (as in keras.io's ddim.py).
COSINE_MIN_SIGNAL_RATE = 0.02


class NoiseSchedule:
    """Signal and noise rates for levels 0 (noise) to `timesteps` (clean)."""

    def __init__(self, kind="linear", timesteps=16):
        if timesteps < 1:
            raise UsageError(f"--timesteps must be at least 1, got {timesteps}")
        self.kind = kind
        self.timesteps = int(timesteps)
        fraction_done = np.linspace(0.0, 1.0, self.timesteps + 1)
        if kind == "linear":
            # The classic recipe: time_bar = 1 - linspace(0, 1, timesteps + 1)
            # is the share of noise; the image gets the rest.
            noise_rates = 1.0 - fraction_done
            signal_rates = 1.0 - noise_rates
        elif kind == "cosine":
            # Variance preserving: signal**2 + noise**2 = 1, with the angle
            # falling linearly from arccos(min signal) to 0.
            angles = np.arccos(COSINE_MIN_SIGNAL_RATE) * (1.0 - fraction_done)
            signal_rates = np.cos(angles)
            noise_rates = np.sin(angles)
        else:
            raise UsageError(f"--schedule {kind!r} is not one of: linear, cosine")
        self.time_bar = noise_rates
        self.signal_rates = tf.constant(signal_rates, tf.float32)
        self.noise_rates = tf.constant(noise_rates, tf.float32)

    @classmethod
    def from_config(cls, config):
        return cls(config.schedule, config.timesteps)

    def rates(self, t, dtype=tf.float32):
        """Signal and noise rates of levels `t`, shaped to broadcast over images."""
        t = tf.cast(t, tf.int32)
        signal = tf.reshape(tf.gather(self.signal_rates, t), (-1, 1, 1, 1))
        noise = tf.reshape(tf.gather(self.noise_rates, t), (-1, 1, 1, 1))
        return tf.cast(signal, dtype), tf.cast(noise, dtype)

    def mix(self, images, noises, t):
        """The noisy images at levels `t`."""
        signal, noise = self.rates(t, images.dtype)
        return signal * images + noise * noises

    def forward_noise(self, images, t, noises):
        """`(img_a, img_b)`: the images at levels `t` and `t + 1`, with the same noise."""
        return self.mix(images, noises, t), self.mix(images, noises, tf.cast(t, tf.int32) + 1)

    def generate_ts(self, count, generator=None):
        """`count` random levels in [0, timesteps), as int32."""
        generator = generator or tf.random.get_global_generator()
        return generator.uniform((count,), 0, self.timesteps, dtype=tf.int32)


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
