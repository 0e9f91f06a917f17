"""The diffusion process, in one place: the noise levels, how training mixes
noise into images and what the network learns to predict, and how one
sampling step removes noise.

Levels are numbered as in the classic recipe: level 0 is (almost) pure noise
and level `timesteps` is the clean image, so level `t + 1` is one step less
noisy than level `t`. An image at level `t` is

    signal_rates[t] * x + noise_rates[t] * noise

* Training (`LevelDraw`, `training_pair`): each example gets a
  random level and gaussian noise; the network sees the noisy image and its
  level, and is trained to output the next level's image ("next", the
  classic recipe), the noise ("noise", v1), the velocity ("velocity", the
  default) or the clean image ("image").
* Sampling (`sampling_levels`, `SAMPLERS`): from pure noise at level 0,
  one step of the sampler per visited level up to the clean image.

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


# The random streams of training, each keyed by the seed and a number (the
# epoch for the shuffle, the batch for the rest).
STREAMS = ("shuffle", "levels", "noise", "flips")


def stream_key(seed, stream, number, noise_keys="tagged"):
    """The stateless key of `stream` for `number`.

    "tagged": `[seed, 4 * number + tag]`, so no two streams ever share a key.
    "shared" (v1): `[seed, epoch]` for the shuffle and `[seed, 2k]`, `[seed,
    2k + 1]` for batch k's levels and noise, which can meet the shuffle's.
    """
    seed, number = tf.cast(seed, tf.int64), tf.cast(number, tf.int64)
    if noise_keys == "tagged":
        return tf.stack([seed, 4 * number + STREAMS.index(stream)])
    offsets = {"shuffle": number, "levels": 2 * number, "noise": 2 * number + 1}
    return tf.stack([seed, offsets[stream]])


class LevelDraw:
    """How training draws each batch's levels and noise: a pure function of (seed, batch).

    Stateless random ops give the same draw on any device and any number of
    replicas, and again after a resume.
    "uniform": every level in [0, timesteps) alike.
    "log-normal" (EDM, Karras et al. 2022): log(noise / signal) ~ N(mean, std),
    taken to the first level whose ratio is at most the one drawn.
    """

    def __init__(self, schedule, distribution="uniform", mean=-1.2, std=1.2, noise_keys="shared"):
        check_choice("level_distribution", distribution)
        self.schedule = schedule
        self.distribution = distribution
        self.mean, self.std = float(mean), float(std)
        self.noise_keys = noise_keys
        # log(noise / signal) of the trainable levels, falling from level 0 on.
        with np.errstate(divide="ignore"):
            ratios = np.log(noise_to_signal(schedule)[: schedule.timesteps])
        self.log_ratios = tf.constant(-ratios, tf.float32)  # rising, for searchsorted

    @classmethod
    def from_config(cls, config, schedule=None):
        return cls(
            schedule or NoiseSchedule.from_config(config),
            config.level_distribution,
            config.level_mean,
            config.level_std,
            config.noise_keys,
        )

    def key(self, seed, stream, number):
        return stream_key(seed, stream, number, self.noise_keys)

    def __call__(self, seed, batch_number, batch_size):
        levels_key = self.key(seed, "levels", batch_number)
        timesteps = self.schedule.timesteps
        if self.distribution == "uniform":
            levels = tf.random.stateless_uniform((batch_size,), levels_key, 0, timesteps, tf.int32)
        else:
            log_ratios = tf.random.stateless_normal((batch_size,), levels_key, self.mean, self.std)
            positions = tf.searchsorted(self.log_ratios, -log_ratios)
            levels = tf.cast(tf.clip_by_value(positions, 0, timesteps - 1), tf.int32)
        noises = tf.random.stateless_normal(
            (batch_size, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS),
            self.key(seed, "noise", batch_number),
        )
        return levels, noises


def training_pair(schedule, prediction, images, levels, noises):
    """The network's input at `levels`, and the target its output is trained to match.

    "next" (the classic recipe): the same images one level less noisy.
    "noise": the noise that was mixed in.
    "velocity" (Salimans & Ho 2022): signal_rate * noise - noise_rate * image.
    "image": the clean image.
    """
    if prediction == "next":
        return schedule.forward_noise(images, levels, noises)
    noisy = schedule.mix(images, noises, levels)
    if prediction == "noise":
        return noisy, noises
    if prediction == "velocity":
        signal, noise = schedule.rates(levels)
        return noisy, signal * noises - noise * images
    return noisy, images


def signal_to_noise(schedule, levels):
    """(signal rate / noise rate)**2 at `levels`, shaped to broadcast over images."""
    signal, noise = schedule.rates(levels)
    return tf.square(signal / noise)


def loss_weights(schedule, prediction, weighting, levels, gamma=5.0):
    """Each example's weight on the absolute error of its target.

    "none": 1. An absolute error on the noise is sqrt(SNR) times the error on
    the clean image it implies (on the velocity, sqrt(SNR + 1) times), so
    plain MAE on the noise weights the clean image by sqrt(SNR) and puts its
    effort where the noise is too small to matter.
    "min-snr" (Hang et al. 2023, here for an absolute error): weight the
    clean-image error by sqrt(min(SNR, gamma)) whatever the target. The
    squared error (`loss` mse) squares the weighted error, so its weights are
    the paper's own: min(SNR, gamma) on the clean image.
    """
    if weighting == "none":
        return tf.ones_like(tf.cast(tf.reshape(levels, (-1, 1, 1, 1)), tf.float32))
    ratio = signal_to_noise(schedule, levels)
    weights = tf.sqrt(tf.minimum(ratio, gamma))
    if prediction == "noise":
        return weights / tf.sqrt(ratio)
    if prediction == "velocity":
        return weights / tf.sqrt(ratio + 1.0)
    return weights


# ---- sampling


def sampling_levels(schedule, sampling_steps, spacing="uniform", rho=7.0):
    """The levels visited, from 0 (noise) to `timesteps` (clean): `sampling_steps + 1` of them.

    "uniform": evenly spaced levels. "edm" (Karras et al. 2022): noise-to-signal
    ratios spaced by `rho` from level 0's down to level `timesteps - 1`'s, each
    rounded to the nearest level, then the clean image; steps that round to
    the same level are taken once, so there may be fewer.
    """
    timesteps = schedule.timesteps
    if spacing == "uniform" or sampling_steps < 2:
        return np.round(np.linspace(0, timesteps, sampling_steps + 1)).astype(np.int32)
    ratios = noise_to_signal(schedule)
    ramp = np.linspace(0.0, 1.0, sampling_steps)
    high, low = ratios[0] ** (1 / rho), ratios[timesteps - 1] ** (1 / rho)
    wanted = (high + ramp * (low - high)) ** rho
    nearest = np.abs(np.log(ratios[:timesteps, None]) - np.log(wanted[None, :])).argmin(axis=0)
    return np.unique(np.append(nearest, timesteps)).astype(np.int32)


def noise_to_signal(schedule):
    """sigma = noise rate / signal rate at every level, float64 (inf at linear level 0)."""
    signal = schedule.signal_rates.numpy().astype(np.float64)
    noise = schedule.noise_rates.numpy().astype(np.float64)
    with np.errstate(divide="ignore"):
        return noise / signal


def history_weights(schedule, levels):
    """DPM-Solver++(2M)'s weight of the previous clean estimate at each step (0: first order).

    With lambda = log(signal / noise) and h its change over a step, step i
    uses (1 + w) * D_i - w * D_(i-1) with w = h_i / (2 h_(i-1)). The first step
    has no history and the last, to the clean image (lambda infinite), is
    taken in first order, as in Lu et al. (2022).
    """
    lambdas = -np.log(noise_to_signal(schedule)[levels[:-1]])
    steps = np.diff(lambdas)
    weights = np.zeros(len(levels) - 1)
    weights[1:-1] = steps[1:] / (2.0 * steps[:-1])
    return np.nan_to_num(weights, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def estimate_clean_and_noise(schedule, prediction, output, images, level):
    """The clean image (clipped to [-1, 1]) and the noise that the network's output implies."""
    signal, noise = schedule.rates(tf.reshape(level, (1,)))
    if prediction == "noise":
        clean, noises = (images - noise * output) / signal, output
    elif prediction == "velocity":
        clean, noises = signal * images - noise * output, noise * images + signal * output
    else:  # "image"
        clean, noises = output, (images - signal * output) / noise
    return tf.clip_by_value(clean, -1.0, 1.0), noises


# Each sampler step takes `denoise(images, level) -> (clean, noises)`, the
# images at `level`, the level to step to, the previous step's clean estimate
# and its history weight, and returns the images at `next_level` and this
# step's clean estimate.


def ddim_step(denoise, schedule, images, level, next_level, previous_clean, history_weight):
    """Deterministic DDIM (Song et al. 2021, eta 0): re-noise the clean estimate to `next_level`.

    The estimate is clipped to [-1, 1]; the predicted noise is reused as the
    noise of the next level. One network evaluation.
    """
    clean, noises = denoise(images, level)
    next_signal, next_noise = schedule.rates(tf.reshape(next_level, (1,)))
    return next_signal * clean + next_noise * noises, clean


def dpm_solver_step(denoise, schedule, images, level, next_level, previous_clean, history_weight):
    """DPM-Solver++(2M) (Lu et al. 2022), second order from the previous clean estimate.

    x_next = (noise_next / noise) x + (signal_next - signal noise_next / noise) D,
    with D the clean estimate extrapolated from the previous one. One network
    evaluation.
    """
    clean, _ = denoise(images, level)
    signal, noise = schedule.rates(tf.reshape(level, (1,)))
    next_signal, next_noise = schedule.rates(tf.reshape(next_level, (1,)))
    extrapolated = (1.0 + history_weight) * clean - history_weight * previous_clean
    ratio = next_noise / noise
    return ratio * images + (next_signal - ratio * signal) * extrapolated, clean


def heun_step(denoise, schedule, images, level, next_level, previous_clean, history_weight):
    """EDM's second-order Heun step (Karras et al. 2022) in sigma = noise / signal.

    On y = x / signal the flow is dy/dsigma = noise estimate. An Euler step to
    `next_level`, then (unless that is the clean image) the average of the two
    slopes. Two network evaluations, one on the last step.
    """
    signal, noise = schedule.rates(tf.reshape(level, (1,)))
    next_signal, next_noise = schedule.rates(tf.reshape(next_level, (1,)))
    clean, _ = denoise(images, level)
    slope = (images - signal * clean) / noise
    euler = next_signal * clean + next_noise * slope

    def corrected():
        next_clean, _ = denoise(euler, next_level)
        next_slope = (euler - next_signal * next_clean) / next_noise
        change = next_noise / next_signal - noise / signal
        return next_signal * (images / signal + change * (slope + next_slope) / 2.0)

    return tf.cond(next_noise[0, 0, 0, 0] > 0, corrected, lambda: euler), clean


def next_level_step(denoise, schedule, images, level, next_level, previous_clean, history_weight):
    """Classic: the network's output is already the image at the next level."""
    output, _ = denoise(images, level)
    return output, previous_clean


SAMPLERS = {"ddim": ddim_step, "dpm-solver++": dpm_solver_step, "heun": heun_step}


def network_evaluations(sampler, sampling_steps):
    """How many times `sampler` runs the network per image over `sampling_steps` steps."""
    return 2 * sampling_steps - 1 if sampler == "heun" else sampling_steps  # Heun: 1 on the last


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
