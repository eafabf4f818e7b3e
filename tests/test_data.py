"""minidiff.data: the 2-D toys (their defining geometry and closed-form moments), the 8x8 digits (the shipped
file, its fixed split and scaling), Fashion-MNIST's idx reader (round trips, corrupt files, where it looks, the
Debian package's files) and the DataLoader (each example once per epoch, shuffles, flips, exact resume)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import struct
from importlib import resources

import numpy as np
import pytest
from scipy.integrate import quad

from minidiff import data
from minidiff.data import DataLoader, images

SE = 5.0  # statistical checks allow 5 standard errors


def assert_within_se(estimate, expected, se, what: str) -> None:
    estimate, expected, se = np.asarray(estimate), np.asarray(expected), np.asarray(se)
    assert np.all(np.abs(estimate - expected) <= SE * se), f"{what}: {estimate} vs {expected} (s.e. {se})"


def assert_counts_uniform(counts, what: str) -> None:
    """Multinomial counts over k equally likely cells: each within 5 binomial standard errors of n / k."""
    counts = np.asarray(counts)
    n, p = counts.sum(), 1.0 / len(counts)
    assert_within_se(counts, n * p, math.sqrt(n * p * (1 - p)), what)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- 2-D toys: common behaviour ---------------------------------------------------------------------------

TOYS = sorted(data.TOY_DATASETS)


def test_toy_registry_names_the_functions():
    expected = {"moons": data.moons, "swiss_roll": data.swiss_roll, "eight_gaussians": data.eight_gaussians,
                "checkerboard": data.checkerboard, "spirals": data.spirals}
    assert expected == data.TOY_DATASETS


@pytest.mark.parametrize("name", TOYS)
def test_toy_shapes_dtypes_and_determinism_per_seed(name):
    f = data.TOY_DATASETS[name]
    x = f(257, rng(1))
    assert x.shape == (257, 2) and x.dtype == np.float64
    np.testing.assert_array_equal(f(257, rng(1)), x)  # the same seed, the same points, bit for bit
    assert not np.array_equal(f(257, rng(2)), x)
    x32 = f(257, rng(1), dtype=np.float32)
    assert x32.dtype == np.float32
    np.testing.assert_array_equal(x32, x.astype(np.float32))  # drawn in float64, then rounded
    assert np.all(np.isfinite(x))


@pytest.mark.parametrize("name", TOYS)
def test_toy_bad_arguments(name):
    f = data.TOY_DATASETS[name]
    with pytest.raises(ValueError, match="n: expected a positive int"):
        f(0, rng())
    with pytest.raises(TypeError, match="n: expected a positive int"):
        f(10.0, rng())
    with pytest.raises(TypeError, match=r"rng: expected a numpy.random.Generator"):
        f(10, 0)
    with pytest.raises(ValueError, match="noise: expected a non-negative number"):
        f(10, rng(), noise=-0.1)
    with pytest.raises(ValueError, match="noise"):
        f(10, rng(), noise=float("nan"))
    with pytest.raises(TypeError, match="dtype: expected a float dtype"):
        f(10, rng(), dtype=np.int32)


def _quad_mean(g, density, lo, hi):
    return quad(lambda s: g(s) * density(s), lo, hi, limit=400)[0]


def _closed_form_moments(name: str, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """The mean and per-coordinate variance of each toy, from its definition (not from the code)."""
    if name == "moons":  # sqrt(2) ((cos a, sin a) or (1 - cos a, 1/2 - sin a) - (1/2, 1/4)), a ~ U[0, pi]
        mean, var = np.zeros(2), 2 * np.array([1 / 2 + 1 / 4, 9 / 16 - 1 / math.pi])
    elif name == "eight_gaussians":  # radius sqrt(2) at the angles k pi / 4
        mean, var = np.zeros(2), np.ones(2)
    elif name == "checkerboard":  # each coordinate uniform on [-2, 2]
        mean, var = np.zeros(2), np.full(2, 16 / 12)
    else:
        if name == "swiss_roll":  # t (cos t, sin t) / 7, t ~ U[3 pi / 2, 9 pi / 2]
            lo, hi, scale = 1.5 * math.pi, 4.5 * math.pi, 1 / 7

            def density(t):
                return 1 / (3 * math.pi)
        else:  # spirals: +-(2 / 3 pi) theta (cos theta, sin theta), theta = 3 pi sqrt(u): density 2 theta / (3 pi)^2
            lo, hi, scale = 0.0, 3 * math.pi, 2 / (3 * math.pi)

            def density(t):
                return 2 * t / (3 * math.pi) ** 2
        coords = (lambda t: scale * t * math.cos(t), lambda t: scale * t * math.sin(t))
        mean = np.array([_quad_mean(c, density, lo, hi) for c in coords])
        if name == "spirals":
            mean = np.zeros(2)  # the two arms are point reflections of each other
        var = np.array([_quad_mean(lambda t, c=c: c(t) ** 2, density, lo, hi) for c in coords]) - mean**2
    return mean, var + noise**2


@pytest.mark.parametrize("name", TOYS)
def test_toy_mean_and_variance_match_the_closed_form(name):
    noise, n = 0.1, 100_000
    x = data.TOY_DATASETS[name](n, rng(3), noise=noise)  # (n, 2)
    mean, var = _closed_form_moments(name, noise)
    centered = x - x.mean(axis=0)
    assert_within_se(x.mean(axis=0), mean, x.std(axis=0) / math.sqrt(n), f"{name} mean")
    assert_within_se((centered**2).mean(axis=0), var, (centered**2).std(axis=0) / math.sqrt(n), f"{name} variance")
    assert np.all(np.abs(var / (1 + noise**2) - 1) < 0.55), f"{name}: not roughly unit scale ({var})"


# --- 2-D toys: each distribution's defining property -------------------------------------------------------


def test_eight_gaussians_noise_free_points_sit_at_the_eight_centers_with_equal_weights():
    x = data.eight_gaussians(80_000, rng(4), noise=0.0)
    np.testing.assert_allclose(np.hypot(*x.T), math.sqrt(2), rtol=1e-14)
    k = np.arctan2(x[:, 1], x[:, 0]) / (math.pi / 4)  # k pi / 4
    np.testing.assert_allclose(k, np.round(k), atol=1e-12)
    assert_counts_uniform(np.bincount(np.round(k).astype(int) % 8, minlength=8), "component weights")


def test_eight_gaussians_clusters_have_the_right_centers_and_spread():
    sigma, n = 0.1, 80_000
    x = data.eight_gaussians(n, rng(5), noise=sigma)
    centers = math.sqrt(2) * np.stack([np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], 1)
    nearest = np.argmin(((x[:, None, :] - centers) ** 2).sum(-1), axis=1)  # (n,) clusters 1.08 apart: no mixups
    assert_counts_uniform(np.bincount(nearest, minlength=8), "cluster sizes")
    for k in range(8):
        member = x[nearest == k] - centers[k]  # (n_k, 2)
        se = sigma / math.sqrt(len(member))
        assert_within_se(member.mean(axis=0), 0.0, se, f"cluster {k} center")
        assert_within_se(member.var(axis=0), sigma**2, sigma**2 * math.sqrt(2 / len(member)), f"cluster {k} var")


def test_checkerboard_points_are_uniform_on_the_black_squares():
    x = data.checkerboard(80_000, rng(6))
    assert np.all((x >= -2) & (x < 2))
    cell = np.floor(x).astype(int)  # (n, 2) lower left corners
    assert np.all(cell.sum(axis=1) % 2 == 0), "a point in a white square"
    assert np.any(np.all(cell == -2, axis=1)), "the lower left square [-2, -1)^2 is black"
    black = (cell[:, 1] + 2) * 4 + (cell[:, 0] + 2)  # (n,) 0..15, only the 8 black ones occur
    assert_counts_uniform(np.bincount(black, minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]], "black squares")
    inside = x - cell  # (n, 2) uniform on [0, 1)^2 within a square
    n = len(x)
    assert_within_se(inside.mean(axis=0), 0.5, math.sqrt(1 / 12 / n), "position within a square")
    assert_within_se(inside.var(axis=0), 1 / 12, math.sqrt((1 / 80 - 1 / 144) / n), "spread within a square")


def test_moons_are_two_arcs_of_radius_sqrt2_with_uniform_angles():
    x = data.moons(60_000, rng(7), noise=0.0)
    q = x / math.sqrt(2) + np.array([0.5, 0.25])  # back to sklearn's coordinates
    upper = np.abs(np.hypot(*q.T) - 1) < 1e-12
    lower = np.abs(np.hypot(q[:, 0] - 1, q[:, 1] - 0.5) - 1) < 1e-12
    assert np.all(upper | lower), "a point on neither arc"
    assert np.all(q[upper, 1] >= -1e-15) and np.all(q[lower, 1] <= 0.5 + 1e-15), "an arc longer than a half circle"
    assert_counts_uniform([upper.sum(), (~upper).sum()], "points per arc")
    for angle in (np.arctan2(q[upper, 1], q[upper, 0]), np.arctan2(0.5 - q[lower, 1], 1 - q[lower, 0])):
        n = len(angle)  # uniform on [0, pi]: mean pi / 2, variance pi^2 / 12
        assert_within_se(angle.mean(), math.pi / 2, math.pi / math.sqrt(12 * n), "arc angle mean")
        assert_within_se(angle.var(), math.pi**2 / 12, math.pi**2 * math.sqrt(1 / 80 - 1 / 144) / math.sqrt(n),
                         "arc angle variance")


def _radius_and_angle_agree(x: np.ndarray, scale: float) -> np.ndarray:
    """The angle t read off the radius (|x| = scale t), after checking x = scale t (cos t, sin t) up to sign."""
    t = np.hypot(*x.T) / scale  # (n,)
    direction = np.stack([np.cos(t), np.sin(t)], axis=1) * scale * t[:, None]  # (n, 2)
    on_curve = np.all(np.abs(x - direction) < 1e-12, axis=1)
    reflected = np.all(np.abs(x + direction) < 1e-12, axis=1)
    assert np.all(on_curve | reflected), "a point off the spiral whose radius is proportional to its angle"
    return t, reflected


def test_swiss_roll_radius_grows_linearly_with_the_angle():
    x = data.swiss_roll(60_000, rng(8), noise=0.0)
    t, reflected = _radius_and_angle_agree(x, 1 / 7)
    assert not reflected.any()
    assert np.all((t >= 1.5 * math.pi - 1e-12) & (t <= 4.5 * math.pi + 1e-12))
    width = 3 * math.pi  # t ~ U[3 pi / 2, 9 pi / 2]
    assert_within_se(t.mean(), 3 * math.pi, width / math.sqrt(12 * len(t)), "angle mean")


def test_spirals_are_two_arms_with_radius_proportional_to_angle():
    x = data.spirals(60_000, rng(9), noise=0.0)
    theta, reflected = _radius_and_angle_agree(x, 2 / (3 * math.pi))
    assert_counts_uniform([reflected.sum(), (~reflected).sum()], "points per arm")
    u = (theta / (3 * math.pi)) ** 2  # uniform on [0, 1]: the same mass per unit of arc length (~ theta^2)
    assert np.all(u <= 1 + 1e-12)
    assert_within_se(u.mean(), 0.5, math.sqrt(1 / 12 / len(u)), "theta^2 / (3 pi)^2 mean")


# --- the 8x8 digits -----------------------------------------------------------------------------------------

# sklearn/datasets/data/digits.csv.gz in scikit-learn 1.9.1's wheel.
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
# Class counts of all 1797 digits (scikit-learn's load_digits documentation: ~180 per class) and the first
# image, a zero (load_digits().data[0]).
DIGITS_CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
FIRST_DIGIT = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
               0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]


def test_digits_file_is_scikit_learns_copy():
    shipped = (resources.files("minidiff.data") / "digits.csv.gz").read_bytes()
    assert len(shipped) == 57_523 and hashlib.sha256(shipped).hexdigest() == DIGITS_SHA256


def test_digits_shapes_scaling_and_labels():
    x, y = data.digits("all")
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.shape == (1797,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), DIGITS_CLASS_COUNTS)
    np.testing.assert_array_equal(x[0, 0], (np.array(FIRST_DIGIT).reshape(8, 8) / 8 - 1).astype(np.float32))
    assert y[0] == 0
    pixels = (x + 1) * 8  # back to 0..16: exact, the scale is a power of two
    np.testing.assert_array_equal(pixels, np.round(pixels))
    assert x.min() == -1.0 and x.max() == 1.0


def test_digits_split_is_fixed_disjoint_and_covers_every_class():
    x_all, y_all = data.digits("all")
    (x_train, y_train), (x_test, y_test) = data.digits("train"), data.digits("test")
    assert len(y_train) == 1500 and len(y_test) == images.DIGITS_TEST_SIZE == 297
    np.testing.assert_array_equal(np.concatenate([x_train, x_test]), x_all)  # train then test, file order
    np.testing.assert_array_equal(np.concatenate([y_train, y_test]), y_all)
    np.testing.assert_array_equal(data.digits()[0], x_train)  # "train" is the default
    assert np.all((np.bincount(y_test, minlength=10) >= 27) & (np.bincount(y_test, minlength=10) <= 33))


def test_digits_shuffled_by_rng_keeps_images_with_their_labels():
    x, y = data.digits("test")
    xs, ys = data.digits("test", rng=rng(10))
    order = np.lexsort(xs.reshape(len(xs), -1).T)  # match shuffled rows to file rows by content
    reference = np.lexsort(x.reshape(len(x), -1).T)
    np.testing.assert_array_equal(xs[order], x[reference])
    np.testing.assert_array_equal(ys[order], y[reference])
    assert not np.array_equal(ys, y)
    np.testing.assert_array_equal(data.digits("test", rng=rng(10))[1], ys)  # reproducible per seed


def test_digits_returns_arrays_the_caller_may_modify():
    x, y = data.digits("test")
    x[:] = 0.0
    y[:] = 0
    x2, y2 = data.digits("test")
    assert x2.min() == -1.0 and y2.max() == 9


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split: expected one of"):
        data.digits("validation")
    with pytest.raises(TypeError, match=r"rng: expected a numpy.random.Generator"):
        data.digits("train", rng=0)


# --- idx files and Fashion-MNIST -----------------------------------------------------------------------------

IDX_TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
                  np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file written from the format's description: 0, 0, type, ndim, big-endian dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, IDX_TYPE_CODES[array.dtype], array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload: bytes, gzipped: bool):
    path.write_bytes(gzip.compress(payload) if gzipped else payload)
    return path


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_TYPE_CODES))
def test_read_idx_round_trips_exactly(tmp_path, dtype, gzipped):
    generator = rng(11)
    for shape in [(7,), (3, 4, 5), (2, 1, 3, 2)]:
        if dtype.kind == "f":
            array = generator.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            array = generator.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        got = images.read_idx(write(tmp_path / "a.idx", idx_bytes(array), gzipped))
        assert got.dtype == dtype and got.dtype.isnative and got.shape == shape
        np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_refuses_corrupt_headers_and_wrong_sizes(tmp_path, gzipped):
    good = idx_bytes(np.arange(12, dtype=np.int32).reshape(3, 4))
    cases = {
        b"\x01" + good[1:]: "not an idx file",  # magic must start with two zero bytes
        good[:2] + b"\x07" + good[3:]: "not an idx file",  # no such element type
        good[:3] + b"\x00" + good[4:]: "not an idx file",  # zero dimensions
        good[:3]: "not an idx file",
        good[:6]: "truncated idx header",
        good[:-1]: "idx file truncated: 59 bytes, expected 60",
        good + b"\x00": "idx file has trailing bytes",
    }
    for payload, message in cases.items():
        with pytest.raises(ValueError, match=message):
            images.read_idx(write(tmp_path / "bad.idx", payload, gzipped))


def test_read_idx_refuses_a_truncated_or_corrupt_gzip_stream(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)))
    for payload in (compressed[:-10], compressed[:2] + b"\x00" * (len(compressed) - 2)):
        (tmp_path / "bad.gz").write_bytes(payload)
        with pytest.raises(ValueError, match="corrupt or truncated gzip"):
            images.read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="no such file"):
        images.read_idx(tmp_path / "absent")


def write_fashion(folder, split: str, pixels: np.ndarray, labels: np.ndarray, gzipped: bool = True):
    prefix = {"train": "train", "test": "t10k"}[split]
    suffix = ".gz" if gzipped else ""
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(pixels), gzipped)
    write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gzipped)


def small_fashion(seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    generator = rng(seed)
    pixels = generator.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    pixels[0, 0, :2] = [0, 255]
    return pixels, generator.integers(0, 10, n).astype(np.uint8)


@pytest.mark.parametrize("gzipped", [False, True])
def test_fashion_mnist_reads_a_folder_and_scales_to_unit_range(tmp_path, gzipped):
    pixels, labels = small_fashion(12)
    write_fashion(tmp_path, "test", pixels, labels, gzipped)
    x, y = data.fashion_mnist("test", path=tmp_path)
    assert x.shape == (6, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], (pixels / 127.5 - 1).astype(np.float32))  # correctly rounded
    assert x[0, 0, 0, 0] == -1.0 and x[0, 0, 0, 1] == 1.0
    np.testing.assert_array_equal(y, labels)


def test_fashion_mnist_path_argument_then_environment_variable_then_debian_folder(tmp_path, monkeypatch):
    for name, seed in (("argument", 1), ("env", 2), ("debian", 3)):
        write_fashion(tmp_path / name, "train", *small_fashion(seed))
    monkeypatch.setattr(images, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.delenv(images.FASHION_MNIST_ENV, raising=False)
    np.testing.assert_array_equal(data.fashion_mnist()[1], small_fashion(3)[1])
    monkeypatch.setenv(images.FASHION_MNIST_ENV, str(tmp_path / "env"))
    np.testing.assert_array_equal(data.fashion_mnist()[1], small_fashion(2)[1])
    np.testing.assert_array_equal(data.fashion_mnist(path=tmp_path / "argument")[1], small_fashion(1)[1])


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "FASHION_MNIST_DEBIAN_DIR", str(tmp_path / "nowhere"))
    monkeypatch.delenv(images.FASHION_MNIST_ENV, raising=False)
    how = r"apt-get install dataset-fashion-mnist.*MINIDIFF_FASHION_MNIST=<folder>"
    with pytest.raises(FileNotFoundError, match=rf"t10k-images-idx3-ubyte.*nowhere.*the default.*{how}"):
        data.fashion_mnist("test")
    monkeypatch.setenv(images.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=rf"train-images-idx3-ubyte.*\$MINIDIFF_FASHION_MNIST.*{how}"):
        data.fashion_mnist("train")
    write_fashion(tmp_path / "half", "train", *small_fashion(4))
    (tmp_path / "half" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=rf"train-labels-idx1-ubyte.*the path argument.*{how}"):
        data.fashion_mnist("train", path=tmp_path / "half")


def test_fashion_mnist_refuses_files_that_are_not_fashion_mnist(tmp_path):
    pixels, labels = small_fashion(5)
    write_fashion(tmp_path / "size", "train", pixels[:, :27], labels)
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        data.fashion_mnist(path=tmp_path / "size")
    write_fashion(tmp_path / "count", "train", pixels, labels[:-1])
    with pytest.raises(ValueError, match=r"expected 6 uint8 labels in 0\.\.9"):
        data.fashion_mnist(path=tmp_path / "count")
    write_fashion(tmp_path / "class", "train", pixels, labels + 10)
    with pytest.raises(ValueError, match=r"labels in 0\.\.9"):
        data.fashion_mnist(path=tmp_path / "class")
    with pytest.raises(ValueError, match="split: expected one of"):
        data.fashion_mnist("all", path=tmp_path)
    with pytest.raises(TypeError, match="path: expected a folder name"):
        data.fashion_mnist(path=3)


def test_fashion_mnist_from_the_debian_package(monkeypatch):
    """The real data set where CI installs it (apt-get install dataset-fashion-mnist). Skipped when absent,
    unless MINIDIFF_REQUIRE_FASHION_MNIST=1."""
    monkeypatch.delenv(images.FASHION_MNIST_ENV, raising=False)
    if not os.path.isdir(images.FASHION_MNIST_DEBIAN_DIR):
        if os.environ.get("MINIDIFF_REQUIRE_FASHION_MNIST") == "1":
            pytest.fail("Fashion-MNIST is required here (MINIDIFF_REQUIRE_FASHION_MNIST=1): "
                        "apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    first_labels = {"train": [9, 0, 0, 3, 0, 2, 7, 2, 5, 5], "test": [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]}
    for split, n in (("train", 60_000), ("test", 10_000)):
        x, y = data.fashion_mnist(split)
        assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32 and y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
        np.testing.assert_array_equal(y[:10], first_labels[split])  # Zalando's published first labels
        assert x.min() == -1.0 and x.max() == 1.0
        if split == "train":  # the usual normalization constant: the mean pixel is 0.2860 (on [0, 1])
            assert abs((x.mean(dtype=np.float64) + 1) / 2 - 0.2860) < 5e-5


# --- DataLoader -----------------------------------------------------------------------------------------------


def numbered(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel holds its example's index (and differs left to right), and labels = index."""
    base = np.arange(n, dtype=np.float64)[:, None, None, None]  # (n, 1, 1, 1)
    ramp = np.arange(5.0) / 10  # distinct columns, so a mirrored image differs from the original
    x = base + np.broadcast_to(ramp, (n, 2, 3, 5))  # (n, 2, 3, 5)
    return x, np.arange(n)


def epochs(loader: DataLoader, count: int) -> list[list[tuple[np.ndarray, ...]]]:
    return [list(loader) for _ in range(count)]


@pytest.mark.parametrize(("drop_last", "sizes"), [(False, [5, 5, 5, 5, 3]), (True, [5, 5, 5, 5])])
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_example_once_per_epoch_in_batches(shuffle, drop_last, sizes):
    x, y = numbered(23)
    loader = DataLoader((x, y), 5, shuffle=shuffle, drop_last=drop_last, rng=rng(13))
    assert len(loader) == len(sizes)
    for epoch in epochs(loader, 3):
        assert [len(b[1]) for b in epoch] == sizes
        seen = np.concatenate([b[1] for b in epoch])
        assert len(np.unique(seen)) == sum(sizes)  # no example twice
        if not drop_last:
            np.testing.assert_array_equal(np.sort(seen), y)
        if not shuffle:
            np.testing.assert_array_equal(seen, y[:sum(sizes)])
        for xb, yb in epoch:
            np.testing.assert_array_equal(xb, x[yb])  # rows of every array stay together
    assert loader.epoch == 3


def test_batches_are_copies_and_the_data_is_untouched():
    x, y = numbered(8)
    original = x.copy()
    for xb, _ in DataLoader((x, y), 4, shuffle=False, flip=True, rng=rng(0)):
        xb[:] = -1.0
    np.testing.assert_array_equal(x, original)


def test_shuffle_differs_between_epochs_and_is_reproducible_per_seed():
    x, y = numbered(50)
    order = [np.concatenate([b[1] for b in epoch]) for epoch in epochs(DataLoader((x, y), 7, rng=rng(14)), 4)]
    again = [np.concatenate([b[1] for b in epoch]) for epoch in epochs(DataLoader((x, y), 7, rng=rng(14)), 4)]
    other = [np.concatenate([b[1] for b in epoch]) for epoch in epochs(DataLoader((x, y), 7, rng=rng(15)), 4)]
    np.testing.assert_array_equal(order, again)
    assert len({tuple(o) for o in order}) == 4, "an epoch repeated the previous order"
    assert not np.array_equal(order, other)


def test_shuffle_puts_each_example_at_each_position_equally_often():
    n, epochs_count = 6, 6000
    loader = DataLoader((np.arange(n),), n, rng=rng(16))
    position_counts = np.zeros((n, n), int)  # [example, position]
    for _ in range(epochs_count):
        (batch,) = next(iter(loader))
        position_counts[batch, np.arange(n)] += 1
    for example in range(n):
        assert_counts_uniform(position_counts[example], f"positions of example {example}")


def test_flips_mirror_about_half_the_images_exactly():
    x, y = numbered(40)
    loader = DataLoader((x, y), 16, flip=True, rng=rng(17))
    flipped = total = 0
    for _ in range(60):
        for xb, yb in loader:
            same = np.all(xb == x[yb], axis=(1, 2, 3))
            mirrored = np.all(xb == x[yb][..., ::-1], axis=(1, 2, 3))  # every channel and row, left to right
            assert np.all(same ^ mirrored), "an image neither itself nor its exact mirror image"
            flipped += int(mirrored.sum())
            total += len(yb)
    assert_within_se(flipped, total / 2, math.sqrt(total / 4), "flipped images")


def test_iterating_again_after_a_break_continues_the_epoch():
    x, y = numbered(20)
    loader = DataLoader((x, y), 3, rng=rng(18))
    reference = np.concatenate([b[1] for b in DataLoader((x, y), 3, rng=rng(18))])
    head = []
    for _, yb in loader:
        head.append(yb)
        if len(head) == 2:
            break
    tail = [yb for _, yb in loader]
    np.testing.assert_array_equal(np.concatenate(head + tail), reference)
    assert loader.epoch == 1 and loader.position == len(loader)


@pytest.mark.parametrize(("shuffle", "flip", "drop_last"),
                         [(True, False, False), (True, True, True), (False, True, False), (False, False, True)])
@pytest.mark.parametrize("stop", [0, 3, 7, 14, 16])  # before the start, mid-epoch, at epoch ends, in epoch 3
def test_resume_gives_the_same_remaining_batches_as_an_uninterrupted_loader(shuffle, flip, drop_last, stop):
    x, y = numbered(33)
    settings = {"shuffle": shuffle, "flip": flip, "drop_last": drop_last}
    uninterrupted = _stream(DataLoader((x, y), 5, rng=rng(19), **settings), 25)
    interrupted = DataLoader((x, y), 5, rng=rng(19), **settings)
    _stream(interrupted, stop)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = DataLoader((x, y), 5, rng=rng(99), **settings)
    resumed.load_state_dict(state)
    assert (resumed.epoch, resumed.position) == (interrupted.epoch, interrupted.position)
    for got, expected in zip(_stream(resumed, 25 - stop), uninterrupted[stop:], strict=True):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


def _stream(loader: DataLoader, count: int) -> list[tuple[np.ndarray, ...]]:
    """The next `count` batches, across epochs, as a training loop with a step budget takes them."""
    batches = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def test_state_dict_is_a_snapshot():
    x, y = numbered(10)
    loader = DataLoader((x, y), 4, rng=rng(20))
    state = loader.state_dict()
    _stream(loader, 2)
    assert state["epoch"] == 0 and state["position"] == 0 and state != loader.state_dict()


def test_loader_bad_arguments():
    x, y = numbered(10)
    cases = [
        (TypeError, "arrays: expected a tuple of arrays", dict(arrays=x)),
        (ValueError, "arrays: expected a tuple of at least one array", dict(arrays=())),
        (TypeError, r"arrays\[1\]: expected a numpy array", dict(arrays=(x, list(y)))),
        (ValueError, "arrays: expected arrays with the same number", dict(arrays=(x, y[:-1]))),
        (ValueError, "arrays: expected arrays with the same number", dict(arrays=(x[:0],))),
        (ValueError, "batch_size: expected a positive int", dict(batch_size=0)),
        (TypeError, "batch_size: expected a positive int", dict(batch_size=2.0)),
        (ValueError, "rng: pass a numpy.random.Generator", dict(rng=None)),
        (ValueError, "rng: pass a numpy.random.Generator", dict(rng=None, shuffle=False, flip=True)),
        (TypeError, "rng: expected a numpy.random.Generator", dict(rng=7)),
        (TypeError, "shuffle: expected True or False", dict(shuffle="yes")),
        (ValueError, r"flip: expected images of shape \(N, C, H, W\)", dict(arrays=(y, x), flip=True)),
        (ValueError, "batch_size: with drop_last=True, expected at most the 10", dict(batch_size=11, drop_last=True)),
    ]
    for error, message, changes in cases:
        arguments = {"arrays": (x, y), "batch_size": 4, "rng": rng()} | changes
        with pytest.raises(error, match=message):
            DataLoader(arguments.pop("arrays"), arguments.pop("batch_size"), **arguments)
    assert len(DataLoader((x,), 4, shuffle=False)) == 3  # no randomness asked: no Generator needed


def test_load_state_dict_refuses_a_mismatched_or_damaged_state():
    x, y = numbered(10)
    state = DataLoader((x, y), 4, rng=rng(21)).state_dict()
    with pytest.raises(ValueError, match="batch_size=4, this one has batch_size=5"):
        DataLoader((x, y), 5, rng=rng()).load_state_dict(state)
    with pytest.raises(ValueError, match="num_examples=10, this one has num_examples=9"):
        DataLoader((x[:9], y[:9]), 4, rng=rng()).load_state_dict(state)
    with pytest.raises(ValueError, match="flip=False, this one has flip=True"):
        DataLoader((x, y), 4, flip=True, rng=rng()).load_state_dict(state)
    with pytest.raises(ValueError, match=r"missing \['position'\]"):
        DataLoader((x, y), 4, rng=rng()).load_state_dict({k: v for k, v in state.items() if k != "position"})
    with pytest.raises(ValueError, match="expected 0 <= position <= 3"):
        DataLoader((x, y), 4, rng=rng()).load_state_dict(state | {"epoch": 1, "position": 4})
    with pytest.raises(ValueError, match="expected the state of a PCG64 Generator"):
        DataLoader((x, y), 4, rng=rng()).load_state_dict(state | {"rng": np.random.MT19937(0).state})
    with pytest.raises(TypeError, match="state: expected the mapping"):
        DataLoader((x, y), 4, rng=rng()).load_state_dict([("epoch", 0)])
    loader = DataLoader((x, y), 4, rng=rng(22))
    before = loader.rng.bit_generator.state
    with pytest.raises(ValueError, match="PCG64"):
        loader.load_state_dict(state | {"epoch": 1, "position": 1, "rng": {"bit_generator": "MT19937"}})
    assert loader.rng.bit_generator.state == before, "a refused state must leave the loader as it was"


# --- a user's image files ---------------------------------------------------------------------------------------


def test_read_images_png_maps_grey_and_colour_to_the_model_scale(tmp_path):
    """An 8-bit PNG's levels k / 255 come back as 2 k / 255 - 1 (black -1, white 1), grey for a one-channel model
    (RGB averaged); a black-and-white PNG mask is 0 and 1; .npy arrays are taken as they are."""
    from matplotlib import image

    from minidiff.data.files import read_images

    levels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # (8, 8) 0..252
    rgb = np.stack([levels, levels, levels], axis=-1)  # (8, 8, 3) grey as colour
    image.imsave(tmp_path / "grey.png", rgb)
    got = read_images(tmp_path / "grey.png", "input", (1, 8, 8))
    assert got.shape == (1, 1, 8, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], 2 * levels.astype(np.float64) / 255 - 1, atol=1e-6)
    image.imsave(tmp_path / "mask.png", np.stack([(levels > 100).astype(np.uint8) * 255] * 3, axis=-1))
    np.testing.assert_array_equal(read_images(tmp_path / "mask.png", "mask", (1, 8, 8), mask=True)[0, 0],
                                  levels > 100)
    batch = np.random.default_rng(0).uniform(-1, 1, (3, 1, 8, 8))
    np.save(tmp_path / "x.npy", batch)
    np.testing.assert_array_equal(read_images(tmp_path / "x.npy", "input", (1, 8, 8)), batch.astype(np.float32))


def test_read_images_bad_files_name_the_argument(tmp_path):
    from minidiff.data.files import read_images

    np.save(tmp_path / "big.npy", np.full((8, 8), 2.0))
    np.save(tmp_path / "odd.npy", np.zeros((2, 8, 8)))
    np.save(tmp_path / "text.npy", np.array(["a"]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    cases = [("x.jpg", ValueError, "--input: expected a .png or .npy file"),
             ("none.npy", FileNotFoundError, "--input: no such file"),
             ("big.npy", ValueError, r"--input: expected pixel values in \[-1, 1\]"),
             ("odd.npy", ValueError, r"--input: expected an image of shape \(8, 8\)"),
             ("text.npy", ValueError, "--input: expected a numeric array"),
             ("broken.png", ValueError, "--input: .* is not a readable PNG")]
    for name, error, match in cases:
        with pytest.raises(error, match=match):
            read_images(tmp_path / name, "--input", (1, 8, 8))
