import numpy as np
import pytest
import tensorflow as tf

from tf_diffusion import NoiseSchedule, UsageError, forward_noise, generate_ts
from tf_diffusion.diffusion import SAMPLERS, TimeDraw, add_noise, loss_weight, target
from tf_diffusion.legacy import STREAMS, LinearSchedule, schedule_for, stream_key


def test_classic_levels_are_time_bar():
    schedule = LinearSchedule(16)
    expected = 1 - np.linspace(0, 1, 17)
    np.testing.assert_allclose(schedule.noise_rates.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(schedule.signal_rates.numpy(), 1 - expected, atol=1e-7)


def test_forward_noise_mixes_the_same_noise_at_t_and_t_plus_one():
    schedule = LinearSchedule(16)
    images = tf.random.stateless_uniform((5, 32, 32, 3), (1, 2), -1, 1)
    noise = tf.random.stateless_normal((5, 32, 32, 3), (3, 4))
    t = tf.constant([0, 3, 7, 12, 15])
    img_a, img_b = forward_noise(images, t, schedule=schedule, noise=noise)
    time_bar = 1 - np.linspace(0, 1, 17)
    for row, level in enumerate(t.numpy()):
        a, b = time_bar[level], time_bar[level + 1]
        np.testing.assert_allclose(img_a[row], images[row] * (1 - a) + noise[row] * a, atol=1e-6)
        np.testing.assert_allclose(img_b[row], images[row] * (1 - b) + noise[row] * b, atol=1e-6)
        # The same noise is in both: without its image part, each is the noise times its level.
        if a > 0 and b > 0:
            np.testing.assert_allclose(
                (img_a[row] - images[row] * (1 - a)) / a,
                (img_b[row] - images[row] * (1 - b)) / b,
                atol=1e-5,
            )


def test_forward_noise_endpoints():
    schedule = LinearSchedule(16)
    images = tf.random.stateless_uniform((2, 32, 32, 3), (5, 6), -1, 1)
    noise = tf.random.stateless_normal((2, 32, 32, 3), (7, 8))
    first_a, _ = forward_noise(images, tf.constant([0, 0]), schedule=schedule, noise=noise)
    _, last_b = forward_noise(images, tf.constant([15, 15]), schedule=schedule, noise=noise)
    np.testing.assert_allclose(first_a, noise, atol=1e-6)  # level 0 is pure noise
    np.testing.assert_allclose(last_b, images, atol=1e-6)  # level 16 is the clean image


def test_forward_noise_draws_noise_when_none_given():
    images = tf.zeros((3, 32, 32, 3))
    img_a, img_b = forward_noise(images, tf.constant([0, 1, 2]), schedule=LinearSchedule(16))
    assert img_a.shape == (3, 32, 32, 3)
    assert float(tf.math.reduce_std(img_a)) > 0.5
    assert float(tf.reduce_mean(tf.abs(img_b))) < float(tf.reduce_mean(tf.abs(img_a)))


def test_cosine_schedule_preserves_variance_and_runs_from_clean_to_noise():
    schedule = NoiseSchedule(1000)
    alpha, sigma = schedule.alphas.numpy(), schedule.sigmas.numpy()
    np.testing.assert_allclose(alpha**2 + sigma**2, 1, atol=1e-6)
    assert alpha[0] == 1.0 and sigma[0] == 0.0  # t = 0: the clean image
    assert alpha[-1] == pytest.approx(0.02, abs=1e-6)  # t = T: a little signal is left
    assert np.all(np.diff(alpha) < 0)


def test_the_classic_schedule_seen_in_the_papers_time_is_its_levels_backwards():
    schedule = LinearSchedule(16)
    np.testing.assert_array_equal(schedule.alphas.numpy(), schedule.signal_rates.numpy()[::-1])
    alpha, sigma = schedule.at(tf.constant([0, 16]))
    assert list(alpha.numpy().ravel()) == [1, 0] and list(sigma.numpy().ravel()) == [0, 1]


def test_generate_ts_stays_in_range_and_is_seeded():
    schedule = LinearSchedule(16)
    first = generate_ts(1000, schedule, tf.random.Generator.from_seed(3)).numpy()
    second = generate_ts(1000, schedule, tf.random.Generator.from_seed(3)).numpy()
    assert first.min() == 0 and first.max() == 15
    np.testing.assert_array_equal(first, second)


def test_unknown_schedule_is_a_usage_error():
    import types

    with pytest.raises(UsageError, match="`schedule`"):
        schedule_for(types.SimpleNamespace(schedule="quadratic", timesteps=10))


def test_every_sampler_choice_has_a_sampler():
    from tf_diffusion.config import CHOICES

    assert sorted(SAMPLERS) == sorted(CHOICES["sampler"])


@pytest.mark.parametrize("prediction", ["noise", "velocity", "image"])
def test_training_targets_and_min_snr_weights(prediction):
    schedule = NoiseSchedule(1000)
    images = tf.random.stateless_uniform((3, 32, 32, 3), (1, 2), -1, 1)
    noises = tf.random.stateless_normal((3, 32, 32, 3), (3, 4))
    t = tf.constant([1000, 500, 10])
    alpha, sigma = schedule.at(t)
    inputs = add_noise(schedule, images, noises, t)
    np.testing.assert_allclose(inputs, alpha * images + sigma * noises, atol=1e-6)
    expected = {"noise": noises, "velocity": alpha * noises - sigma * images, "image": images}
    targets = target(schedule, prediction, images, noises, t)
    np.testing.assert_allclose(targets, expected[prediction], atol=1e-6)

    ratio = (alpha / sigma) ** 2
    weights = loss_weight(schedule, prediction, "min-snr", t, gamma=5.0)
    # Whatever the target, the clean image's error ends up weighted by sqrt(min(SNR, 5)).
    target_scale = {"noise": np.sqrt(ratio), "velocity": np.sqrt(ratio + 1), "image": 1.0}
    np.testing.assert_allclose(
        weights * target_scale[prediction], np.sqrt(np.minimum(ratio, 5.0)), rtol=1e-5
    )
    np.testing.assert_array_equal(loss_weight(schedule, prediction, "none", t), 1.0)


def test_log_normal_times_follow_edm_and_are_a_function_of_the_keys():
    schedule = NoiseSchedule(1000)
    draw = TimeDraw(schedule, "log-normal", mean=-1.2, std=1.2)

    def times(batch, count=1000):
        keys = (stream_key(0, stream, batch) for stream in ("levels", "noise"))
        return draw(*keys, count)[0].numpy()

    t = np.concatenate([times(batch) for batch in range(4)])
    assert t.min() >= 1 and t.max() <= 1000
    sigmas = schedule.noise_to_signal()[t]  # EDM's sigma, sigma_t / alpha_t
    assert np.mean(sigmas > 5) == pytest.approx(0.0097, abs=0.006)  # EDM's 1%
    assert np.median(np.log(sigmas)) == pytest.approx(-1.2, abs=0.1)
    np.testing.assert_array_equal(times(2), t[2000:3000])
    uniform = TimeDraw(schedule)(stream_key(0, "levels", 0), stream_key(0, "noise", 0), 4000)
    assert np.mean(schedule.noise_to_signal()[uniform[0].numpy()] > 5) > 0.08  # uniform: ~11%


def test_tagged_keys_never_meet_across_streams():
    keys = {
        stream: {tuple(stream_key(7, stream, number).numpy()) for number in range(50)}
        for stream in STREAMS
    }
    for first in STREAMS:
        for second in STREAMS:
            if first != second:
                assert not keys[first] & keys[second]
    shared_shuffle = {tuple(stream_key(7, "shuffle", n, "shared").numpy()) for n in range(50)}
    shared_levels = {tuple(stream_key(7, "levels", n, "shared").numpy()) for n in range(50)}
    assert shared_shuffle & shared_levels  # v1's keys did meet: kept only for old runs


def test_options_that_do_not_fit_together_are_one_line_errors():
    from tf_diffusion.config import Config

    for settings, message in [
        ({"flip": True, "noise_keys": "shared"}, "`flip` draws its own random stream"),
        (
            {"warmup_steps": 10, "learning_rate_schedule": "rounds"},
            "`warmup_steps` comes with `learning_rate_schedule` cosine",
        ),
        ({"min_snr_gamma": float("nan")}, "`min_snr_gamma` must be"),
        ({"level_std": 0.0}, "`level_std` must be a positive finite number, below 100, got 0.0"),
    ]:
        with pytest.raises(UsageError, match=message):
            Config.for_recipe("default", **settings)
    with pytest.raises(
        UsageError, match="^`sampler` heun: .* pass `loss_weighting` none `sampler` ddim"
    ):
        Config.for_recipe("classic", sampler="heun")
    with pytest.raises(UsageError, match="^`loss_weighting` min-snr, `sampler` dpm-solver"):
        Config.for_recipe("default", prediction="next")
