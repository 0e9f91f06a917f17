import numpy as np
import pytest
import tensorflow as tf

from tf_diffusion import NoiseSchedule, UsageError, forward_noise, generate_ts
from tf_diffusion.schedule import (
    STREAMS,
    LevelDraw,
    loss_weights,
    noise_to_signal,
    stream_key,
    training_pair,
)


def test_classic_levels_are_time_bar():
    schedule = NoiseSchedule("linear", 16)
    expected = 1 - np.linspace(0, 1, 17)
    np.testing.assert_allclose(schedule.noise_rates.numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(schedule.signal_rates.numpy(), 1 - expected, atol=1e-7)


def test_forward_noise_mixes_the_same_noise_at_t_and_t_plus_one():
    schedule = NoiseSchedule("linear", 16)
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
    schedule = NoiseSchedule("linear", 16)
    images = tf.random.stateless_uniform((2, 32, 32, 3), (5, 6), -1, 1)
    noise = tf.random.stateless_normal((2, 32, 32, 3), (7, 8))
    first_a, _ = forward_noise(images, tf.constant([0, 0]), schedule=schedule, noise=noise)
    _, last_b = forward_noise(images, tf.constant([15, 15]), schedule=schedule, noise=noise)
    np.testing.assert_allclose(first_a, noise, atol=1e-6)  # level 0 is pure noise
    np.testing.assert_allclose(last_b, images, atol=1e-6)  # level 16 is the clean image


def test_forward_noise_draws_noise_when_none_given():
    images = tf.zeros((3, 32, 32, 3))
    img_a, img_b = forward_noise(
        images, tf.constant([0, 1, 2]), schedule=NoiseSchedule("linear", 16)
    )
    assert img_a.shape == (3, 32, 32, 3)
    assert float(tf.math.reduce_std(img_a)) > 0.5
    assert float(tf.reduce_mean(tf.abs(img_b))) < float(tf.reduce_mean(tf.abs(img_a)))


def test_cosine_schedule_preserves_variance_and_runs_from_noise_to_clean():
    schedule = NoiseSchedule("cosine", 1000)
    signal, noise = schedule.signal_rates.numpy(), schedule.noise_rates.numpy()
    np.testing.assert_allclose(signal**2 + noise**2, 1, atol=1e-6)
    assert signal[0] == pytest.approx(0.02, abs=1e-6)
    assert signal[-1] == pytest.approx(1.0) and noise[-1] == pytest.approx(0.0, abs=1e-6)
    assert np.all(np.diff(signal) > 0)


def test_generate_ts_stays_in_range_and_is_seeded():
    schedule = NoiseSchedule("linear", 16)
    first = generate_ts(1000, schedule, tf.random.Generator.from_seed(3)).numpy()
    second = generate_ts(1000, schedule, tf.random.Generator.from_seed(3)).numpy()
    assert first.min() == 0 and first.max() == 15
    np.testing.assert_array_equal(first, second)


def test_unknown_schedule_is_a_usage_error():
    with pytest.raises(UsageError, match="`schedule`"):
        NoiseSchedule("quadratic", 10)


def test_every_sampler_choice_has_a_step():
    from tf_diffusion.config import CHOICES
    from tf_diffusion.schedule import SAMPLERS

    assert sorted(SAMPLERS) == sorted(CHOICES["sampler"])


@pytest.mark.parametrize("prediction", ["noise", "velocity", "image"])
def test_training_targets_and_min_snr_weights(prediction):
    schedule = NoiseSchedule("cosine", 1000)
    images = tf.random.stateless_uniform((3, 32, 32, 3), (1, 2), -1, 1)
    noises = tf.random.stateless_normal((3, 32, 32, 3), (3, 4))
    levels = tf.constant([0, 500, 990])
    inputs, targets = training_pair(schedule, prediction, images, levels, noises)
    signal, noise = schedule.rates(levels)
    np.testing.assert_allclose(inputs, signal * images + noise * noises, atol=1e-6)
    expected = {"noise": noises, "velocity": signal * noises - noise * images, "image": images}
    np.testing.assert_allclose(targets, expected[prediction], atol=1e-6)

    ratio = (signal / noise) ** 2
    weights = loss_weights(schedule, prediction, "min-snr", levels, gamma=5.0)
    # Whatever the target, the clean image's error ends up weighted by sqrt(min(SNR, 5)).
    target_scale = {"noise": np.sqrt(ratio), "velocity": np.sqrt(ratio + 1), "image": 1.0}
    np.testing.assert_allclose(
        weights * target_scale[prediction], np.sqrt(np.minimum(ratio, 5.0)), rtol=1e-5
    )
    np.testing.assert_array_equal(loss_weights(schedule, prediction, "none", levels), 1.0)


def test_log_normal_levels_follow_edm_and_are_a_function_of_seed_and_batch():
    schedule = NoiseSchedule("cosine", 1000)
    draw = LevelDraw(schedule, "log-normal", mean=-1.2, std=1.2, noise_keys="tagged")
    levels = np.concatenate([draw(0, batch, 1000)[0].numpy() for batch in range(4)])
    sigmas = noise_to_signal(schedule)[levels]
    assert np.mean(sigmas > 5) == pytest.approx(0.0097, abs=0.006)  # EDM's 1%
    assert np.median(np.log(sigmas)) == pytest.approx(-1.2, abs=0.1)
    again, _ = draw(0, 2, 1000)
    np.testing.assert_array_equal(again, levels[2000:3000])
    uniform = LevelDraw(schedule).__call__(0, 0, 4000)[0].numpy()
    assert np.mean(noise_to_signal(schedule)[uniform] > 5) > 0.08  # the uniform draw: ~11%


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
