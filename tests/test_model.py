import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config

from tf_diffusion import Config, make_model


def classic_parameter_count(width=128):
    """The classic network's parameters, counted layer by layer by hand."""
    time_width = width * 3 // 2
    middle = width // 4

    def conv(inputs, outputs, kernel=3):
        return kernel * kernel * inputs * outputs + outputs

    def block(inputs):
        # two 3x3 convs, the dense time gate and LayerNorm
        return conv(inputs, width) * 2 + (time_width * width + width) + 2 * width

    count = (1 * time_width + time_width) + 2 * time_width  # time Dense + LayerNorm
    count += block(3) + 3 * block(width)  # down at 32, 16, 8, 4
    count += (16 * width + time_width) * width + width + 2 * width  # MLP Dense + LayerNorm
    count += width * 16 * middle + 16 * middle + 2 * 16 * middle  # Dense to 4x4 + LayerNorm
    count += block(middle + width) + 3 * block(2 * width)  # up blocks after the concats
    count += conv(width, 3, kernel=1)
    return count


def test_classic_model_has_the_classic_parameter_count():
    model = make_model(Config.for_recipe("classic"))
    assert model.count_params() == classic_parameter_count(128) == 3_586_819


@pytest.mark.parametrize(
    "config",
    [
        tiny_config("classic"),
        tiny_config("default"),
        tiny_config("default", attention=True),
    ],
    ids=["classic", "residual", "residual-attention"],
)
def test_model_maps_images_and_timesteps_to_images(config):
    model = make_model(config)
    images = tf.random.normal((3, 32, 32, 3))
    timesteps = tf.constant([[0.0], [5.0], [9.0]])
    outputs = model([images, timesteps])
    assert outputs.shape == (3, 32, 32, 3)
    assert outputs.dtype == tf.float32
    assert [tuple(spec.shape) for spec in model.inputs] == [(None, 32, 32, 3), (None, 1)]


def test_the_timestep_changes_the_output():
    model = make_model(tiny_config("classic"))
    images = tf.random.normal((1, 32, 32, 3), seed=1)
    first = model([images, tf.constant([[0.0]])])
    second = model([images, tf.constant([[8.0]])])
    assert not np.allclose(first, second)


def test_block_depth_adds_residual_blocks_at_every_resolution_and_keeps_the_shapes():
    def count(model, kind, **attributes):
        return sum(
            isinstance(layer, kind)
            and all(getattr(layer, name) == value for name, value in attributes.items())
            for layer in model.layers
        )

    single, double = (make_model(tiny_config("default", block_depth=depth)) for depth in (1, 2))
    images, levels = tf.random.normal((2, 32, 32, 3)), tf.constant([[0.0], [9.0]])
    assert double([images, levels]).shape == single([images, levels]).shape == (2, 32, 32, 3)
    # One skip per block on the way up; two 3x3 convolutions in each of the 4 + 4 more blocks.
    assert count(double, keras.layers.Concatenate) == 2 * count(single, keras.layers.Concatenate)
    assert count(single, keras.layers.Concatenate) == 4
    convolutions = [
        count(model, keras.layers.Conv2D, kernel_size=(3, 3)) for model in (single, double)
    ]
    assert convolutions[1] - convolutions[0] == 2 * 8


def test_width_sets_the_size():
    small = make_model(tiny_config("default", width=8)).count_params()
    large = make_model(tiny_config("default", width=16)).count_params()
    assert large > 3 * small


def test_the_sinusoidal_embedding_layer_gives_exactly_the_old_lambda_values():
    """Checkpoints of runs made when it was a `Lambda` must sample exactly as before."""
    import math

    from tf_diffusion.model import SinusoidalEmbedding

    dimension, timesteps = 32, 1000
    frequencies = tf.exp(tf.linspace(math.log(1.0), math.log(1000.0), dimension // 2))
    angular_speeds = 2.0 * math.pi * frequencies
    levels = tf.reshape(tf.range(timesteps + 1, dtype=tf.float32), (-1, 1))
    angles = levels / float(timesteps) * angular_speeds
    expected = tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)

    layer = SinusoidalEmbedding(dimension, timesteps)
    np.testing.assert_array_equal(layer(levels), expected)
    assert layer.weights == []
    copy = SinusoidalEmbedding.from_config(layer.get_config())
    assert (copy.dimension, copy.timesteps, copy.name) == (32, 1000, "sinusoidal_embedding")
    np.testing.assert_array_equal(copy(levels), expected)


def test_a_lower_top_frequency_ends_the_aliasing_of_the_level_embedding():
    from tf_diffusion.model import SinusoidalEmbedding

    levels = tf.reshape(tf.range(1000, dtype=tf.float32), (-1, 1))
    aliased = SinusoidalEmbedding(32, 1000)(levels).numpy()
    fixed = SinusoidalEmbedding(32, 1000, max_frequency=100.0)(levels).numpy()
    # At 1000 cycles over 1000 levels the top sine is 0 and its cosine 1 at every level.
    assert np.ptp(aliased[:, 15]) < 1e-2 and np.ptp(aliased[:, 31]) < 1e-2
    assert np.ptp(fixed, axis=0).min() > 0.5  # every dimension varies over the levels


def test_scale_shift_conditioning_feeds_the_level_through_each_block():
    bias = make_model(tiny_config("default", time_conditioning="bias"))
    adaptive = make_model(tiny_config("default", time_conditioning="scale-shift"))
    assert adaptive.count_params() > bias.count_params()
    images = tf.random.normal((1, 32, 32, 3), seed=1)
    for layer in adaptive.layers:  # start from non-zero output weights
        if layer.name == adaptive.layers[-1].name:
            layer.kernel.assign(tf.random.normal(layer.kernel.shape, seed=2))
    first = adaptive([images, tf.constant([[1.0]])])
    second = adaptive([images, tf.constant([[15.0]])])
    assert not np.allclose(first, second)
