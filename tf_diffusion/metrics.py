"""Sample quality: FID and KID on Inception-v3 features.

Features are the 2048-d average-pooled output of `keras.applications.InceptionV3`
with ImageNet weights (Keras downloads them on first use; pass a local weights
file for offline use, or "random" for untrained weights in tests). Images are
resized from 32x32 to 299x299 bilinearly.

* FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to
  the two feature sets.
* KID (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial kernel
  k(a, b) = (a.b / d + 1)^3, averaged over random subsets.

These Keras-ImageNet features are not the TF-slim "inception-2015-12-05"
network of the published FID numbers, so compare figures from this module
with each other, not with papers; bench/quality.py uses the standard network.
"""

import numpy as np
import tensorflow as tf

from tf_diffusion import UsageError

INCEPTION_SIZE = 299
RANDOM_WEIGHTS = "random"
FEATURE_BATCH_SIZE = 50


class InceptionFeatures:
    """2048-d Inception-v3 pool features of uint8 or [-1, 1] float 32x32 images."""

    def __init__(self, weights="imagenet"):
        import keras

        if weights == RANDOM_WEIGHTS:
            weights = None  # untrained: for tests, nothing to download
        try:
            self.network = keras.applications.InceptionV3(
                include_top=False,
                weights=weights,
                input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3),
                pooling="avg",
            )
        except Exception as error:  # a failed download or a wrong file
            raise UsageError(
                f"`inception_weights` {weights}: could not load InceptionV3 weights "
                f"({type(error).__name__}); give the path of "
                "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
            ) from None
        self._features = tf.function(self._compute, reduce_retracing=True)

    def _compute(self, images):
        images = tf.image.resize(images, (INCEPTION_SIZE, INCEPTION_SIZE), method="bilinear")
        return self.network(images, training=False)

    def __call__(self, images, batch_size=FEATURE_BATCH_SIZE):
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 127.5 - 1.0  # what Inception expects
        features = [
            self._features(tf.constant(images[start : start + batch_size], tf.float32)).numpy()
            for start in range(0, len(images), batch_size)
        ]
        return np.concatenate(features).astype(np.float64)


def frechet_distance(features_a, features_b):
    """FID between two feature sets of shape (N, d)."""
    mean_a, mean_b = features_a.mean(axis=0), features_b.mean(axis=0)
    # With the centred sets scaled by 1/sqrt(N - 1), the covariances are
    # A = a.T a and B = b.T b, and Tr(sqrt(A B)) is the sum of the singular
    # values of a b.T (the square roots of the eigenvalues of A B), which are
    # those of Ra Rb.T for the triangular factors of a = Qa Ra and b = Qb Rb.
    # That is at most (N x N) work where the eigenvalues of A B are (d x d).
    a = (features_a - mean_a) / np.sqrt(len(features_a) - 1)
    b = (features_b - mean_b) / np.sqrt(len(features_b) - 1)
    factor_a, factor_b = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
    trace_of_root = np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.sum(a**2) + np.sum(b**2) - 2.0 * trace_of_root
    return float(max(distance, 0.0))


def kernel_inception_distance(features_a, features_b, subsets=100, subset_size=1000, seed=0):
    """KID: mean and standard deviation of the unbiased polynomial MMD^2 over subsets.

    When a subset is the whole of both sets, every subset gives the same
    value, so it is computed once (and the standard deviation is 0).
    """
    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        raise UsageError("KID needs at least 2 images on each side; raise `num`")
    if size == len(features_a) == len(features_b):
        subsets = 1
    dimension = features_a.shape[1]
    random = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = features_a[random.choice(len(features_a), size, replace=False)]
        b = features_b[random.choice(len(features_b), size, replace=False)]
        kernel_aa = (a @ a.T / dimension + 1) ** 3
        kernel_bb = (b @ b.T / dimension + 1) ** 3
        kernel_ab = (a @ b.T / dimension + 1) ** 3
        within = kernel_aa.sum() - np.trace(kernel_aa) + kernel_bb.sum() - np.trace(kernel_bb)
        values.append(within / (size * (size - 1)) - 2 * kernel_ab.mean())
    return float(np.mean(values)), float(np.std(values))


class QualityTracker:
    """FID and KID of generated images against one fixed set of real images.

    The real images' features are computed once, here, so that each
    measurement pays only for the generated ones.
    """

    def __init__(self, real, weights="imagenet"):
        self.features = InceptionFeatures(weights)
        self.real_features = self.features(real)

    def __call__(self, generated):
        generated_features = self.features(generated)
        kid_mean, kid_std = kernel_inception_distance(generated_features, self.real_features)
        return {
            "fid": frechet_distance(generated_features, self.real_features),
            "kid": kid_mean,
            "kid_std": kid_std,
            "generated": len(generated),
            "real": len(self.real_features),
        }


def evaluate(generated, real, weights="imagenet"):
    """FID and KID of generated images against real ones (uint8 or [-1, 1] float)."""
    return QualityTracker(real, weights)(generated)
