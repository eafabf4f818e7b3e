"""Flow-matching samplers (E38): integrate dx/dt = v(x, t) from t = 1 (noise) down to t = 0 (data).

A flow model v(x, t) predicts the velocity eps - x_0 of the straight path x_t = (1 - t) x_0 + t eps
(minidiff.diffusion.flow). Sampling solves the ODE dx/dt = v(x, t) backwards on a grid
1 = t_0 > t_1 > ... > t_N = 0:
    Euler   x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)                                  (1 model call a step)
    Heun    x' = x_i + h v(x_i, t_i),  x_{i+1} = x_i + h (v(x_i, t_i) + v(x', t_{i+1})) / 2,  h = t_{i+1} - t_i
            (the trapezoid rule; its last step, to t = 0, is plain Euler as in diffusers: 2N - 1 calls)
Their global errors are O(1/N) and O(1/N^2).

These speak the config of diffusers' FlowMatchEulerDiscreteScheduler and FlowMatchHeunDiscreteScheduler,
whose `sigmas` are these flow times. The one difference is the time the model is given: diffusers calls
it with timesteps = sigmas * num_train_timesteps (0..1000); minidiff with the flow time t in [0, 1] itself,
as a float64 array of shape (B,). The default grid is diffusers': with T = num_train_timesteps and
s(t) = shift t / (1 + (shift - 1) t) (`shift_flow_time`),
    t_i = s(linspace(1, s(1/T), N)_i), i = 0..N-1,   t_N = 0
(diffusers shifts the end point 1/T twice: once in its training table, once with the grid), so the last
step goes from about 1/T to 0. `set_timesteps(timesteps=...)` takes any other grid, used as given.

A flow sampler has no NoiseSchedule, so it is not a `Sampler`, but its methods have the same names and
behaviour: `from_config`, `set_timesteps`, `timesteps`, `step(model_output, t, sample)` -> SamplerOutput,
`sample(model, shape, rng, ...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from minidiff.diffusion import _validate as _v
from minidiff.diffusion.flow import check_flow_time, flow_interpolant, flow_x0_from_velocity, shift_flow_time
from minidiff.kernels.sampler_step import StepCoefs, sampler_step
from minidiff.progress import progress as progress_bar
from minidiff.samplers.base import (
    METADATA_KEYS,
    Option,
    SamplerOutput,
    a_positive_float,
    a_positive_int,
    combine,
    disabled,
    grid_after_set_timesteps,
    initial_sample,
    one_of,
)

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def a_number_or_none(key: str, value: Any) -> float | None:
    return None if value is None else _v.finite(value, key)


FLOW_OPTIONS: dict[str, Option] = {
    "num_train_timesteps": Option(1000, a_positive_int),
    "shift": Option(1.0, a_positive_float),
}
# FlowMatchEulerDiscreteScheduler's other keys: minidiff implements them at their defaults only. diffusers
# reads base_shift ... time_shift_type only with use_dynamic_shifting, so any value of them is accepted
# (SD3.5's scheduler_config.json lists them).
EULER_OPTIONS: dict[str, Option] = {
    **FLOW_OPTIONS,
    "use_dynamic_shifting": Option(False, disabled(False)),
    "base_shift": Option(0.5, a_number_or_none),
    "max_shift": Option(1.15, a_number_or_none),
    "base_image_seq_len": Option(256, a_positive_int),
    "max_image_seq_len": Option(4096, a_positive_int),
    "time_shift_type": Option("exponential", one_of("exponential", "linear")),
    "invert_sigmas": Option(False, disabled(False)),
    "shift_terminal": Option(None, disabled(None)),
    "use_karras_sigmas": Option(False, disabled(False)),
    "use_exponential_sigmas": Option(False, disabled(False)),
    "use_beta_sigmas": Option(False, disabled(False)),
    "stochastic_sampling": Option(False, disabled(False)),
}


def flow_match_sigmas(num_inference_steps: int, num_train_timesteps: int = 1000, shift: float = 1.0) -> np.ndarray:
    """diffusers' grid of flow times, float64 (N + 1,): t_i = s(linspace(1, s(1/T), N)_i) for i < N, t_N = 0,
    with s the time shift and T = num_train_timesteps."""
    end = shift_flow_time(1.0 / num_train_timesteps, shift)
    return np.append(shift_flow_time(np.linspace(1.0, end, num_inference_steps), shift), 0.0)


def check_num_inference_steps(n: Any) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"num_inference_steps: expected an integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"num_inference_steps: expected at least 1 step, got {n}")
    return int(n)


def check_custom_flow_times(timesteps: Any) -> np.ndarray:
    """A strictly decreasing non-empty 1-d sequence of flow times in (0, 1] (t = 0, the end, is appended)."""
    arr = np.asarray(timesteps)
    if arr.ndim != 1 or arr.size < 1:
        raise ValueError(f"timesteps: expected a non-empty 1-d sequence of flow times in (0, 1], got {timesteps!r}")
    arr = check_flow_time(arr, "timesteps")
    if arr.min() <= 0.0:
        raise ValueError("timesteps: expected flow times in (0, 1]; t = 0, the end of the run, is appended")
    if np.any(np.diff(arr) >= 0):
        raise ValueError("timesteps: expected a strictly decreasing sequence (noisiest first)")
    return arr


class FlowMatchSampler:
    """What the Euler and Heun flow samplers share: config, grid, checks and the sampling loop.

    Build one from diffusers' keyword options (`num_train_timesteps`, `shift`, ...) or a config dict
    (`from_config`), then `set_timesteps(n)` and `step`, or `sample(model, shape, rng)`.
    A subclass sets `diffusers_class` and `options` and implements `_timesteps_of` and `_step`.
    """

    diffusers_class: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = FLOW_OPTIONS
    # Steps must be taken in the order of `timesteps` (two-stage samplers keep state).
    stateful: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.options))
        if unknown:
            raise ValueError(f"{unknown[0]}: not an option of {type(self).__name__} (its options: "
                             f"{', '.join(self.options)})")
        self.config = {key: opt.check(key, config.get(key, opt.default)) for key, opt in self.options.items()}
        self.T = self.config["num_train_timesteps"]
        self.shift = self.config["shift"]
        self.num_inference_steps: int | None = None
        self._sigmas: np.ndarray | None = None
        self._timesteps: np.ndarray | None = None
        self._step_index: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowMatchSampler:
        """A sampler from a diffusers flow-matching scheduler config (a dict, as in `scheduler_config.json`).
        Every key must be an option of this sampler (or metadata such as `_class_name`)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a dict of a diffusers scheduler config, got {type(config).__name__}")
        class_name = config.get("_class_name", cls.diffusers_class)
        if class_name not in FLOW_SCHEDULERS:
            raise ValueError(f"_class_name: {cls.__name__} reads configs of {', '.join(FLOW_SCHEDULERS)}; "
                             f"got {class_name!r}")
        return cls(**{key: value for key, value in config.items() if key not in METADATA_KEYS})

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.config.items() if v != self.options[k].default}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # --- the grid -----------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, *, timesteps: Any = None) -> None:
        """Choose the grid of the run: num_inference_steps steps on diffusers' (shifted) grid, or the given
        strictly decreasing flow times in (0, 1] (used as given, not shifted), with t = 0 appended."""
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("num_inference_steps: pass either num_inference_steps or timesteps")
        if timesteps is not None:
            grid = np.append(check_custom_flow_times(timesteps), 0.0)
        else:
            grid = flow_match_sigmas(check_num_inference_steps(num_inference_steps), self.T, self.shift)
        self._sigmas = grid
        self.num_inference_steps = len(grid) - 1
        self._timesteps = self._timesteps_of(grid)
        self._step_index = None

    def _timesteps_of(self, grid: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def sigmas(self) -> np.ndarray:
        """The grid of the run, flow times 1 >= t_0 > ... > t_N = 0, float64 (N + 1,) (diffusers' sigmas)."""
        return grid_after_set_timesteps(self, self._sigmas)

    @property
    def timesteps(self) -> np.ndarray:
        """The flow times at which `step` is called, in order, float64."""
        return grid_after_set_timesteps(self, self._timesteps)

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, t: Any) -> np.ndarray:
        """[E38] x_t = (1 - t) x_0 + t noise, t a flow time or one per example (diffusers' scale_noise)."""
        return flow_interpolant(original_samples, noise, t)

    # --- one step -----------------------------------------------------------------------------------

    def step(self, model_output: np.ndarray, t: Any, sample: np.ndarray, noise: np.ndarray | None = None,
             rng: np.random.Generator | None = None) -> SamplerOutput:
        """One update from the flow time t (one of `timesteps`): (prev_sample, pred_original_sample).

        model_output: the velocity v(sample, t), an array of the shape and dtype of sample. pred_original_sample
        is the x_0 estimate sample - t v. The step is deterministic: noise and rng, accepted so that a loop
        written for every sampler runs this one too, are not used.
        """
        sample = _v.float_array(sample, "sample")
        _v.like(model_output, "model_output", sample, "sample")
        index = self._index_of(t)
        output = self._step(model_output, index, sample)
        if self.stateful:
            self._step_index = index + 1
        return output

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> SamplerOutput:
        raise NotImplementedError

    def _index_of(self, t: Any) -> int:
        """The position of t in `timesteps` (the next one in order, for stateful samplers)."""
        if isinstance(t, np.ndarray) and t.ndim == 1 and t.size > 0 and np.all(t == t[0]):
            t = t[0]  # a batch of one flow time
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer, np.floating)):
            raise TypeError(f"t: expected one flow time of sampler.timesteps (a number), got {type(t).__name__}")
        timesteps = self.timesteps
        if self.stateful:
            index = self._step_index or 0
            expected = repr(timesteps[index]) if index < len(timesteps) else "none (the run is over)"
            if index >= len(timesteps) or t != timesteps[index]:
                raise ValueError(f"t: {type(self).__name__} steps through its timesteps in order; expected "
                                 f"{expected}, got {t!r}; call set_timesteps to start a run")
            return index
        where = np.flatnonzero(timesteps == t)
        if where.size == 0:
            raise ValueError(f"t: {t!r} is not one of this run's timesteps (sampler.timesteps)")
        return int(where[0])

    @staticmethod
    def _euler(x: np.ndarray, v: np.ndarray, t: float, t_next: float) -> np.ndarray:
        """[E38] x + (t_next - t) v: one Euler step of dx/dt = v, by the fused kernel."""
        return sampler_step(x, v, None, StepCoefs(c_x=1.0, c_eps=t_next - t))

    # --- the loop -----------------------------------------------------------------------------------

    def sample(self, model: Callable[[np.ndarray, np.ndarray], np.ndarray], shape: Sequence[int],
               rng: np.random.Generator, *, num_inference_steps: int | None = None, x_T: np.ndarray | None = None,
               dtype: Any = np.float32, progress: bool = True, return_trajectory: bool = False) -> np.ndarray:
        """Draw a batch: x_1 ~ N(0, I) from rng (or the given x_T), then `step` at every timestep.

        model(x, t) is called with t the flow time as a float64 array of shape (B,); its output is cast to
        the dtype of x. num_inference_steps: calls set_timesteps first (else the timesteps already set are
        used). progress: a progress bar. Returns x_0, or with return_trajectory the samples after every
        step, shape (1 + len(timesteps), *shape), starting from x_T.
        """
        x = initial_sample(model, "model", shape, rng, x_T, lambda shape: rng.standard_normal(shape).astype(dtype))
        if num_inference_steps is not None:
            self.set_timesteps(num_inference_steps)
        timesteps = self.timesteps
        self._step_index = None
        trajectory = [x]
        for t in progress_bar(timesteps, len(timesteps), type(self).__name__, progress):
            out = np.asarray(model(x, np.full(x.shape[0], t)))
            x = self.step(out.astype(x.dtype) if out.dtype.kind == "f" else out, t, x).prev_sample
            trajectory.append(x)
        return np.stack(trajectory) if return_trajectory else x



class FlowMatchEulerSampler(FlowMatchSampler):
    """[E38] Euler's method on dx/dt = v(x, t) from t = 1 to 0; diffusers' FlowMatchEulerDiscreteScheduler
    (without its stochastic, dynamic-shift and Karras/exponential/beta grid options).

    timesteps are the grid without its end: t_0, ..., t_{N-1}; step(v, t_i, x) returns x_{i+1} and the
    x_0 estimate x - t_i v.
    """

    diffusers_class = "FlowMatchEulerDiscreteScheduler"
    options = EULER_OPTIONS

    def _timesteps_of(self, grid: np.ndarray) -> np.ndarray:
        return grid[:-1]

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> SamplerOutput:
        """[E38] x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i)."""
        t, t_next = self.sigmas[index], self.sigmas[index + 1]
        x0 = combine(sample, 1.0, model_output, -t)  # flow_x0_from_velocity in one fused pass
        return SamplerOutput(self._euler(sample, model_output, t, t_next), x0)


class FlowMatchHeunSampler(FlowMatchSampler):
    """[E38] Heun's method (the explicit trapezoid rule) on dx/dt = v(x, t) from t = 1 to 0; diffusers'
    FlowMatchHeunDiscreteScheduler (without its churn).

    As in diffusers, every step but the last takes two calls: timesteps are t_0, t_1, t_1, t_2, t_2, ...,
    t_{N-1}, t_{N-1} (2N - 1 entries). At an even position 2i, step(v, t_i, x_i) returns the Euler predictor
    x' at t_{i+1}; at the next position, step(v(x', t_{i+1}), t_{i+1}, x') returns x_{i+1} =
    x_i + h (v(x_i, t_i) + v(x', t_{i+1})) / 2. The last step (to t = 0) is the predictor alone, so the model
    is never called at t = 0. Steps must be taken in order. The trajectory of `sample` holds the
    predictors too.
    """

    diffusers_class = "FlowMatchHeunDiscreteScheduler"
    stateful = True
    # (x_i, v(x_i, t_i)) between the two calls of a step; the order of steps is enforced, so a run always
    # sets it before reading it.
    _predictor: tuple[np.ndarray, np.ndarray] | None = None

    def _timesteps_of(self, grid: np.ndarray) -> np.ndarray:
        return np.concatenate([grid[:1], np.repeat(grid[1:-1], 2)])

    def _step(self, model_output: np.ndarray, index: int, sample: np.ndarray) -> SamplerOutput:
        i = index // 2  # the interval [t_i, t_{i+1}] this call belongs to
        t, t_next = self.sigmas[i], self.sigmas[i + 1]
        if index % 2 == 0:
            self._predictor = (sample, model_output) if t_next > 0 else None
            x0 = combine(sample, 1.0, model_output, -t)  # flow_x0_from_velocity in one fused pass
            return SamplerOutput(self._euler(sample, model_output, t, t_next), x0)
        return SamplerOutput(self._corrector(model_output, sample, t, t_next),
                             flow_x0_from_velocity(sample, t_next, model_output))

    def _corrector(self, v_next: np.ndarray, predicted: np.ndarray, t: float, t_next: float) -> np.ndarray:
        """[E38] x_{i+1} = x_i + h (v(x_i, t_i) + v(x', t_{i+1})) / 2, h = t_{i+1} - t_i, by the fused kernel
        (its third input, z, is here the second slope)."""
        x, v = self._predictor
        _v.like(predicted, "sample", x, "the sample of the predictor step")
        self._predictor = None
        h = t_next - t
        return sampler_step(x, v, v_next, StepCoefs(c_x=1.0, c_eps=0.5 * h, c_z=0.5 * h))
