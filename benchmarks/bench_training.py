"""Training steps per second of the U-Net: minidiff (NumPy path, C++ path) against its PyTorch twin
(diffusers' UNet2DModel built from the same config), 1 and 2 threads, as ratios measured in one run; and
the peak memory of a training step.

    python benchmarks/bench_training.py [--configs digits fashion] [--repeats 5] [--threads 1 2]
                                        [--no-memory] [--profile]
    CI smoke test (seconds):
    python benchmarks/bench_training.py --configs tiny --repeats 1 --threads 1 --no-memory > /dev/null

A training step, the same for every contender: zero_grad, the network on a fixed noisy batch x_t (B, C, H, W)
and its timesteps t (B,), the L_simple loss mse(prediction, eps) against the fixed noise eps, backward, one
AdamW step (minidiff.optim.AdamW vs torch.optim.AdamW, the same hyperparameters). The batch is made once
(x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, DDPM's linear schedule), so no random draw is timed.

Configs: "digits" (1x8x8, batch 64, channels (32, 64), attention at 4x4), "fashion" (a Fashion-MNIST-sized
U-Net: 1x28x28, batch 32, channels (32, 64, 64), attention at 7x7), "tiny" (for the CI smoke test only).

Validation first: every contender starts from the same float32 weights (a minidiff float64 initialization
rounded) and its first step's loss and every parameter gradient must match diffusers' UNet2DModel in float64
on the same batch, or it is not timed. Then the contenders run in turns (interleaved), medians of --repeats
steps each with every library pinned to the same number of threads; ratios are time per step over torch's
in the same run (below 1: faster than PyTorch).

Peak memory: PyTorch's CPU allocations are invisible to tracemalloc, so every contender is measured the
same way, in a fresh subprocess (one per contender and config, threads pinned): the model, optimizer and
batch are built, the kernel's peak-RSS mark is reset (/proc/self/clear_refs), one training step runs, and
the figure is the peak resident set size (VmHWM) minus the resident size before the step. That first step
holds the activations kept for backward, the gradients and AdamW's two moment buffers (created on the first
step), plus whatever a library initializes lazily. For minidiff it also gives tracemalloc's peak over a
second (steady) step: the NumPy allocations alive at once during a step, moment buffers excluded.
--profile prints where minidiff's time goes in one config's step (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from reference.torch_unet import unet_twin  # (the twin lives with the tests)

import minidiff as md
from minidiff import functional as F
from minidiff import optim
from minidiff.autodiff import Tensor
from minidiff.nn.unet import UNet

# The float32 contenders' loss and gradients against the float64 twin, as max |error| / max |reference| per
# array. A float32 forward and backward through ~20 layers rounds each op to 2^-24 relative, with reductions
# of up to B H W = 25088 terms (a conv weight's gradient): observed <= 1e-5 (digits, fashion). A wrong op
# (another group count, a missing skip, SiLU for GELU) or another batch is off by 1e-2 to 1.
TOLERANCE = 1e-3
BACKENDS = ("numpy", "cpp")
REFERENCE = "torch"
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class BenchConfig:
    """A U-Net config (minidiff.nn.unet.UNet's arguments, UNet2DModel's vocabulary) and the batch size."""

    batch: int
    unet: dict[str, Any]

    def image_shape(self) -> tuple[int, int, int]:
        return self.unet["in_channels"], self.unet["sample_size"], self.unet["sample_size"]


def _unet(size: int, channels: tuple[int, ...], attend: tuple[bool, ...], groups: int) -> dict[str, Any]:
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attend)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend))
    return dict(sample_size=size, in_channels=1, out_channels=1, block_out_channels=channels, layers_per_block=2,
                down_block_types=down, up_block_types=up, attention_head_dim=8, norm_num_groups=groups)


CONFIGS = {
    "digits": BenchConfig(64, _unet(8, (32, 64), (False, True), groups=8)),
    "fashion": BenchConfig(32, _unet(28, (32, 64, 64), (False, False, True), groups=8)),
    "tiny": BenchConfig(4, _unet(8, (8, 16), (False, True), groups=4)),
}


# --- the batch, the weights, the contenders ---------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    x_t: np.ndarray  # (B, C, H, W) float32
    t: np.ndarray  # (B,) int64 in 1..T
    eps: np.ndarray  # (B, C, H, W) float32, the target


def make_batch(config: BenchConfig, rng: np.random.Generator) -> Batch:
    """x0 uniform in [-1, 1] (images' range), t uniform, x_t by DDPM's linear schedule (beta 1e-4 .. 0.02)."""
    shape = (config.batch, *config.image_shape())
    x0 = rng.uniform(-1, 1, shape)
    eps = rng.standard_normal(shape)
    t = rng.integers(1, NUM_TRAIN_TIMESTEPS + 1, config.batch)
    alpha_bar = np.cumprod(1 - np.linspace(1e-4, 0.02, NUM_TRAIN_TIMESTEPS))[t - 1][:, None, None, None]
    x_t = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * eps
    return Batch(x_t.astype(np.float32), t, eps.astype(np.float32))


def initial_weights(config: BenchConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """PyTorch's default initialization (minidiff's, float64), rounded to float32: every contender's start."""
    model = UNet(**config.unet, rng=rng, dtype=np.float64)
    return {k: np.asarray(v, np.float32) for k, v in model.state_dict().items()}


Step = Callable[[], tuple[float, dict[str, np.ndarray]]]  # one training step -> (loss, parameter gradients)


def torch_step(config: BenchConfig, weights: dict[str, np.ndarray], batch: Batch,
               dtype: torch.dtype = torch.float32) -> Step:
    twin = unet_twin(UNet(**config.unet).config, dtype)
    twin.load_state_dict({k: torch.tensor(v, dtype=dtype) for k, v in weights.items()})
    twin.train()
    opt = torch.optim.AdamW(twin.parameters(), **ADAMW)
    x_t, eps = torch.tensor(batch.x_t, dtype=dtype), torch.tensor(batch.eps, dtype=dtype)
    t = torch.from_numpy(batch.t)

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(twin(x_t, t).sample, eps)
        loss.backward()
        opt.step()
        return loss.item(), {k: p.grad.numpy() for k, p in twin.named_parameters()}

    return step


def minidiff_step(config: BenchConfig, weights: dict[str, np.ndarray], batch: Batch, backend: str) -> Step:
    model = UNet(**config.unet, dtype=np.float32)
    model.load_state_dict(weights)
    model.train()
    opt = optim.AdamW(model.parameters(), **ADAMW)
    x_t, eps = Tensor(batch.x_t), Tensor(batch.eps)

    def step():
        with md.use_backend(backend):
            opt.zero_grad()
            loss = F.mse_loss(model(x_t, batch.t), eps)
            loss.backward()
            opt.step()
        return loss.item(), {k: p.grad for k, p in model.named_parameters()}

    return step


def contender_names() -> list[str]:
    return [REFERENCE] + [f"minidiff-{b}" for b in BACKENDS if b in md.available_backends()]


def make_step(name: str, config: BenchConfig, weights: dict[str, np.ndarray], batch: Batch) -> Step:
    if name == REFERENCE:
        return torch_step(config, weights, batch)
    return minidiff_step(config, weights, batch, name.removeprefix("minidiff-"))


def setup(config_name: str, seed: int = 0) -> tuple[BenchConfig, dict[str, np.ndarray], Batch]:
    config = CONFIGS[config_name]
    rng = np.random.default_rng(seed)
    return config, initial_weights(config, rng), make_batch(config, rng)


# --- validation ------------------------------------------------------------------------------------------


def relative_error(got: Any, expected: Any, scale: float = 0.0) -> float:
    """max |got - expected| over max(max |expected|, scale)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), scale, 1e-30))


def gradient_errors(grads: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Each gradient's relative error, on the scale of its own largest element or, when larger, its layer's
    weight gradient's: the attention's key bias has an exactly zero gradient (softmax ignores a shift of
    every score of a query by q . b_k), so its float32 values are rounding noise of its layer's scale."""
    errors = {}
    for key, ref in expected.items():
        sibling = key.rsplit(".", 1)[0] + ".weight"
        scale = float(np.max(np.abs(expected[sibling]))) if sibling in expected else 0.0
        errors[key] = relative_error(grads[key], ref, scale)
    return errors


def validate(label: str, contenders: dict[str, Step], config: BenchConfig, weights: dict[str, np.ndarray],
             batch: Batch) -> dict[str, float]:
    """Each contender's first step (loss, every gradient) against the float64 twin; SystemExit naming a
    contender that is off (it is not timed). Returns each contender's worst relative error."""
    expected_loss, expected_grads = torch_step(config, weights, batch, torch.float64)()
    worst = {}
    for name, step in contenders.items():
        loss, grads = step()
        if set(grads) != set(expected_grads):
            raise SystemExit(f"{label}: {name} has other parameters than the twin: not timing it")
        worst[name] = max(relative_error(loss, expected_loss), *gradient_errors(grads, expected_grads).values())
        if not worst[name] <= TOLERANCE:
            raise SystemExit(f"{label}: {name} is wrong (relative error {worst[name]:.2e} > {TOLERANCE:g}): "
                             "not timing it")
    return worst


# --- peak memory, one subprocess per contender --------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def probe_memory(config_name: str, name: str, threads: int) -> dict[str, float]:
    """In this (fresh) process: MiB of peak RSS growth over the first step, and for minidiff the MiB of
    tracemalloc's peak over a second step."""
    config, weights, batch = setup(config_name)
    with pinned_threads(threads):
        step = make_step(name, config, weights, batch)
        before = _proc_status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        step()
        result = {"rss_first_step": (_proc_status_kib("VmHWM") - before) / 1024}
        if name != REFERENCE:
            tracemalloc.start()
            step()
            result["traced_step"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return result


def measure_memory(config_name: str, names: list[str], threads: int) -> dict[str, dict[str, float]]:
    results = {}
    for name in names:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", config_name, name, str(threads)],
                             capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.splitlines()[-1])
    return results


def parameter_mib(weights: dict[str, np.ndarray]) -> float:
    return sum(v.nbytes for v in weights.values()) / 2**20


# --- report ----------------------------------------------------------------------------------------------


def describe(name: str, config: BenchConfig, weights: dict[str, np.ndarray]) -> str:
    u = config.unet
    attention = [i for i, kind in enumerate(u["down_block_types"]) if kind.startswith("Attn")]
    sizes = [u["sample_size"] // 2**i for i in attention]
    return (f"{name}: {u['in_channels']}x{u['sample_size']}x{u['sample_size']}, batch {config.batch}, channels "
            f"{u['block_out_channels']}, {u['layers_per_block']} res blocks per level, attention at "
            f"{', '.join(f'{s}x{s}' for s in sizes)}, {sum(v.size for v in weights.values()):,} parameters "
            f"({parameter_mib(weights):.1f} MiB float32)")


def speed_table(title: str, medians: dict[str, float]) -> str:
    ref = medians[REFERENCE]
    lines = [title, f"  {'contender':<16} {'ms/step':>10} {'steps/s':>9} {'time vs ' + REFERENCE:>14}"]
    for name, seconds in medians.items():
        lines.append(f"  {name:<16} {seconds * 1e3:10.1f} {1 / seconds:9.2f} {seconds / ref:13.2f}x")
    return "\n".join(lines)


def memory_table(title: str, memory: dict[str, dict[str, float]]) -> str:
    lines = [title, f"  {'contender':<16} {'RSS peak growth, 1st step':>26} {'traced NumPy peak, 2nd step':>28}"]
    for name, m in memory.items():
        traced = f"{m['traced_step']:.1f} MiB" if "traced_step" in m else "n/a"
        lines.append(f"  {name:<16} {m['rss_first_step']:22.1f} MiB {traced:>28}")
    return "\n".join(lines)


def profile_step(step: Step, label: str, calls: int = 3, top: int = 15) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [step() for _ in range(calls)])
    print(f"where {label}'s time goes: {calls} training steps (cProfile, by own time)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["digits", "fashion"])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per contender (medians)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--profile", action="store_true", help="cProfile minidiff's step (each backend)")
    parser.add_argument("--memory-probe", nargs=3, metavar=("CONFIG", "CONTENDER", "THREADS"),
                        help=argparse.SUPPRESS)  # internal: the subprocess of one memory measurement
    args = parser.parse_args()
    diffusers.utils.logging.set_verbosity_error()  # not its advice on casting a model with .to(dtype)
    if args.memory_probe:
        config_name, name, threads = args.memory_probe
        print(json.dumps(probe_memory(config_name, name, int(threads))))
        return

    names = contender_names()
    print(f"contenders: {', '.join(names)}; ratios are time per step over {REFERENCE}'s, same run, interleaved\n")
    for config_name in args.configs:
        config, weights, batch = setup(config_name)
        print(describe(config_name, config, weights))
        contenders = {name: make_step(name, config, weights, batch) for name in names}
        worst = validate(config_name, contenders, config, weights, batch)
        print("  validated against the float64 twin, worst relative error: "
              + ", ".join(f"{n} {e:.1e}" for n, e in worst.items()) + "\n")
        for threads in args.threads:
            with pinned_threads(threads):
                medians = interleaved_medians(contenders, args.repeats, warmup=1, min_seconds=0)
            print(speed_table(f"training step (forward, L_simple, backward, AdamW), float32, {threads} thread(s)",
                              medians) + "\n")
        if not args.no_memory:
            threads = min(args.threads)
            print(memory_table(f"peak memory of a training step ({threads} thread(s), a fresh process each)",
                               measure_memory(config_name, names, threads)) + "\n")
        if args.profile:
            for name in names[1:]:
                profile_step(contenders[name], f"{name} ({config_name})")


if __name__ == "__main__":
    main()
