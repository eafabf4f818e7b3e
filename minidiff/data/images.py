"""Image datasets, all offline, as (images (N, 1, H, W) float32 in [-1, 1], labels (N,) int64).

digits: the 8x8 handwritten digits, 1797 images of 10 classes, shipped inside the package as
`minidiff/data/digits.csv.gz` (57,523 bytes): scikit-learn's copy (sklearn/datasets/data/digits.csv.gz,
BSD-3-Clause) of the test set of the UCI ML "Optical Recognition of Handwritten Digits" data set
(E. Alpaydin and C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80, CC BY 4.0). Each row is the
64 pixels (row by row, integers 0..16: the count of inked pixels in a 4x4 block of a 32x32 bitmap) and
the label. Read with gzip and NumPy; scikit-learn is not needed.

fashion_mnist: Zalando's Fashion-MNIST (28x28 grey images of 10 kinds of clothing, 60000 train and 10000
test; MIT license), read from its four idx files (gzipped or not) in a folder: the `path` argument, else
the environment variable MINIDIFF_FASHION_MNIST, else where the Debian/Ubuntu package puts them
(`apt-get install dataset-fashion-mnist`: /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from minidiff.data import _validate as _v

__all__ = ["DIGITS_TEST_SIZE", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DEBIAN_DIR", "FASHION_MNIST_ENV",
           "digits", "fashion_mnist", "read_idx"]

DIGITS_FILE = "digits.csv.gz"
DIGITS_SHAPE = (1797, 8, 8)
DIGITS_MAX = 16  # pixel values are 0..16
DIGITS_TEST_SIZE = 297  # the last 297 rows: a fixed split, 27 to 33 examples of each class
NUM_CLASSES = 10

FASHION_MNIST_ENV = "MINIDIFF_FASHION_MNIST"
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_PREFIX = {"train": "train", "test": "t10k"}
FASHION_MNIST_SIZE = 28
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# The third byte of an idx file's magic number: the element type (stored big-endian).
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


# ---------------------------------------------------------------------------------------------------
# The 8x8 digits


def digits(split: str = "train", rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The UCI 8x8 handwritten digits: images (N, 1, 8, 8) float32 in [-1, 1] (pixel / 8 - 1, so 0 -> -1
    and 16 -> 1, exactly) and labels (N,) int64 in 0..9.

    split: "train" (the first 1500 rows of the file), "test" (the last 297) or "all" (1797). The split
    is fixed, the same for everyone. In file order, or shuffled by `rng` (a numpy Generator) when given.
    """
    _v.choice(split, "split", ("train", "test", "all"))
    rng = _v.generator(rng, optional=True)
    pixels, labels = _digits_table()  # (1797, 8, 8) uint8, (1797,) int64
    first_test = len(labels) - DIGITS_TEST_SIZE
    rows = {"train": slice(0, first_test), "test": slice(first_test, None), "all": slice(None)}[split]
    images = _to_unit_range(pixels[rows], DIGITS_MAX)[:, None]  # (N, 1, 8, 8)
    labels = labels[rows].copy()  # (N,)
    if rng is not None:
        order = rng.permutation(len(labels))
        images, labels = images[order], labels[order]
    return images, labels


@functools.cache
def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The file's pixels (1797, 8, 8) uint8 and labels (1797,) int64, read once (read-only)."""
    source = resources.files(__package__) / DIGITS_FILE
    with source.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)  # (1797, 65)
    n, height, width = DIGITS_SHAPE
    if table.shape != (n, height * width + 1) or table.min() < 0 or table[:, :-1].max() > DIGITS_MAX \
            or table[:, -1].max() >= NUM_CLASSES:
        raise ValueError(f"{source}: expected {n} rows of {height * width} pixels in 0..{DIGITS_MAX} and a "
                         f"label in 0..9; the installed file is damaged (reinstall minidiff)")
    pixels = table[:, :-1].astype(np.uint8).reshape(DIGITS_SHAPE)
    labels = table[:, -1].copy()
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _to_unit_range(pixels: np.ndarray, max_value: int) -> np.ndarray:
    """Integer pixels 0..max_value as float32 in [-1, 1]: 2 pixel / max_value - 1, correctly rounded (a lookup
    table computed in float64, so one pass over the images)."""
    table = (np.arange(max_value + 1) * (2.0 / max_value) - 1.0).astype(np.float32)  # (max_value + 1,)
    return table[pixels]


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST


def fashion_mnist(split: str = "train", path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST: images (N, 1, 28, 28) float32 in [-1, 1] (pixel / 127.5 - 1) and labels (N,) int64
    in 0..9 (names in FASHION_MNIST_CLASSES); N = 60000 for split="train", 10000 for "test".

    The idx files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
    `t10k-labels-idx1-ubyte` (each gzipped, `.gz`, or not) are read from the folder `path`, else from the
    folder in the environment variable MINIDIFF_FASHION_MNIST, else from /usr/share/datasets/fashion-mnist
    (the Debian package dataset-fashion-mnist). FileNotFoundError when they are not there (the message says
    how to get them), ValueError when a file is corrupt, truncated or not Fashion-MNIST.
    """
    _v.choice(split, "split", tuple(FASHION_MNIST_PREFIX))
    folder, where = _fashion_mnist_folder(path)
    prefix = FASHION_MNIST_PREFIX[split]
    images_file = _find_idx(folder, f"{prefix}-images-idx3-ubyte", where)
    labels_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte", where)
    images, labels = read_idx(images_file), read_idx(labels_file)
    size = (FASHION_MNIST_SIZE, FASHION_MNIST_SIZE)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != size:
        raise ValueError(f"{images_file}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
                         f"{images.shape}")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1] or labels.max(initial=0) >= NUM_CLASSES:
        raise ValueError(f"{labels_file}: expected {len(images)} uint8 labels in 0..9 (one per image), got "
                         f"{labels.dtype} {labels.shape} with maximum {labels.max(initial=0)}")
    return _to_unit_range(images, 255)[:, None], labels.astype(np.int64)  # (N, 1, 28, 28), (N,)


def _fashion_mnist_folder(path: str | os.PathLike | None) -> tuple[Path, str]:
    """The folder to read and how it was chosen (for the error message)."""
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"path: expected a folder name (str or os.PathLike), got {type(path).__name__}")
        return Path(path), "the path argument"
    if os.environ.get(FASHION_MNIST_ENV):
        return Path(os.environ[FASHION_MNIST_ENV]), f"${FASHION_MNIST_ENV}"
    return Path(FASHION_MNIST_DEBIAN_DIR), f"the default (neither path nor ${FASHION_MNIST_ENV} given)"


def _find_idx(folder: Path, name: str, where: str) -> Path:
    """folder/name.gz or folder/name, whichever exists (the gzipped one first)."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST not found: no {name}.gz or {name} in {folder} ({where}). Install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into {FASHION_MNIST_DEBIAN_DIR}), or "
        f"download the four idx files from https://github.com/zalandoresearch/fashion-mnist into a folder and "
        f"pass path=<folder> or set {FASHION_MNIST_ENV}=<folder>.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an idx file (the MNIST format), gzipped or not, in native byte order.

    The format: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, each dimension as a big-endian uint32, then the elements in
    C order, big-endian. ValueError when the header is not that or the data is not exactly its size.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an idx file (expected the magic number 00 00 <type: one of "
                         f"{', '.join(f'{code:02x}' for code in IDX_DTYPES)}> <ndim >= 1>, got {raw[:4].hex(' ')})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, expected {header} for {ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: idx file {problem}: {len(raw)} bytes, expected {expected} for a {dtype.name} "
                         f"array of shape {shape}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed when it starts with the gzip magic bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file: {path}")
    data = path.read_bytes()
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({error})") from None
