import numpy as np
import pytest
from conftest import tiny_config

from tf_diffusion import UsageError, make_model, predict, predict_step
from tf_diffusion.checkpoint import load_for_sampling
from tf_diffusion.diffusion import NoiseSchedule, add_noise, sampling_times
from tf_diffusion.sampling import Sampler


@pytest.mark.parametrize("recipe", ["classic", "default"])
def test_predict_returns_images_in_range(recipe):
    config = tiny_config(recipe)
    images = predict(make_model(config), config, num=5, seed=1)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0


@pytest.mark.parametrize("recipe, expected_frames", [("classic", 17), ("default", 6)])
def test_predict_step_returns_every_step(recipe, expected_frames):
    config = tiny_config(recipe)
    images, frames, times = predict_step(make_model(config), config, num=3, seed=2)
    assert frames.shape == (expected_frames, 3, 32, 32, 3)
    assert times[0] == config.timesteps and times[-1] == 0 and len(times) == expected_frames
    np.testing.assert_allclose(np.clip(frames[-1], -1, 1), images, atol=1e-6)
    assert abs(float(frames[0].std()) - 1.0) < 0.1  # starts from unit gaussian noise


def test_same_seed_same_images_and_batching_does_not_matter():
    config = tiny_config("default")
    model = make_model(config)
    whole = predict(model, config, num=6, seed=3)
    np.testing.assert_array_equal(whole, predict(model, config, num=6, seed=3))
    assert not np.allclose(whole, predict(model, config, num=6, seed=4))
    in_batches = predict(model, config, num=6, seed=3, batch_size=4)
    assert in_batches.shape == whole.shape


def test_bfloat16_sampling_keeps_the_float32_weights_and_nearly_the_images(tracked_run):
    config, exact = load_for_sampling(str(tracked_run))
    fast_config, fast = load_for_sampling(str(tracked_run), sampling_precision="mixed_bfloat16")
    assert (exact.dtype_policy.name, fast.dtype_policy.name) == ("float32", "mixed_bfloat16")
    for weight, same in zip(exact.get_weights(), fast.get_weights(), strict=True):
        np.testing.assert_array_equal(weight, same)
    images = predict(exact, config, num=4, seed=5)
    difference = np.abs(predict(fast, fast_config, num=4, seed=5) - images).max()
    assert 0 < difference < 0.1  # computed in bfloat16: rounded, not another image


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_sampling_steps_can_be_chosen_at_predict_time(steps):
    config = tiny_config("default")
    sampler = Sampler(make_model(config), config.replace(sampling_steps=steps))
    assert len(sampler.times) == steps + 1
    assert sampler.sample(2).shape == (2, 32, 32, 3)


def test_sampling_times_run_from_noise_to_clean():
    config = tiny_config("default", timesteps=1000)
    schedule = NoiseSchedule.from_config(config)
    np.testing.assert_array_equal(sampling_times(schedule, 4), [1000, 750, 500, 250, 0])
    edm = sampling_times(schedule, 10, "edm")
    assert edm[0] == 1000 and edm[-1] == 0 and np.all(np.diff(edm) < 0)
    assert -np.diff(edm)[-2] < -np.diff(edm)[5] / 10  # small steps near the clean image
    with pytest.raises(UsageError, match="`sampling_steps` 1001 is more than the 1000"):
        predict(make_model(config), config, num=1, sampling_steps=1001)
    with pytest.raises(UsageError, match="`sampling_steps` must be at least 1, got 0"):
        predict(make_model(config), config, num=1, sampling_steps=0)


@pytest.mark.parametrize("prediction", ["noise", "velocity", "image"])
@pytest.mark.parametrize(
    "sampler, spacing",
    [("ddim", "uniform"), ("dpm-solver++", "uniform"), ("heun", "uniform"), ("ddim", "edm")],
)
def test_a_perfect_predictor_recovers_the_image(prediction, sampler, spacing):
    """Each sampler's arithmetic: a model that knows the clean image lands exactly on it."""
    import tensorflow as tf

    config = tiny_config(
        "default",
        timesteps=100,
        sampling_steps=10,
        prediction=prediction,
        sampler=sampler,
        spacing=spacing,
    )
    schedule = NoiseSchedule.from_config(config)
    clean = tf.random.stateless_uniform((2, 32, 32, 3), (1, 2), -0.9, 0.9)
    noise = tf.random.stateless_normal((2, 32, 32, 3), (3, 4))

    class Oracle:
        def __call__(self, inputs, training=False):
            images, levels = inputs  # the network is given T - t
            alpha, sigma = schedule.at(config.timesteps - tf.cast(levels[:, 0], tf.int32))
            noises = (images - alpha * clean) / sigma
            targets = {"noise": noises, "velocity": alpha * noises - sigma * clean}
            return targets.get(prediction, clean)

    sampler = Sampler(Oracle(), config)
    start = add_noise(schedule, clean, noise, tf.fill([2], config.timesteps))
    images, _ = sampler._run(start, False)
    np.testing.assert_allclose(images, clean, atol=1e-4)


def test_classic_model_cannot_skip_levels():
    config = tiny_config("classic")
    with pytest.raises(UsageError, match="must take all 16 steps"):
        predict(make_model(config), config, sampling_steps=8)


@pytest.mark.parametrize("seed", [0, 7, -3, 2**31 - 1])
def test_sampling_noise_is_stateless_and_bit_identical_to_the_old_generator_draws(seed):
    """Runs sampled before the noise became stateless give the same images for the same seed."""
    import tensorflow as tf

    from tf_diffusion.sampling import sampling_noises

    generator = tf.random.Generator.from_seed(seed)  # how Sampler.sample drew it before
    start = 0
    for count in [3, 2, 1]:  # batches drawn one after another
        expected = generator.normal((count, 32, 32, 3)).numpy()
        np.testing.assert_array_equal(sampling_noises(seed, start, count), expected)
        start += count
