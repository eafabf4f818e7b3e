"""A user's own images and masks, from PNG or .npy files, as batches a model of a given image shape takes.

    x = read_images("my_digit.png", "input", (1, 8, 8))     # (1, 1, 8, 8) float32 in [-1, 1]
    mask = read_images("mask.npy", "mask", (1, 8, 8), mask=True)   # 1 = known pixel, 0 = to fill

PNG: one image; its pixels (0..1 as matplotlib reads them: 8- or 16-bit grey, RGB or RGBA) map to [-1, 1]
(black -1, white 1), as the datasets' pixels do. Colour is averaged to grey for a one-channel model; alpha is
ignored. A mask PNG is black (0, fill) and white (1, known). .npy: an array of shape (H, W), (C, H, W) or
(N, C, H, W), already on the model's scale ([-1, 1]; a mask: 0 and 1). Either way the result is
(N, C, H, W) float32; a wrong size, channel count, range or file is a ValueError or FileNotFoundError naming
the argument.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SUFFIXES = (".png", ".npy")


def read_images(path: str | os.PathLike, name: str, image_shape: tuple[int, int, int], *,
                mask: bool = False) -> np.ndarray:
    """The images (or with mask=True the mask) in the PNG or .npy file `path`, as (N, C, H, W) float32 for a
    model of image_shape (C, H, W); a mask may have one channel for all. `name` is the argument's name in
    errors."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{name}: expected a .png or .npy file, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    if path.suffix.lower() == ".png":
        array = _read_png(path, name, image_shape[0])
        array = array if mask else 2.0 * array - 1.0  # [0, 1] -> [-1, 1]
    else:
        array = _read_npy(path, name)
    batch = _as_batch(array, name, image_shape, mask)
    if mask:
        if not np.isin(batch, (0.0, 1.0)).all():
            raise ValueError(f"{name}: expected a mask of 0 (to fill) and 1 (known) only, got values in "
                             f"[{batch.min():g}, {batch.max():g}] (a PNG mask must be pure black and white)")
    elif batch.size and (batch.min() < -1.0 or batch.max() > 1.0):
        raise ValueError(f"{name}: expected pixel values in [-1, 1] (the training data's scale), got "
                         f"[{batch.min():g}, {batch.max():g}]")
    return batch


def _read_png(path: Path, name: str, channels: int) -> np.ndarray:
    """(H, W) grey or (C, H, W) colour in [0, 1]."""
    from matplotlib import image  # matplotlib reads PNG itself (through Pillow)

    try:
        pixels = np.asarray(image.imread(path), dtype=np.float32)  # (H, W) or (H, W, 3 | 4)
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"{name}: {path} is not a readable PNG image ({error})") from None
    if pixels.ndim == 2:
        return pixels
    rgb = pixels[..., :3]  # (H, W, 3): alpha dropped
    return rgb.mean(axis=-1) if channels == 1 else np.moveaxis(rgb, -1, 0)


def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{name}: {path} is not a readable .npy array ({error})") from None
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name}: expected a numeric array, got dtype {array.dtype}")
    return array.astype(np.float32)


def _as_batch(array: np.ndarray, name: str, image_shape: tuple[int, int, int], mask: bool) -> np.ndarray:
    channels, height, width = image_shape
    if array.ndim == 2:
        array = array[None]  # (1, H, W)
    if array.ndim == 3:
        array = array[None]  # (1, C, H, W)
    allowed = (1, channels) if mask else (channels,)
    if array.ndim != 4 or array.shape[0] < 1 or array.shape[1] not in allowed or array.shape[2:] != (height, width):
        expected = f"({height}, {width}), ({channels}, {height}, {width}) or (N, {channels}, {height}, {width})"
        raise ValueError(f"{name}: expected an image of shape {expected} for this model, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinity")
    return np.ascontiguousarray(array, dtype=np.float32)
