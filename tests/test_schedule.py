import numpy as np
import pytest
import tensorflow as tf

from tf_diffusion import NoiseSchedule, UsageError, forward_noise, generate_ts


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
    with pytest.raises(UsageError, match="--schedule"):
        NoiseSchedule("quadratic", 10)


def test_every_prediction_target_has_a_sampler_step():
    from tf_diffusion.config import CHOICES
    from tf_diffusion.schedule import SAMPLER_STEPS

    assert sorted(SAMPLER_STEPS) == sorted(CHOICES["prediction"])
