"""bench/fid.py's math against closed forms, and its input checks; numpy only, no torch."""

import importlib.util
import os

import numpy as np
import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# bench/ is not a package: load the file as a module of its own.
_spec = importlib.util.spec_from_file_location("fid", os.path.join(REPOSITORY, "bench", "fid.py"))
fid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fid)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    random = np.random.default_rng(0)
    mean1, mean2 = random.normal(size=6), random.normal(size=6)
    variances1, variances2 = random.uniform(0.1, 3, size=6), random.uniform(0.1, 3, size=6)
    expected = np.sum((mean1 - mean2) ** 2) + np.sum(
        variances1 + variances2 - 2 * np.sqrt(variances1 * variances2)
    )
    got = fid.frechet_distance(mean1, np.diag(variances1), mean2, np.diag(variances2))
    assert got == pytest.approx(expected, rel=1e-10)
    # The distance does not change when both Gaussians turn by the same rotation,
    # which makes the covariances full matrices.
    rotation, _ = np.linalg.qr(random.normal(size=(6, 6)))
    rotated = fid.frechet_distance(
        rotation @ mean1,
        rotation @ np.diag(variances1) @ rotation.T,
        rotation @ mean2,
        rotation @ np.diag(variances2) @ rotation.T,
    )
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_fid_of_a_set_with_itself_is_zero_even_with_fewer_samples_than_dimensions():
    features = np.random.default_rng(1).normal(size=(40, 64))  # a singular covariance
    assert abs(fid.fid(features, features)) < 1e-6
    assert fid.fid(features, features + 0.5) == pytest.approx(64 * 0.25, rel=1e-6)


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    random = np.random.default_rng(2)
    x, y = random.normal(size=(5, 3)), random.normal(0.3, 1, size=(5, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    pairs = [(i, j) for i in range(5) for j in range(5)]
    expected = (
        sum(k(x[i], x[j]) + k(y[i], y[j]) for i, j in pairs if i != j) / 20
        - 2 * sum(k(x[i], y[j]) for i, j in pairs) / 25
    )
    mean, std, subset_size = fid.kid(x, y)
    assert (mean, std, subset_size) == (pytest.approx(expected, rel=1e-12), 0.0, 5)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    # Two draws from one distribution, not one set twice: subsets of one set share
    # images, whose k(a, a) inflates the cross term and makes KID negative.
    random = np.random.default_rng(0)
    features1, features2 = random.normal(size=(1000, 16)), random.normal(size=(1000, 16))
    same, _, _ = fid.kid(features1, features2, subsets=10, subset_size=500)
    shifted, _, _ = fid.kid(features1, features2 + 0.3, subsets=10, subset_size=500)
    assert abs(same) < 0.05 * shifted
    assert shifted > 0.2


def test_resize_matrix_is_tensorflow_1_bilinear_without_half_pixel_offset():
    # 2 -> 4 pixels: source coordinates 0, 0.5, 1, 1.5 (the last clamped at the edge).
    expected = [[1, 0], [0.5, 0.5], [0, 1], [0, 1]]
    np.testing.assert_allclose(fid.bilinear_resize_matrix(2, 4), expected)
    np.testing.assert_allclose(fid.bilinear_resize_matrix(32, 299).sum(axis=1), 1)


def test_bad_inputs_are_one_line_errors_that_name_the_argument(tmp_path, capsys):
    floats = tmp_path / "floats.npz"
    np.savez(floats, x=np.zeros((4, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^GEN .*float32 \(4, 32, 32, 3\).*uint8"):
        fid.load_images(str(floats), "GEN")
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(ValueError, match="sha256 .* not 7ff4a85c.*reinstall"):
        fid.check_network_file(str(fake))
    assert fid.main([str(tmp_path / "missing.npz"), str(floats)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "GEN" in error and "no such file" in error


def test_reference_features_are_computed_once_per_image_set_with_a_cache(tmp_path, monkeypatch):
    calls = []

    def features(images, network):
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :8].astype(np.float64) + len(calls)

    monkeypatch.setattr(fid, "inception_features", features)
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    first = fid.cached_features(images, None, str(tmp_path / "cache"))
    again = fid.cached_features(images.copy(), None, str(tmp_path / "cache"))
    np.testing.assert_array_equal(first, again)
    assert calls == [6]  # the second set has the same pixels: read back, not recomputed
    fid.cached_features(images[:5], None, str(tmp_path / "cache"))
    assert calls == [6, 5]
    assert len(os.listdir(tmp_path / "cache")) == 2  # no partial files left behind
    fid.cached_features(images, None, None)
    assert calls == [6, 5, 6]  # without a folder nothing is kept
