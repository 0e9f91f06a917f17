import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import synthetic_images
from PIL import Image

from tf_diffusion.config import UsageError
from tf_diffusion.data import load_images, load_tfds_images, make_dataset


def test_npz_with_key_x(npz_path, images):
    np.testing.assert_array_equal(load_images(npz_path, label=1), images)


def test_npz_with_x_train_and_y_train_is_filtered_by_label(tmp_path):
    images = synthetic_images(30)
    labels = np.arange(30).reshape(-1, 1) % 10  # shaped like keras.datasets' labels
    path = tmp_path / "cifar.npz"
    np.savez(path, x_train=images, y_train=labels)
    loaded = load_images(str(path), label=3)
    np.testing.assert_array_equal(loaded, images[[3, 13, 23]])


def test_image_folder_is_read_as_rgb_and_resized(tmp_path, images):
    for index, image in enumerate(images[:3]):
        Image.fromarray(image).save(tmp_path / f"car{index}.png")
    Image.fromarray(images[3]).resize((64, 64)).convert("L").save(tmp_path / "big_gray.jpg")
    (tmp_path / "notes.txt").write_text("not an image, and ignored")
    loaded = load_images(str(tmp_path))
    assert loaded.shape == (4, 32, 32, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[2], images[1])  # sorted: big_gray.jpg, car0, car1


def test_tfds_path_filters_cifar10_by_label():
    with tfds.testing.mock_data(num_examples=40):
        loaded = load_tfds_images(label=1)
    assert loaded.dtype == np.uint8 and loaded.shape[1:] == (32, 32, 3)
    assert 0 < len(loaded) < 40  # only the mocked examples whose label is 1


def test_tfds_failure_suggests_data(monkeypatch):
    def offline(*arguments, **keywords):
        raise ConnectionError("Failed to connect to storage.googleapis.com")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(UsageError, match="`data` tfds: could not load CIFAR-10.*`data` PATH"):
        load_tfds_images(label=1)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((10, 32, 32, 3), np.float32), "dtype float32"),
        (np.zeros((10, 28, 28, 3), np.uint8), r"shape \(10, 28, 28, 3\)"),
        (np.zeros((10, 32, 32), np.uint8), "grayscale"),
        (np.zeros((10, 32, 32, 1), np.uint8), "grayscale"),
        (np.zeros((0, 32, 32, 3), np.uint8), "no images"),
    ],
    ids=["float", "small", "grayscale", "one-channel", "empty"],
)
def test_bad_arrays_get_one_line_errors(tmp_path, array, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=array)
    with pytest.raises(UsageError, match=message) as error:
        load_images(str(path))
    assert "\n" not in str(error.value) and "`data`" in str(error.value)


def test_missing_path_unknown_keys_and_non_images(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_images(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "odd.npz", pictures=synthetic_images(2))
    with pytest.raises(UsageError, match="no key 'x'"):
        load_images(str(tmp_path / "odd.npz"))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(UsageError, match="not a readable .npz"):
        load_images(str(tmp_path / "broken.npz"))
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    with pytest.raises(UsageError, match="no image files"):
        load_images(str(folder))
    (folder / "fake.png").write_text("this is not a png")
    with pytest.raises(UsageError, match="fake.png is not a readable image"):
        load_images(str(folder))


def test_fewer_images_than_one_batch():
    with pytest.raises(UsageError, match="`batch_size` 32 is more than the 24 training images"):
        make_dataset(synthetic_images(24), 32, timesteps=16)


def test_pipeline_batches_scaled_images_with_times_and_noise():
    dataset = make_dataset(synthetic_images(24), 8, timesteps=16, seed=0)
    images, t, noises = next(iter(dataset))
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.float32
    assert -1.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    assert t.dtype == tf.int32 and 1 <= int(tf.reduce_min(t))
    assert int(tf.reduce_max(t)) <= 16
    assert noises.shape == (8, 32, 32, 3)


def test_pipeline_is_reproducible_and_repeats():
    def first_batches(seed, count=5):  # 5 batches of 8 from 24 images: past one epoch
        return [
            batch[0].numpy()
            for batch in make_dataset(synthetic_images(24), 8, 16, seed).take(count)
        ]

    same, again, other = first_batches(0), first_batches(0), first_batches(1)
    for left, right in zip(same, again):
        np.testing.assert_array_equal(left, right)
    assert not all(np.array_equal(left, right) for left, right in zip(same, other))


def test_pipeline_starts_at_any_batch_as_if_it_had_run_there():
    images = synthetic_images(20)
    straight = list(make_dataset(images, 8, 16, seed=5).take(7))  # 56 images: into epoch 3
    resumed = list(make_dataset(images, 8, 16, seed=5, start_batch=4).take(3))
    for expected, actual in zip(straight[4:], resumed):
        for left, right in zip(expected, actual):
            np.testing.assert_array_equal(left, right)


def test_flips_mirror_about_half_the_images_and_resume_exactly():
    from tf_diffusion.diffusion import NoiseSchedule, TimeDraw

    images = synthetic_images(20)
    draw = TimeDraw(NoiseSchedule(16))
    plain = list(make_dataset(images, 10, 16, seed=2, draw=draw).take(4))
    flipped = list(make_dataset(images, 10, 16, seed=2, draw=draw, flip=True).take(4))
    mirrored = 0
    for (original, *_), (batch, *_) in zip(plain, flipped):
        for left, right in zip(original.numpy(), batch.numpy()):
            same = np.array_equal(left, right)
            mirrored += not same
            assert same or np.array_equal(left[:, ::-1], right)
    assert 10 <= mirrored <= 30  # of 40
    resumed = list(
        make_dataset(images, 10, 16, seed=2, start_batch=2, draw=draw, flip=True).take(2)
    )
    for expected, actual in zip(flipped[2:], resumed):
        np.testing.assert_array_equal(expected[0], actual[0])


def test_every_epoch_shows_every_image_once():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 32, 32, 3), np.uint8)
    batches = [batch[0].numpy()[:, 0, 0, 0] for batch in make_dataset(images, 5, 16).take(6)]
    values = np.round((np.concatenate(batches) + 1) * 127.5).astype(int)
    for epoch in range(3):
        assert sorted(values[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
