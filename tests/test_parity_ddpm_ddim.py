"""DDPM (E16) and DDIM (E32) against diffusers' DDPMScheduler and DDIMScheduler, the most used implementation:
configured from the same config dict, on one deterministic model, fixed x_T and fixed per-step noise,
minidiff must reproduce every prev_sample and every pred_original_sample of the run, the timesteps (+ 1)
and add_noise.

Tolerance. diffusers keeps its schedule in float32: alpha_bar to ~1e-6 relative and 1 - alpha_bar to ~6e-8
absolute (1e-4 relative at t = 1). Those errors enter each term of a step (x_t, x0_hat, eps_hat, z, all
O(1)) rather than the possibly cancelled sum, and the run carries them forward, so the comparison is the
float32 entry of the tolerance table on the scale 1 + |expected| (observed: at most 0.63 of that bound
over every case here; a wrong coefficient is off by O(1) at once).
Two corners are outside float32 parity, so the product below leaves them out:
  * the cosine schedule: its beta_T = 0.999 makes diffusers' float32 alpha_T = 1 - beta_T lose three
    digits (1e-5 relative in alpha_bar_T, times 1 / sqrt(alpha_bar_T) = 2e4 in x0_hat at t = T);
    its alpha_bars are compared (test_samplers_ddpm_ddim.py), not its trajectories;
  * eta = 1 at t = T of a zero-terminal-SNR schedule: the eps weight sqrt(1 - alpha_bar_{t'} - sigma^2) is
    sqrt(0) there, and diffusers takes the square root of its float32 rounding (~2e-4); eta = 0.5 is run.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from reference.diffusers_runs import model_t, run_diffusers
from tolerances import assert_close

from minidiff.samplers.ddim import DDIMSampler
from minidiff.samplers.ddpm import DDPMSampler

pytestmark = pytest.mark.torch

SHAPE = (2, 3, 4)  # (B, C, L): thresholding takes a quantile per example over C * L values
STEPS = 10
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SPACINGS = ("leading", "linspace", "trailing")
# Groups of config keys, each run with every prediction type and spacing.
SETTINGS = {
    "defaults": {},  # the DDPM paper's linear schedule, clip_sample on
    "no-clip-offset": {"clip_sample": False, "steps_offset": 1},
    "clip-range": {"clip_sample_range": 1.5, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                   "beta_end": 0.012},
    "thresholding": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.6},
    "zero-snr": {"rescale_betas_zero_snr": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                 "beta_end": 0.012, "clip_sample": False, "steps_offset": 1},
}
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
ETAS = {
    "eta-0": {"eta": 0.0},
    "eta-0.5": {"eta": 0.5},
    "eta-1-clipped-eps": {"eta": 1.0, "use_clipped_model_output": True},
}


def visits_T(spacing: str) -> bool:
    return spacing != "leading"  # linspace and trailing start at t = T


def cases(kinds: dict) -> list:
    """(prediction_type, spacing, setting, kind) for the whole product, but eps at t = T of a zero-SNR schedule
    (refused, tested below) and eta = 1 there (see the module docstring)."""
    out = []
    for prediction_type, spacing, setting, kind in itertools.product(PREDICTION_TYPES, SPACINGS, SETTINGS, kinds):
        at_zero_snr = setting == "zero-snr" and visits_T(spacing)
        if at_zero_snr and (prediction_type == "epsilon" or kind == "eta-1-clipped-eps"):
            continue
        case_id = f"{prediction_type}-{spacing}-{setting}-{kind}"
        out.append(pytest.param(prediction_type, spacing, setting, kind, id=case_id))
    return out


def run_minidiff(sampler, x_T: np.ndarray, noises: list[np.ndarray], learned_range: bool = False):
    """The run of `run_diffusers`, with minidiff: model_t at t = k + 1, noises[i] at step i."""
    x = x_T.copy()
    samples, x0s = [x], []
    for i, t in enumerate(sampler.timesteps):
        out = model_t(x, np.full(x.shape[0], t))
        if learned_range:
            out = np.concatenate([out, np.tanh(x)], axis=1)
        result = sampler.step(out, t, x, noise=noises[i])
        x = result.prev_sample
        samples.append(x)
        x0s.append(result.pred_original_sample)
    return samples, x0s


def fixed_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal(SHAPE), [rng.standard_normal(SHAPE) for _ in range(STEPS)]


def assert_same_run(scheduler, sampler, learned_range=False, step_kwargs=None):
    scheduler.set_timesteps(STEPS)
    sampler.set_timesteps(STEPS)
    np.testing.assert_array_equal(sampler.timesteps, scheduler.timesteps.numpy() + 1)
    x_T, noises = fixed_inputs()
    expected_samples, expected_x0s = run_diffusers(scheduler, x_T, noises, learned_range, step_kwargs)
    samples, x0s = run_minidiff(sampler, x_T, noises, learned_range)
    for i, (got, expected) in enumerate(zip(samples, expected_samples, strict=True)):
        assert_close(got, expected, dtype=np.float32, scale=1.0 + np.abs(expected), what=f"prev_sample of step {i}")
    for i, (got, expected) in enumerate(zip(x0s, expected_x0s, strict=True)):
        assert_close(got, expected, dtype=np.float32, scale=1.0 + np.abs(expected),
                     what=f"pred_original_sample of step {i}")


@pytest.mark.parametrize(("prediction_type", "spacing", "setting", "variance_type"), cases(VARIANCE_TYPES))
def test_e16_ddpm_runs_as_diffusers_ddpm_scheduler(prediction_type, spacing, setting, variance_type):
    """[E16] The whole trajectory of DDPMScheduler.step (strided posterior, the three variance types,
    noise at k > 0, clip or dynamic threshold of x0), from its config."""
    import diffusers

    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type, timestep_spacing=spacing,
                                        variance_type=variance_type, **SETTINGS[setting])
    sampler = DDPMSampler.from_config(dict(scheduler.config))
    assert_same_run(scheduler, sampler, learned_range=variance_type == "learned_range")


@pytest.mark.parametrize(("prediction_type", "spacing", "setting", "eta"), cases(ETAS))
def test_e32_ddim_runs_as_diffusers_ddim_scheduler(prediction_type, spacing, setting, eta):
    """[E32] The whole trajectory of DDIMScheduler.step (t' = t - T // N, the final alpha, sigma(eta), clip
    or dynamic threshold, use_clipped_model_output), from its config."""
    import diffusers

    scheduler = diffusers.DDIMScheduler(prediction_type=prediction_type, timestep_spacing=spacing,
                                        set_alpha_to_one=setting != "thresholding", **SETTINGS[setting])
    sampler = DDIMSampler.from_config(dict(scheduler.config))
    for key, value in ETAS[eta].items():
        setattr(sampler, key, value)
    assert_same_run(scheduler, sampler, step_kwargs=ETAS[eta])


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler"])
def test_e13_eps_at_t_T_of_a_zero_snr_schedule_is_refused_where_diffusers_divides_by_zero(name):
    """[E13] alpha_bar_T = 0: diffusers' x0 from eps at k = T - 1 is not finite; minidiff refuses the step."""
    import diffusers
    import torch

    scheduler = getattr(diffusers, name)(rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False)
    scheduler.set_timesteps(STEPS)
    x_T, noises = fixed_inputs()
    out = scheduler.step(torch.from_numpy(model_t(x_T, 1000)), scheduler.timesteps[0], torch.from_numpy(x_T))
    assert not torch.isfinite(out.pred_original_sample).all()
    sampler = (DDPMSampler if name == "DDPMScheduler" else DDIMSampler).from_config(dict(scheduler.config))
    sampler.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="t: x0 from eps is undefined where alpha_bar_t = 0"):
        sampler.step(model_t(x_T, 1000), 1000, x_T, noise=noises[0])


@pytest.mark.parametrize("setting", ["defaults", "clip-range", "zero-snr"])
def test_e3_add_noise_is_diffusers_add_noise_at_k_plus_1(setting):
    """[E3] add_noise(x0, noise, t) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, one t per example,
    equals diffusers' add_noise at k = t - 1 (including k = T - 1, where alpha_bar may be 0)."""
    import diffusers
    import torch

    scheduler = diffusers.DDIMScheduler(**SETTINGS[setting])
    sampler = DDIMSampler.from_config(dict(scheduler.config))
    rng = np.random.default_rng(1)
    x0, noise = rng.standard_normal((2, 5, 3))
    t = np.array([1, 17, 500, 999, 1000])
    expected = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t - 1)).numpy()
    assert_close(sampler.add_noise(x0, noise, t), expected, dtype=np.float32, scale=1.0 + np.abs(expected))
