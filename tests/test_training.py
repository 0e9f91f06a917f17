import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from conftest import synthetic_images, tiny_config

from tf_diffusion import TrainingDiverged, forward_noise, hardware
from tf_diffusion.config import Config, UsageError
from tf_diffusion.data import make_dataset, scale_images
from tf_diffusion.diffusion import add_noise, loss_weight, network_output, target
from tf_diffusion.hardware import check_batch_split
from tf_diffusion.loop import fit
from tf_diffusion.model import call_network
from tf_diffusion.trainer import RoundDecay, Trainer


@pytest.mark.parametrize(
    "recipe, options",
    [
        ("classic", {}),
        ("default", {}),
        ("default", {"prediction": "velocity", "loss_weighting": "min-snr"}),
        ("default", {"prediction": "image", "loss_weighting": "min-snr"}),
    ],
    ids=["classic", "default", "velocity-min-snr", "image-min-snr"],
)
def test_train_one_lowers_the_loss_on_a_fixed_batch(recipe, options):
    config = tiny_config(recipe, learning_rate=3e-3, ema_decay=0.0, **options)
    trainer = Trainer(config)
    images = scale_images(synthetic_images(8))
    t = config.timesteps - tf.constant([0, 1, 2, 3, 4, 5, 6, 7]) % config.timesteps
    noises = tf.random.stateless_normal(images.shape, (1, 2))
    losses = [float(trainer.train_one(images, t, noises)) for _ in range(40)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert trainer.step == 40


@pytest.mark.parametrize("loss", ["mae", "mse"])
def test_train_one_returns_the_weighted_error_of_the_network_before_its_step(loss):
    config = tiny_config("default", loss=loss)
    trainer = Trainer(config)
    images = scale_images(synthetic_images(4))
    t = tf.constant([20, 14, 8, 1])
    noises = tf.random.stateless_normal(images.shape, (3, 4))
    schedule = trainer.schedule
    x_t = add_noise(schedule, images, noises, t)  # x_t = alpha_t x_0 + sigma_t eps
    alpha, sigma = schedule.at(t)
    np.testing.assert_allclose(x_t, alpha * images + sigma * noises, atol=1e-6)
    velocity = alpha * noises - sigma * images
    np.testing.assert_allclose(target(schedule, "velocity", images, noises, t), velocity, atol=1e-6)
    # The network is given the level counted from the noise, T - t.
    output = call_network(trainer.model, x_t, config.timesteps - t)
    np.testing.assert_array_equal(network_output(trainer.model, schedule, x_t, t), output)
    weight = loss_weight(schedule, "velocity", "min-snr", t, config.min_snr_gamma)
    errors = np.abs(output - velocity) * weight
    expected = np.mean(errors**2 if loss == "mse" else errors)
    assert float(trainer.train_one(images, t, noises)) == pytest.approx(expected, rel=1e-4)


def test_train_one_draws_times_and_noise_itself_when_not_given():
    trainer = Trainer(tiny_config("classic"))
    loss = trainer.train_one(scale_images(synthetic_images(4)))
    assert np.isfinite(float(loss)) and trainer.step == 1


def test_classic_loss_is_the_error_on_the_next_less_noisy_image():
    """The seed recipe: img_a, img_b = forward_noise(x, level); MAE of model(img_a) on img_b."""
    trainer = Trainer(tiny_config("classic"))
    images = tf.random.stateless_uniform((2, 32, 32, 3), (1, 1), -1, 1)
    noises = tf.random.stateless_normal((2, 32, 32, 3), (2, 2))
    level = tf.constant([3, 3])
    img_a, img_b = forward_noise(images, level, schedule=trainer.schedule, noise=noises)
    expected = np.mean(np.abs(call_network(trainer.model, img_a, level) - img_b))
    t = trainer.schedule.timesteps - level
    assert float(trainer.train_one(images, t, noises)) == pytest.approx(expected, rel=1e-6)


def test_learning_rate_decays_by_rounds_down_to_the_floor():
    schedule = RoundDecay(8e-4, 0.9, 5000, 1e-6)
    assert float(schedule(0)) == pytest.approx(8e-4)
    assert float(schedule(4999)) == pytest.approx(8e-4)
    assert float(schedule(5000)) == pytest.approx(7.2e-4)
    assert float(schedule(10000)) == pytest.approx(6.48e-4)
    assert float(schedule(5000 * 200)) == pytest.approx(1e-6)


def learning_rates(config, steps):
    """The trainer's learning rate before each of `steps` training steps."""
    trainer = Trainer(config)
    images = scale_images(synthetic_images(4))
    rates = []
    for _ in range(steps):
        rates.append(trainer.learning_rate)
        trainer.train_one(images)
    return rates


def test_trainer_learning_rate_follows_the_step():
    config = tiny_config("classic", round_steps=2, learning_rate=1e-3, learning_rate_decay=0.5)
    assert learning_rates(config, 4) == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])


def test_cosine_learning_rate_warms_up_then_decays_to_the_floor_at_max_steps():
    config = tiny_config(
        "default",
        learning_rate=1e-3,
        learning_rate_schedule="cosine",
        warmup_steps=2,
        max_steps=6,
        learning_rate_floor=1e-5,
    )
    rates = learning_rates(config, 7)
    assert rates[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert rates[2] > rates[3] > rates[4] > rates[5] > rates[6]
    assert rates[6] == pytest.approx(1e-5)


def test_ema_weights_trail_the_trained_weights():
    trainer = Trainer(tiny_config("default", ema_decay=0.9, learning_rate=1e-2))
    start = [weight.numpy().copy() for weight in trainer.model.weights]
    images = scale_images(synthetic_images(4))
    for _ in range(5):
        trainer.train_one(images)
    for before, weight, average in zip(start, trainer.model.weights, trainer.ema_model.weights):
        weight, average = weight.numpy(), average.numpy()
        if np.allclose(before, weight):
            continue
        # The average lies between where the weights started and where they are.
        assert np.abs(average - weight).max() > 0
        assert np.abs(average - before).max() < np.abs(weight - before).max() + 1e-7


def test_fit_stops_on_a_nan_loss_without_saving():
    config = tiny_config("classic", learning_rate=1e-3)
    trainer = Trainer(config)
    images = synthetic_images(8)
    dataset = make_dataset(images, 4, config.timesteps, 0)
    poisoned = dataset.map(lambda x, t, n: (x * np.nan, t, n))
    saves = []
    with pytest.raises(TrainingDiverged, match="loss became nan"):
        fit(trainer, iter(poisoned), max_steps=3, on_save=saves.append, save_every=1)
    assert saves == []


def test_fit_saves_on_schedule_and_calls_round_ends():
    config = tiny_config("classic", round_steps=2)
    trainer = Trainer(config)
    dataset = make_dataset(synthetic_images(8), 4, config.timesteps, 0)
    saves, rounds = [], []
    step = fit(
        trainer,
        iter(dataset),
        max_steps=5,
        on_save=saves.append,
        on_round_end=rounds.append,
        save_every=2,
        save_every_minutes=0,
    )
    assert step == 5
    assert saves == [2, 4]  # the final save is the caller's
    assert rounds == [2, 4]


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_mid_step_stops_fit_after_that_step_and_a_second_stops_at_once(signal_number):
    config = tiny_config("classic")
    trainer = Trainer(config)
    batches = iter(make_dataset(synthetic_images(8), 4, config.timesteps, 0))

    def interrupting(signals):
        """The batches, sending `signals[n]` signals while the n-th one is fetched."""
        for number, batch in enumerate(batches, start=1):
            for _ in range(signals.get(number, 0)):
                os.kill(os.getpid(), signal_number)
            yield batch

    def raising(signal_number, frame):
        raise KeyboardInterrupt(f"signal {signal_number}")

    previous = signal.signal(signal_number, raising)  # as train.py sets them
    try:
        with pytest.raises(KeyboardInterrupt, match=f"signal {signal_number}$"):
            fit(trainer, interrupting({2: 1}), max_steps=10)
        assert trainer.step == 2  # the step whose batch was being fetched finished
        assert signal.getsignal(signal_number) is raising  # restored
        with pytest.raises(KeyboardInterrupt, match="again"):
            fit(trainer, interrupting({1: 2}), max_steps=10)
        assert trainer.step == 2  # the second signal did not wait for the step
    finally:
        signal.signal(signal_number, previous)


def test_steps_per_call_matches_single_steps():
    config = tiny_config("classic")
    images = synthetic_images(8)
    results = []
    for steps_per_call in (1, 3):
        trainer = Trainer(config)
        dataset = make_dataset(images, 4, config.timesteps, 0)
        fit(trainer, iter(dataset), max_steps=3, steps_per_call=steps_per_call)
        results.append([weight.numpy() for weight in trainer.model.weights])
    for single, many in zip(*results):
        np.testing.assert_allclose(single, many, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "option",
    [
        {"precision": "mixed_float16"},
        {"precision": "mixed_bfloat16"},
        {"precision": "float32", "xla": True},
    ],
)
def test_gpu_options_train_on_any_device(option):
    trainer = Trainer(tiny_config("default", **option))
    images = scale_images(synthetic_images(4))
    losses = [float(trainer.train_one(images)) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert trainer.model.outputs[0].dtype == "float32"  # outputs stay float32
    assert all(weight.dtype == "float32" for weight in trainer.model.weights)
    compute_dtype = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
    assert trainer.model.layers[2].compute_dtype == compute_dtype.get(
        option.get("precision"), "float32"
    )
    # Only float16 needs its loss scaled; bfloat16 has float32's range.
    scaled = isinstance(trainer.optimizer, tf.keras.optimizers.LossScaleOptimizer)
    assert scaled == (option.get("precision") == "mixed_float16")
    assert trainer.sampling_model.layers[2].compute_dtype == "float32"  # EMA samples in float32


def test_auto_precision_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions(tmp_path, monkeypatch):
    cpu_info = tmp_path / "cpuinfo"
    cpu_info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert hardware.cpu_has_bfloat16(str(cpu_info))
    cpu_info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not hardware.cpu_has_bfloat16(str(cpu_info))
    assert not hardware.cpu_has_bfloat16(str(tmp_path / "missing"))  # macOS, Windows

    for has_bfloat16, expected in ((True, "mixed_bfloat16"), (False, "float32")):
        monkeypatch.setattr(hardware, "cpu_has_bfloat16", lambda: has_bfloat16)
        assert hardware.training_precision("auto") == expected
        assert hardware.training_precision("float32") == "float32"  # a choice is kept
        compute_dtype = {"mixed_bfloat16": "bfloat16"}.get(expected, expected)
        assert Trainer(tiny_config(precision="auto")).model.layers[2].compute_dtype == compute_dtype
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["a GPU"])
    # Beside a GPU the CPU's bfloat16 does not count; one of unknown generation trains in float32
    # (tests/test_gpu_defaults.py has the generations).
    assert hardware.training_precision("auto") == "float32"
    assert Config.for_recipe("v1").precision == Config.for_recipe("classic").precision == "float32"


def test_a_global_batch_that_does_not_split_over_the_replicas_is_a_one_line_error():
    class ThreeReplicas:  # all that is read before the batch is checked
        num_replicas_in_sync = 3

    with pytest.raises(UsageError) as error:
        Trainer(tiny_config(batch_size=64), ThreeReplicas())
    assert str(error.value) == (
        "`batch_size` 64 does not split evenly over the 3 replicas; "
        "give a multiple of 3, such as 63"
    )
    check_batch_split(64, 2)
    check_batch_split(4, 1)


class TwoReplicas:
    """The default strategy, counted as 2 replicas: what `scale_learning_rate` reads."""

    num_replicas_in_sync = 2

    def __init__(self):
        self.strategy = tf.distribute.get_strategy()

    def __getattr__(self, name):
        return getattr(self.strategy, name)


@pytest.mark.parametrize("scale, factor", [(True, 2), (False, 1)])
def test_scale_learning_rate_multiplies_the_rate_by_the_replicas(scale, factor):
    config = tiny_config(scale_learning_rate=scale, learning_rate_schedule="rounds")
    trainer = Trainer(config, TwoReplicas())
    assert trainer.learning_rate == pytest.approx(factor * config.learning_rate)
