"""The denoising U-Net, as a Keras functional model built from small closures.

Both architectures take `[images, levels]`: images of shape (32, 32, 3) in
[-1, 1] and each image's noise level, shape (1,), as a float (the Keras
inputs keep the classic names `x_input` and `x_ts_input`). They have down blocks at 32,
16, 8 and 4 pixels, a middle section at 4 pixels, up blocks with skip
concatenations back to 32, and a time embedding that enters every block.

* "classic" is the well-known "diffusion from scratch" network: each block
  gates a 3x3 conv by a dense projection of the time features, adds a second
  3x3 conv, then applies LayerNorm and ReLU; the middle is a small MLP on the
  flattened 4x4 map. At width 128 it has 3.6M parameters.
* "residual" uses residual blocks with GroupNorm and swish, a sinusoidal
  embedding of the normalised level, and optional self-attention at 8x8.
"""

import functools
import math

import keras
import tensorflow as tf
from keras import layers

from tf_diffusion.config import IMAGE_CHANNELS, IMAGE_SIZE, Config

# Channel multipliers of the residual U-Net at 32, 16, 8 and 4 pixels.
RESIDUAL_CHANNEL_MULTIPLIERS = (1, 2, 4, 4)


def make_model(config=None, **overrides):
    """Build the U-Net described by `config` (default: `Config()`), with overrides."""
    config = (config or Config()).replace(**overrides) if overrides else (config or Config())
    if config.architecture == "classic":
        return make_classic_model(config.width)
    return make_residual_model(
        config.width,
        config.timesteps,
        config.attention,
        config.embedding_max_frequency,
        config.time_conditioning,
        config.block_depth,
    )


def model_inputs():
    images = layers.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS), name="x_input")
    levels = layers.Input(shape=(1,), name="x_ts_input")
    return images, levels


def call_network(model, images, levels, training=False):
    """The model's float32 output for `images` at `levels` (one per image, or one for all)."""
    count = tf.shape(images)[0]
    levels = tf.broadcast_to(tf.reshape(tf.cast(levels, tf.float32), (-1, 1)), (count, 1))
    return tf.cast(model([images, levels], training=training), tf.float32)


# --------------------------------------------------------------------------
# classic


def ClassicBlock(width):
    def apply(images, time_features):
        gate = layers.Conv2D(width, kernel_size=3, padding="same")(images)
        gate = layers.Activation("relu")(gate)
        time_gate = layers.Dense(width, activation="relu")(time_features)
        time_gate = layers.Reshape((1, 1, width))(time_gate)
        gated = layers.Multiply()([gate, time_gate])

        outputs = layers.Conv2D(width, kernel_size=3, padding="same")(images)
        outputs = layers.Add()([outputs, gated])
        outputs = layers.LayerNormalization()(outputs)
        return layers.Activation("relu")(outputs)

    return apply


def make_classic_model(width=128):
    """The classic network; `width` 128 gives the original 3.6M parameters."""
    time_width = width * 3 // 2  # 192 at the classic width
    middle_channels = max(1, width // 4)  # 32 at the classic width
    images, level_input = model_inputs()

    time_features = layers.Dense(time_width)(level_input)
    time_features = layers.LayerNormalization()(time_features)
    time_features = layers.Activation("relu")(time_features)

    skips = []
    x = images
    for resolution in range(4):  # 32, 16, 8 and 4 pixels
        x = ClassicBlock(width)(x, time_features)
        skips.append(x)
        if resolution < 3:
            x = layers.MaxPool2D(2)(x)

    x = layers.Flatten()(x)
    x = layers.Concatenate()([x, time_features])
    x = layers.Dense(width)(x)
    x = layers.LayerNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Dense(4 * 4 * middle_channels)(x)
    x = layers.LayerNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Reshape((4, 4, middle_channels))(x)

    for resolution, skip in enumerate(reversed(skips)):
        x = layers.Concatenate()([x, skip])
        x = ClassicBlock(width)(x, time_features)
        if resolution < 3:
            x = layers.UpSampling2D(2)(x)

    outputs = layers.Conv2D(IMAGE_CHANNELS, kernel_size=1, padding="same", dtype="float32")(x)
    return keras.Model([images, level_input], outputs, name="classic_unet")


# --------------------------------------------------------------------------
# residual


@keras.saving.register_keras_serializable(package="tf_diffusion")
class SinusoidalEmbedding(layers.Layer):
    """Sines and cosines of the level's share of the way, at log-spaced frequencies.

    The frequencies run from 1 to `max_frequency` cycles over all the levels.
    Above half the number of levels they alias: at the first version's 1000
    with 1000 levels, the top one is constant over the integer levels.
    It has no weights, and it is saved in a `.keras` file that loads in safe
    mode.
    """

    def __init__(self, dimension, timesteps, max_frequency=1000.0, **keywords):
        keywords.setdefault("name", "sinusoidal_embedding")
        super().__init__(**keywords)
        self.dimension = int(dimension)
        self.timesteps = int(timesteps)
        self.max_frequency = float(max_frequency)
        with tf.init_scope():  # computed eagerly once: the same float32 constants in every graph
            frequencies = tf.exp(
                tf.linspace(math.log(1.0), math.log(self.max_frequency), self.dimension // 2)
            )
            self.angular_speeds = (2.0 * math.pi * frequencies).numpy()

    def call(self, levels):
        fraction = tf.cast(levels, tf.float32) / float(self.timesteps)
        angles = fraction * tf.constant(self.angular_speeds, tf.float32)
        return tf.concat([tf.sin(angles), tf.cos(angles)], axis=-1)

    def get_config(self):
        return {
            **super().get_config(),
            "dimension": self.dimension,
            "timesteps": self.timesteps,
            "max_frequency": self.max_frequency,
        }


def group_count(channels):
    return math.gcd(channels, 8)


def ResidualBlock(channels, time_conditioning="bias"):
    """Two 3x3 convolutions with GroupNorm and swish, a skip, and the level.

    "bias": the level's features are added after the first convolution.
    "scale-shift" (AdaGN, Dhariwal & Nichol 2021): they scale and shift the
    second GroupNorm's output instead.
    """

    def apply(x, time_features):
        if x.shape[-1] == channels:
            residual = x
        else:
            residual = layers.Conv2D(channels, kernel_size=1)(x)
        x = layers.GroupNormalization(groups=group_count(x.shape[-1]))(x)
        x = layers.Activation("swish")(x)
        x = layers.Conv2D(channels, kernel_size=3, padding="same")(x)
        if time_conditioning == "bias":
            time_bias = layers.Dense(channels)(time_features)
            x = layers.Add()([x, layers.Reshape((1, 1, channels))(time_bias)])
            x = layers.GroupNormalization(groups=group_count(channels))(x)
        else:
            x = layers.GroupNormalization(groups=group_count(channels))(x)
            scale = layers.Reshape((1, 1, channels))(layers.Dense(channels)(time_features))
            shift = layers.Reshape((1, 1, channels))(layers.Dense(channels)(time_features))
            x = layers.Add()([x, layers.Multiply()([x, scale]), shift])
        x = layers.Activation("swish")(x)
        x = layers.Conv2D(channels, kernel_size=3, padding="same")(x)
        return layers.Add()([x, residual])

    return apply


def AttentionBlock(channels):
    def apply(x):
        height, width = x.shape[1], x.shape[2]
        sequence = layers.GroupNormalization(groups=group_count(channels))(x)
        sequence = layers.Reshape((height * width, channels))(sequence)
        attended = layers.MultiHeadAttention(num_heads=4, key_dim=max(1, channels // 4))(
            sequence, sequence
        )
        attended = layers.Reshape((height, width, channels))(attended)
        return layers.Add()([x, attended])

    return apply


def make_residual_model(
    width=64,
    timesteps=1000,
    attention=False,
    max_frequency=1000.0,
    time_conditioning="bias",
    block_depth=1,
):
    """A small residual U-Net with channels `width` x (1, 2, 4, 4) from 32 to 4 pixels.

    `block_depth` residual blocks at each resolution on the way down, each
    output a skip, and as many on the way up, each taking one skip (as in
    keras.io's DDIM example, whose depth is 2).
    """
    channels = [width * multiplier for multiplier in RESIDUAL_CHANNEL_MULTIPLIERS]
    images, level_input = model_inputs()
    Residual = functools.partial(ResidualBlock, time_conditioning=time_conditioning)

    time_features = SinusoidalEmbedding(width, timesteps, max_frequency)(level_input)
    time_features = layers.Dense(width * 4, activation="swish")(time_features)
    time_features = layers.Dense(width * 4, activation="swish")(time_features)

    x = layers.Conv2D(width, kernel_size=3, padding="same")(images)
    skips = []
    for resolution, resolution_channels in enumerate(channels):  # 32, 16, 8 and 4 pixels
        for _ in range(block_depth):
            x = Residual(resolution_channels)(x, time_features)
            if attention and resolution == 2:
                x = AttentionBlock(resolution_channels)(x)
            skips.append(x)
        if resolution < 3:
            x = layers.AveragePooling2D(2)(x)

    x = Residual(channels[-1])(x, time_features)
    x = Residual(channels[-1])(x, time_features)

    for resolution, resolution_channels in enumerate(reversed(channels)):
        for _ in range(block_depth):
            x = layers.Concatenate()([x, skips.pop()])
            x = Residual(resolution_channels)(x, time_features)
            if attention and resolution == 1:
                x = AttentionBlock(resolution_channels)(x)
        if resolution < 3:
            x = layers.UpSampling2D(2, interpolation="nearest")(x)

    x = layers.GroupNormalization(groups=group_count(width))(x)
    x = layers.Activation("swish")(x)
    outputs = layers.Conv2D(
        IMAGE_CHANNELS, kernel_size=3, padding="same", kernel_initializer="zeros", dtype="float32"
    )(x)
    return keras.Model([images, level_input], outputs, name="residual_unet")
