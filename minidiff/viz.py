"""Pictures of a run: sample grids, the reverse process as a strip and as a GIF, the loss curve, 2-D scatters.

matplotlib is imported inside each function (with the non-interactive Agg backend), so `import minidiff`
does not need it. The GIF is written by matplotlib's PillowWriter (Pillow is a dependency of matplotlib).
Every file is written to a temporary name in the same folder and renamed, so a reader never sees half a file.
Images are (N, C, H, W) in [-1, 1], C = 1 (grey) or 3 (RGB).
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("minidiff.viz needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """write(temporary path) in path's folder (the temporary name keeps path's suffix, so writers that pick
    the format by extension work), then rename it to path; the temporary file is removed on failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private (0600); give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    plt = _pyplot()
    try:
        return _write_atomically(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix[1:] or "png", **kwargs))
    finally:
        plt.close(fig)


def _check_images(images: Any, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1 or images.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected images (N, C, H, W) with C = 1 or 3 and N >= 1, got shape {images.shape} "
                         f"dtype {images.dtype}")
    return images


def image_grid(images: Any, nrow: int, padding: int = 1) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] tiled row by row, nrow per row, into one (rows, cols, C) array in [0, 1],
    `padding` pixels of white between them (clipped to [-1, 1] first)."""
    images = _check_images(images)
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow: expected an int >= 1 (images per row), got {nrow!r}")
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = np.ones((rows * (h + padding) + padding, nrow * (w + padding) + padding, c))  # (R, C', c)
    unit = (np.clip(images.astype(np.float64), -1.0, 1.0) + 1.0) / 2.0  # (N, C, H, W) in [0, 1]
    for i, image in enumerate(unit):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[top:top + h, left:left + w] = image.transpose(1, 2, 0)  # (H, W, C)
    return grid


def _show(ax: Any, grid: np.ndarray) -> None:
    cmap = "gray" if grid.shape[2] == 1 else None
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_image_grid(images: Any, path: str | os.PathLike, nrow: int = 10, title: str | None = None) -> Path:
    """A PNG of images (N, C, H, W) in [-1, 1], nrow per row (pixels drawn as squares, no smoothing)."""
    plt = _pyplot()
    grid = image_grid(images, nrow)
    scale = 8.0 / max(grid.shape[:2])  # the longer side 8 inches
    fig, ax = plt.subplots(figsize=(grid.shape[1] * scale, grid.shape[0] * scale + (0.4 if title else 0)))
    _show(ax, grid)
    ax.set_xlabel(f"{len(images)} images, {nrow} per row")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)


def _check_trajectory(trajectory: Any, timesteps: Sequence[Any]) -> np.ndarray:
    trajectory = np.asarray(trajectory)
    if trajectory.ndim != 5 or trajectory.shape[2] not in (1, 3):
        raise ValueError(f"trajectory: expected (steps, N, C, H, W) with C = 1 or 3, got shape {trajectory.shape}")
    if len(timesteps) != len(trajectory):
        raise ValueError(f"timesteps: expected one label per frame of the trajectory ({len(trajectory)}), "
                         f"got {len(timesteps)}")
    return trajectory


def frame_labels(timesteps: Sequence[Any]) -> list[str]:
    """The t of each frame of a sampler's trajectory: frame 0 is x at timesteps[0] (the noise), frame i the
    sample after the step from timesteps[i - 1], at timesteps[i], and the last frame is at t = 0."""
    return [f"{float(t):g}" for t in timesteps] + ["0"]


def save_reverse_process_strip(trajectory: Any, timesteps: Sequence[Any], path: str | os.PathLike,
                               num_frames: int = 8, num_samples: int = 8) -> Path:
    """A PNG of the reverse process: trajectory (steps, N, C, H, W) in [-1, 1] with timesteps[i] the t of
    frame i; `num_frames` frames evenly spaced from the first (noise) to the last (x_0) as columns, the first
    `num_samples` samples as rows."""
    plt = _pyplot()
    trajectory = _check_trajectory(trajectory, timesteps)
    frames = np.unique(np.linspace(0, len(trajectory) - 1, min(num_frames, len(trajectory))).round().astype(int))
    samples = min(num_samples, trajectory.shape[1])
    fig, axes = plt.subplots(1, len(frames), figsize=(1.3 * len(frames), 1.3 * samples * 0.5 + 1.0), squeeze=False)
    for ax, frame in zip(axes[0], frames, strict=True):
        _show(ax, image_grid(trajectory[frame, :samples], nrow=1))
        ax.set_xlabel(f"t = {timesteps[frame]}")
    axes[0, 0].set_ylabel(f"{samples} samples")
    fig.suptitle("reverse process: noise (left) to samples (right)")
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)


def save_reverse_process_gif(trajectory: Any, timesteps: Sequence[Any], path: str | os.PathLike, nrow: int = 8,
                             num_samples: int = 64, fps: int = 10, hold_last: int = 10) -> Path:
    """An animated GIF of the reverse process: one frame per step of trajectory (steps, N, C, H, W), the
    first `num_samples` samples as a grid, titled with the frame's t; the last frame is held `hold_last`
    extra frames."""
    plt = _pyplot()
    from matplotlib.animation import PillowWriter

    trajectory = _check_trajectory(trajectory, timesteps)
    samples = min(num_samples, trajectory.shape[1])
    grids = [image_grid(frame[:samples], min(nrow, samples)) for frame in trajectory]
    fig, ax = plt.subplots(figsize=(4, 4 * grids[0].shape[0] / grids[0].shape[1] + 0.4))
    _show(ax, grids[0])
    image = ax.images[0]
    ax.set_xlabel(f"{samples} samples")
    writer = PillowWriter(fps=fps)

    def write(tmp: str) -> None:
        with writer.saving(fig, tmp, dpi=80):
            for i in [*range(len(grids)), *[len(grids) - 1] * hold_last]:
                image.set_data(grids[i][..., 0] if grids[i].shape[2] == 1 else grids[i])
                ax.set_title(f"reverse process, t = {timesteps[i]}")
                writer.grab_frame()

    try:
        return _write_atomically(path, write)
    finally:
        plt.close(fig)


def read_loss_log(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) from a trainer's log.csv (columns step, loss, ...)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"step", "loss"} <= set(rows[0]):
        raise ValueError(f"{path}: expected a training log with the columns step and loss, got {list(rows[0])}")
    return (np.array([int(r["step"]) for r in rows], dtype=np.int64),
            np.array([float(r["loss"]) for r in rows], dtype=np.float64))


def save_loss_curve(log_csv: str | os.PathLike, path: str | os.PathLike, title: str = "training loss") -> Path:
    """A PNG of the loss (the mean over each logged window) against the step, from a trainer's log.csv;
    a log-scaled loss axis."""
    plt = _pyplot()
    steps, losses = read_loss_log(log_csv)
    if len(steps) == 0:
        raise ValueError(f"log_csv: {log_csv} holds no rows yet")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mean over the logged window)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)


def save_scatter(samples: Any, data: Any, path: str | os.PathLike, title: str = "samples vs data") -> Path:
    """A PNG of 2-D samples (N, 2) beside data points (M, 2), the same axes."""
    plt = _pyplot()
    points = {}
    for name, a in (("samples", samples), ("data", data)):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected 2-D points (N, 2), got shape {a.shape}")
        points[name] = a
    both = np.concatenate(list(points.values()))
    low, high = both.min(axis=0), both.max(axis=0)
    margin = 0.05 * (high - low + 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, (name, a), color in zip(axes, points.items(), ("tab:blue", "tab:gray"), strict=True):
        ax.scatter(a[:, 0], a[:, 1], s=2, alpha=0.5, color=color)
        ax.set_title(f"{name} ({len(a)})")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        ax.set_xlim(low[0] - margin[0], high[0] + margin[0])
        ax.set_ylim(low[1] - margin[1], high[1] + margin[1])
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path, dpi=100)
