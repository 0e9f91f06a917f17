"""Diffusion, top to bottom: the noise schedule, what the network learns, the loss, the samplers.

Notation as in the papers (Ho et al. 2020, Song et al. 2021, Karras et al.
2022): time t runs from 0, the clean image x_0, to T, pure noise, and

    x_t = alpha_t * x_0 + sigma_t * eps,    eps ~ N(0, I),    alpha_t**2 + sigma_t**2 = 1.

Training (`loss`) draws t and eps, mixes them into each image, and teaches
the network F(x_t, t) to recover a target from x_t. Sampling (`SAMPLERS`)
starts from noise at t = T and walks down to t = 0, asking the network at each
step for its estimate of the clean image. Everything is in TensorFlow ops, so
it runs inside the compiled training step and the compiled sampling loop.

The network itself (`model.py`) is given t as the level counted from the
noise, T - t: the first recipes numbered levels that way, and their
checkpoints still load. The oldest recipe, the classic "diffusion from
scratch", has its own schedule, target and sampler in `legacy.py`.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, check_at_least, check_choice
from tf_diffusion.model import call_network

# ---- 1. The noise schedule

# alpha_T: a little signal is left at t = T, so that the clean image can still be estimated
# from the noisiest input (as in keras.io's ddim.py).
COSINE_MIN_SIGNAL_RATE = 0.02


class NoiseSchedule:
    """The cosine schedule (Nichol and Dhariwal 2021), variance preserving: alpha_t = cos(angle),
    sigma_t = sin(angle), the angle rising linearly with t from 0 (clean) to arccos(alpha_T)."""

    def __init__(self, timesteps=1000):
        check_at_least("timesteps", timesteps, 1)
        self.timesteps = int(timesteps)
        angles = np.arccos(COSINE_MIN_SIGNAL_RATE) * np.linspace(0.0, 1.0, self.timesteps + 1)
        self.alphas = tf.constant(np.cos(angles), tf.float32)
        self.sigmas = tf.constant(np.sin(angles), tf.float32)

    @classmethod
    def from_config(cls, config):
        return cls(config.timesteps)

    def at(self, t, dtype=tf.float32):
        """alpha_t and sigma_t, shaped to broadcast over a batch of images (one t per image)."""
        t = tf.cast(t, tf.int32)
        alpha = tf.reshape(tf.gather(self.alphas, t), (-1, 1, 1, 1))
        sigma = tf.reshape(tf.gather(self.sigmas, t), (-1, 1, 1, 1))
        return tf.cast(alpha, dtype), tf.cast(sigma, dtype)

    def noise_to_signal(self):
        """EDM's sigma, sigma_t / alpha_t, at every t, in float64 (0 at t = 0)."""
        return self.sigmas.numpy().astype(np.float64) / self.alphas.numpy().astype(np.float64)


def add_noise(schedule, x0, eps, t):
    """x_t = alpha_t x_0 + sigma_t eps: the forward process q(x_t | x_0) in one step."""
    alpha, sigma = schedule.at(t, x0.dtype)
    return alpha * x0 + sigma * eps


# ---- 2. What the network predicts, and the clean image and noise that follow from it


def network_output(network, schedule, x_t, t, training=False):
    """F(x_t, t), in float32. The network is given the level counted from the noise, T - t."""
    return call_network(network, x_t, schedule.timesteps - t, training)


def target(schedule, prediction, x0, eps, t):
    """What F(x_t, t) is trained to output:

    "noise" (Ho et al. 2020): eps;
    "velocity" (Salimans and Ho 2022): v = alpha_t eps - sigma_t x_0;
    "image": x_0.
    """
    if prediction == "noise":
        return eps
    if prediction == "velocity":
        alpha, sigma = schedule.at(t)
        return alpha * eps - sigma * x0
    return x0


def denoise(network, schedule, prediction, x_t, t):
    """The clean image D(x_t, t), clipped to [-1, 1], and the noise eps that F's output implies
    (each the inverse of `target`, from x_t = alpha_t x_0 + sigma_t eps)."""
    output = network_output(network, schedule, x_t, t)
    alpha, sigma = schedule.at(tf.reshape(t, (-1,)))
    if prediction == "noise":
        x0, eps = (x_t - sigma * output) / alpha, output
    elif prediction == "velocity":
        x0, eps = alpha * x_t - sigma * output, sigma * x_t + alpha * output
    else:  # "image"
        x0, eps = output, (x_t - alpha * output) / sigma
    return tf.clip_by_value(x0, -1.0, 1.0), eps


# ---- 3. The training loss


def signal_to_noise(schedule, t):
    """SNR(t) = (alpha_t / sigma_t)**2."""
    alpha, sigma = schedule.at(t)
    return tf.square(alpha / sigma)


def loss_weight(schedule, prediction, weighting, t, gamma=5.0):
    """lambda(t), the weight of each image's error on its target, as an absolute error.

    "none": 1. An error on eps is sqrt(SNR) times the error on the clean image
    it implies (on v, sqrt(SNR + 1) times), so the plain error on eps puts its
    effort where the noise is too small to matter.
    "min-snr" (Hang et al. 2023): the clean image's error weighted by
    sqrt(min(SNR, gamma)), whatever the target; squared (`loss` mse), that is
    the paper's own min(SNR, gamma).
    """
    if weighting == "none":
        return tf.ones_like(tf.cast(tf.reshape(t, (-1, 1, 1, 1)), tf.float32))
    snr = signal_to_noise(schedule, t)
    weight = tf.sqrt(tf.minimum(snr, gamma))
    if prediction == "noise":
        return weight / tf.sqrt(snr)
    if prediction == "velocity":
        return weight / tf.sqrt(snr + 1.0)
    return weight


def loss(network, schedule, config, x0, t, eps):
    """The loss at each pixel of each image: the weighted error lambda(t) |F(x_t, t) - y|, or
    with `loss` mse its square, EDM's `weight * (D - y) ** 2` with weight = lambda(t)**2."""
    x_t = add_noise(schedule, x0, eps, t)
    y = target(schedule, config.prediction, x0, eps, t)
    output = network_output(network, schedule, x_t, t, training=True)
    weighting, gamma = config.loss_weighting, config.min_snr_gamma
    weight = loss_weight(schedule, config.prediction, weighting, t, gamma)
    error = weight * tf.abs(output - y)
    return tf.square(error) if config.loss == "mse" else error


class TimeDraw:
    """Each training image's t and eps: a pure function of two stateless random keys.

    "uniform": t in {1, ..., T} alike (drawn as T minus a level in {0, ..., T - 1},
    so that runs keep their draws). "log-normal" (Karras et al. 2022):
    log(sigma_t / alpha_t) ~ N(mean, std), taken to the nearest t at or above it.
    """

    def __init__(self, schedule, distribution="uniform", mean=-1.2, std=1.2):
        check_choice("level_distribution", distribution)
        self.schedule = schedule
        self.distribution = distribution
        self.mean, self.std = float(mean), float(std)
        # log(sigma_t / alpha_t) for t = T, T - 1, ..., 1, rising: for searchsorted.
        with np.errstate(divide="ignore"):
            self.log_sigmas = tf.constant(-np.log(schedule.noise_to_signal()[:0:-1]), tf.float32)

    @classmethod
    def from_config(cls, config, schedule=None):
        schedule = schedule or NoiseSchedule.from_config(config)
        return cls(schedule, config.level_distribution, config.level_mean, config.level_std)

    def __call__(self, t_key, eps_key, batch_size):
        timesteps = self.schedule.timesteps
        if self.distribution == "uniform":
            level = tf.random.stateless_uniform((batch_size,), t_key, 0, timesteps, tf.int32)
        else:
            log_sigma = tf.random.stateless_normal((batch_size,), t_key, self.mean, self.std)
            level = tf.searchsorted(self.log_sigmas, -log_sigma)
            level = tf.cast(tf.clip_by_value(level, 0, timesteps - 1), tf.int32)
        shape = (batch_size, IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS)
        return timesteps - level, tf.random.stateless_normal(shape, eps_key)


# ---- 4. Sampling: from x_T, pure noise, down to x_0


def sampling_times(schedule, steps, spacing="uniform", rho=7.0):
    """The times the sampler visits, from T down to 0: `steps + 1` of them.

    "uniform": evenly spaced. "edm" (Karras et al. 2022): sigma_t / alpha_t
    spaced by `rho` from t = T's down to t = 1's, each at its nearest t, then
    0; steps that meet at one t are taken once, so there may be fewer.
    """
    timesteps = schedule.timesteps
    if spacing == "uniform" or steps < 2:
        return (timesteps - np.round(np.linspace(0, timesteps, steps + 1))).astype(np.int32)
    sigmas = schedule.noise_to_signal()
    ramp = np.linspace(0.0, 1.0, steps)
    high, low = sigmas[timesteps] ** (1 / rho), sigmas[1] ** (1 / rho)
    wanted = (high + ramp * (low - high)) ** rho
    levels = np.abs(np.log(sigmas[:0:-1, None]) - np.log(wanted[None, :])).argmin(axis=0)
    return (timesteps - np.unique(np.append(levels, timesteps))).astype(np.int32)


# Each sampler walks `times` (a tensor, T down to 0) from x, with `denoise(x, t)` giving the
# clean image and the noise the network sees in x at t. It returns x_0, and `frames` (a
# TensorArray) with each step's images written into it from index 1 on, where it has room.


def record(frames, index, x):
    """`frames` with x as frame `index`, where it has room for it (an empty one keeps none)."""
    return tf.cond(frames.size() > index, lambda: frames.write(index, x), lambda: frames)


def ddim(denoise, schedule, x, times, frames):
    """Deterministic DDIM (Song et al. 2021, eta 0): at each step, x_0 and eps are estimated
    and mixed again at the next t. One network evaluation a step."""
    for i in tf.range(tf.shape(times)[0] - 1):
        x0, eps = denoise(x, times[i])
        alpha_next, sigma_next = schedule.at(times[i + 1 : i + 2])
        x = alpha_next * x0 + sigma_next * eps
        frames = record(frames, i + 1, x)
    return x, frames


def dpm_solver(denoise, schedule, x, times, frames):
    """DPM-Solver++(2M) (Lu et al. 2022). With lambda_t = log(alpha_t / sigma_t), h its
    change over a step and D the clean estimate extrapolated from the last two,

        x_next = (sigma_next / sigma) x + alpha_next (1 - e^-h) D.

    The first step has no history and the last, to t = 0 (lambda infinite), is
    first order. One network evaluation a step."""
    steps = tf.shape(times)[0] - 1
    previous_x0, previous_h = tf.zeros_like(x), tf.constant(1.0)
    for i in tf.range(steps):
        x0, _ = denoise(x, times[i])
        alpha, sigma = schedule.at(times[i : i + 1])
        alpha_next, sigma_next = schedule.at(times[i + 1 : i + 2])
        h = tf.reshape(tf.math.log(alpha_next / sigma_next) - tf.math.log(alpha / sigma), ())
        history = h / (2.0 * previous_h)
        if i == 0 or i == steps - 1:
            history = tf.constant(0.0)
        extrapolated = (1.0 + history) * x0 - history * previous_x0
        ratio = sigma_next / sigma
        x = ratio * x + (alpha_next - ratio * alpha) * extrapolated
        previous_x0, previous_h = x0, h
        frames = record(frames, i + 1, x)
    return x, frames


def heun(denoise, schedule, x, times, frames):
    """EDM's second-order Heun method (Karras et al. 2022) in EDM's sigma = sigma_t / alpha_t,
    on y = x / alpha_t, whose slope dy/dsigma is eps: an Euler step, then (but on the last
    step, to t = 0) the average of the slopes at both ends. Two network evaluations a step."""
    for i in tf.range(tf.shape(times)[0] - 1):
        alpha, sigma = schedule.at(times[i : i + 1])
        alpha_next, sigma_next = schedule.at(times[i + 1 : i + 2])
        x0, _ = denoise(x, times[i])
        slope = (x - alpha * x0) / sigma
        euler = alpha_next * x0 + sigma_next * slope
        if times[i + 1] > 0:
            x0_next, _ = denoise(euler, times[i + 1])
            slope_next = (euler - alpha_next * x0_next) / sigma_next
            change = sigma_next / alpha_next - sigma / alpha
            x = alpha_next * (x / alpha + change * (slope + slope_next) / 2.0)
        else:
            x = euler
        frames = record(frames, i + 1, x)
    return x, frames


SAMPLERS = {"ddim": ddim, "dpm-solver++": dpm_solver, "heun": heun}


def network_evaluations(sampler, steps):
    """How many times `sampler` runs the network per image over `steps` steps."""
    return 2 * steps - 1 if sampler == "heun" else steps  # Heun: 1 on the last
