"""The 2-D target of issue 8: an MLPDenoiser trained by the Trainer on moons, eight gaussians and swiss roll,
each within a time budget, reaches a sliced Wasserstein distance (SW_2) at most 1.5x the data-vs-data floor,
sampled by DDPM (1000 steps) and by DDIM (50 steps), both from the EMA weights.

    python benchmarks/bench_toy2d.py [--seconds 60] [--samples 2000] [--datasets moons ...] [--out DIR]
    CI smoke test (seconds): python benchmarks/bench_toy2d.py --seconds 2 --samples 200 --out /tmp/toy2d-smoke

For each dataset: train for `--seconds` of wall time (the step count is what fits), then draw `--samples`
points with each sampler and compare them with fresh data by minidiff.metrics.toy_metrics, which also gives
the floor: the same SW_2 between two fresh data sets of as many points, on the same projections. Both
samplers are scored against the same reference and floor (the same metric seed). The table has the train
time (wall and CPU: on a shared machine the wall time buys fewer steps), the steps, SW(DDPM), SW(DDIM), the
floor, the ratios, and PASS when both ratios are <= 1.5. Scatter plots (samples vs data) go to --out.
The smoke mode (a few steps) only checks that the pipeline runs: its ratios are far above 1.5 and it exits 0.
Exit status 1 when a row fails at a budget of 60 s or more.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import minidiff as md
from minidiff.data import TOY_DATASETS
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.metrics import toy_metrics
from minidiff.nn.mlp import MLPDenoiser
from minidiff.samplers.ddim import DDIMSampler
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.train import TrainConfig, Trainer
from minidiff.viz import save_scatter

DATASETS = ("moons", "eight_gaussians", "swiss_roll")
TARGET_RATIO = 1.5
FULL_BUDGET_SECONDS = 60.0  # below this budget the run is a smoke test: the target is not enforced
TRAIN_POINTS = 100_000  # drawn once per dataset; the Trainer shuffles them into batches
SAMPLERS = {"DDPM": (DDPMSampler, 1000), "DDIM": (DDIMSampler, 50)}  # name: (class, inference steps)
MODEL = dict(dim=2, hidden=128, layers=3)
# T = 1000 training steps (DDPM 1000 runs every one of them). clip_sample is off in the samplers: the toys
# reach |x| ~ 2.5, outside diffusers' default clip range [-1, 1].
TRAIN = TrainConfig(objective="epsilon", schedule="linear", num_train_timesteps=1000, batch_size=512, lr=2e-3,
                    warmup_steps=100, grad_clip=1.0, ema_decay=0.999, steps=None, minutes=1.0,
                    checkpoint_every=10**9, log_every=100)


@dataclasses.dataclass
class Row:
    dataset: str
    wall_seconds: float
    cpu_seconds: float
    steps: int
    sw: dict[str, float]  # sampler name: SW_2 of its samples against fresh data
    floor: float

    def ratio(self, sampler: str) -> float:
        return self.sw[sampler] / self.floor

    @property
    def passed(self) -> bool:
        return all(self.ratio(name) <= TARGET_RATIO for name in self.sw)


def train(dataset: str, seconds: float, seed: int) -> tuple[MLPDenoiser, TrainConfig, float, float, int]:
    """An MLPDenoiser trained on `dataset` for `seconds`, with its EMA weights loaded; the config, the wall
    and CPU seconds and the steps."""
    rng = np.random.default_rng(seed)
    data = TOY_DATASETS[dataset](TRAIN_POINTS, rng, dtype=np.float32)  # (N, 2)
    net = MLPDenoiser(**MODEL, rng=rng)
    config = dataclasses.replace(TRAIN, minutes=seconds / 60, seed=seed)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(net, config, data, out, show_progress=False,
                          data_description={"dataset": dataset, "points": TRAIN_POINTS})
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    trainer.ema.copy_to(net)
    return net, config, wall, cpu, trainer.step


def as_function(net: MLPDenoiser) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The network as the samplers call a model: arrays in, an array out, no graph."""
    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        with md.no_grad():
            return net(md.Tensor(x), t).data
    return model


def sample(net: MLPDenoiser, config: TrainConfig, sampler: str, n: int, seed: int) -> np.ndarray:
    """n points (n, 2) drawn by `sampler` on the training schedule."""
    cls, steps = SAMPLERS[sampler]
    schedule = NoiseSchedule.named(config.schedule, config.num_train_timesteps)
    runner = cls(schedule, prediction_type=config.objective, clip_sample=False)
    return runner.sample(as_function(net), (n, 2), np.random.default_rng(seed), num_inference_steps=steps,
                         progress=False)


def run(dataset: str, seconds: float, n: int, seed: int, out: Path) -> Row:
    net, config, wall, cpu, steps = train(dataset, seconds, seed)
    data_sampler = TOY_DATASETS[dataset]
    sw, floor = {}, None
    for k, name in enumerate(SAMPLERS):
        points = sample(net, config, name, n, seed + 1 + k)
        metrics = toy_metrics(points, data_sampler, np.random.default_rng(seed + 100))  # same reference, floor
        sw[name], floor = metrics["sliced_wasserstein"]["samples"], metrics["sliced_wasserstein"]["real"]
        save_scatter(points, data_sampler(n, np.random.default_rng(seed + 200)), out / f"{dataset}_{name.lower()}.png",
                     title=f"{dataset}: {name} {SAMPLERS[name][1]} steps after {steps} training steps "
                           f"(SW {sw[name]:.3f}, floor {floor:.3f})")
    return Row(dataset, wall, cpu, steps, sw, floor)


def table(rows: list[Row]) -> str:
    header = (f"{'dataset':<16} {'train s':>8} {'cpu s':>7} {'steps':>6} {'SW DDPM':>8} {'SW DDIM':>8} "
              f"{'floor':>7} {'DDPM/fl':>7} {'DDIM/fl':>7}  result (<= {TARGET_RATIO}x)")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.dataset:<16} {r.wall_seconds:8.1f} {r.cpu_seconds:7.1f} {r.steps:6d} {r.sw['DDPM']:8.4f} "
                     f"{r.sw['DDIM']:8.4f} {r.floor:7.4f} {r.ratio('DDPM'):7.2f} {r.ratio('DDIM'):7.2f}  "
                     f"{'PASS' if r.passed else 'FAIL'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=FULL_BUDGET_SECONDS, help="training budget per dataset")
    parser.add_argument("--samples", type=int, default=2000, help="points drawn per sampler (and per data set)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (the matrices are small: one thread is fastest on a shared machine)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "toy2d",
                        help="folder for the scatter plots")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.samples < 2 or args.threads < 1:
        parser.error("--seconds must be > 0, --samples >= 2 and --threads >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with threadpool_limits(limits=args.threads):
        for dataset in args.datasets:
            rows.append(run(dataset, args.seconds, args.samples, args.seed, args.out))
            print(f"{dataset}: done ({rows[-1].steps} steps)", file=sys.stderr, flush=True)
    print(f"MLPDenoiser {MODEL}, {TRAIN.objective} on a {TRAIN.schedule} schedule (T = {TRAIN.num_train_timesteps}), "
          f"batch {TRAIN.batch_size}, lr {TRAIN.lr}, EMA {TRAIN.ema_decay}; {args.samples} samples per sampler")
    print(table(rows))
    print(f"scatter plots: {args.out}")
    enforced = args.seconds >= FULL_BUDGET_SECONDS
    return 0 if not enforced or all(r.passed for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
