"""Training images: CIFAR-10 through tensorflow-datasets, a local .npz, or an image folder.

Every source becomes one uint8 array (N, 32, 32, 3) of a single class, and
`make_dataset` turns it into the `tf.data` pipeline that feeds training. The
pipeline also draws each example's time t and noise (`diffusion.TimeDraw`,
keyed by the seed and the batch number), so that the same batch always gets
the same noise whatever the device or the number of replicas, and a resumed
run continues the exact same stream from the batch it had reached.
"""

import os
import sys

import numpy as np
import tensorflow as tf

from tf_diffusion import UsageError
from tf_diffusion.config import CIFAR10_CLASS_NAMES, IMAGE_CHANNELS, IMAGE_SIZE
from tf_diffusion.diffusion import NoiseSchedule, TimeDraw
from tf_diffusion.files import missing_data_error
from tf_diffusion.legacy import stream_key

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_images(data="tfds", label=1):
    """The training images of class `label` from `data`, as uint8 (N, 32, 32, 3).

    The command lines check that the path exists (`files.check_data_path`)
    before TensorFlow loads; here a missing path is found when it is opened.
    """
    if data in (None, "", "tfds"):
        return load_tfds_images(label)
    if os.path.isdir(data):
        return load_folder_images(data)
    if data.endswith(".npz"):
        return load_npz_images(data, label)
    if not os.path.exists(data):
        raise missing_data_error(data)
    raise UsageError(f"`data` {data}: not an .npz file or a folder of images")


def load_tfds_images(label, data_dir=None):
    """CIFAR-10's train split through tensorflow-datasets, filtered to `label`."""
    import tensorflow_datasets as tfds

    print(
        f"Loading CIFAR-10 class {label} ({CIFAR10_CLASS_NAMES[label]}) with tensorflow-datasets; "
        "the first time this downloads 160 MB. Offline, it retries for about 3 minutes before "
        "it fails: pass --data PATH to an .npz file or image folder instead.",
        file=sys.stderr,
        flush=True,
    )
    try:
        dataset = tfds.load("cifar10", split="train", as_supervised=True, data_dir=data_dir)
    except Exception as error:  # tfds raises many kinds of network and file errors
        raise UsageError(
            f"`data` tfds: could not load CIFAR-10 ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no message'}); "
            "check the internet connection or pass `data` PATH to an .npz file or image folder"
        ) from None
    dataset = dataset.filter(lambda image, image_label: image_label == label)
    images = np.stack([image for image, _ in tfds.as_numpy(dataset)])
    return check_images(images, "`data` tfds")


def load_npz_images(path, label):
    """Key `x` (uint8 N x 32 x 32 x 3), or `x_train`/`y_train` filtered by `label`."""
    try:
        with np.load(path) as archive:
            keys = archive.files
            if "x" in keys:
                images = archive["x"]
            elif "x_train" in keys and "y_train" in keys:
                labels = archive["y_train"].reshape(-1)
                images = archive["x_train"]
                if len(labels) != len(images):
                    raise UsageError(
                        f"`data` {path}: x_train has {len(images)} images but y_train "
                        f"{len(labels)} labels; they must match"
                    )
                images = images[labels == label]
            else:
                raise UsageError(
                    f"`data` {path}: no key 'x' or 'x_train'/'y_train' (keys: {', '.join(keys)}); "
                    "save the images under key 'x'"
                )
    except FileNotFoundError:
        raise missing_data_error(path) from None
    except (OSError, ValueError) as error:
        if isinstance(error, UsageError):
            raise
        raise UsageError(f"`data` {path}: not a readable .npz file ({error})") from None
    return check_images(images, f"`data` {path}")


def load_folder_images(folder):
    """Every image file in `folder` (not its subfolders), as RGB, resized to 32x32."""
    from PIL import Image, UnidentifiedImageError

    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise UsageError(
            f"`data` {folder}: the folder has no image files ({', '.join(IMAGE_EXTENSIONS)})"
        )
    images = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
                images.append(np.asarray(image, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as error:
            raise UsageError(
                f"`data` {folder}: {name} is not a readable image ({type(error).__name__}); "
                "remove it or fix it"
            ) from None
    return check_images(np.stack(images), f"`data` {folder}")


def check_images(images, source):
    """Raise a one-line `UsageError` unless `images` is uint8 (N, 32, 32, 3) with N >= 1."""
    images = np.asarray(images)
    expected = f"uint8 images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}, {IMAGE_CHANNELS})"
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1):
        raise UsageError(
            f"{source}: the images are grayscale {images.shape}; {expected} in RGB are needed"
        )
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, IMAGE_CHANNELS):
        raise UsageError(f"{source}: got shape {images.shape}; {expected} are needed")
    if images.dtype != np.uint8:
        raise UsageError(
            f"{source}: got dtype {images.dtype}; {expected} with values 0-255 are needed"
        )
    if len(images) == 0:
        raise UsageError(f"{source}: no images of the chosen `label`")
    return images


def check_batch_size(images, batch_size):
    """Raise a one-line `UsageError` if `images` cannot fill one batch."""
    if len(images) < batch_size:
        raise UsageError(
            f"`batch_size` {batch_size} is more than the {len(images)} training images; "
            "use a smaller `batch_size` or more data"
        )


def scale_images(images):
    """uint8 0..255 to float32 -1..1."""
    return tf.cast(images, tf.float32) / 127.5 - 1.0


def make_dataset(
    images,
    batch_size,
    timesteps,
    seed=0,
    start_batch=0,
    draw=None,
    flip=False,
    noise_keys="tagged",
):
    """A repeating, shuffled `tf.data` pipeline of `(images, t, noises)` batches.

    Batch `k` is a pure function of `(seed, k)`: example position `p` of the
    endless stream is image `permutation(seed, p // N)[p % N]`, a fresh
    stateless shuffle of the N images for each epoch, and the times and
    noise of batch `k` are drawn by `draw` (a `diffusion.TimeDraw`; default:
    uniform t in {1, ..., timesteps}) from the stream keys of `(seed, k)`
    (`stream_key`). With `flip`, each example is mirrored left to right or not
    by a stateless coin keyed the same way.
    So the stream does not depend on TensorFlow's global seed or on the
    number of replicas, and a resumed run starts it again at `start_batch`
    (the batches already seen) instead of storing an iterator state: its
    checkpoints stay small and move between `tf.distribute` strategies. The
    images stay in memory as uint8, so a cache step would add nothing.
    """
    check_batch_size(images, batch_size)
    draw = draw or TimeDraw(NoiseSchedule(timesteps))
    count = len(images)
    images = tf.constant(images)
    seed = tf.constant(seed, tf.int64)

    def permutation(epoch):
        return tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=stream_key(seed, "shuffle", epoch, noise_keys)
        )

    def make_batch(batch_number):
        positions = batch_number * batch_size + tf.range(batch_size, dtype=tf.int64)
        epochs, within = positions // count, positions % count
        # batch_size <= count, so a batch spans at most two epochs.
        first = tf.gather(permutation(epochs[0]), within)
        second = tf.gather(permutation(epochs[0] + 1), within)
        indices = tf.where(epochs == epochs[0], first, second)
        batch = scale_images(tf.gather(images, indices))
        if flip:
            coins = tf.random.stateless_uniform(
                (batch_size, 1, 1, 1), stream_key(seed, "flips", batch_number, noise_keys)
            )
            batch = tf.where(coins < 0.5, tf.reverse(batch, axis=[2]), batch)
        t, noises = draw(
            stream_key(seed, "levels", batch_number, noise_keys),
            stream_key(seed, "noise", batch_number, noise_keys),
            batch_size,
        )
        return batch, t, noises

    dataset = tf.data.Dataset.range(int(start_batch), 2**62)  # for as long as training runs
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
