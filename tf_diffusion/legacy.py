"""The first recipes' own ways, kept so that their runs train and sample as they always did.

* The classic "diffusion from scratch" recipe: 16 linear levels counted from
  the noise (level 0 is pure noise, level 16 the clean image), a network
  trained to output the next, less noisy level's image, and a sampler that
  applies it once per level. Its public functions keep their names:
  `forward_noise(x, t)` and `generate_ts(num)`, with t its level.
* v1's random keys: the training data's random streams ("shared") could meet
  each other's keys; every later recipe tags each stream ("tagged").
* The "rounds" learning rate of the classic and v1: the rate times a decay
  after each round of steps.

`diffusion.py` holds the method of every other recipe; `schedule_for`,
`loss_for` and `sampler_for` pick between the two, here and nowhere else.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_diffusion.config import Config, check_choice
from tf_diffusion.diffusion import SAMPLERS, NoiseSchedule, denoise, loss, record
from tf_diffusion.model import call_network


class LinearSchedule(NoiseSchedule):
    """The classic's levels: at level l the image is (1 - n_l) x + n_l noise, with the share
    of noise n_l = 1 - l / T falling from 1 at level 0 to 0 at level T ("time_bar").

    As a `NoiseSchedule`, its alpha_t and sigma_t are the same rates in the papers' time
    t = T - l, so that the method's functions can read it.
    """

    def __init__(self, timesteps=16):
        self.timesteps = int(timesteps)
        noise_rates = 1.0 - np.linspace(0.0, 1.0, self.timesteps + 1)
        self.noise_rates = tf.constant(noise_rates, tf.float32)
        self.signal_rates = tf.constant(1.0 - noise_rates, tf.float32)
        self.alphas, self.sigmas = self.signal_rates[::-1], self.noise_rates[::-1]

    def mix(self, images, noises, levels):
        """The images at `levels` (one per image), with `noises`."""
        levels = tf.cast(levels, tf.int32)
        signal = tf.reshape(tf.gather(self.signal_rates, levels), (-1, 1, 1, 1))
        noise = tf.reshape(tf.gather(self.noise_rates, levels), (-1, 1, 1, 1))
        return signal * images + noise * noises

    def forward_noise(self, images, levels, noises):
        """`(img_a, img_b)`: the images at `levels` and one level less noisy, same noise."""
        next_levels = tf.cast(levels, tf.int32) + 1
        return self.mix(images, noises, levels), self.mix(images, noises, next_levels)


def schedule_for(config):
    """The noise schedule of a run: the classic's linear levels, or the method's cosine."""
    check_choice("schedule", config.schedule)
    if config.schedule == "linear":
        return LinearSchedule(config.timesteps)
    return NoiseSchedule(config.timesteps)


def classic_loss(network, schedule, config, x0, t, eps):
    """The error at each pixel on the next level's image, from the image at level T - t."""
    levels = schedule.timesteps - t
    img_a, img_b = schedule.forward_noise(x0, levels, eps)
    output = call_network(network, img_a, levels, training=True)
    return (output - img_b) ** 2 if config.loss == "mse" else tf.abs(output - img_b)


def classic_sampler(network, schedule, x, times, frames):
    """The network applied once per level, from the noise (t = T, level 0) to the image."""
    for i in tf.range(tf.shape(times)[0] - 1):
        x = call_network(network, x, schedule.timesteps - times[i])
        frames = record(frames, i + 1, x)
    return x, frames


def predicts_next(config):
    return config.prediction == "next"


def loss_for(config):
    """`loss(network, schedule, config, x0, t, eps)`, the loss at each pixel, of a run."""
    return classic_loss if predicts_next(config) else loss


def sampler_for(network, schedule, config):
    """`walk(x, times, frames)`: the run's sampler, from x at times[0] down to times[-1]."""
    if predicts_next(config):
        return lambda x, times, frames: classic_sampler(network, schedule, x, times, frames)
    step = SAMPLERS[config.sampler]

    def denoise_here(x, t):
        return denoise(network, schedule, config.prediction, x, t)

    return lambda x, times, frames: step(denoise_here, schedule, x, times, frames)


# ---- the classic recipe's public functions


def default_schedule():
    return schedule_for(Config.for_recipe("classic"))


def forward_noise(x, t, schedule=None, noise=None, generator=None):
    """Mix `x` with gaussian noise at the classic's levels `t` and `t + 1`.

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
    """`num` random classic levels in [0, timesteps), as int32."""
    timesteps = (schedule or default_schedule()).timesteps
    generator = generator or tf.random.get_global_generator()
    return generator.uniform((num,), 0, timesteps, dtype=tf.int32)


# The random streams of training, each keyed by the seed and a number (the
# epoch for the shuffle, the batch for the rest).
STREAMS = ("shuffle", "levels", "noise", "flips")


def stream_key(seed, stream, number, noise_keys="tagged"):
    """The stateless key of `stream` for `number`.

    "tagged": `[seed, 4 * number + tag]`, so no two streams ever share a key.
    "shared" (v1): `[seed, epoch]` for the shuffle and `[seed, 2k]`, `[seed,
    2k + 1]` for batch k's times and noise, which can meet the shuffle's.
    """
    seed, number = tf.cast(seed, tf.int64), tf.cast(number, tf.int64)
    if noise_keys == "tagged":
        return tf.stack([seed, 4 * number + STREAMS.index(stream)])
    offsets = {"shuffle": number, "levels": 2 * number, "noise": 2 * number + 1}
    return tf.stack([seed, offsets[stream]])


# ---- the "rounds" learning rate


@keras.saving.register_keras_serializable(package="tf_diffusion")
class RoundDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`initial` times `decay` to the power of the finished rounds, never below `floor`."""

    def __init__(self, initial, decay, round_steps, floor):
        self.initial = float(initial)
        self.decay = float(decay)
        self.round_steps = int(round_steps)
        self.floor = float(floor)

    def __call__(self, step):
        rounds = tf.math.floordiv(tf.cast(step, tf.float32), float(self.round_steps))
        rate = self.initial * tf.pow(self.decay, rounds)
        return tf.maximum(rate, self.floor)

    def get_config(self):
        return {
            "initial": self.initial,
            "decay": self.decay,
            "round_steps": self.round_steps,
            "floor": self.floor,
        }
