"""Parity with diffusers' sigma-based schedulers (E35, E36): minidiff's EulerSampler, HeunSampler,
EulerAncestralSampler and DPMSolverMultistepSampler, configured from the scheduler's own config dict, replay
its whole run on the same x_T, model and noise: the timesteps (diffusers' + 1), the sigmas,
init_noise_sigma, the model inputs (scale_model_input), and every step's sample and x0 estimate.

Each option value is run with every prediction type and every timestep spacing (three runs per value,
the pairs rotated) rather than the full product. The tolerances are those of diffusers' float32 schedule
(tests/tolerances.py, DIFFUSERS_SIGMAS and DIFFUSERS_SIGMA_RUN).
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
from reference import diffusers_runs
from reference.diffusers_runs import model_t, run_diffusers
from tolerances import DIFFUSERS_SIGMA_RUN, DIFFUSERS_SIGMAS, assert_close

from minidiff.samplers.dpm_solver import DPMSolverMultistepSampler
from minidiff.samplers.edm import EulerAncestralSampler, EulerSampler, HeunSampler

pytestmark = [
    pytest.mark.torch,
    # diffusers' own: numpy 2 on torch tensors in its set_timesteps, and its deprecation of algorithm "dpmsolver".
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*algorithm_type dpmsolver is deprecated:FutureWarning"),
]

PREDICTIONS = ("epsilon", "v_prediction", "sample")
SPACINGS = ("linspace", "leading", "trailing")
SHAPE = (2, 3, 4)


def rotated(options: list[dict], predictions: tuple[str, ...] = PREDICTIONS) -> list:
    """Three runs per option value: prediction type i and spacing i + j for the j-th value, so that every
    value meets every prediction type and every spacing (and every pair of those meets across values)."""
    cases = []
    for j, extra in enumerate(options):
        for i in range(3):
            config = {"prediction_type": predictions[i % len(predictions)], "timestep_spacing": SPACINGS[(i + j) % 3],
                      **extra}
            cases.append(pytest.param(config, id="-".join(f"{k}={v}" for k, v in config.items())))
    return cases


class RecordingModel:
    """diffusers_runs.model_k, recording what diffusers gives the model, and (for DPM-Solver++, whose step
    returns no x0) the x0 estimate the previous step stored in scheduler.model_outputs."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.inputs: list[np.ndarray] = []
        self.x0s: list[np.ndarray] = []
        self.model_k = diffusers_runs.model_k

    def __call__(self, x: np.ndarray, k) -> np.ndarray:
        if self.inputs:
            self.record_x0()
        self.inputs.append(x.copy())
        return self.model_k(x, k)

    def record_x0(self) -> None:
        if getattr(self.scheduler, "model_outputs", None) is not None:
            self.x0s.append(self.scheduler.model_outputs[-1].numpy().copy())


def run_minidiff(sampler, x_T: np.ndarray, noises: list[np.ndarray]):
    """(samples, x0 estimates, model inputs) of a minidiff sampler on diffusers_runs' model."""
    x, samples, x0s, inputs = x_T.copy(), [x_T.copy()], [], []
    for i, t in enumerate(sampler.timesteps):
        inputs.append(sampler.scale_model_input(x, t))
        out = model_t(inputs[-1], np.full(x.shape[0], t))
        x, x0 = sampler.step(out, t, x, noise=noises[i] if isinstance(sampler, EulerAncestralSampler) else None)
        samples.append(x)
        x0s.append(x0)
    return samples, x0s, inputs


def diffusers_sigma_table(scheduler) -> np.ndarray:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) for t = 0..T from diffusers' float32 alphas_cumprod."""
    alpha_bars = np.concatenate(([1.0], scheduler.alphas_cumprod.double().numpy()))  # (T + 1,), index t = k + 1
    return np.sqrt((1.0 - alpha_bars) / alpha_bars)


def assert_same_run(monkeypatch, scheduler_class, sampler_class, config: dict, n: int = 10, seed: int = 0):
    """Build both from `config` and compare the runs' timesteps, sigmas and init_noise_sigma; then replay the
    run on a twin that reads diffusers' own float32 sigma table (so that the comparison of the steps is not
    blurred by that table's rounding) and compare every step. Returns the twin and its run."""
    scheduler = scheduler_class(**config)
    scheduler.set_timesteps(n)
    sampler = sampler_class.from_config(dict(scheduler.config))
    sampler.set_timesteps(n)
    assert_close(sampler.timesteps, scheduler.timesteps.numpy().astype(np.float64) + 1.0, tol=DIFFUSERS_SIGMAS,
                 what="timesteps")
    assert_close(sampler.sigmas, scheduler.sigmas.numpy(), tol=DIFFUSERS_SIGMAS, what="sigmas")
    assert_close(sampler.init_noise_sigma, float(scheduler.init_noise_sigma), tol=DIFFUSERS_SIGMAS,
                 what="init_noise_sigma")

    twin = sampler_class.from_config(dict(scheduler.config))
    twin.sigma_table = diffusers_sigma_table(scheduler)
    twin.set_timesteps(n)
    assert_close(twin.timesteps, scheduler.timesteps.numpy().astype(np.float64) + 1.0, dtype=np.float32,
                 what="timesteps")
    assert_close(twin.sigmas, scheduler.sigmas.numpy(), dtype=np.float32, what="sigmas")

    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal(SHAPE) * float(scheduler.init_noise_sigma)
    noises = [rng.standard_normal(SHAPE) for _ in scheduler.timesteps]
    recorder = RecordingModel(scheduler)
    monkeypatch.setattr(diffusers_runs, "model_k", recorder)
    samples, x0s = run_diffusers(scheduler, x_T, noises)
    recorder.record_x0()
    if recorder.x0s and config.get("algorithm_type", "dpmsolver++") == "dpmsolver++":
        x0s = recorder.x0s
    ours, our_x0s, our_inputs = run_minidiff(twin, x_T, noises)

    assert len(ours) == len(samples)
    for i in range(len(samples) - 1):
        x_in = np.abs(samples[i])
        assert_close(our_inputs[i], recorder.inputs[i], tol=DIFFUSERS_SIGMA_RUN, scale=x_in, what=f"input {i}")
        # A step sums terms of the size of the samples it reads: Heun's correction (odd i) also x_{i-1}.
        step_terms = x_in + np.abs(samples[i + 1]) + (np.abs(samples[i - 1]) if isinstance(twin, HeunSampler)
                                                       and i % 2 == 1 else 0.0)
        assert_close(ours[i + 1], samples[i + 1], tol=DIFFUSERS_SIGMA_RUN, scale=step_terms,
                     what=f"sample after step {i}")
        if x0s[i] is not None:  # x0 = (x - sigma_t eps) / alpha_t: terms of size |x| / alpha_t for a VP sample
            ve = np.sqrt(twin.sigmas[i] ** 2 + 1.0) if isinstance(twin, DPMSolverMultistepSampler) else 1.0
            assert_close(our_x0s[i], x0s[i], tol=DIFFUSERS_SIGMA_RUN, scale=ve * x_in + np.abs(x0s[i]),
                         what=f"x0 of step {i}")
    return twin, ours, our_x0s


# --- Euler ---------------------------------------------------------------------------------------

EULER_OPTIONS = [
    {},
    {"use_karras_sigmas": True},
    {"use_karras_sigmas": True, "sigma_min": 0.0005, "sigma_max": 80.0},  # 2 levels below sigma_1: t = 1 twice
    {"steps_offset": 1},
    {"final_sigmas_type": "sigma_min"},
    {"rescale_betas_zero_snr": True},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
]


@pytest.mark.parametrize("config", rotated(EULER_OPTIONS))
def test_e36_euler_replays_diffusers(monkeypatch, config):
    """[E36] EulerDiscreteScheduler, step by step."""
    sampler, _, _ = assert_same_run(monkeypatch, diffusers.EulerDiscreteScheduler, EulerSampler, config)
    if config.get("sigma_min") == 0.0005:
        assert np.sum(sampler.timesteps == 1.0) >= 2  # the repeated timestep was stepped at both of its sigmas


# --- Heun ----------------------------------------------------------------------------------------

HEUN_OPTIONS = [
    {},
    {"use_karras_sigmas": True},
    {"clip_sample": True, "clip_sample_range": 2.0},
    {"steps_offset": 1},
    {"beta_schedule": "scaled_linear"},
]


@pytest.mark.parametrize("config", rotated(HEUN_OPTIONS))
def test_e36_heun_replays_diffusers(monkeypatch, config):
    """[E36] HeunDiscreteScheduler, one model call per step: 2N - 1 steps for N inference steps."""
    sampler, _, x0s = assert_same_run(monkeypatch, diffusers.HeunDiscreteScheduler, HeunSampler, config, n=8)
    assert len(sampler.timesteps) == 2 * 8 - 1
    if config.get("clip_sample"):
        assert any(np.any(np.abs(x0) == 2.0) for x0 in x0s)  # the clip was active


# --- Euler ancestral -----------------------------------------------------------------------------

ANCESTRAL_OPTIONS = [
    {},
    {"rescale_betas_zero_snr": True},
    {"steps_offset": 1},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
]


@pytest.mark.parametrize("config", rotated(ANCESTRAL_OPTIONS, predictions=("epsilon", "v_prediction")))
def test_e16_euler_ancestral_replays_diffusers(monkeypatch, config):
    """[E16] EulerAncestralDiscreteScheduler on the same noise (diffusers has no "sample" prediction here)."""
    assert_same_run(monkeypatch, diffusers.EulerAncestralDiscreteScheduler, EulerAncestralSampler, config)


# --- DPM-Solver ----------------------------------------------------------------------------------

DPM_OPTIONS = [
    {},  # second order, midpoint, lower_order_final, final sigma 0
    {"solver_order": 1},
    {"solver_type": "heun"},
    {"solver_order": 3},
    {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"use_karras_sigmas": True},
    {"use_karras_sigmas": True, "solver_order": 3, "solver_type": "heun"},
    {"thresholding": True, "sample_max_value": 1.5},
    {"rescale_betas_zero_snr": True},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun", "thresholding": True},
    {"euler_at_final": True, "final_sigmas_type": "sigma_min"},
    {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1},
    {"steps_offset": 1},
]


@pytest.mark.parametrize("config", rotated(DPM_OPTIONS))
def test_e35_dpm_solver_replays_diffusers(monkeypatch, config):
    """[E35] DPMSolverMultistepScheduler, 10 steps (lower_order_final applies below 15)."""
    sampler, _, _ = assert_same_run(monkeypatch, diffusers.DPMSolverMultistepScheduler, DPMSolverMultistepSampler,
                                    config)
    if "lambda_min_clipped" in config:
        assert sampler.timesteps.max() < 1000  # the clip removed the noisiest steps


@pytest.mark.parametrize("config", [{"solver_order": 3}, {"solver_order": 2, "use_karras_sigmas": True}],
                         ids=["order3", "order2-karras"])
def test_e35_dpm_solver_replays_diffusers_without_lowering_the_final_order(monkeypatch, config):
    """[E35] 16 steps: lower_order_final no longer applies, only the final sigma = 0 forces first order."""
    assert_same_run(monkeypatch, diffusers.DPMSolverMultistepScheduler, DPMSolverMultistepSampler, config, n=16)


def test_e36_karras_sigmas_are_diffusers_karras_sigmas():
    """[E36] The Karras levels diffusers' Euler uses when given sigma_min and sigma_max (float32 there)."""
    from minidiff.samplers.sigmas import karras_sigmas

    scheduler = diffusers.EulerDiscreteScheduler(use_karras_sigmas=True, sigma_min=0.002, sigma_max=80.0)
    scheduler.set_timesteps(25)
    assert_close(karras_sigmas(0.002, 80.0, 25), scheduler.sigmas.numpy()[:-1], dtype=np.float32)
