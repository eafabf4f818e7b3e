"""A published-size diffusion model run from a diffusers folder: one forward pass of the DDPM CIFAR-10 U-Net
(google/ddpm-cifar10-32's configuration, 35.7M parameters) at batch 16, minidiff's C++ and NumPy paths against
diffusers' UNet2DModel on PyTorch, 1 and 2 threads; and a whole 50-step DDIM run at batch 16 (minidiff's
sampler and U-Net loaded from the folder against diffusers' DDIMPipeline), as ratios measured in one run.

    python benchmarks/bench_interop.py [--config cifar10] [--batch 16] [--repeats 5] [--threads 1 2]
                                       [--ddim-steps 50] [--quick]
    The digits U-Net's 50 DDIM steps of a batch of 64 (issue 9's sampling figure):
    python benchmarks/bench_interop.py --config digits --batch 64
    --quick: 3 repeats and 10 DDIM steps. CI smoke test (seconds):
    python benchmarks/bench_interop.py --config tiny --batch 2 --repeats 1 --threads 1 --ddim-steps 2 > /dev/null

The folder: diffusers' UNet2DModel with its seeded random initialization (every 1-D parameter moved by
N(0, 0.1^2), so that no norm or bias is trivial) and a default DDIMScheduler, written by DDIMPipeline's
save_pretrained into a temporary folder and read back by minidiff.interop.load_diffusers (the U-Net, memory-
mapped weights, and a DDIMSampler from the scheduler config). Both sides run in float32.

Validation first: every minidiff contender's forward pass on the benchmark's batch (random inputs, timesteps
across the chain, minidiff at t = k + 1 where diffusers is at k) must match diffusers' to 1e-4 of the output's
largest value, and a 2-step DDIM run from the same x_T must match the pipeline's images, or it is not timed.
Then the contenders run in turns (interleaved), medians of --repeats forward passes each, every library pinned
to the same number of threads; the DDIM runs are timed once per contender and thread count (a run is 50 forward
passes, long enough to time once). Their images are compared too, to RUN_TOLERANCE: float32 rounding grows over 50 steps
through a random network (each float32 run is ~1e-4 from a float64 one), far below what a wrong step does.
Ratios are time over torch's in the same run (below 1: faster than PyTorch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import diffusers
import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads

import minidiff as md
from minidiff.autodiff import Tensor
from minidiff.interop import DiffusersPipeline, load_diffusers

# Relative to the output's largest value: both sides round ~100 float32 layers in other orders, and diffusers
# takes its embedding angles t w in float32 (~6e-5 at t ~ 1000); observed ~1e-6 on the CIFAR-10 U-Net, forward
# and 2-step DDIM images alike. A timestep off by one is off by ~5e-2 (tests/test_interop.py).
TOLERANCE = 1e-4
# The images of the timed runs (in [0, 1]): 50 steps through a random 35.7M-parameter U-Net amplify float32
# rounding. Against minidiff's float64 run (batch 2, measured) minidiff's float32 run is 1.1e-4 off and diffusers'
# 2.0e-4, and the two float32 runs differ by 5e-4 to 7e-4 at batch 16. A run with the timestep off by one differs
# by 0.58 after 10 steps.
RUN_TOLERANCE = 5e-3
BACKENDS = ("cpp", "numpy")
REFERENCE = "torch"
CONFIGS = {
    "cifar10": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                    layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                          "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                    norm_num_groups=32, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0),
    # the digits U-Net of bench_training.py and the demo's scale (1x8x8, channels (32, 64), attention at 4x4)
    "digits": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=2,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   attention_head_dim=8, norm_num_groups=8),
    "tiny": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=4, norm_num_groups=4),
}


# --- the folder and the contenders --------------------------------------------------------------------------


def write_folder(config: dict[str, Any], folder: str, seed: int = 0) -> diffusers.DDIMPipeline:
    """diffusers' DDIMPipeline of a seeded random UNet2DModel, saved into `folder`; returns the pipeline."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    pipeline = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler())
    pipeline.set_progress_bar_config(disable=True)
    pipeline.save_pretrained(folder)
    return pipeline


Forward = Callable[[], np.ndarray]


def forward_contenders(pipeline: diffusers.DDIMPipeline, pipe: DiffusersPipeline, x: np.ndarray,
                       k: np.ndarray) -> dict[str, Forward]:
    """One forward pass each: diffusers' U-Net at k, minidiff's (each available backend) at t = k + 1."""
    x_torch, k_torch = torch.from_numpy(x), torch.from_numpy(k)

    def torch_forward() -> np.ndarray:
        with torch.no_grad():
            return pipeline.unet(x_torch, k_torch).sample.numpy()

    def minidiff_forward(backend: str) -> Forward:
        def forward() -> np.ndarray:
            with md.use_backend(backend), md.no_grad():
                return pipe.unet(Tensor(x), k + 1).data

        return forward

    contenders = {REFERENCE: torch_forward}
    for backend in BACKENDS:
        if backend in md.available_backends():
            contenders[f"minidiff-{backend}"] = minidiff_forward(backend)
    return contenders


def initial_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The x_T that DDIMPipeline draws first from torch.Generator().manual_seed(seed)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()


def ddim_contenders(pipeline: diffusers.DDIMPipeline, pipe: DiffusersPipeline, batch: int, steps: int,
                    names: list[str], seed: int = 0) -> dict[str, Callable[[], np.ndarray]]:
    """One whole deterministic DDIM run each from the same x_T, as images (B, H, W, C) in [0, 1]."""
    x_T = initial_noise(pipe.image_shape(batch), seed)

    def diffusers_run() -> np.ndarray:
        return pipeline(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                        output_type="np").images

    def minidiff_run(backend: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            with md.use_backend(backend):
                x = pipe.sample(batch, np.random.default_rng(seed), num_inference_steps=steps, x_T=x_T, progress=False)
            return np.clip(x / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

        return run

    return {name: diffusers_run if name == REFERENCE else minidiff_run(name.removeprefix("minidiff-"))
            for name in names}


# --- validation ------------------------------------------------------------------------------------------------


def relative_error(got: np.ndarray, expected: np.ndarray, scale: float | None = None) -> float:
    """max |got - expected| over `scale` (default: max |expected|)."""
    scale = float(np.max(np.abs(expected))) if scale is None else scale
    return float(np.max(np.abs(np.asarray(got, np.float64) - expected)) / max(scale, 1e-30))


def validate(label: str, contenders: dict[str, Callable[[], np.ndarray]], scale: float | None = None,
             results: dict[str, np.ndarray] | None = None, tolerance: float = TOLERANCE) -> dict[str, float]:
    """Each contender's result against torch's (computed now, or taken from `results`) within `tolerance`;
    SystemExit naming one that is off. Returns each minidiff contender's relative error."""
    results = results or {name: fn() for name, fn in contenders.items()}
    expected = results[REFERENCE]
    errors = {}
    for name in contenders:
        if name == REFERENCE:
            continue
        errors[name] = relative_error(results[name], expected, scale)
        if not errors[name] <= tolerance:
            raise SystemExit(f"{label}: {name} is wrong (relative error {errors[name]:.2e} > {tolerance:g})")
    return errors


# --- report ------------------------------------------------------------------------------------------------------


def time_table(title: str, medians: dict[str, float]) -> str:
    ref = medians[REFERENCE]
    lines = [title, f"  {'contender':<16} {'seconds':>10} {'time vs ' + REFERENCE:>14}"]
    for name, seconds in medians.items():
        lines.append(f"  {name:<16} {seconds:10.3f} {seconds / ref:13.2f}x")
    return "\n".join(lines)


def timed_once(contenders: dict[str, Callable[[], np.ndarray]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(seconds, result) of one call of each contender, in turn."""
    seconds, results = {}, {}
    for name, fn in contenders.items():
        start = time.perf_counter()
        results[name] = fn()
        seconds[name] = time.perf_counter() - start
    return seconds, results


def describe(name: str, config: dict[str, Any], pipe: DiffusersPipeline, batch: int) -> str:
    attention = [i for i, kind in enumerate(config["down_block_types"]) if kind.startswith("Attn")]
    sizes = [config["sample_size"] // 2**i for i in attention]
    return (f"{name}: {config['in_channels']}x{config['sample_size']}x{config['sample_size']}, batch {batch}, "
            f"channels {config['block_out_channels']}, {config['layers_per_block']} res blocks per level, attention "
            f"at {', '.join(f'{s}x{s}' for s in sizes)}, {pipe.unet.num_parameters():,} parameters, loaded from a "
            f"diffusers folder ({type(pipe.sampler).__name__} from its scheduler config)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), default="cifar10")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per contender (medians)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ddim-steps", type=int, default=50, help="steps of the timed DDIM runs (0: skip them)")
    parser.add_argument("--quick", action="store_true", help="3 repeats and 10 DDIM steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.ddim_steps = 3, min(args.ddim_steps, 10)
    diffusers.utils.logging.set_verbosity_error()

    config = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as folder:
        pipeline = write_folder(config, folder)
        pipe = load_diffusers(folder)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(pipe.image_shape(args.batch)).astype(np.float32)
    k = rng.integers(0, 1000, args.batch)
    forwards = forward_contenders(pipeline, pipe, x, k)
    names = list(forwards)
    print(f"contenders: {', '.join(names)}; ratios are time over {REFERENCE}'s, same run, interleaved\n")
    print(describe(args.config, config, pipe, args.batch))
    with pinned_threads(max(args.threads)):
        errors = validate("forward", forwards)
        ddim_errors = validate("DDIM, 2 steps", ddim_contenders(pipeline, pipe, 2, 2, names), scale=1.0)
    print("  validated against diffusers: forward "
          + ", ".join(f"{n} {e:.1e}" for n, e in errors.items()) + "; 2-step DDIM images "
          + ", ".join(f"{n} {e:.1e}" for n, e in ddim_errors.items()) + "\n")

    for threads in args.threads:
        with pinned_threads(threads):
            medians = interleaved_medians(forwards, args.repeats, warmup=1, min_seconds=0)
        print(time_table(f"one forward pass, batch {args.batch}, float32, {threads} thread(s) "
                         f"(median of {args.repeats})", medians) + "\n")
    if args.ddim_steps == 0:
        return
    runs = ddim_contenders(pipeline, pipe, args.batch, args.ddim_steps, names)
    for threads in args.threads:
        with pinned_threads(threads):
            seconds, results = timed_once(runs)
        errors = validate(f"DDIM, {args.ddim_steps} steps", runs, scale=1.0, results=results, tolerance=RUN_TOLERANCE)
        print(time_table(f"DDIM, {args.ddim_steps} steps, batch {args.batch}, {threads} thread(s) (one run each; "
                         "images agree to " + ", ".join(f"{e:.1e}" for e in errors.values()) + ")", seconds) + "\n")


if __name__ == "__main__":
    main()
