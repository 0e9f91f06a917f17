import numpy as np
import pytest

from tf_diffusion.metrics import InceptionFeatures, frechet_distance, kernel_inception_distance


def gaussian_features(count, dimension=16, shift=0.0, scale=1.0, seed=0):
    return np.random.default_rng(seed).normal(shift, scale, size=(count, dimension))


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    features = gaussian_features(500)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(features, gaussian_features(500, seed=1))
    far = frechet_distance(features, gaussian_features(500, shift=1.0, seed=1))
    farther = frechet_distance(features, gaussian_features(500, shift=2.0, seed=1))
    assert near < 1.0 < far < farther
    # A mean shift of s in each of 16 dimensions adds about 16 s^2.
    assert far == pytest.approx(16.0, rel=0.15)


def test_fid_sees_a_change_of_spread():
    features = gaussian_features(2000)
    wider = gaussian_features(2000, scale=2.0, seed=1)
    # Same means: 16 * (1 + 4 - 2 * 2) = 16.
    assert frechet_distance(features, wider) == pytest.approx(16.0, rel=0.15)


def test_kid_is_unbiased_near_zero_for_the_same_distribution_and_grows_with_a_shift():
    first, second = gaussian_features(300), gaussian_features(300, seed=1)
    same_mean, same_std = kernel_inception_distance(first, second, subsets=20, subset_size=100)
    assert abs(same_mean) < 3 * same_std + 1e-3
    shifted, _ = kernel_inception_distance(
        first, gaussian_features(300, shift=1.0, seed=1), subsets=20, subset_size=100
    )
    assert shifted > 10 * max(abs(same_mean), 1e-3)


def test_inception_features_of_small_images_with_random_weights():
    features = InceptionFeatures(weights=None)  # nothing to download
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    result = features(images, batch_size=2)
    assert result.shape == (3, 2048) and np.all(np.isfinite(result))
    np.testing.assert_allclose(features(images[:1]), result[:1], rtol=1e-4, atol=1e-5)


def test_predict_evaluate_prints_fid_and_kid(tmp_path, npz_path, capsys):
    from conftest import tiny_settings

    from tf_diffusion import commands

    settings = tiny_settings(data=npz_path, max_steps=1)
    commands.train(str(tmp_path / "run"), None, settings, quiet=True)
    commands.predict(str(tmp_path / "run"), num=4, out=None, evaluate=True, inception_weights=None)
    output = capsys.readouterr().out
    assert "FID " in output and "KID " in output and "4 generated vs 4 training images" in output


def test_fid_equals_the_definition_with_fewer_images_than_dimensions():
    """Tr sqrt(A B) from the small factors equals Tr sqrt(A^1/2 B A^1/2) from eigh, when N < d."""

    def definition(features_a, features_b):
        covariance_a = np.cov(features_a, rowvar=False)
        covariance_b = np.cov(features_b, rowvar=False)

        def root(matrix):
            values, vectors = np.linalg.eigh(matrix)
            return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

        root_a = root(covariance_a)
        mean_term = np.sum((features_a.mean(axis=0) - features_b.mean(axis=0)) ** 2)
        cross = np.trace(root(root_a @ covariance_b @ root_a))
        return mean_term + np.trace(covariance_a) + np.trace(covariance_b) - 2 * cross

    first = gaussian_features(40, dimension=64) ** 2
    second = gaussian_features(60, dimension=64, shift=0.3, scale=1.5, seed=1) ** 2
    assert frechet_distance(first, second) == pytest.approx(definition(first, second), rel=1e-6)


def test_kid_of_two_whole_sets_is_their_unbiased_mmd_computed_once():
    first, second = gaussian_features(50), gaussian_features(50, shift=0.5, seed=1)

    def kernel(x, y):
        return (x @ y.T / x.shape[1] + 1) ** 3

    within = sum(kernel(x, x).sum() - np.trace(kernel(x, x)) for x in (first, second))
    unbiased_mmd = within / (50 * 49) - 2 * kernel(first, second).mean()
    mean, std = kernel_inception_distance(first, second, subsets=100, subset_size=1000)
    assert std == 0.0 and mean == pytest.approx(unbiased_mmd, rel=1e-9) and mean > 0
