"""benchmarks/bench_samplers.py validates before it times: every contender's whole run must match diffusers'
float64 run of the same config and inputs, twice in a row, or the benchmark stops naming it. These tests
give it contenders that are subtly wrong (another config key, a run that drifts on its second call, a crash,
a scheduler drawing noise nobody fed it) and check it refuses each; and that the real contenders pass, on a
small sample and few steps.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.torch,
    # diffusers' own: numpy 2 on torch tensors in its set_timesteps.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
bench = importlib.import_module("bench_samplers")

N = 64  # elements: latents (1, 4, 4, 4)
STEPS = 6


def small_inputs(case, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = bench.latent_shape(N)
    calls = case.step_calls(STEPS)
    z = rng.standard_normal(shape, dtype=np.float32)
    outputs = [rng.standard_normal(shape, dtype=np.float32) for _ in range(calls)]
    noises = [rng.standard_normal(shape, dtype=np.float32) for _ in range(calls)]
    return bench.case_inputs(case, STEPS, z, outputs, noises, calls)


def reference_and_inputs(name: str):
    case = bench.SAMPLERS[name]
    inputs = small_inputs(case)
    return case, inputs, bench.reference_sample(case, STEPS, inputs)


@pytest.mark.parametrize("name", list(bench.SAMPLERS))
def test_contenders_match_diffusers_float64(name):
    """[E16][E32][E35][E36][E38] diffusers in float32 and minidiff on each backend reproduce diffusers' float64
    run of the same config (validate raises SystemExit otherwise)."""
    case, inputs, expected = reference_and_inputs(name)
    contenders = bench.contenders_for(case, STEPS, inputs)
    assert {"diffusers", "minidiff-numpy"} <= set(contenders)
    bench.validate(name, contenders, expected)


def test_refuses_a_contender_with_another_config():
    """DDIM's last step to alpha_bar_1 (set_alpha_to_one off, the case's config) or to 1 differ by ~1e-2."""
    case, inputs, expected = reference_and_inputs("ddim")
    wrong = dataclasses.replace(case, config={**case.config, "set_alpha_to_one": True})
    contenders = {"minidiff-numpy": bench.minidiff_run(case, STEPS, inputs, "numpy"),
                  "minidiff-wrong": bench.minidiff_run(wrong, STEPS, inputs, "numpy")}
    with pytest.raises(SystemExit, match=r"ddim: minidiff-wrong is wrong on its first run \(max error"):
        bench.validate("ddim", contenders, expected)


def test_refuses_a_contender_whose_second_run_differs():
    """A run that depends on the one before (state kept across set_timesteps) is refused."""
    case, inputs, expected = reference_and_inputs("dpm++2m")
    run = bench.minidiff_run(case, STEPS, inputs, "numpy")
    calls = []

    def drifting() -> np.ndarray:
        calls.append(1)
        return run() * (1.0 if len(calls) == 1 else 1.001)

    with pytest.raises(SystemExit, match="drifting is wrong on its second run"):
        bench.validate("dpm++2m", {"drifting": drifting}, expected)


def test_refuses_a_contender_that_fails():
    case, inputs, expected = reference_and_inputs("euler")
    short = dataclasses.replace(inputs, outputs=inputs.outputs[:-1])  # one model output too few
    with pytest.raises(SystemExit, match=r"euler: minidiff-numpy fails on its first run \(IndexError"):
        bench.validate("euler", {"minidiff-numpy": bench.minidiff_run(case, STEPS, short, "numpy")}, expected)


def test_refuses_a_scheduler_drawing_noise_it_was_not_given():
    """Euler ancestral draws noise at every step: marked deterministic, its diffusers run cannot get any."""
    case, inputs, expected = reference_and_inputs("euler-a")
    unmarked = dataclasses.replace(case, stochastic=False)
    run = bench.diffusers_run(unmarked, STEPS, dataclasses.replace(inputs, noises=None))
    with pytest.raises(SystemExit, match=r"diffusers fails.*EulerAncestralDiscreteScheduler draws noise"):
        bench.validate("euler-a", {"diffusers": run}, expected)
