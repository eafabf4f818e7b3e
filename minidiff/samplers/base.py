"""What every sampler shares: configuration in diffusers' vocabulary, timestep spacing, argument
checks, and the sampling loop.

Timesteps. minidiff counts the steps of the chain t = 1..T (t = 0 is the data). diffusers counts them
k = 0..T-1 over the same betas, so its step k is minidiff's t = k + 1: its alphas_cumprod[k] is
minidiff's alpha_bars[k + 1]. This module converts once, when a spacing is turned into timesteps
(`spaced_timesteps`); everything else (the `timesteps` attribute, the t given to `step` and to the
model) is in minidiff's t. Sigma-based samplers may put fractional timesteps between the integers
(diffusers does too); those are float64.

A model is any callable `model(x, t) -> array` with t an array of shape (B,) of the batch's timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from minidiff.backend import array_module
from minidiff.diffusion import _validate as _v
from minidiff.diffusion.parameterization import PREDICTION_TYPES
from minidiff.diffusion.schedules import (
    NoiseSchedule,
    cosine_betas,
    linear_betas,
    scaled_linear_betas,
    sigmoid_betas,
)
from minidiff.kernels import StepCoefs, sampler_step
from minidiff.progress import progress as progress_bar

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
# diffusers' names of the beta schedules, and the minidiff function that makes each.
BETA_SCHEDULES: dict[str, Callable[[int, float, float], np.ndarray]] = {
    "linear": lambda T, start, end: linear_betas(T, start, end),
    "scaled_linear": lambda T, start, end: scaled_linear_betas(T, start, end),
    "squaredcos_cap_v2": lambda T, start, end: cosine_betas(T),  # beta_start, beta_end unused (as in diffusers)
    "sigmoid": lambda T, start, end: sigmoid_betas(T, start, end),
}
# Keys of a diffusers config that describe it rather than the scheduler (`dict(scheduler.config)` also
# holds `_use_default_values`, the keys left at their defaults).
METADATA_KEYS = ("_class_name", "_diffusers_version", "_use_default_values")


class SamplerOutput(NamedTuple):
    """What `step` returns: the sample one step on, and the x0 estimate the step used."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


# ---------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class Option:
    """One key of a scheduler config: its diffusers default and a check that returns the value to use
    or raises ValueError naming the key (for values minidiff does not implement, too)."""

    default: Any
    check: Callable[[str, Any], Any]


def one_of(*allowed: Any) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, (bool, np.bool_)) or value not in allowed:
            raise ValueError(f"{key}: minidiff implements {', '.join(map(repr, allowed))}; got {value!r}")
        return value

    return check


def a_bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{key}: expected true or false, got {value!r}")
    return bool(value)


def a_positive_int(key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{key}: expected a positive integer, got {value!r}")
    return int(value)


def a_nonnegative_int(key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key}: expected an integer >= 0, got {value!r}")
    return int(value)


def a_positive_float(key: str, value: Any) -> float:
    value = _v.finite(value, key)
    if value <= 0:
        raise ValueError(f"{key}: expected a positive number, got {value!r}")
    return value


def a_probability(key: str, value: Any) -> float:
    value = _v.finite(value, key)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{key}: expected a value in (0, 1], got {value!r}")
    return value


def betas_or_none(key: str, value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise TypeError(f"{key}: expected a list of beta_1..beta_T or null, got {type(value).__name__}")
    return np.asarray(value, dtype=np.float64)


def disabled(off: Any) -> Callable[[str, Any], Any]:
    """A key minidiff accepts only at its 'off' value (a feature it does not implement)."""

    def check(key: str, value: Any) -> Any:
        if value != off or type(value) is not type(off):
            raise ValueError(f"{key}: minidiff does not implement {key}={value!r} (only {off!r})")
        return value

    return check


# The keys of the noise schedule, shared by every diffusers scheduler built on betas.
SCHEDULE_OPTIONS: dict[str, Option] = {
    "num_train_timesteps": Option(1000, a_positive_int),
    "beta_start": Option(0.0001, a_probability),
    "beta_end": Option(0.02, a_probability),
    "beta_schedule": Option("linear", one_of(*BETA_SCHEDULES)),
    "trained_betas": Option(None, betas_or_none),
    "rescale_betas_zero_snr": Option(False, a_bool),
}
SCHEDULE_KEYS = tuple(SCHEDULE_OPTIONS)
PREDICTION_OPTION = Option("epsilon", one_of(*PREDICTION_TYPES))
SPACING_OPTIONS: dict[str, Option] = {
    "timestep_spacing": Option("leading", one_of(*TIMESTEP_SPACINGS)),
    "steps_offset": Option(0, a_nonnegative_int),
}
THRESHOLD_OPTIONS: dict[str, Option] = {
    "thresholding": Option(False, a_bool),
    "dynamic_thresholding_ratio": Option(0.995, a_probability),
    "sample_max_value": Option(1.0, a_positive_float),
}
CLIP_OPTIONS: dict[str, Option] = {
    "clip_sample": Option(True, a_bool),
    "clip_sample_range": Option(1.0, a_positive_float),
}


def schedule_from_config(config: Mapping[str, Any]) -> NoiseSchedule:
    """The NoiseSchedule a diffusers config describes (its betas are minidiff's beta_1..beta_T)."""
    T = config["num_train_timesteps"]
    if config["trained_betas"] is not None:
        betas = config["trained_betas"]
        if betas.shape != (T,):
            raise ValueError(f"trained_betas: expected num_train_timesteps = {T} values, got shape {betas.shape}")
    else:
        betas = BETA_SCHEDULES[config["beta_schedule"]](T, config["beta_start"], config["beta_end"])
    return NoiseSchedule(betas, zero_terminal_snr=config.get("rescale_betas_zero_snr", False))  # Heun has no such key


# ---------------------------------------------------------------------------------------------------
# Timestep spacing


def spaced_timesteps(spacing: str, T: int, n: int, steps_offset: int = 0) -> np.ndarray:
    """N of the T training steps, from the noisiest down, as diffusers spaces them, in minidiff's t.

    With k = t - 1 (diffusers' count) and r = T // N:
      "leading"   k = r (N - 1), ..., r, 0, plus steps_offset (DDPM, DDIM's default)
      "linspace"  k = round(linspace(0, T - 1, N)) reversed (the first step is T - 1)
      "trailing"  k = round(T - i T / N) - 1 for i = 0..N-1 (the first step is T - 1; Lin et al. 2023).
                  diffusers takes these from arange(T, 0, -T / N), which for some N gets an extra
                  point from rounding (and then a k = -1); minidiff keeps exactly N.
    Returns int64 t = k + 1, descending.
    """
    _v.choice(spacing, "timestep_spacing", TIMESTEP_SPACINGS)
    if spacing == "leading":
        k = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
    elif spacing == "linspace":
        k = np.linspace(0, T - 1, n).round()[::-1]
    else:
        k = np.round(T - np.arange(n) * (T / n)) - 1  # diffusers' arange(T, 0, -T / N), which can get N + 1 points
    t = k.astype(np.int64) + 1
    if t.min() < 1 or t.max() > T:
        raise ValueError(f"steps_offset: {steps_offset} moves the timesteps outside 1..T = 1..{T}")
    return t


def check_num_inference_steps(n: Any, T: int) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_inference_steps: expected an integer, got {type(n).__name__}")
    if not 1 <= n <= T:
        raise ValueError(f"num_inference_steps: expected 1..{T} (the number of training steps), got {n}")
    return int(n)


def check_custom_timesteps(timesteps: Any, T: int) -> np.ndarray:
    """A strictly decreasing sequence of integer t in 1..T."""
    arr = np.asarray(timesteps)
    if arr.ndim != 1 or arr.size < 1 or arr.dtype.kind not in "iu":
        raise ValueError(f"timesteps: expected a non-empty 1-d sequence of integer t in 1..{T}, got {timesteps!r}")
    arr = arr.astype(np.int64)
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"timesteps: expected values in 1..{T}, got {arr.min()}..{arr.max()}")
    if np.any(np.diff(arr) >= 0):
        raise ValueError("timesteps: expected a strictly decreasing sequence (noisiest first)")
    return arr


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding of an x0 estimate (Imagen, Saharia et al. 2022): per example,
    s = clip(quantile(|x0|, ratio), 1, max_value) and x0 <- clip(x0, -s, s) / s."""
    flat = np.abs(x0.reshape(x0.shape[0], -1)).astype(np.float64)  # (B, D)
    s = np.clip(np.quantile(flat, ratio, axis=1), 1.0, max_value)  # (B,)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return np.clip(x0, -s, s) / s


# ---------------------------------------------------------------------------------------------------
# The sampler


class Sampler:
    """The base of every sampler: configuration, timesteps, checks and the loop.

    A subclass sets `diffusers_class` (the scheduler whose config keys it speaks), `options` (every key
    of that config, with its default and check) and implements `_set_timesteps` and `_step`.
    Build one from a NoiseSchedule plus keyword options, from the beta keys alone, or from a diffusers
    config dict with `from_config`.
    """

    diffusers_class: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    # Steps must be taken in the order of `timesteps` (multistep and two-stage samplers keep state).
    stateful: ClassVar[bool] = False

    def __init__(self, schedule: NoiseSchedule | None = None, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.options))
        if unknown:
            raise ValueError(f"{unknown[0]}: not an option of {type(self).__name__} (its options: "
                             f"{', '.join(self.options)})")
        if schedule is not None:
            if not isinstance(schedule, NoiseSchedule):
                raise TypeError(f"schedule: expected a minidiff.diffusion.NoiseSchedule, got {type(schedule).__name__}")
            given = sorted(set(config) & set(SCHEDULE_KEYS) - {"rescale_betas_zero_snr"})
            if given:
                raise ValueError(f"{given[0]}: pass either a schedule or the beta keys of one, not both")
        resolved = {key: opt.check(key, config.get(key, opt.default)) for key, opt in self.options.items()}
        if schedule is not None:
            if resolved.get("rescale_betas_zero_snr") and not schedule.zero_terminal_snr:
                raise ValueError("rescale_betas_zero_snr: the schedule given is not zero-terminal-SNR; build it with "
                                 "NoiseSchedule(betas, zero_terminal_snr=True)")
            resolved["num_train_timesteps"] = schedule.T
            if "rescale_betas_zero_snr" in resolved:
                resolved["rescale_betas_zero_snr"] = schedule.zero_terminal_snr
        else:
            schedule = schedule_from_config(resolved)
        self.schedule = schedule
        self.T = schedule.T
        self.config = resolved
        self.num_inference_steps: int | None = None
        self._timesteps: np.ndarray | None = None
        self._step_index: int | None = None
        self._validate_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Sampler:
        """A sampler from a diffusers scheduler config (a dict, as in `scheduler_config.json`).

        Every key of the scheduler is read; `_class_name` and `_diffusers_version` are accepted. A key
        of another diffusers scheduler (a config written for DDPM, read by DDIM) is accepted at that
        scheduler's default value, where it changes nothing, and refused otherwise; any other key is
        refused. A value minidiff does not implement is refused with the key and the value.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a dict of a diffusers scheduler config, got {type(config).__name__}")
        from minidiff.samplers import registry

        own, foreign = {}, {}
        for key, value in config.items():
            if key in cls.options:
                own[key] = value
            elif key not in METADATA_KEYS:
                foreign[key] = value
        class_name = config.get("_class_name")
        other = registry.sampler_class(class_name) if class_name not in (None, cls.diffusers_class) else None
        for key, value in foreign.items():
            option = other.options.get(key) if other is not None else None
            if option is None:
                raise ValueError(f"{key}: not a config key of {cls.diffusers_class}"
                                 + (f" or {class_name}" if other is not None else ""))
            if value != option.default:
                raise ValueError(f"{key}: {class_name}'s {key}={value!r} has no meaning for {cls.__name__}; "
                                 f"minidiff refuses it rather than ignore it")
        return cls(**own)

    def _validate_config(self) -> None:
        """Cross-key checks of a subclass (after self.config and self.schedule are set)."""

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.config.items() if k not in SCHEDULE_KEYS and v != self.options[k].default}
        items = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({self.schedule!r}{', ' + items if items else ''})"

    # --- timesteps ----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, *, timesteps: Sequence[int] | None = None) -> None:
        """Choose the timesteps of the run: num_inference_steps spaced by the config's timestep_spacing,
        or an explicit strictly decreasing list of t in 1..T (where the sampler allows it)."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("num_inference_steps: pass either num_inference_steps or timesteps")
        if timesteps is not None:
            custom = check_custom_timesteps(timesteps, self.T)
            self.num_inference_steps = int(custom.size)
            self._set_custom_timesteps(custom)
        else:
            self.num_inference_steps = check_num_inference_steps(num_inference_steps, self.T)
            self._set_timesteps(self.num_inference_steps)
        self._step_index = None

    def _set_timesteps(self, n: int) -> None:
        raise NotImplementedError

    def _set_custom_timesteps(self, timesteps: np.ndarray) -> None:
        raise ValueError(f"timesteps: {type(self).__name__} takes num_inference_steps, not a list of timesteps")

    @property
    def timesteps(self) -> np.ndarray:
        """The timesteps of the run, in minidiff's t (diffusers' + 1), in the order `step` takes them."""
        return grid_after_set_timesteps(self, self._timesteps)

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the initial sample x_T (1 for samplers that work on x_t itself)."""
        return 1.0

    def scale_model_input(self, sample: np.ndarray, t: Any) -> np.ndarray:
        """What the model is given at t (the sample itself, but for sigma-based samplers)."""
        return sample

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """[E3] x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, for t an int or one per example."""
        from minidiff.diffusion.forward import q_sample

        return q_sample(self.schedule, original_samples, t, noise=noise)

    # --- one step -----------------------------------------------------------------------------------

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, noise: np.ndarray | None = None,
             rng: np.random.Generator | None = None) -> SamplerOutput:
        """One update from timestep t: (prev_sample, pred_original_sample).

        model_output: the model's output at (scale_model_input(sample, t), t), shape and dtype of sample.
        noise: the standard normal noise of a stochastic step (shape and dtype of sample), or rng to draw
        it; deterministic steps need neither. The same noise replays a run exactly.
        """
        sample = _v.float_array(sample, "sample")
        index = self._index_of(t)
        self._check_model_output(model_output, sample)
        output = self._step(model_output, index, sample, noise, rng)
        if self.stateful:
            self._step_index = index + 1
        return output

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray, noise: Any, rng: Any) -> SamplerOutput:
        raise NotImplementedError

    def _index_of(self, t: Any) -> int:
        """The position of t in `timesteps` (the next one in order, for stateful samplers)."""
        timesteps = self.timesteps
        if isinstance(t, np.ndarray) and t.ndim == 1 and t.size > 0 and np.all(t == t[0]):
            t = t[0]  # a batch of one timestep
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)) or (
                isinstance(t, np.ndarray)):
            raise TypeError(f"t: expected one timestep of sampler.timesteps (a number), got {type(t).__name__}")
        if self.stateful:
            index = 0 if self._step_index is None else self._step_index
            if index >= len(timesteps):
                raise ValueError("t: the run is over (every timestep has been stepped); call set_timesteps again")
            if t != timesteps[index]:
                raise ValueError(f"t: {type(self).__name__} steps through its timesteps in order; expected "
                                 f"{timesteps[index]!r} (step {index} of {len(timesteps)}), got {t!r}")
            return index
        where = np.flatnonzero(timesteps == t)
        if where.size == 0:
            raise ValueError(f"t: {t!r} is not one of this run's timesteps {_short_list(timesteps)}")
        return int(where[0])

    def _check_model_output(self, model_output: Any, sample: np.ndarray) -> None:
        _v.float_array(model_output, "model_output")
        if model_output.dtype != sample.dtype:
            raise TypeError(f"model_output: expected dtype {sample.dtype} (the dtype of sample), "
                            f"got {model_output.dtype}")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected shape {sample.shape} (the shape of sample), got "
                             f"{model_output.shape}")

    @staticmethod
    def _noise(sample: np.ndarray, noise: Any, rng: Any) -> np.ndarray:
        return _v.noise_for(sample, "sample", noise, rng)

    # --- the loop -----------------------------------------------------------------------------------

    def sample(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], shape: Sequence[int],
               rng: np.random.Generator, *, num_inference_steps: int | None = None, x_T: np.ndarray | None = None,
               dtype: Any = np.float32, progress: bool = True, return_trajectory: bool = False) -> np.ndarray:
        """Draw a batch: x_T ~ N(0, init_noise_sigma^2 I) (or the given x_T), then `step` at every timestep.

        model(x, t) is called with scale_model_input(x, t) and t of shape (B,). rng draws x_T and the
        noise of stochastic steps, in that order, so a seed replays a run exactly. num_inference_steps:
        calls set_timesteps first (else the timesteps already set are used). progress: a tqdm bar.
        Returns x_0, or with return_trajectory the samples after every step, shape (1 + steps, *shape),
        starting from x_T. An x_T on the GPU (a CuPy array) keeps the whole loop there: the model's outputs and
        the steps' noise (drawn by rng on the host) go to the GPU, and x_0 comes back as a CuPy array.
        """
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)
        timesteps = self.timesteps
        self._step_index = None
        x = initial_sample(model, "model", shape, rng, x_T,
                           lambda shape: (rng.standard_normal(shape) * self.init_noise_sigma).astype(dtype))
        trajectory = [x] if return_trajectory else None
        for t in progress_bar(timesteps, len(timesteps), type(self).__name__, progress):
            x = self.step(self.model_output(model, x, t), t, x, rng=rng).prev_sample
            if trajectory is not None:
                trajectory.append(x)
        return array_module(x).stack(trajectory) if trajectory is not None else x

    def model_output(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, t: Any) -> np.ndarray:
        """model(scale_model_input(x, t), t as shape (B,)), a float output cast to the dtype of x, on the host or
        the GPU where x is."""
        t_batch = np.full(x.shape[0], t, dtype=self.timesteps.dtype)
        out = array_module(x).asarray(model(self.scale_model_input(x, t), t_batch))
        if out.dtype != x.dtype and out.dtype.kind == "f":
            out = out.astype(x.dtype)
        return out


def grid_after_set_timesteps(sampler: Any, grid: np.ndarray | None) -> np.ndarray:
    """A grid of the run (timesteps, sigmas), which exists once set_timesteps has been called."""
    if grid is None:
        raise RuntimeError(f"{type(sampler).__name__}: call set_timesteps(num_inference_steps) first")
    return grid


def combine(x: np.ndarray, c_x: float, y: np.ndarray, c_y: float) -> np.ndarray:
    """c_x x + c_y y (x and y of one shape and dtype) in one pass of the fused sampler kernel, where NumPy
    would make a temporary per operator: the x0 and eps a step reads off a model output."""
    return sampler_step(x, y, None, StepCoefs(c_x=c_x, c_eps=c_y))


def initial_sample(model: Any, model_name: str, shape: Sequence[int], rng: Any, x_T: Any,
                   draw: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """The checks every sampling loop makes (a callable model, a Generator, a batch shape), then its
    starting point: x_T itself (checked, copied) or draw(shape) from the prior."""
    if not callable(model):
        raise TypeError(f"{model_name}: expected a callable {model_name}(x, t), got {type(model).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(f"shape: expected a batch shape (B, ...) with positive sides, got {shape}")
    if x_T is None:
        return draw(shape)
    x = _v.float_array(x_T, "x_T").copy()
    if x.shape != shape:
        raise ValueError(f"x_T: expected shape {shape}, got {x.shape}")
    return x


def _short_list(a: np.ndarray) -> str:
    values = [f"{v:g}" for v in a[:4]]
    return "[" + ", ".join(values) + (", ...]" if len(a) > 4 else "]")

