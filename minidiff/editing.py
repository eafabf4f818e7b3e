"""Editing with a trained (or exact) diffusion model: SDEdit (E49), inpainting with RePaint's resampling (E50),
and editing by DDIM inversion (E33). Arrays in, arrays out: a model function model(x, t), a sampler of
minidiff.samplers, a batch x of shape (B, ...) (float32 or float64) and an explicit numpy Generator.

SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic differential equations").
Noise the input to a level t_0 of the forward process (E3), then run the sampler's reverse steps from there.
t0 is SDEdit's t_0 in [0, 1], the fraction of the chain (diffusers' img2img calls it `strength`): the run keeps
the sampler's timesteps t <= t0 T, and the input is noised to the level of the first one kept (so that the
first step gets what it expects). t0 = 0 keeps none and returns the input; t0 = 1 keeps every step and starts
from the prior's noise x_T ~ N(0, init_noise_sigma^2 I) instead of the noised input (which it equals up to
sqrt(alpha_bar_T) x_0): ordinary sampling. Small t0 stays close to the input, large t0 makes a realistic
sample that remembers less of it: realism against faithfulness.

Inpainting (E50; Lugmayr et al. 2022, "RePaint: inpainting using denoising diffusion probabilistic models").
mask == 1 marks the known pixels. After every reverse step, to the level t', the known region is replaced by
the input noised to t' (E3) and the generated unknown region is kept; the last step lands on t' = 0, where the
"noised" input is the input itself, so the result equals it on the known region exactly. The fill is a draw of
the exact conditional p(x_unknown | x_known) when the unknown pixels are independent of the known ones; when
they depend on them it is biased, since the unknown part learns about the known one only through noisy copies,
uninformative at high noise (tests/test_editing.py measures both on the Gaussian-mixture oracle). RePaint's
resampling shrinks that bias: after a step, go back up by the forward transition q(x_t | x_{t'}) and redo the
step, r times in all (`resample`), optionally jumping back `jump` steps at a time.
It needs ancestral steps (DDPMSampler): the forward transition undoes a stochastic step in law, which
DDIM's deterministic steps are not.

Editing by inversion (E33; Song et al. 2021, "Denoising diffusion implicit models", sec. 5.3-5.4). DDIM's
eta = 0 map is invertible: encode x_0 into x_T (DDIMSampler.invert), optionally edit the latent or decode with
another model (another class, a guided model), decode; `interpolate` decodes slerps of two latents.

The samplers' loop (`Sampler.sample`) always starts at the first timestep; SDEdit starts later in a run. A
sampler that keeps state between steps (DPM-Solver's multistep estimates, Heun's two stages) is run on a copy
whose timesteps are the tail of the run (`_run_from`), as diffusers' `set_begin_index` does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.schedules import NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.progress import progress as progress_bar
from minidiff.samplers.base import Sampler
from minidiff.samplers.ddim import DDIMSampler, slerp
from minidiff.samplers.ddpm import DDPMSampler
from minidiff.samplers.sigmas import SigmaSampler

Model = Callable[[np.ndarray, np.ndarray], np.ndarray]

__all__ = [
    "Inversion",
    "check_mask",
    "forward_jump",
    "inpaint",
    "interpolate",
    "invert_and_edit",
    "repaint_schedule",
    "replace_known",
    "sdedit",
    "sdedit_start",
]


# ---------------------------------------------------------------------------------------------------
# Argument checks


def _check_batch(x: Any, name: str) -> np.ndarray:
    """x: a float32/float64 array of shape (B, ...) with B >= 1 and at least one more axis."""
    x = _v.float_array(x, name)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected a batch of shape (B, D) or (B, C, H, W) with B >= 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: expected finite values, got a NaN or an infinity")
    return x


def _check_model(model: Any, name: str = "model") -> Model:
    if not callable(model):
        raise TypeError(f"{name}: expected a callable {name}(x, t) -> array, got {type(model).__name__}")
    return model


def _check_rng(rng: Any) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _check_sampler(sampler: Any, kind: type = Sampler, why: str = "") -> Any:
    if not isinstance(sampler, kind):
        raise TypeError(f"sampler: expected a minidiff {kind.__name__}{why}, got {type(sampler).__name__}")
    return sampler


def _check_t0(t0: Any) -> float:
    if isinstance(t0, (bool, np.bool_)) or not isinstance(t0, (int, float, np.integer, np.floating)):
        raise TypeError(f"t0: expected a number in [0, 1] (the fraction of the chain), got {type(t0).__name__}")
    t0 = float(t0)
    if not 0.0 <= t0 <= 1.0:  # NaN fails too
        raise ValueError(f"t0: expected a fraction of the chain in [0, 1] (SDEdit's t_0, diffusers' strength; "
                         f"t0 = 0.5 noises to t = T / 2), got {t0!r}")
    return t0


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def check_mask(mask: Any, shape: tuple[int, ...], dtype: Any = np.float64) -> np.ndarray:
    """The inpainting mask as a read-only float array of `shape` (1 = known, 0 = to fill).

    mask: a bool, integer or float array of 0s and 1s whose shape broadcasts to `shape` by NumPy's rules:
    for images (B, C, H, W) that is (H, W), (1 or C, H, W), (B, 1 or C, H, W) or (B, C, H, W); for vectors
    (B, D), (D,) or (B, D).
    """
    if not isinstance(mask, (np.ndarray, list, tuple)) or np.ndim(mask) == 0:
        raise TypeError(f"mask: expected an array of 0s and 1s, got {type(mask).__name__}")
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask: expected an array of 0s and 1s (bool, int or float), got dtype {mask.dtype}")
    _v.broadcasts_to(mask, "mask", tuple(shape), "the shape of x (e.g. (H, W), (1, H, W) or (B, C, H, W)) of")
    if not np.all((mask == 0) | (mask == 1)):
        bad = mask[(mask != 0) & (mask != 1)].ravel()[0]
        raise ValueError(f"mask: expected only 0 (to fill) and 1 (known), got {bad.item()!r}")
    return np.broadcast_to(mask.astype(dtype), tuple(shape))


# ---------------------------------------------------------------------------------------------------
# The reverse loop from any step of a run


def _run_from(sampler: Sampler, begin: int) -> tuple[Sampler, np.ndarray]:
    """(run, timesteps): a sampler ready to take the steps timesteps[begin:] of the sampler's run, and those.

    DDPM and DDIM find a step by its timestep and keep no state: the sampler itself. A sigma sampler keeps
    state between steps (DPM-Solver's last estimates, Heun's pending step) and counts its steps from the start
    of the run, so a copy is made whose run is the tail timesteps[begin:], sigmas[begin:], state cleared
    (diffusers' set_begin_index); a multistep solver then starts the tail at first order, as at a run's start.
    The sampler given is left as it was.
    Heun lists every later timestep twice (the Euler step from it, and the correction that lands on it, at the
    same sigma): a tail starts at the Euler step, the second of the two.
    """
    if not isinstance(sampler, SigmaSampler):
        return sampler, sampler.timesteps[begin:]
    timesteps, sigmas = sampler.timesteps, sampler.sigmas
    while begin + 1 < len(timesteps) and (timesteps[begin + 1], sigmas[begin + 1]) == (timesteps[begin], sigmas[begin]):
        begin += 1
    run = sampler.run_from(begin)  # a copy even for the whole run: the sampler may hold the state of an earlier one
    return run, run.timesteps


def _reverse(model: Model, sampler: Sampler, x: np.ndarray, timesteps: np.ndarray, rng: np.random.Generator | None,
             progress: bool, desc: str) -> np.ndarray:
    """x after the steps at `timesteps` of the sampler's run (the loop of Sampler.sample, from a given x)."""
    for t in progress_bar(timesteps, len(timesteps), desc, progress):
        x = sampler.step(sampler.model_output(model, x, t), t, x, rng=rng).prev_sample
    return x


# ---------------------------------------------------------------------------------------------------
# SDEdit (E49)


@exercise("ex09.2")
def sdedit_start(sampler: Sampler, x0: np.ndarray, t0: float, noise: np.ndarray) -> tuple[np.ndarray, int]:
    """[E49] Where SDEdit's reverse run begins: (x_start, begin), begin the index in sampler.timesteps of the
    first timestep t <= t0 T, and x_start the input noised to that timestep by E3,
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise (`sampler.add_noise`, which also knows the sigma
    form of sigma samplers). No timestep at or below t0 T (t0 = 0): begin = len(timesteps), x_start = x0 itself.
    t0 = 1: begin = 0 and x_start = init_noise_sigma * noise, the prior's draw, as `sampler.sample` makes it.

    sampler: with its timesteps set (descending). x0: (B, ...), float32 or float64. t0: in [0, 1].
    noise: a standard normal draw of x0's shape, float64 (cast to x0's dtype after scaling, as sample does).
    """
    x0 = _check_batch(x0, "x0")
    t0 = _check_t0(t0)
    if np.shape(noise) != x0.shape:
        raise ValueError(f"noise: expected shape {x0.shape} (the shape of x0), got {np.shape(noise)}")
    timesteps = sampler.timesteps
    # BEGIN SOLUTION ex09.2: the first timestep <= t0 T (maybe none); x0 noised to it, or the prior's draw at t0 = 1
    kept = np.flatnonzero(timesteps <= t0 * sampler.T)  # timesteps descend: the kept ones are a tail
    if kept.size == 0:
        return x0.copy(), len(timesteps)
    begin = int(kept[0])
    if t0 == 1.0:
        return (noise * sampler.init_noise_sigma).astype(x0.dtype), begin
    x_start = sampler.add_noise(x0, noise.astype(x0.dtype), timesteps[begin])
    # END SOLUTION
    return x_start, begin


def sdedit(model: Model, sampler: Sampler, x0: np.ndarray, t0: float, rng: np.random.Generator, *,
           num_inference_steps: int | None = None, progress: bool = True) -> np.ndarray:
    """[E49] SDEdit: noise x0 to t_0 by E3, then run the sampler's reverse steps from t_0 to the data.

    model(x, t): the trained model (any prediction type the sampler is configured for). sampler: any sampler
    of minidiff.samplers built on a NoiseSchedule (DDPM, DDIM, DPM-Solver++, Euler, Heun, Euler ancestral).
    x0: the input batch (B, ...), float32 or float64, on the data's scale ([-1, 1] for images).
    t0: the fraction of the chain in [0, 1]: the steps of the run with t <= t0 T are taken, from the input
    noised to the first of them (`sdedit_start`). rng: draws the noise (first, as `sample` draws x_T) and the
    noise of stochastic steps. num_inference_steps: set_timesteps first (else the run already set is used).

    t0 = 0 returns x0 (a copy); t0 = 1 is `sampler.sample(model, x0.shape, rng, x_T=None)` from the same
    generator, draw for draw. Returns the edited batch, x0's shape and dtype.
    """
    _check_model(model)
    _check_sampler(sampler)
    x0 = _check_batch(x0, "x0")
    t0 = _check_t0(t0)
    _check_rng(rng)
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    noise = rng.standard_normal(x0.shape)  # (B, ...) float64, the draw `sample` makes for x_T
    x, begin = sdedit_start(sampler, x0, t0, noise)
    if begin == len(sampler.timesteps):
        return x
    run, timesteps = _run_from(sampler, begin)
    return _reverse(model, run, x, timesteps, rng, progress, f"SDEdit from t0 = {t0:g}")


# ---------------------------------------------------------------------------------------------------
# Inpainting (E50) and RePaint's resampling


@exercise("ex09.1")
def replace_known(schedule: NoiseSchedule, x_generated: np.ndarray, x_known: np.ndarray, mask: np.ndarray, t: int,
                  noise: np.ndarray) -> np.ndarray:
    """[E50] The inpainting step: the sample at level t is the input noised to t (E3) on the known region and
    the generated sample elsewhere,

        x_t = m * (sqrt(alpha_bar_t) x_known + sqrt(1 - alpha_bar_t) noise) + (1 - m) * x_generated.

    schedule: its arrays are indexed by t (alpha_bar_0 = 1: at t = 0 the known region is x_known itself,
    exactly). x_generated: the sampler's output at level t, (B, ...); x_known: the input, same shape and dtype;
    mask: 1 known, 0 to fill, broadcasting to x's shape (`check_mask`); t: an integer level in 0..T; noise:
    standard normal, x's shape and dtype. Returns x_t, x's shape and dtype.
    """
    x_generated = _v.float_array(x_generated, "x_generated")
    _v.like(x_known, "x_known", x_generated, "x_generated")
    _v.like(noise, "noise", x_generated, "x_generated")
    mask = check_mask(mask, x_generated.shape)
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= t <= schedule.T:
        raise ValueError(f"t: expected an integer level in 0..{schedule.T} (0 is the data), got {t!r}")
    # BEGIN SOLUTION ex09.1: x_known noised to level t (schedule arrays indexed by t, cast to x's dtype), chosen by mask
    dtype = x_generated.dtype.type
    known_t = dtype(schedule.sqrt_alpha_bars[t]) * x_known + dtype(schedule.sqrt_one_minus_alpha_bars[t]) * noise
    x_t = np.where(mask == 1, known_t, x_generated)  # (B, ...)
    # END SOLUTION
    return x_t


def forward_jump(schedule: NoiseSchedule, x: np.ndarray, t_from: int, t_to: int, noise: np.ndarray) -> np.ndarray:
    """[E1] The forward process from level t_from up to t_to > t_from in one draw: E1's steps compose to
    q(x_{t_to} | x_{t_from}) = N(sqrt(alpha_bar_to / alpha_bar_from) x, (1 - alpha_bar_to / alpha_bar_from) I)
    (E3 is the case t_from = 0). RePaint's way back up: one step (t_to the level before a reverse step) or a jump.
    noise: standard normal, x's shape and dtype."""
    x = _v.float_array(x, "x")
    _v.like(noise, "noise", x, "x")
    if not 0 <= t_from < t_to <= schedule.T:
        raise ValueError(f"t_from, t_to: expected 0 <= t_from < t_to <= {schedule.T}, got {t_from}, {t_to}")
    ratio = float(schedule.alpha_bars[t_to]) / float(schedule.alpha_bars[t_from])  # alpha_bar_{t_to | t_from}
    dtype = x.dtype.type
    return dtype(math.sqrt(ratio)) * x + dtype(math.sqrt(1.0 - ratio)) * noise


def repaint_schedule(n_steps: int, resample: int = 1, jump: int = 1) -> np.ndarray:
    """The positions RePaint visits in a run of n_steps reverse steps: position p in 0..n_steps is the sample
    after p steps (0 the start, n_steps the data). Down one position is a reverse step; a move up is a forward
    jump (`forward_jump`).

    Every resample points p = n_steps - 1, n_steps - 1 - jump, ... (p >= jump) sends the run back up `jump`
    positions resample - 1 times, so each step is taken resample times (Lugmayr et al. 2022, Algorithm 1 with
    jump = 1, and their jump schedule); the last step, to the data, is taken once. resample = 1: 0, 1, ..., n.
    Returns an int64 array starting at 0 and ending at n_steps.
    """
    n_steps, resample, jump = (_positive_int(v, name) for v, name in
                               ((n_steps, "n_steps"), (resample, "resample"), (jump, "jump")))
    points = range(n_steps - 1, jump - 1, -jump)
    if resample > 1 and not points:
        raise ValueError(f"jump: a jump of {jump} steps back does not fit in a run of {n_steps} steps "
                         f"(expected jump <= {n_steps - 1})")
    left = dict.fromkeys(points, resample - 1)
    positions, p = [0], 0
    while p < n_steps:
        p += 1
        positions.append(p)
        if left.get(p, 0) > 0:
            left[p] -= 1
            p -= jump
            positions.append(p)
    return np.array(positions, dtype=np.int64)


def inpaint(model: Model, sampler: DDPMSampler, x_known: np.ndarray, mask: Any, rng: np.random.Generator, *,
            resample: int = 1, jump: int = 1, num_inference_steps: int | None = None,
            progress: bool = True) -> np.ndarray:
    """[E50] Inpainting: fill the region where mask == 0 so that it fits x_known where mask == 1.

    The run starts from the prior's noise, its known region at the first timestep's level; after each
    reverse step (to level t', the next timestep, or 0 after the last) `replace_known` puts the input noised to
    t' back on the known region. With resample = r > 1 (RePaint), each step is taken r times: after it, the
    sample goes back up by the forward process (`forward_jump`) and the step is redone, in jumps of `jump`
    steps (`repaint_schedule`). The result equals x_known exactly where mask == 1.

    model(x, t): the trained model. sampler: a DDPMSampler (ancestral steps: see the module docstring), any
    variance_type and prediction type; clip_sample as configured. x_known: the input (B, ...), float32 or
    float64, finite (its values under mask == 0 are ignored). mask: 1 known, 0 to fill, any shape that broadcasts to
    x_known's (`check_mask`). rng: draws x_T, the steps' noise, the known region's noise and the jumps'.
    num_inference_steps: set_timesteps first. Returns the filled batch, x_known's shape and dtype.
    """
    _check_model(model)
    _check_sampler(sampler, DDPMSampler, " (RePaint's replacement and resampling need ancestral steps)")
    x_known = _check_batch(x_known, "x_known")
    mask = check_mask(mask, x_known.shape, x_known.dtype)
    _check_rng(rng)
    resample, jump = _positive_int(resample, "resample"), _positive_int(jump, "jump")
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    timesteps = sampler.timesteps
    levels = np.append(timesteps, 0)  # (N + 1,): the level of each position; a DDPM step lands on the next one
    positions = repaint_schedule(len(timesteps), resample, jump)
    schedule = sampler.schedule

    def noise() -> np.ndarray:
        return rng.standard_normal(x_known.shape, dtype=x_known.dtype)

    x = rng.standard_normal(x_known.shape).astype(x_known.dtype)  # x_T from the prior, as `sample` draws it
    x = replace_known(schedule, x, x_known, mask, int(levels[0]), noise())
    moves = itertools.pairwise(positions)
    for p, q in progress_bar(moves, len(positions) - 1, "inpaint", progress):
        t, t_next = int(levels[p]), int(levels[q])
        if q == p + 1:  # a reverse step, then the known region at its level
            x = sampler.step(sampler.model_output(model, x, t), t, x, rng=rng).prev_sample
            x = replace_known(schedule, x, x_known, mask, t_next, noise())
        else:  # back up, by the forward process
            x = forward_jump(schedule, x, t, t_next, noise())
    return x


# ---------------------------------------------------------------------------------------------------
# Editing by DDIM inversion (E33)


class Inversion(NamedTuple):
    """What `invert_and_edit` returns: the latent x_T of the input and the decoded (edited) batch."""

    latent: np.ndarray
    x: np.ndarray


def _check_inversion_sampler(sampler: Any) -> DDIMSampler:
    _check_sampler(sampler, DDIMSampler, " (inversion runs DDIM's deterministic map backwards)")
    if sampler.eta != 0.0:
        raise ValueError(f"sampler: DDIM inversion needs eta = 0 (the deterministic, invertible map), got "
                         f"eta={sampler.eta}")
    if sampler.config["clip_sample"] or sampler.config["thresholding"]:
        raise ValueError("sampler: DDIM inversion needs clip_sample=False and thresholding=False (a clipped x0 "
                         "cannot be inverted); build it with DDIMSampler(schedule, clip_sample=False)")
    return sampler


def _decode(model: Model, sampler: DDIMSampler, latent: np.ndarray, progress: bool) -> np.ndarray:
    """The eta = 0 run from latent (it draws no noise)."""
    return _reverse(model, sampler, latent, sampler.timesteps, None, progress, "DDIM decode")


def invert_and_edit(model: Model, sampler: DDIMSampler, x0: np.ndarray, *, edit_model: Model | None = None,
                    edit_latent: Callable[[np.ndarray], np.ndarray] | None = None,
                    num_inference_steps: int | None = None, progress: bool = True) -> Inversion:
    """[E33] Encode x0 into its DDIM latent x_T with `model` (DDIMSampler.invert), optionally change the latent
    (edit_latent(latent) -> latent of the same shape and dtype), then decode it with edit_model (another class
    label's model function, a guided model; default: model itself, which reconstructs x0 up to the solver's
    O(1/N) error).

    sampler: a DDIMSampler with eta = 0, clip_sample and thresholding off. x0: (B, ...), float32 or float64.
    num_inference_steps: set_timesteps first (encoding and decoding use the same run).
    Returns Inversion(latent, x): the unedited latent and the decoded batch, each of x0's shape and dtype.
    """
    _check_model(model)
    decoder = _check_model(edit_model, "edit_model") if edit_model is not None else model
    if edit_latent is not None and not callable(edit_latent):
        raise TypeError(f"edit_latent: expected a callable edit_latent(latent) -> latent, got "
                        f"{type(edit_latent).__name__}")
    sampler = _check_inversion_sampler(sampler)
    x0 = _check_batch(x0, "x0")
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    latent = sampler.invert(model, x0, progress=progress)  # (B, ...)
    start = latent
    if edit_latent is not None:
        start = edit_latent(latent.copy())
        _v.like(start, "edit_latent(latent)", latent, "latent")
    return Inversion(latent, _decode(decoder, sampler, start, progress))


def interpolate(model: Model, sampler: DDIMSampler, xa: np.ndarray, xb: np.ndarray, alphas: Sequence[float], *,
                num_inference_steps: int | None = None, progress: bool = True) -> np.ndarray:
    """[E33] Interpolation between two batches through their DDIM latents: encode xa and xb (one batched
    inversion), slerp the latents for each alpha (`minidiff.samplers.slerp`: Gaussian latents keep their typical
    norm, where a linear mix would shrink them), decode every mix (one batched run).

    sampler: as for `invert_and_edit`. xa, xb: (B, ...), the same shape and dtype. alphas: a 1-d sequence of
    values in [0, 1]. Returns (len(alphas), B, ...): row i decodes slerp(latent_a, latent_b, alphas[i]); alpha = 0
    and 1 are the reconstructions of xa and xb.
    """
    _check_model(model)
    sampler = _check_inversion_sampler(sampler)
    xa = _check_batch(xa, "xa")
    _v.like(xb, "xb", xa, "xa")
    _check_batch(xb, "xb")
    try:
        alphas = np.asarray(alphas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"alphas: expected a 1-d sequence of numbers in [0, 1], got {alphas!r}") from None
    if alphas.ndim != 1 or alphas.size < 1 or not np.all((alphas >= 0.0) & (alphas <= 1.0)):
        raise ValueError(f"alphas: expected a non-empty 1-d sequence of values in [0, 1], got {alphas!r}")
    if num_inference_steps is not None:
        sampler.set_timesteps(num_inference_steps)
    batch = xa.shape[0]
    latents = sampler.invert(model, np.concatenate([xa, xb]), progress=progress)  # (2B, ...)
    mixes = np.stack([slerp(latents[:batch], latents[batch:], float(a)) for a in alphas])  # (A, B, ...)
    decoded = _decode(model, sampler, mixes.reshape(-1, *xa.shape[1:]), progress)  # (A B, ...)
    return decoded.reshape(mixes.shape)
