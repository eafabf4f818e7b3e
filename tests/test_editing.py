"""Editing (E49 SDEdit, E50 inpainting and RePaint, E33 inversion editing) against exact answers.

- The Gaussian-mixture oracle gives the exact eps of the noised data, so a sampler's only errors are its own:
  SDEdit from data must give data again, inpainting must draw the exact conditional law of the unknown
  coordinates (a mixture with reweighted components, by Gaussian conditioning) where replacement is exact,
  and RePaint's resampling must shrink the error where it is not.
- Gaussian data (tests/diffusion_oracle.py) gives the probability flow map in closed form: inversion then
  decoding with the same model is the identity, with another model an affine map, both to O(1/N).
- Exact properties: t0 = 0 and t0 = 1 of SDEdit, the known region after inpainting, RePaint's visit sequence
  against the authors' own schedule code.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from diffusion_oracle import GaussianData
from tolerances import DIFFUSERS_SIGMA_RUN, assert_close

from minidiff.diffusion import GaussianMixture, NoiseSchedule, linear_betas
from minidiff.editing import (
    forward_jump,
    inpaint,
    interpolate,
    invert_and_edit,
    repaint_schedule,
    replace_known,
    sdedit,
    sdedit_start,
)
from minidiff.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerAncestralSampler,
    EulerSampler,
    HeunSampler,
    slerp,
)

GMM = GaussianMixture.example_2d()
SCHEDULE = NoiseSchedule(linear_betas(1000))  # DDPM's schedule, T = 1000
EPS = GMM.eps_model(SCHEDULE)


def longhand_alpha_bar(t: int) -> float:
    """alpha_bar_t as a running product of 1 - beta in Python floats (not the schedule's own arrays)."""
    return math.prod(1.0 - float(b) for b in SCHEDULE.betas[1: t + 1])


def assert_same_law(samples: np.ndarray, reference: np.ndarray, mixture: GaussianMixture, what: str) -> None:
    """Two-sample test: means, covariances and mixture responsibilities (under `mixture`), each within 5
    standard errors of the difference of two independent sample averages."""
    assert np.isfinite(samples).all(), f"{what}: non-finite samples"
    centre = np.concatenate([samples, reference]).mean(axis=0)
    pairs = list(itertools.combinations_with_replacement(range(samples.shape[1]), 2))

    def terms(x):
        d = x - centre
        return {"mean": x, "covariance": np.stack([d[:, i] * d[:, j] for i, j in pairs], axis=1),
                "weights": mixture.responsibilities(x)}

    a, b = terms(samples), terms(reference)
    for name in a:
        diff = a[name].mean(axis=0) - b[name].mean(axis=0)
        se = np.sqrt(a[name].var(axis=0) / len(samples) + b[name].var(axis=0) / len(reference))
        z = np.abs(diff) / np.maximum(se, 1e-12)
        assert z.max() < 5, f"{what}: {name} differs by {diff.round(4)} ({z.max():.1f} s.e.)"


# --- E49: SDEdit ------------------------------------------------------------------------------------------


def stepped(sampler, n):
    sampler.set_timesteps(n)
    return sampler


SAMPLERS = {
    "ddpm": lambda: stepped(DDPMSampler(SCHEDULE, clip_sample=False), 10),
    "ddim-eta0.5": lambda: stepped(DDIMSampler(SCHEDULE, clip_sample=False, eta=0.5), 10),
    "dpm-solver++": lambda: stepped(DPMSolverMultistepSampler(SCHEDULE), 10),
    "euler": lambda: stepped(EulerSampler(SCHEDULE), 10),
    "heun-karras": lambda: stepped(HeunSampler(SCHEDULE, use_karras_sigmas=True), 6),
    "euler-ancestral": lambda: stepped(EulerAncestralSampler(SCHEDULE), 10),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e49_sdedit_at_t0_0_returns_the_input(dtype):
    """[E49] t0 = 0 keeps no step: the input itself (a copy), for any sampler."""
    x0 = GMM.sample(np.random.default_rng(0), 5).astype(dtype)
    for make in SAMPLERS.values():
        out = sdedit(EPS, make(), x0, 0.0, np.random.default_rng(1), progress=False)
        assert out.dtype == x0.dtype and out is not x0
        np.testing.assert_array_equal(out, x0)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_e49_sdedit_at_t0_1_is_ordinary_sampling_from_the_same_noise(name):
    """[E49] t0 = 1 runs every step from the prior's draw: bit for bit sampler.sample with the same generator
    (the input plays no part), for ancestral, DDIM, multistep, sigma-space and two-stage samplers."""
    x0 = GMM.sample(np.random.default_rng(0), 7).astype(np.float32)
    sampler = SAMPLERS[name]()
    edited = sdedit(EPS, sampler, x0, 1.0, np.random.default_rng(3), progress=False)
    sampled = SAMPLERS[name]().sample(EPS, x0.shape, np.random.default_rng(3), progress=False)
    assert edited.dtype == np.float32
    np.testing.assert_array_equal(edited, sampled)
    again = sdedit(EPS, sampler, x0, 1.0, np.random.default_rng(3), progress=False)  # no state left from the first
    np.testing.assert_array_equal(again, sampled)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_e49_sdedit_calls_the_model_at_the_kept_timesteps_only(name):
    """[E49] The reverse run is the tail of the sampler's run: the model is called at exactly the timesteps
    t <= t0 T, in order (Heun: from the Euler step of its first kept timestep on), once each."""
    seen = []

    def spy(x, t):
        seen.append(float(t[0]))
        return EPS(x, t)

    sampler = SAMPLERS[name]()
    timesteps = sampler.timesteps.astype(float)
    t0 = 0.55
    sdedit(spy, sampler, GMM.sample(np.random.default_rng(0), 3), t0, np.random.default_rng(1), progress=False)
    kept = timesteps[timesteps <= t0 * SCHEDULE.T]
    if name.startswith("heun"):
        kept = kept[1:] if kept[0] == kept[1] else kept  # the correction landing on it belongs to the step before
    np.testing.assert_array_equal(seen, kept)


N_DATA = 3000
DATA = GMM.sample(np.random.default_rng(10), N_DATA)


@pytest.mark.parametrize(("name", "make", "t0"), [
    ("ddpm-1000", lambda: stepped(DDPMSampler(SCHEDULE, clip_sample=False), 1000), 0.3),
    ("ddim-50", lambda: stepped(DDIMSampler(SCHEDULE, clip_sample=False, timestep_spacing="trailing"), 50), 0.6),
    ("dpm-solver++-20", lambda: stepped(DPMSolverMultistepSampler(SCHEDULE), 20), 0.45),
    ("heun-karras-18", lambda: stepped(HeunSampler(SCHEDULE, use_karras_sigmas=True), 18), 0.5),
], ids=lambda v: v if isinstance(v, str) else "")
def test_e49_sdedit_from_data_draws_the_data_distribution(name, make, t0):
    """[E49] The input noised to t by E3 is distributed as q(x_t) when the input is a draw of p_data, and the
    exact reverse process maps q(x_t) back to p_data: SDEdit of data is data (a two-sample test against fresh
    mixture draws), for DDPM, DDIM, DPM-Solver++ and Heun started mid-run."""
    edited = sdedit(EPS, make(), DATA, t0, np.random.default_rng(11), progress=False)
    assert_same_law(edited, GMM.sample(np.random.default_rng(12), N_DATA), GMM, name)
    assert np.abs(edited - DATA).mean() > 0.05  # it did change the input


@pytest.mark.parametrize("make", [lambda: stepped(DDPMSampler(SCHEDULE, clip_sample=False), 100),
                                  lambda: stepped(DDIMSampler(SCHEDULE, clip_sample=False), 20),
                                  lambda: stepped(DPMSolverMultistepSampler(SCHEDULE), 20)],
                         ids=["ddpm", "ddim", "dpm-solver++"])
def test_e49_sdedit_moves_further_from_the_input_as_t0_grows(make):
    """[E49] The realism-faithfulness trade-off: the mean distance between input and output grows with t0 (each
    step up to t0 = 0.45 by more than 5 standard errors of the paired differences: the same inputs and noise
    draws), and at t0 = 1 it is the distance between two independent draws (the output forgot the input)."""
    x0 = DATA[:1000]
    sampler = make()
    distances = []
    for t0 in (0.1, 0.25, 0.45, 1.0):
        edited = sdedit(EPS, sampler, x0, t0, np.random.default_rng(20), progress=False)
        distances.append(np.linalg.norm(edited - x0, axis=1))
    for low, high in itertools.pairwise(distances[:-1]):
        step = high - low
        se = step.std() / math.sqrt(step.size)
        assert step.mean() > 5 * se, f"distance {low.mean():.3f} -> {high.mean():.3f} (s.e. of the step {se:.3f})"
    independent = np.linalg.norm(GMM.sample(np.random.default_rng(21), 1000) - x0, axis=1)
    se = math.sqrt(distances[-1].var() / 1000 + independent.var() / 1000)
    assert abs(distances[-1].mean() - independent.mean()) < 5 * se


@pytest.mark.torch
@pytest.mark.parametrize("scheduler_name", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_e49_sdedit_is_diffusers_img2img_loop(scheduler_name):
    """[E49] diffusers' img2img: strength s keeps the last int(N s) of N timesteps, add_noise to the first of them,
    set_begin_index, then its steps. With the same noise and the exact eps, minidiff's SDEdit is the same run (to
    diffusers' float32 schedule: 1e-5)."""
    import diffusers
    import torch

    strength, n = 0.6, 20
    options = {"clip_sample": False} if scheduler_name == "DDIMScheduler" else {}
    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=1000, beta_schedule="linear", **options)
    scheduler.set_timesteps(n)
    begin = n - min(int(n * strength), n)
    if hasattr(scheduler, "set_begin_index"):  # multistep schedulers count their steps from it
        scheduler.set_begin_index(begin)
    x0 = np.random.default_rng(0).uniform(-2.0, 2.0, (200, 2))
    noise = np.random.default_rng(5).standard_normal(x0.shape)
    x = scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), scheduler.timesteps[begin:begin + 1])
    for k in scheduler.timesteps[begin:]:
        out = EPS(x.numpy(), np.full(len(x0), int(k) + 1))  # diffusers' k is minidiff's t = k + 1
        x = scheduler.step(torch.from_numpy(out), k, x).prev_sample
    sampler = {"DDIMScheduler": DDIMSampler, "DPMSolverMultistepScheduler": DPMSolverMultistepSampler}[scheduler_name]
    ours = sdedit(EPS, sampler.from_config(dict(scheduler.config)), x0, strength, np.random.default_rng(5),
                  num_inference_steps=n, progress=False)
    assert_close(ours, x.numpy(), tol=DIFFUSERS_SIGMA_RUN, scale=np.abs(x.numpy()) + 1.0)


@pytest.mark.exercise("ex09.2")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e49_e3_sdedit_start_noises_to_the_first_kept_timestep(dtype):
    """[E49][E3] DDPM's 10 leading timesteps are 901, 801, ..., 1. The run keeps t <= t0 T: t0 = 0.5 starts at
    401, t0 = 0.9 at 801 (900 is not a timestep), t0 = 0.901 at 901; x_start = sqrt(alpha_bar_t) x0 +
    sqrt(1 - alpha_bar_t) noise there. t0 = 0: no step, the input; t0 = 1: the prior's draw, the noise."""
    sampler = stepped(DDPMSampler(SCHEDULE), 10)
    x0 = GMM.sample(np.random.default_rng(0), 4).astype(dtype)
    noise = np.random.default_rng(1).standard_normal(x0.shape)
    for t0, begin, t in ((0.5, 5, 401), (0.9, 1, 801), (0.901, 0, 901), (0.001, 9, 1)):
        x_start, got_begin = sdedit_start(sampler, x0, t0, noise)
        assert got_begin == begin, f"t0 = {t0}: expected to begin at step {begin} (t = {t}), got {got_begin}"
        ab = longhand_alpha_bar(t)
        signal, scaled_noise = math.sqrt(ab) * x0.astype(np.float64), math.sqrt(1.0 - ab) * noise
        assert x_start.dtype == x0.dtype, f"t0 = {t0}: dtype {x_start.dtype}, expected {x0.dtype}"
        assert_close(x_start, signal + scaled_noise, dtype=dtype, scale=np.abs(signal) + np.abs(scaled_noise),
                     what=f"t0 = {t0}: x_start is not E3 at t = {t}:")
    x_start, begin = sdedit_start(sampler, x0, 0.0, noise)
    assert begin == 10, f"t0 = 0 must keep no step (begin = 10), got {begin}"
    np.testing.assert_array_equal(x_start, x0, err_msg="t0 = 0 must return the input")
    x_start, begin = sdedit_start(sampler, x0, 1.0, noise)
    assert begin == 0, f"t0 = 1 must keep every step (begin = 0), got {begin}"
    np.testing.assert_array_equal(x_start, noise.astype(dtype), err_msg="t0 = 1 must start from the prior's draw")


@pytest.mark.exercise("ex09.2")
def test_e49_sdedit_start_of_a_sigma_sampler_uses_its_noise_level():
    """[E49] Euler's sample is x0 + sigma eps with sigma = sqrt((1 - alpha_bar_t) / alpha_bar_t) (E3 divided by
    sqrt(alpha_bar_t)); at t0 = 1 the prior's draw is init_noise_sigma * noise."""
    sampler = stepped(EulerSampler(SCHEDULE), 10)
    x0 = GMM.sample(np.random.default_rng(0), 4)
    noise = np.random.default_rng(1).standard_normal(x0.shape)
    x_start, begin = sdedit_start(sampler, x0, 0.5, noise)
    t = sampler.timesteps[begin]
    assert t <= 500 < sampler.timesteps[begin - 1], f"begin {begin}: timestep {t} is not the first <= 500"
    ab = longhand_alpha_bar(int(t))  # Euler's timesteps are integers here (leading spacing)
    assert_close(x_start, x0 + math.sqrt((1.0 - ab) / ab) * noise, scale=np.abs(x0) + 10 * np.abs(noise),
                 what=f"t0 = 0.5: Euler's x0 + sigma_t noise at t = {t}")
    x_start, begin = sdedit_start(sampler, x0, 1.0, noise)
    assert begin == 0, f"t0 = 1 must keep every step (begin = 0), got {begin}"
    assert_close(x_start, noise * sampler.init_noise_sigma, what="t0 = 1: the prior's draw, init_noise_sigma * noise")


# --- E50: inpainting --------------------------------------------------------------------------------------


def exact_conditional(mixture: GaussianMixture, known: np.ndarray, value: np.ndarray) -> GaussianMixture:
    """The law of the other coordinates given x[known] = value: each component conditioned by Gaussian
    conditioning (mean mu_u + S_uk S_kk^-1 (value - mu_k), covariance S_uu - S_uk S_kk^-1 S_ku), its weight
    multiplied by its density of the known coordinates, w_k N(value; mu_k, S_kk), renormalized."""
    unknown = np.setdiff1d(np.arange(mixture.D), known)
    log_w, means, covs = [], [], []
    for w, mu, cov in zip(mixture.weights, mixture.means, mixture.covariances, strict=True):
        s_kk, s_uk, s_uu = cov[np.ix_(known, known)], cov[np.ix_(unknown, known)], cov[np.ix_(unknown, unknown)]
        gain = np.linalg.solve(s_kk, s_uk.T).T  # S_uk S_kk^-1
        r = value - mu[known]
        log_w.append(math.log(w) - 0.5 * (r @ np.linalg.solve(s_kk, r) + np.linalg.slogdet(2 * np.pi * s_kk)[1]))
        means.append(mu[unknown] + gain @ r)
        covs.append(s_uu - gain @ s_uk.T)
    log_w = np.array(log_w)
    weights = np.exp(log_w - log_w.max())
    return GaussianMixture(weights / weights.sum(), np.array(means), np.array(covs))


def test_e50_inpainting_leaves_the_known_region_equal_to_the_input():
    """[E50] The last replacement is at level 0, where the noised input is the input: the known pixels of the
    result are the input's exactly (with RePaint jumps too, masks of every broadcast shape, float32 and 64);
    the unknown ones are generated."""
    data = GaussianData(linear_betas(1000), mu=0.3, s=0.5)  # any-shape exact model
    rng = np.random.default_rng(0)
    for dtype, mask in [(np.float64, np.arange(4) < 2), (np.float32, rng.integers(0, 2, (1, 4, 4))),
                        (np.float32, rng.integers(0, 2, (3, 2, 4, 4)).astype(np.float64))]:
        x_known = rng.uniform(-1, 1, (3, 2, 4, 4)).astype(dtype)
        sampler = stepped(DDPMSampler(SCHEDULE), 12)
        out = inpaint(data.eps_model, sampler, x_known, mask, np.random.default_rng(1), resample=3, jump=2,
                      progress=False)
        assert out.dtype == dtype and out.shape == x_known.shape
        known = np.broadcast_to(mask, out.shape) == 1
        np.testing.assert_array_equal(out[known], x_known[known])
        assert np.all(np.abs(out[~known] - x_known[~known]) > 0)


# A 3-D mixture whose first coordinate is independent of the other two: p(x1) p(x2, x3), with p(x2, x3) the
# 2-D oracle mixture. Given x1 the unknown pair has the law p(x2, x3) whatever x1 is, and the exact eps of
# the unknown pair does not depend on x1: replacement is exact in law.
X1 = GaussianMixture([0.4, 0.6], [[-0.8], [0.7]], [[[0.05]], [[0.1]]])
PRODUCT = GaussianMixture(
    np.outer(X1.weights, GMM.weights).ravel(),
    np.array([np.concatenate([m1, m2]) for m1, m2 in itertools.product(X1.means, GMM.means)]),
    np.array([np.block([[c1, np.zeros((1, 2))], [np.zeros((2, 1)), c2]])
              for c1, c2 in itertools.product(X1.covariances, GMM.covariances)]),
)


def test_e50_inpainting_draws_the_exact_conditional_where_the_unknown_part_is_independent():
    """[E50] Replacement is exact when the unknown coordinates are independent of the known ones: filling (x2, x3)
    given x1 = 0.7 draws the conditional of Gaussian conditioning (a mixture with reweighted components), by a
    two-sample test against its exact draws. DDPM with all 1000 steps (its steps are exact to O(1/T))."""
    n = 1500
    x_known = np.zeros((n, 3))
    x_known[:, 0] = 0.7
    sampler = DDPMSampler(SCHEDULE, clip_sample=False)
    out = inpaint(PRODUCT.eps_model(SCHEDULE), sampler, x_known, np.array([1, 0, 0]), np.random.default_rng(30),
                  num_inference_steps=1000, progress=False)
    np.testing.assert_array_equal(out[:, 0], 0.7)
    conditional = exact_conditional(PRODUCT, np.array([0]), np.array([0.7]))
    assert_same_law(out[:, 1:], conditional.sample(np.random.default_rng(31), n), conditional, "inpainted (x2, x3)")


# Two modes along the diagonal: x1 says which one x2 is in. Given x1 = 0.3, x2 is in the upper mode with
# probability 0.917; replacement lets x2 commit to a mode while x1's noised copy says little.
MODES = GaussianMixture([0.5, 0.5], [[-1.0, -1.0], [1.0, 1.0]], np.stack([0.25 * np.eye(2)] * 2))


def test_e50_repaint_resampling_shrinks_the_error_where_replacement_is_biased():
    """[E50] Where the coordinates depend on each other, plain replacement is biased: with the exact eps and x1
    = 0.3 given, the share of x2 in the upper mode is far below the exact conditional's 0.917 (observed 0.65).
    RePaint's resampling (r = 10: each step taken 10 times, going back up by the forward process in between)
    removes most of that error (observed 0.84)."""
    n, x1 = 1000, 0.3
    conditional = exact_conditional(MODES, np.array([0]), np.array([x1]))
    upper = float(conditional.weights[np.argmax(conditional.means[:, 0])])
    x_known = np.full((n, 2), x1)
    errors = {}
    for r in (1, 10):
        sampler = stepped(DDPMSampler(SCHEDULE, clip_sample=False), 100)
        out = inpaint(MODES.eps_model(SCHEDULE), sampler, x_known, np.array([1, 0]), np.random.default_rng(40),
                      resample=r, progress=False)
        errors[r] = upper - float(np.mean(out[:, 1] > 0.0))
    se = math.sqrt(upper * (1 - upper) / n)
    assert errors[1] > 10 * se, f"plain replacement: error {errors[1]:.3f} ({errors[1] / se:.1f} s.e.)"
    assert errors[10] < 0.5 * errors[1], f"RePaint r = 10: error {errors[10]:.3f} against {errors[1]:.3f} for r = 1"
    assert errors[10] > -5 * se, f"RePaint r = 10 overshoots: error {errors[10]:.3f}"


def repaint_reference(t_T: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The times visited by RePaint's `get_schedule_jump` (Lugmayr et al. 2022, the authors' code, without the
    unused second and third jump levels): t_T - 1 down to 0 are the model's timesteps, -1 the data."""
    jumps = dict.fromkeys(range(0, t_T - jump_length, jump_length), jump_n_sample - 1)
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize(("n", "resample", "jump"), [(10, 1, 1), (10, 3, 1), (10, 2, 3), (11, 4, 4), (25, 10, 10),
                                                     (3, 5, 2)])
def test_e50_repaint_schedule_is_the_authors_schedule(n, resample, jump):
    """[E50] The visit sequence is RePaint's: position p = n - 1 - t of its times t (t = n - 1 the first model
    step, t = -1 the data), every jump back of j steps written as j single steps, as its loop takes them."""
    positions = repaint_schedule(n, resample, jump)
    unit_moves = [positions[0]]  # RePaint goes back up one step at a time; minidiff in one forward_jump
    for p, q in itertools.pairwise(positions):
        unit_moves.extend(range(p - 1, q - 1, -1) if q < p else [q])
    np.testing.assert_array_equal(unit_moves, [n - 1 - t for t in repaint_reference(n, jump, resample)])


def test_e50_e1_forward_jump_is_the_composed_forward_process():
    """[E1][E50] Going back up from t' to t in one draw has E1's composed law: mean sqrt(alpha_bar_t /
    alpha_bar_t') x, variance 1 - alpha_bar_t / alpha_bar_t' (from the running products), and from t' = 0 it
    is E3."""
    x = np.array([[0.5, -1.0, 2.0]])
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    for t_from, t_to in ((0, 1), (0, 700), (130, 131), (250, 900)):
        ratio = longhand_alpha_bar(t_to) / longhand_alpha_bar(t_from)
        assert_close(forward_jump(SCHEDULE, x, t_from, t_to, zeros), math.sqrt(ratio) * x)
        assert_close(forward_jump(SCHEDULE, zeros, t_from, t_to, ones) ** 2, (1 - ratio) * ones)


@pytest.mark.exercise("ex09.1")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_e50_e3_replace_known_takes_the_noised_input_on_the_known_region(dtype):
    """[E50][E3] On the known region the result is sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) noise
    (alpha_bar from the running product of 1 - beta), elsewhere the generated sample, untouched; for masks of
    shape (H, W), (1, H, W) and (B, C, H, W), bool, int or float."""
    rng = np.random.default_rng(0)
    shape = (2, 3, 4, 5)
    generated, known, noise = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    masks = [rng.integers(0, 2, (4, 5)).astype(bool), rng.integers(0, 2, (1, 4, 5)), rng.integers(0, 2, shape) * 1.0]
    for mask, t in itertools.product(masks, (1, 37, 1000)):
        out = replace_known(SCHEDULE, generated, known, mask, t, noise)
        assert out.shape == shape, f"expected the shape of x_generated, {shape}, got {out.shape}"
        assert out.dtype == dtype, f"keep x_generated's dtype: expected {np.dtype(dtype)}, got {out.dtype}"
        m = np.broadcast_to(mask, shape) == 1
        ab = longhand_alpha_bar(t)
        signal, scaled_noise = math.sqrt(ab) * known.astype(np.float64), math.sqrt(1 - ab) * noise
        assert_close(out[m], (signal + scaled_noise)[m], scale=(np.abs(signal) + np.abs(scaled_noise))[m],
                     what=f"known region at t = {t} is not E3 of x_known:")
        np.testing.assert_array_equal(out[~m], generated[~m], err_msg="the unknown region must stay as generated")


@pytest.mark.exercise("ex09.1")
def test_e50_replace_known_at_level_0_is_the_input_exactly():
    """[E50] alpha_bar_0 = 1: at the data level the known region is x_known itself, bit for bit (so inpainting
    ends on the input), and a mask of all zeros changes nothing."""
    rng = np.random.default_rng(1)
    generated, known, noise = (rng.standard_normal((3, 6)).astype(np.float32) for _ in range(3))
    mask = np.array([1, 0, 1, 1, 0, 0])
    out = replace_known(SCHEDULE, generated, known, mask, 0, noise)
    np.testing.assert_array_equal(out[:, mask == 1], known[:, mask == 1],
                                  err_msg="at t = 0 the known region is x_known")
    np.testing.assert_array_equal(out[:, mask == 0], generated[:, mask == 0])
    np.testing.assert_array_equal(replace_known(SCHEDULE, generated, known, np.zeros(6), 500, noise), generated,
                                  err_msg="an all-zero mask must leave the generated sample")


@pytest.mark.exercise("ex09.1")
def test_e50_inpainting_of_independent_gaussian_coordinates_is_exact():
    """[E50] Through the whole loop: with independent Gaussian coordinates (mean 0.3, sd 0.5) the filled ones are
    N(0.3, 0.25) (mean and variance within 5 s.e.) and the known ones the input."""
    data = GaussianData(linear_betas(1000), mu=0.3, s=0.5)
    x_known = np.full((4000, 2), -0.9)
    out = inpaint(data.eps_model, DDPMSampler(SCHEDULE, clip_sample=False), x_known, np.array([1, 0]),
                  np.random.default_rng(3), num_inference_steps=1000, progress=False)
    np.testing.assert_array_equal(out[:, 0], -0.9)
    filled = out[:, 1]
    assert abs(filled.mean() - 0.3) < 5 * 0.5 / math.sqrt(4000), f"mean {filled.mean():.4f}, expected 0.3"
    assert abs(filled.var() / 0.25 - 1) < 5 * math.sqrt(2 / 4000), f"variance {filled.var():.4f}, expected 0.25"


# --- E33: editing by DDIM inversion -------------------------------------------------------------------------

DATA_A = GaussianData(linear_betas(1000), mu=np.array([0.5, -0.2, 0.0]), s=np.array([0.3, 0.6, 0.45]))
DATA_B = GaussianData(linear_betas(1000), mu=np.array([-0.4, 0.3, 0.2]), s=np.array([0.5, 0.2, 0.45]))


def ddim(n: int) -> DDIMSampler:
    sampler = DDIMSampler(SCHEDULE, clip_sample=False)
    sampler.set_timesteps(timesteps=np.linspace(1000, 1, n).round().astype(np.int64))
    return sampler


def test_e33_inversion_then_decoding_reconstructs_the_input_at_first_order():
    """[E33] Encode with the exact model of Gaussian data, decode with it: the input back, the error halving as
    the steps double (observed ratios ~2)."""
    x0 = DATA_A.sample(np.random.default_rng(5), 6)
    errors = [np.abs(invert_and_edit(DATA_A.eps_model, ddim(n), x0, progress=False).x - x0).max()
              for n in (20, 40, 80, 160)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), f"errors {errors}: ratios {ratios}"
    assert errors[-1] < 0.05  # observed 0.026


def test_e33_decoding_with_another_model_maps_the_standardized_input():
    """[E33] The probability flow of Gaussian data is affine, x_T = m_T + sqrt(V_T) (x0 - mu) / s: encoding with
    data A's model and decoding with data B's maps x0 to mu_B + s_B (x0 - mu_A) / s_A (the same standardized
    position, as a class edit keeps the latent), to first order in the steps."""
    x0 = DATA_A.sample(np.random.default_rng(6), 6)
    exact = DATA_B.mu + DATA_B.s * (x0 - DATA_A.mu) / DATA_A.s
    errors = []
    for n in (40, 80, 160):
        result = invert_and_edit(DATA_A.eps_model, ddim(n), x0, edit_model=DATA_B.eps_model, progress=False)
        assert_close(result.latent, invert_and_edit(DATA_A.eps_model, ddim(n), x0, progress=False).latent)
        errors.append(np.abs(result.x - exact).max())
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), f"errors {errors}: ratios {ratios}"


def test_e33_interpolation_ends_are_the_reconstructions_and_the_middle_decodes_the_slerp():
    """[E33] alpha = 0 and 1 decode the latents of xa and xb (their reconstructions); alpha = 0.5 decodes the
    slerp of the two latents, as invert_and_edit with that latent edit does."""
    rng = np.random.default_rng(7)
    xa, xb = DATA_A.sample(rng, 4), DATA_A.sample(rng, 4)
    out = interpolate(DATA_A.eps_model, ddim(30), xa, xb, [0.0, 0.5, 1.0], progress=False)
    assert out.shape == (3, 4, 3)
    rec_a = invert_and_edit(DATA_A.eps_model, ddim(30), xa, progress=False)
    rec_b = invert_and_edit(DATA_A.eps_model, ddim(30), xb, progress=False)
    assert_close(out[0], rec_a.x, scale=1.0)
    assert_close(out[2], rec_b.x, scale=1.0)
    middle = invert_and_edit(DATA_A.eps_model, ddim(30), xa, edit_latent=lambda z: slerp(z, rec_b.latent, 0.5),
                             progress=False)
    assert_close(out[1], middle.x, scale=1.0)
    assert np.abs(out[1] - out[0]).max() > 0.1


# --- bad input ----------------------------------------------------------------------------------------------


def bad_input_cases():
    x = np.zeros((2, 3))
    ddpm = stepped(DDPMSampler(SCHEDULE), 5)
    ddim5 = stepped(DDIMSampler(SCHEDULE, clip_sample=False), 5)
    rng = np.random.default_rng(0)
    yield "t0 > 1", lambda: sdedit(EPS, ddpm, x, 1.5, rng), ValueError, \
        r"t0: expected a fraction of the chain in \[0, 1\]"
    yield "t0 a timestep", lambda: sdedit(EPS, ddpm, x, 500, rng), ValueError, "t0: expected a fraction"
    yield "t0 < 0", lambda: sdedit(EPS, ddpm, x, -0.1, rng), ValueError, "t0: expected"
    yield "t0 nan", lambda: sdedit(EPS, ddpm, x, float("nan"), rng), ValueError, "t0: expected"
    yield "t0 bool", lambda: sdedit(EPS, ddpm, x, True, rng), TypeError, "t0: expected a number"
    yield "t0 str", lambda: sdedit(EPS, ddpm, x, "0.5", rng), TypeError, "t0: expected a number"
    yield "x0 int", lambda: sdedit(EPS, ddpm, np.zeros((2, 3), int), 0.5, rng), TypeError, "x0: expected dtype"
    yield "x0 list", lambda: sdedit(EPS, ddpm, [[0.0, 0.0]], 0.5, rng), TypeError, "x0: expected a numpy"
    yield "x0 1-d", lambda: sdedit(EPS, ddpm, np.zeros(3), 0.5, rng), ValueError, "x0: expected a batch"
    yield "x0 nan", lambda: sdedit(EPS, ddpm, np.full((2, 2), np.nan), 0.5, rng), ValueError, "x0: expected finite"
    yield "sdedit model", lambda: sdedit("unet", ddpm, x, 0.5, rng), TypeError, "model: expected a callable"
    yield "sdedit sampler", lambda: sdedit(EPS, "ddpm", x, 0.5, rng), TypeError, "sampler: expected a minidiff"
    yield "sdedit rng", lambda: sdedit(EPS, ddpm, x, 0.5, 0), TypeError, "rng: expected a numpy.random.Generator"
    yield "mask shape", lambda: inpaint(EPS, ddpm, x, np.ones(2), rng), ValueError, "mask: expected a shape that"
    yield "mask image shape", lambda: inpaint(EPS, ddpm, np.zeros((2, 1, 4, 4)), np.ones((3, 4)), rng), ValueError, \
        "mask: expected a shape that broadcasts"
    yield "mask values", lambda: inpaint(EPS, ddpm, x, np.full(3, 0.5), rng), ValueError, \
        r"mask: expected only 0 \(to fill\) and 1 \(known\), got 0.5"
    yield "mask 255", lambda: inpaint(EPS, ddpm, x, np.full(3, 255), rng), ValueError, "mask: expected only 0"
    yield "mask scalar", lambda: inpaint(EPS, ddpm, x, 1, rng), TypeError, "mask: expected an array"
    yield "mask str", lambda: inpaint(EPS, ddpm, x, np.array(["1", "0", "1"]), rng), TypeError, "mask: expected"
    yield "inpaint sampler", lambda: inpaint(EPS, ddim5, x, np.ones(3), rng), TypeError, \
        "sampler: expected a minidiff DDPMSampler"
    yield "resample 0", lambda: inpaint(EPS, ddpm, x, np.ones(3), rng, resample=0), ValueError, \
        "resample: expected an integer >= 1"
    yield "resample float", lambda: inpaint(EPS, ddpm, x, np.ones(3), rng, resample=2.0), ValueError, "resample"
    yield "jump 0", lambda: inpaint(EPS, ddpm, x, np.ones(3), rng, resample=2, jump=0), ValueError, "jump: expected"
    yield "jump too long", lambda: inpaint(EPS, ddpm, x, np.ones(3), rng, resample=2, jump=5), ValueError, \
        "jump: a jump of 5 steps back does not fit in a run of 5 steps"
    yield "x_known shape", lambda: inpaint(EPS, ddpm, np.zeros(3), np.ones(3), rng), ValueError, "x_known: expected"
    yield "replace t", lambda: replace_known(SCHEDULE, x, x, np.ones(3), 1001, x), ValueError, \
        r"t: expected an integer level in 0..1000"
    yield "replace noise", lambda: replace_known(SCHEDULE, x, x, np.ones(3), 3, x[:1]), ValueError, "noise: expected"
    yield "forward_jump order", lambda: forward_jump(SCHEDULE, x, 5, 5, x), ValueError, "t_from, t_to: expected"
    yield "invert sampler", lambda: invert_and_edit(EPS, ddpm, x), TypeError, "sampler: expected a minidiff DDIMSampler"
    yield "invert eta", lambda: invert_and_edit(EPS, DDIMSampler(SCHEDULE, clip_sample=False, eta=0.5), x), \
        ValueError, "sampler: DDIM inversion needs eta = 0"
    yield "invert clip", lambda: invert_and_edit(EPS, DDIMSampler(SCHEDULE), x), ValueError, \
        "sampler: DDIM inversion needs clip_sample=False"
    yield "edit_model", lambda: invert_and_edit(EPS, ddim5, x, edit_model=3), TypeError, "edit_model: expected a call"
    yield "edit_latent", lambda: invert_and_edit(EPS, ddim5, x, edit_latent="z"), TypeError, "edit_latent: expected"
    yield "edit_latent shape", lambda: invert_and_edit(EPS, ddim5, x[:, :2], edit_latent=lambda z: z[:1],
                                                       progress=False), \
        ValueError, r"edit_latent\(latent\): expected shape"
    yield "xb shape", lambda: interpolate(EPS, ddim5, x, x[:1], [0.5]), ValueError, "xb: expected shape"
    yield "alphas range", lambda: interpolate(EPS, ddim5, x, x, [0.5, 1.2]), ValueError, r"alphas: expected .* \[0, 1\]"
    yield "alphas empty", lambda: interpolate(EPS, ddim5, x, x, []), ValueError, "alphas: expected a non-empty"
    yield "alphas str", lambda: interpolate(EPS, ddim5, x, x, ["a"]), TypeError, "alphas: expected a 1-d sequence"
    yield "schedule resample", lambda: repaint_schedule(5, 0), ValueError, "resample: expected an integer >= 1"


@pytest.mark.parametrize(("name", "call", "error", "match"), list(bad_input_cases()),
                         ids=[case[0] for case in bad_input_cases()])
def test_bad_input_is_refused_naming_the_argument(name, call, error, match):
    with pytest.raises(error, match=match):
        call()
