"""The main job, `python -m minidiff demo`: train a small U-Net on the 8x8 digits within a time budget, sample
from its EMA weights with DPM-Solver++, and write pictures, samples, metrics and the checkpoint into one folder.

    run_demo("minidiff-demo", minutes=4.5, seed=0)

Order: a feature classifier is trained first (minidiff.metrics, a few seconds), then the U-Net trains for
whatever the budget leaves after the measured cost of sampling, then samples are drawn and judged. Every
file is written atomically; the trainer's checkpoint.json, checkpoint-<step>.safetensors and log.csv live in
the same folder, so `python -m minidiff sample --checkpoint minidiff-demo` draws more samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minidiff import metrics, viz
from minidiff.autodiff.tensor import Tensor, no_grad
from minidiff.data import digits
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.nn.unet import UNet
from minidiff.samplers import DPMSolverMultistepSampler
from minidiff.train import CHECKPOINT_JSON, LOG_CSV, TrainConfig, Trainer, _write_text, load_checkpoint

DEFAULT_MINUTES = 4.5
DEMO_MARK = "minidiff demo"
# The files a demo writes (besides the trainer's weights file checkpoint-<step>.safetensors).
DEMO_FILES = ("samples.png", "samples.npy", "reverse_process.png", "reverse_process.gif", "loss.png", "metrics.json",
              CHECKPOINT_JSON, LOG_CSV)
# Issue 8's targets for the digits demo.
TARGETS = {"mean_confidence_gap_max": 0.1, "class_fraction_min": 0.05, "class_fraction_max": 0.15,
           "frechet_ratio_max": 3.0, "classifier_accuracy_min": 0.97}
# Seconds kept free at the end of the budget for the metrics and the pictures.
FINISHING_SECONDS = 10.0


@dataclass(frozen=True)
class DemoConfig:
    """The demo's model, training and sampling settings (the defaults are the tuned ones)."""

    block_out_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    attention: bool = False  # self-attention at the 4x4 level
    norm_num_groups: int = 8
    objective: str = "v_prediction"
    schedule: str = "cosine"
    num_train_timesteps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    ema_decay: float = 0.99
    min_snr_gamma: float | None = 5.0
    sampler_steps: int = 20
    num_samples: int = 300
    classifier_steps: int = 800

    def unet(self, rng: np.random.Generator) -> UNet:
        levels = len(self.block_out_channels)
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if self.attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        return UNet(sample_size=8, in_channels=1, out_channels=1, block_out_channels=self.block_out_channels,
                    layers_per_block=self.layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
                    attention_head_dim=None, norm_num_groups=self.norm_num_groups, rng=rng)

    def train_config(self, seed: int, minutes: float | None, steps: int | None) -> TrainConfig:
        return TrainConfig(objective=self.objective, schedule=self.schedule,
                           num_train_timesteps=self.num_train_timesteps, min_snr_gamma=self.min_snr_gamma,
                           batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps,
                           ema_decay=self.ema_decay, steps=steps, minutes=minutes, checkpoint_every=10**9,
                           seed=seed)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS limited to one thread while the block runs (threadpoolctl, when installed): for the small
    matrices of these models, two BLAS threads on two shared cores were slower than one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def network_fn(model: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A minidiff network as the samplers' model(x, t) on NumPy arrays, evaluated without a graph."""
    model.eval()

    def call(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with no_grad():
            return model(Tensor(x), t).data

    return call


def _clear_previous_demo(out: Path) -> None:
    """Delete the files of an earlier demo in `out` (only a folder whose checkpoint says it is a demo's)."""
    json_path = out / CHECKPOINT_JSON
    if not json_path.exists():
        return
    try:
        description = load_checkpoint(out).meta["data"].get("description") or {}
    except (OSError, ValueError):
        description = {}
    if description.get("run") != DEMO_MARK:
        raise FileExistsError(f"out: {out} already holds a training run that is not a demo's; choose another folder "
                              "with --out")
    for name in DEMO_FILES:
        (out / name).unlink(missing_ok=True)
    for weights in out.glob("checkpoint-*.safetensors"):
        weights.unlink()


def _sampling_seconds(model: UNet, cfg: DemoConfig) -> float:
    """The measured cost of sampling: one forward pass of the sampling batch, times the steps."""
    call = network_fn(model)
    x = np.zeros((cfg.num_samples, 1, 8, 8), dtype=np.float32)  # (N, 1, 8, 8)
    start = time.perf_counter()
    call(x, np.full(cfg.num_samples, cfg.num_train_timesteps // 2))
    model.train()
    return (time.perf_counter() - start) * cfg.sampler_steps


def _class_report(report: dict[str, Any], test_accuracy: float) -> dict[str, Any]:
    """Whether each target of issue 8 is met, with the figures."""
    histogram = report["class_histogram"]["samples"]
    gap = abs(report["mean_confidence"]["samples"] - report["mean_confidence"]["real"])
    checks = {
        "classifier_accuracy": test_accuracy >= TARGETS["classifier_accuracy_min"],
        "mean_confidence_gap": gap <= TARGETS["mean_confidence_gap_max"],
        "class_fractions": TARGETS["class_fraction_min"] <= min(histogram) <= max(histogram)
        <= TARGETS["class_fraction_max"],
        "frechet_ratio": report["frechet_distance"]["ratio"] <= TARGETS["frechet_ratio_max"],
    }
    return {"limits": TARGETS, "mean_confidence_gap": gap, "class_fraction_min": min(histogram),
            "class_fraction_max": max(histogram), "met": checks, "all_met": all(checks.values())}


def sample_metrics(classifier: metrics.Classifier, samples: np.ndarray, test: np.ndarray,
                   train: np.ndarray) -> dict[str, Any]:
    """minidiff.metrics.image_metrics of the samples against the test digits (the floor: test vs train
    features). The Frechet distance uses as many samples as test images (its bias depends on the count);
    the class histogram and the confidence use every sample."""
    report = metrics.image_metrics(classifier, samples, test, train)
    matched = metrics.image_metrics(classifier, samples[:len(test)], test, train)
    report["frechet_distance"] = {**matched["frechet_distance"], "num_samples": min(len(samples), len(test))}
    return report


def run_demo(out: str | Path = "minidiff-demo", *, minutes: float = DEFAULT_MINUTES, seed: int = 0,
             steps: int | None = None, config: DemoConfig | None = None, show_progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into folder `out` within `minutes` minutes in all (training takes what the classifier and
    sampling leave), or with a fixed number of training `steps` (then `minutes` still caps training).
    Returns the metrics (also written to out/metrics.json)."""
    start = time.perf_counter()
    cfg = config or DemoConfig()
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not minutes > 0 or math.isinf(minutes):
        raise ValueError(f"minutes: expected a positive number of minutes, got {minutes!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_demo(out)
    classifier_seed, model_seed, sample_seed = np.random.SeedSequence(seed).spawn(3)
    train_x, train_y = digits("train")  # (1500, 1, 8, 8), (1500,)
    test_x, test_y = digits("test")  # (297, 1, 8, 8), (297,)
    with single_threaded_blas():
        log("training the feature classifier for the metrics ...")
        classifier, accuracy = metrics.train_classifier(train_x, train_y, np.random.default_rng(classifier_seed),
                                                        steps=cfg.classifier_steps, test=(test_x, test_y))
        log(f"  classifier test accuracy {accuracy:.3f}")
        model = cfg.unet(np.random.default_rng(model_seed))
        left = 60 * minutes - (time.perf_counter() - start) - _sampling_seconds(model, cfg) \
            - FINISHING_SECONDS
        train_minutes = max(left, 1.0) / 60
        log(f"training a U-Net on the digits for {train_minutes:.1f} min"
            + (f" (at most {steps} steps)" if steps else "") + " ...")
        trainer = Trainer(model, cfg.train_config(seed, train_minutes, steps), (train_x,), out,
                          data_description={"dataset": "digits", "split": "train", "run": DEMO_MARK},
                          show_progress=show_progress)
        result = trainer.train()
        if result.interrupted:
            raise KeyboardInterrupt
        trainer.ema.copy_to(model)
        log(f"  {result.last_step} steps in {trainer.elapsed:.0f} s; sampling {cfg.num_samples} digits with "
            f"DPM-Solver++ ({cfg.sampler_steps} steps, EMA weights) ...")
        sampler = DPMSolverMultistepSampler(NoiseSchedule.named(cfg.schedule, cfg.num_train_timesteps),
                                            prediction_type=cfg.objective)
        trajectory = sampler.sample(network_fn(model), (cfg.num_samples, 1, 8, 8),
                                    np.random.default_rng(sample_seed),
                                    num_inference_steps=cfg.sampler_steps, progress=show_progress,
                                    return_trajectory=True)  # (1 + steps, N, 1, 8, 8)
        samples = np.clip(trajectory[-1], -1.0, 1.0).astype(np.float32)  # (N, 1, 8, 8)
        report = sample_metrics(classifier, samples, test_x, train_x)
    report["classifier_test_accuracy"] = accuracy
    report["targets"] = _class_report(report, accuracy)
    report["training"] = {"steps": result.last_step, "seconds": trainer.elapsed, "config": trainer.config.to_dict(),
                          "model": model.config}
    report["sampling"] = {"sampler": "DPMSolverMultistepSampler", "steps": cfg.sampler_steps,
                          "num_samples": cfg.num_samples, "weights": "ema"}
    _write_files(out, samples, trajectory, viz.frame_labels(sampler.timesteps))
    report["seconds_total"] = time.perf_counter() - start
    _write_text(out / "metrics.json", json.dumps(report, indent=1))
    log(summary(report, out))
    return report


def _write_files(out: Path, samples: np.ndarray, trajectory: np.ndarray, timesteps: list[Any]) -> None:
    from minidiff.checkpoint import _write_atomically

    _write_atomically(out / "samples.npy", lambda f: np.save(f, samples))
    viz.save_image_grid(samples[:100], out / "samples.png", nrow=10, title="minidiff samples (8x8 digits)")
    viz.save_reverse_process_strip(trajectory, timesteps, out / "reverse_process.png")
    viz.save_reverse_process_gif(trajectory, timesteps, out / "reverse_process.gif", num_samples=64)
    viz.save_loss_curve(out / LOG_CSV, out / "loss.png", title="training loss (digits U-Net)")


def summary(report: dict[str, Any], out: Path) -> str:
    """The metrics and the files, as the demo prints them."""
    fd, conf = report["frechet_distance"], report["mean_confidence"]
    hist = report["class_histogram"]["samples"]
    targets = report["targets"]
    lines = [
        f"metrics ({report['num_images']['samples']} samples vs {report['num_images']['real']} test digits; "
        f"classifier test accuracy {report['classifier_test_accuracy']:.3f}):",
        f"  Frechet feature distance  {fd['samples']:.3g}  (test vs train floor {fd['real']:.3g}; "
        f"ratio {fd['ratio']:.2f}, target <= {TARGETS['frechet_ratio_max']})",
        f"  mean confidence           {conf['samples']:.3f}  (test digits {conf['real']:.3f}; "
        f"target: within {TARGETS['mean_confidence_gap_max']})",
        "  class histogram           " + " ".join(f"{d}:{p:.0%}" for d, p in enumerate(hist))
        + f"  (target: each {TARGETS['class_fraction_min']:.0%}-{TARGETS['class_fraction_max']:.0%})",
        "  targets                   " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in targets["met"].items()),
        f"  time                      {report['seconds_total']:.0f} s "
        f"({report['training']['steps']} training steps in {report['training']['seconds']:.0f} s)",
        f"files in {out}/: " + ", ".join([*DEMO_FILES[:-2], "checkpoint.json + checkpoint-*.safetensors", LOG_CSV]),
    ]
    return "\n".join(lines)
