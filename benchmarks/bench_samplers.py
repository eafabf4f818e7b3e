"""Sampling throughput per update on a fixed model: minidiff's samplers (NumPy path, C++ path) against
diffusers' schedulers on PyTorch doing the same updates, 1 and 2 threads, as ratios measured in one run.

    python benchmarks/bench_samplers.py [--sizes 16384 262144 2097152] [--steps 20] [--repeats 7]
                                        [--threads 1 2] [--samplers ddpm ddim dpm++2m ...]
    CI smoke test (seconds): python benchmarks/bench_samplers.py --sizes 4096 --repeats 1 --threads 1 > /dev/null

The model is excluded: its outputs are precomputed, one standard normal array per step call (an eps
model's output has that scale). A contender is one whole run of a sampler on a float32 sample of the given
number of elements (a batch of latents (B, 4, s, s)): set_timesteps(steps), then at every timestep
scale_model_input (where the sampler has one; its result is what the model would be given) and step, the
noise of a stochastic step passed explicitly (diffusers' randn_tensor replaced by a lookup of the step's
precomputed noise), so no random draw is timed. Times are per update: a run's median divided by its
number of step calls (Heun: 2 steps - 1).

Contenders: "diffusers" (its scheduler on torch tensors sharing the arrays' memory), "minidiff-numpy" and
"minidiff-cpp" (the same sampler code; md.use_backend switches its fused update kernel). Each is validated
first, two runs in a row (a run must not depend on the one before), against an independent reference:
diffusers' run of the same config and inputs in float64 (its sigma-based steps compute in float32 even
then, ample for the tolerance below); a contender that fails is not timed. Both build
from the same config: the diffusers scheduler from the dict below, the minidiff sampler from
`dict(scheduler.config)` (every key, defaults included). Ratios are to "diffusers" in the same run,
interleaved, medians; below 1 means faster than diffusers. On a loaded machine the 2-thread times are the
noisier: a parallel region waits for its slowest thread, and a thread descheduled stalls it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch
from _timing import interleaved_medians, pinned_threads, ratio_table

import minidiff as md
from minidiff.samplers.ddim import DDIMSampler
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.samplers.dpm_solver import DPMSolverMultistepSampler
from minidiff.samplers.edm import EulerAncestralSampler, EulerSampler, HeunSampler
from minidiff.samplers.flow import FlowMatchEulerSampler

# A float32 run against the float64 reference, as max |error| / rms(reference). Each update rounds its terms
# (O(rms) each, weights up to ~2 for the multistep ones) to 2^-24 relative, over up to 2 * 20 - 1 updates:
# ~40 * 2 * 6e-8 = 5e-6; diffusers' float32 alpha_bar table (which the reference shares, minidiff does not)
# moves sigma_1 by <= 2e-5 relative. Observed <= 8e-6 (DDPM, whose terms exceed its result's rms). Off by 2e-3
# to 1: a flow shift of 3.01 for 3, DDIM's set_alpha_to_one or steps_offset, DPM-Solver's solver_type "heun"
# for "midpoint", trailing spacing for linspace, another step's noise.
TOLERANCE = 1e-4
BACKENDS = ("numpy", "cpp")
REFERENCE = "diffusers"
# Stable Diffusion's noise schedule (its scheduler_config.json).
SD_BETAS = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


@dataclass(frozen=True)
class SamplerCase:
    """A minidiff sampler, the diffusers scheduler it mirrors, and the config both are built from."""

    minidiff_class: type
    diffusers_class: str
    config: dict[str, Any]
    stochastic: bool = False  # every step but (perhaps) the last takes fresh noise

    def scheduler(self) -> Any:
        return getattr(diffusers, self.diffusers_class)(**self.config)

    def sampler(self) -> Any:
        return self.minidiff_class.from_config(dict(self.scheduler().config))

    def step_calls(self, steps: int) -> int:
        """The number of `step` calls of a run of `steps` inference steps (2 steps - 1 for Heun)."""
        scheduler = self.scheduler()
        scheduler.set_timesteps(steps)
        return len(scheduler.timesteps)


SAMPLERS = {
    "ddpm": SamplerCase(DDPMSampler, "DDPMScheduler", {"beta_schedule": "linear", "clip_sample": True},
                        stochastic=True),  # the DDPM paper's schedule; clips the x0 estimate
    "ddim": SamplerCase(DDIMSampler, "DDIMScheduler", {**SD_BETAS, "clip_sample": False, "set_alpha_to_one": False,
                                                        "steps_offset": 1}),  # eta = 0, Stable Diffusion's config
    "dpm++2m": SamplerCase(DPMSolverMultistepSampler, "DPMSolverMultistepScheduler",
                           {**SD_BETAS, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": SamplerCase(EulerSampler, "EulerDiscreteScheduler", SD_BETAS),
    "heun": SamplerCase(HeunSampler, "HeunDiscreteScheduler", SD_BETAS),
    "euler-a": SamplerCase(EulerAncestralSampler, "EulerAncestralDiscreteScheduler", SD_BETAS, stochastic=True),
    "flow-euler": SamplerCase(FlowMatchEulerSampler, "FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),  # SD3's
}


@dataclass(frozen=True)
class RunInputs:
    """What every contender of a case is given: x_T, then for step call i the model output and (for a
    stochastic sampler) the noise."""

    x_T: np.ndarray  # (B, 4, s, s)
    outputs: list[np.ndarray]  # (calls,) of (B, 4, s, s)
    noises: list[np.ndarray] | None  # (calls,) of (B, 4, s, s), or None

    def astype(self, dtype: Any) -> RunInputs:
        noises = None if self.noises is None else [a.astype(dtype) for a in self.noises]
        return RunInputs(self.x_T.astype(dtype), [a.astype(dtype) for a in self.outputs], noises)


def latent_shape(n: int) -> tuple[int, ...]:
    """n elements as a batch of latents (B, 4, s, s), s the largest of 64, 32, ..., 1 with 4 s^2 dividing n
    (16,384 is one Stable Diffusion latent); (1, n) when 4 does not divide n."""
    for side in (64, 32, 16, 8, 4, 2, 1):
        if n % (4 * side * side) == 0:
            return (n // (4 * side * side), 4, side, side)
    return (1, n)


def case_inputs(case: SamplerCase, steps: int, z: np.ndarray, outputs: list[np.ndarray], noises: list[np.ndarray],
                calls: int) -> RunInputs:
    """x_T = z * init_noise_sigma of the scheduler's run, and the first `calls` outputs (and noises)."""
    scheduler = case.scheduler()
    scheduler.set_timesteps(steps)  # init_noise_sigma may depend on the run's sigmas
    sigma = float(getattr(scheduler, "init_noise_sigma", 1.0))
    return RunInputs((z * sigma).astype(np.float32), outputs[:calls], noises[:calls] if case.stochastic else None)


# ---------------------------------------------------------------------------------------------------
# The contenders: one whole run each, returning the final sample as a NumPy array


class NoiseFeed:
    """Stands in for randn_tensor in a diffusers scheduler's module during a run: returns the precomputed
    noise of the current step (`step` is set by the loop), so the scheduler draws nothing."""

    def __init__(self, scheduler: Any, noises: Sequence[torch.Tensor] | None) -> None:
        self.module = sys.modules[type(scheduler).__module__]
        self.name = type(scheduler).__name__
        self.noises = noises
        self.step = 0

    def __call__(self, shape: Any, **kwargs: Any) -> torch.Tensor:
        if self.noises is None:
            raise RuntimeError(f"{self.name} draws noise, but its case is not marked stochastic")
        noise = self.noises[self.step]
        if noise.shape != tuple(shape) or noise.dtype != kwargs.get("dtype", noise.dtype):
            raise RuntimeError(f"{self.name} asked for noise of shape {tuple(shape)}, dtype {kwargs.get('dtype')}; "
                               f"the precomputed one is {tuple(noise.shape)}, {noise.dtype}")
        return noise

    @contextmanager
    def installed(self) -> Iterator[NoiseFeed]:
        original = getattr(self.module, "randn_tensor", None)
        if original is None:  # the scheduler never draws noise
            yield self
            return
        self.module.randn_tensor = self
        try:
            yield self
        finally:
            self.module.randn_tensor = original


def diffusers_run(case: SamplerCase, steps: int, inputs: RunInputs) -> Callable[[], np.ndarray]:
    """diffusers' scheduler on torch tensors sharing the inputs' memory, the loop of its pipelines."""
    scheduler = case.scheduler()
    x_T, outputs = torch.from_numpy(inputs.x_T), [torch.from_numpy(a) for a in inputs.outputs]
    feed = NoiseFeed(scheduler, None if inputs.noises is None else [torch.from_numpy(a) for a in inputs.noises])
    scale = getattr(scheduler, "scale_model_input", None)

    def run() -> np.ndarray:
        scheduler.set_timesteps(steps)
        x = x_T
        with feed.installed():
            for i, k in enumerate(scheduler.timesteps):
                if scale is not None:
                    scale(x, k)
                feed.step = i
                x = scheduler.step(outputs[i], k, x).prev_sample
        return x.numpy()

    return run


def minidiff_run(case: SamplerCase, steps: int, inputs: RunInputs, backend: str) -> Callable[[], np.ndarray]:
    """minidiff's sampler on the NumPy arrays, on the given backend, the same loop."""
    sampler = case.sampler()
    scale = getattr(sampler, "scale_model_input", None)
    noises = inputs.noises

    def run() -> np.ndarray:
        with md.use_backend(backend):
            sampler.set_timesteps(steps)
            x = inputs.x_T
            for i, t in enumerate(sampler.timesteps):
                if scale is not None:
                    scale(x, t)
                x = sampler.step(inputs.outputs[i], t, x, noise=None if noises is None else noises[i]).prev_sample
        return x

    return run


def contenders_for(case: SamplerCase, steps: int, inputs: RunInputs) -> dict[str, Callable[[], np.ndarray]]:
    contenders = {REFERENCE: diffusers_run(case, steps, inputs)}
    for backend in BACKENDS:
        if backend in md.available_backends():
            contenders[f"minidiff-{backend}"] = minidiff_run(case, steps, inputs, backend)
    return contenders


# ---------------------------------------------------------------------------------------------------
# Validation, then timing


def reference_sample(case: SamplerCase, steps: int, inputs: RunInputs) -> np.ndarray:
    """The independent reference: diffusers' run of the same config on the same inputs, in float64."""
    return diffusers_run(case, steps, inputs.astype(np.float64))()


def validate(label: str, contenders: dict[str, Callable[[], np.ndarray]], expected: np.ndarray) -> None:
    """Two runs of every contender must each match `expected` to TOLERANCE of its rms; else SystemExit
    naming the contender and its error (it is not timed)."""
    scale = float(np.sqrt(np.mean(np.square(expected))))
    for name, run in contenders.items():
        for attempt in ("first", "second"):
            try:
                got = np.asarray(run(), dtype=np.float64)
            except Exception as error:  # a contender that cannot run is refused like a wrong one
                raise SystemExit(f"{label}: {name} fails on its {attempt} run ({type(error).__name__}: {error}): "
                                 "not timing it") from error
            if got.shape != expected.shape:
                raise SystemExit(f"{label}: {name} returns shape {got.shape}, expected {expected.shape}: not timing it")
            error = float(np.max(np.abs(got - expected))) / scale
            if not error <= TOLERANCE:  # NaN fails too
                raise SystemExit(f"{label}: {name} is wrong on its {attempt} run (max error {error:.2e} of the "
                                 f"reference's rms, tolerance {TOLERANCE:g}): not timing it")


def bench_size(names: Sequence[str], n: int, steps: int, threads: Sequence[int], repeats: int,
               seed: int = 0) -> dict[tuple[str, int], dict[str, float]]:
    """Validate, then time every sampler at n elements; prints one ratio table per (sampler, threads) and
    returns the seconds per update of every contender by (sampler, threads)."""
    rng = np.random.default_rng(seed)
    shape = latent_shape(n)
    calls = {name: SAMPLERS[name].step_calls(steps) for name in names}
    noisy = [calls[name] for name in names if SAMPLERS[name].stochastic]
    z = rng.standard_normal(shape, dtype=np.float32)  # (B, 4, s, s)
    outputs = [rng.standard_normal(shape, dtype=np.float32) for _ in range(max(calls.values()))]
    noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(max(noisy, default=0))]
    results = {}
    for name in names:
        case = SAMPLERS[name]
        inputs = case_inputs(case, steps, z, outputs, noises, calls[name])
        label = f"{name}, n = {n:,}"
        contenders = contenders_for(case, steps, inputs)
        validate(label, contenders, reference_sample(case, steps, inputs))
        for count in threads:
            with pinned_threads(count):
                medians = interleaved_medians(contenders, repeats)
            per_update = {contender: seconds / calls[name] for contender, seconds in medians.items()}
            title = (f"{name} ({case.diffusers_class}), {steps} steps = {calls[name]} updates, n = {n:,} float32 "
                     f"{shape}, {count} thread(s): time per update")
            print(ratio_table(title, per_update, reference=REFERENCE) + "\n", flush=True)
            results[name, count] = per_update
    return results


def summary(results: dict[tuple[str, int, int], dict[str, float]], names: Sequence[str], sizes: Sequence[int],
            threads: Sequence[int]) -> str:
    """Rows samplers, columns minidiff-numpy and minidiff-cpp per size: time per update / diffusers'."""
    columns = [f"minidiff-{b}" for b in BACKENDS]
    lines = [f"summary: time per update as a ratio to {REFERENCE} (below 1: faster), {len(names)} samplers; "
             f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    for count in threads:
        lines.append(f"  {count} thread(s){'':<6}" + "".join(f"{n:>16,}" for n in sizes))
        lines.append(f"  {'sampler':<16}" + "".join(f"{b.split('-')[1]:>8}" for _ in sizes for b in columns))
        for name in names:
            cells = []
            for n in sizes:
                medians = results[name, n, count]
                cells += [f"{medians[c] / medians[REFERENCE]:8.2f}" if c in medians else f"{'-':>8}" for c in columns]
            lines.append(f"  {name:<16}" + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16_384, 262_144, 2_097_152],
                        help="elements of the float32 sample")
    parser.add_argument("--steps", type=int, default=20, help="num_inference_steps of every run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender (the median is kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--samplers", nargs="+", choices=list(SAMPLERS), default=list(SAMPLERS), metavar="NAME",
                        help=f"a subset of {', '.join(SAMPLERS)}")
    args = parser.parse_args()
    if min(args.sizes) < 1 or args.steps < 1 or args.repeats < 1 or min(args.threads) < 1:
        parser.error("--sizes, --steps, --repeats and --threads must be positive")
    print(f"load average at the start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    results = {}
    for n in args.sizes:
        for (name, count), per_update in bench_size(args.samplers, n, args.steps, args.threads, args.repeats).items():
            results[name, n, count] = per_update
    print(summary(results, args.samplers, args.sizes, args.threads))


if __name__ == "__main__":
    main()
