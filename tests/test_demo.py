"""The demo end to end on a tiny budget (every file, its format, metrics.json's keys, no temporary file left)
and minidiff.viz by its definitions: the grid's pixels, the frames of the GIF, the log the loss curve reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_cli import call

from minidiff import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGIC = b"GIF89a"


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minidiff", *args], capture_output=True, text=True, timeout=300,
                          check=False, cwd=cwd)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "minidiff-demo"
    result = run("demo", "--steps", "2", "--samples", "16", "--classifier-steps", "20", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result


def test_demo_writes_every_file_in_its_format(demo_dir):
    out, _ = demo_dir
    for name in ("samples.png", "reverse_process.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert (out / "reverse_process.gif").read_bytes()[:6] == GIF_MAGIC
    samples = np.load(out / "samples.npy")
    assert samples.shape == (16, 1, 8, 8) and samples.dtype == np.float32
    assert np.isfinite(samples).all() and samples.min() >= -1.0 and samples.max() <= 1.0
    assert (out / "checkpoint.json").is_file() and (out / "log.csv").is_file()
    assert len(list(out.glob("checkpoint-*.safetensors"))) == 1
    assert not [p.name for p in out.iterdir() if "tmp" in p.name], "a temporary file was left behind"


def test_demo_metrics_json_has_the_figures_of_issue_8(demo_dir):
    out, result = demo_dir
    report = json.loads((out / "metrics.json").read_text())
    for key in ("frechet_distance", "class_histogram", "mean_confidence", "classifier_test_accuracy", "targets",
                "training", "sampling", "seconds_total"):
        assert key in report, key
    assert set(report["frechet_distance"]) >= {"samples", "real", "ratio"}
    assert report["frechet_distance"]["ratio"] == pytest.approx(report["frechet_distance"]["samples"]
                                                                / report["frechet_distance"]["real"])
    hist = report["class_histogram"]["samples"]
    counts = np.array(hist) * 16  # fractions of 16 samples
    assert len(hist) == 10 and counts.sum() == pytest.approx(16) and np.allclose(counts, counts.round())
    assert report["training"]["steps"] == 2
    assert set(report["targets"]["met"]) == {"classifier_accuracy", "mean_confidence_gap", "class_fractions",
                                             "frechet_ratio"}
    for needle in ("Frechet", "mean confidence", "class histogram", str(out)):
        assert needle in result.stdout


def test_demo_again_into_its_own_folder_replaces_it_but_refuses_another_run(demo_dir, tmp_path):
    out, _ = demo_dir
    again = call("demo", "--steps", "1", "--samples", "8", "--classifier-steps", "5", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "metrics.json").read_text())["training"]["steps"] == 1
    other = tmp_path / "run"
    assert call("train", "--dataset", "moons", "--steps", "2", "--out", str(other)).returncode == 0
    refused = call("demo", "--steps", "1", "--samples", "8", "--out", str(other))
    assert refused.returncode == 1 and "not a demo" in refused.stderr and "Traceback" not in refused.stderr


# --- viz ---------------------------------------------------------------------------------------------------


def test_image_grid_places_each_image_scaled_to_unit_range():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 1, 3, 4))  # (N, C, H, W)
    grid = viz.image_grid(images, nrow=2, padding=1)
    assert grid.shape == (3 * 4 + 1, 2 * 5 + 1, 1)
    for i, image in enumerate(images):
        top, left = 1 + (i // 2) * 4, 1 + (i % 2) * 5
        np.testing.assert_array_equal(grid[top:top + 3, left:left + 4, 0], (image[0] + 1) / 2)
    assert (grid[0] == 1).all() and (grid[-4:, 6:] == 1).all()  # padding and the empty sixth cell are white


def test_image_grid_clips_out_of_range_values():
    grid = viz.image_grid(np.array([[[[-3.0, 2.0]]]]), nrow=1, padding=0)
    np.testing.assert_array_equal(grid[..., 0], [[0.0, 1.0]])


@pytest.mark.parametrize("shape", [(4, 8, 8), (2, 2, 8, 8), (0, 1, 8, 8)])
def test_image_grid_refuses_what_is_not_a_batch_of_images(shape):
    with pytest.raises(ValueError, match="images: expected images"):
        viz.image_grid(np.zeros(shape), nrow=2)


def test_gif_has_one_frame_per_step_the_last_held_and_no_temporary_file(tmp_path):
    from PIL import Image

    trajectory = np.random.default_rng(1).uniform(-1, 1, (4, 3, 1, 8, 8))  # (steps, N, C, H, W)
    path = viz.save_reverse_process_gif(trajectory, viz.frame_labels([30, 20, 10]), tmp_path / "r.gif", hold_last=2)
    assert path.read_bytes()[:6] == GIF_MAGIC
    with Image.open(path) as gif:  # Pillow merges the repeated last frame into one longer frame
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert len(durations) == 4 and durations[-1] == 3 * durations[0] and len(set(durations[:-1])) == 1
    assert os.listdir(tmp_path) == ["r.gif"]


def test_frame_labels_put_the_last_frame_at_t_zero():
    assert viz.frame_labels(np.array([1000, 500, 1])) == ["1000", "500", "1", "0"]
    with pytest.raises(ValueError, match="timesteps: expected one label per frame"):
        viz.save_reverse_process_strip(np.zeros((3, 1, 1, 8, 8)), ["2", "1"], "unused.png")


def test_loss_curve_reads_the_trainers_log(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("step,loss,lr,grad_norm,time\n10,0.5,0.001,1.0,1.0\n20,0.25,0.001,1.0,2.0\n")
    steps, losses = viz.read_loss_log(log)
    np.testing.assert_array_equal(steps, [10, 20])
    np.testing.assert_array_equal(losses, [0.5, 0.25])
    assert viz.save_loss_curve(log, tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected a training log with the columns step and loss"):
        viz.read_loss_log(tmp_path / "bad.csv")


def test_scatter_refuses_points_that_are_not_2d(tmp_path):
    with pytest.raises(ValueError, match="samples: expected 2-D points"):
        viz.save_scatter(np.zeros((5, 3)), np.zeros((5, 2)), tmp_path / "s.png")
    assert viz.save_scatter(np.zeros((5, 2)), np.ones((5, 2)), tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC


def test_importing_minidiff_and_its_cli_does_not_need_matplotlib():
    code = ("import sys, minidiff, minidiff.cli, minidiff.demo; minidiff.cli.build_parser(); "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "False", result.stderr
