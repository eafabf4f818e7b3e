"""One trainer for every objective of the book: eps, x0 and v prediction on a VP schedule (E15, with optional
min-SNR-gamma weighting) and flow matching (E38); AdamW, an EMA of the weights, gradient clipping, linear LR
warmup, a step or time budget, a progress bar, a CSV log and checkpoints from which a run resumes exactly.

    trainer = Trainer(model, TrainConfig(objective="epsilon", steps=2000), (images, labels), "runs/digits")
    trainer.train()                      # Ctrl-C saves a checkpoint and returns
    Trainer.resume("runs/digits", (images, labels), model).train()   # continues bit for bit

The model is called model(x_t, t) (or model(x_t, t, class_labels) when the data has labels) with x_t a Tensor
(B, ...) and t an array (B,): minidiff's timesteps 1..T (int64) for the VP objectives, flow times in [0, 1)
(float64) for "flow", as the samplers call it.

Data is either in-memory arrays, x or (x, labels), which the trainer shuffles into batches itself, or a
loader: an iterable whose `iter()` yields the remaining batches of the current epoch (x or (x, labels)),
the next `iter()` starting a new epoch, with `state_dict()` / `load_state_dict()` capturing its generator
and its position (minidiff.data.DataLoader).

An output folder holds
    checkpoint.json                   the commit record: configs, step, RNG states, and the name and SHA-256 of
    checkpoint-<step>.safetensors     the arrays: model.*, ema.*, optimizer.*, lr_scheduler.*
    log.csv                           step, loss, lr, grad_norm, time (loss and grad_norm: means over the
                                      log_every steps up to the row's step; lr: that step's; time: seconds)
Every file is written to a temporary name and renamed. The weights file of a new checkpoint is written
first, then checkpoint.json (the commit), then the previous weights file is deleted: a crash at any point
leaves the old checkpoint or the new one, and loading refuses a weights file whose hash differs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minidiff import checkpoint
from minidiff.autodiff.tensor import Tensor
from minidiff.checkpoint import _write_atomically
from minidiff.diffusion.flow import TIME_DISTRIBUTIONS, flow_matching_loss
from minidiff.diffusion.losses import l_simple
from minidiff.diffusion.parameterization import PREDICTION_TYPES
from minidiff.diffusion.schedules import SCHEDULE_NAMES, NoiseSchedule
from minidiff.exercise_tools import exercise
from minidiff.nn.module import Module
from minidiff.optim import EMA, AdamW, LinearWarmup, LRScheduler, clip_grad_norm_
from minidiff.progress import progress

OBJECTIVES = (*PREDICTION_TYPES, "flow")
CHECKPOINT_JSON = "checkpoint.json"
LOG_CSV = "log.csv"
LOG_COLUMNS = ("step", "loss", "lr", "grad_norm", "time")
FORMAT = "minidiff-training-checkpoint"
STATE_GROUPS = ("model", "ema", "optimizer", "lr_scheduler")
# TrainConfig fields a resumed run may change: how long it runs and how often it reports.
RESUMABLE_CHANGES = ("steps", "minutes", "checkpoint_every", "log_every")


# --- configuration --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run besides the model and the data (JSON: `to_dict`/`from_dict`).

    objective: "epsilon" | "sample" | "v_prediction" (VP schedule `schedule` with T = num_train_timesteps,
    t ~ U{1..T}) or "flow" (t ~ flow_time_distribution: "uniform" or "logit_normal"). min_snr_gamma: None,
    or min-SNR-gamma weighting of a VP objective (Hang et al. 2023). label_dropout: the probability that a
    class label is replaced by null_label (for classifier-free guidance). grad_clip None: no clipping.
    ema_warmup: ramp the EMA's decay up from 0.1 to ema_decay (minidiff.optim.EMA), for runs of any length.
    warmup_steps: the LR rises linearly over the first warmup_steps steps (0: constant). The run stops when
    `steps` steps are done or `minutes` have passed, whichever comes first (either may be None, not both).
    """

    objective: str = "epsilon"
    schedule: str = "linear"
    num_train_timesteps: int = 1000
    min_snr_gamma: float | None = None
    flow_time_distribution: str = "uniform"
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    steps: int | None = 1000
    minutes: float | None = None
    checkpoint_every: int = 500
    log_every: int = 10
    label_dropout: float = 0.0
    null_label: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        _choice(self.objective, "objective", OBJECTIVES)
        _choice(self.schedule, "schedule", SCHEDULE_NAMES)
        _choice(self.flow_time_distribution, "flow_time_distribution", TIME_DISTRIBUTIONS)
        for name in ("num_train_timesteps", "batch_size", "checkpoint_every", "log_every"):
            _positive_int(getattr(self, name), name)
        for name in ("warmup_steps", "seed"):
            _positive_int(getattr(self, name), name, low=0)
        if self.steps is None and self.minutes is None:
            raise ValueError("steps, minutes: give a step budget, a time budget, or both")
        if self.steps is not None:
            _positive_int(self.steps, "steps")
        for name in ("minutes", "min_snr_gamma", "grad_clip"):
            if getattr(self, name) is not None:
                _positive_number(getattr(self, name), name)
        if self.min_snr_gamma is not None and self.objective == "flow":
            raise ValueError("min_snr_gamma: min-SNR weighting is defined for the VP objectives "
                             "(epsilon, sample, v_prediction), not for flow")
        for name in ("lr", "weight_decay"):
            _positive_number(getattr(self, name), name, allow_zero=True)
        _probability(self.ema_decay, "ema_decay", high_open=False)
        if not isinstance(self.ema_warmup, bool):
            raise TypeError(f"ema_warmup: expected True or False, got {self.ema_warmup!r}")
        _probability(self.label_dropout, "label_dropout", high_open=True)
        if self.label_dropout > 0 and self.null_label is None:
            raise ValueError("null_label: label_dropout > 0 replaces labels by the null label; give its index")
        if self.null_label is not None:
            _positive_int(self.null_label, "null_label", low=0)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"config: unknown TrainConfig fields {sorted(unknown)}")
        return cls(**d)


def _choice(value: Any, name: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def _positive_int(value: Any, name: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def _positive_number(value: Any, name: str, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value!r}")


def _probability(value: Any, name: str, high_open: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not (0.0 <= value < 1.0 if high_open else 0.0 <= value <= 1.0):
        raise ValueError(f"{name}: expected a number in [0, {'1)' if high_open else '1]'}, got {value!r}")


# --- objectives -----------------------------------------------------------------------------------------


class Objective:
    """What the network learns and the loss of one batch.

    "epsilon", "sample", "v_prediction": [E15] L_simple with that target on `schedule`, optionally with
    min-SNR-gamma weights (minidiff.diffusion.l_simple). "flow": [E38] the flow-matching loss with times from
    `time_distribution` (minidiff.diffusion.flow_matching_loss).
    """

    def __init__(self, name: str, schedule: NoiseSchedule | None = None, min_snr_gamma: float | None = None,
                 time_distribution: str = "uniform") -> None:
        _choice(name, "objective", OBJECTIVES)
        if name != "flow" and not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: the {name!r} objective needs a NoiseSchedule, got {type(schedule).__name__}")
        self.name, self.schedule = name, schedule
        self.min_snr_gamma, self.time_distribution = min_snr_gamma, time_distribution

    @classmethod
    def from_config(cls, config: TrainConfig) -> Objective:
        schedule = None if config.objective == "flow" else NoiseSchedule.named(config.schedule,
                                                                                config.num_train_timesteps)
        return cls(config.objective, schedule, config.min_snr_gamma, config.flow_time_distribution)

    def loss(self, model: Callable[[np.ndarray, np.ndarray], Any], x0: np.ndarray, rng: np.random.Generator) -> Any:
        """The batch loss of model(x_t, t) on data x0 (B, ...): t, then the noise, drawn from rng."""
        if self.name == "flow":
            return flow_matching_loss(model, x0, rng=rng, distribution=self.time_distribution)
        weighting = None if self.min_snr_gamma is None else "min_snr"
        return l_simple(self.schedule, model, x0, rng=rng, prediction_type=self.name, weighting=weighting,
                        gamma=self.min_snr_gamma or 5.0)


# --- data -----------------------------------------------------------------------------------------------


class ArrayBatches:
    """Shuffled batches of in-memory arrays (x,) or (x, labels): each epoch a permutation drawn from `rng`,
    cut into full batches (the remainder is dropped). `iter()` yields the rest of the current epoch, or a
    new epoch when it is used up; the state is the generator's state at the epoch's start and the position."""

    def __init__(self, arrays: tuple[np.ndarray, ...], batch_size: int, rng: np.random.Generator) -> None:
        self.arrays, self.batch_size, self.rng = arrays, batch_size, rng
        self.num_examples = len(arrays[0])
        if batch_size > self.num_examples:
            raise ValueError(f"batch_size: {batch_size} is larger than the {self.num_examples} examples of the data")
        self._new_epoch()

    def _new_epoch(self) -> None:
        self._epoch_start = self.rng.bit_generator.state
        self._order = self.rng.permutation(self.num_examples)  # (N,)
        self.position = 0

    def _epoch_done(self) -> bool:
        return self.position + self.batch_size > self.num_examples

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self._epoch_done():
            self._new_epoch()
        while not self._epoch_done():
            rows = self._order[self.position:self.position + self.batch_size]  # (B,)
            self.position += self.batch_size
            yield tuple(a[rows] for a in self.arrays)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_start_rng": self._epoch_start, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = state["epoch_start_rng"]
        self._new_epoch()  # the same permutation again
        self.position = int(state["position"])


def _as_arrays(data: Any) -> tuple[np.ndarray, ...] | None:
    """x or (x,) or (x, labels) as a tuple of arrays with one first dimension; None for a loader."""
    if isinstance(data, np.ndarray):
        data = (data,)
    if not (isinstance(data, tuple) and data and all(isinstance(a, np.ndarray) for a in data)):
        return None
    if len(data) > 2 or data[0].ndim < 2 or any(len(a) != len(data[0]) for a in data):
        raise ValueError("data: expected x (N, ...) or (x, labels) with labels of shape (N,), got arrays of shapes "
                         f"{[a.shape for a in data]}")
    return data


def _describe_arrays(arrays: tuple[np.ndarray, ...]) -> dict[str, Any]:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    x = arrays[0]
    return {"kind": "arrays", "shape": list(x.shape), "dtype": str(x.dtype), "labels": len(arrays) == 2,
            "sha256": digest.hexdigest()}


def _check_loader(data: Any) -> None:
    missing = [name for name in ("__iter__", "state_dict", "load_state_dict") if not hasattr(data, name)]
    if missing:
        raise TypeError(f"data: expected arrays x or (x, labels), or a loader with __iter__, state_dict and "
                        f"load_state_dict (for exact resume); {type(data).__name__} lacks {', '.join(missing)}")


# --- JSON of nested states (NumPy arrays and scalars tagged) ---------------------------------------------


def _to_json(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_json(v) for v in obj]
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"]).reshape(obj["shape"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _write_text(path: Path, text: str) -> None:
    _write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- checkpoints ----------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint read and verified by `load_checkpoint`: `meta` is checkpoint.json, `states` maps each of
    model, ema, optimizer, lr_scheduler to its state dict."""

    path: Path
    meta: dict[str, Any]
    states: dict[str, dict[str, np.ndarray]]

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"])

    def model_state_dict(self, ema: bool = True) -> dict[str, np.ndarray]:
        """The model's weights: the EMA (for sampling) or the raw training weights."""
        return self.states["ema" if ema else "model"]


def _checkpoint_json(path: str | Path) -> Path:
    path = Path(path)
    return path / CHECKPOINT_JSON if path.is_dir() else path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read an output folder's checkpoint (or a checkpoint.json) and verify it: the JSON parses and has every
    entry, the weights file exists with the SHA-256 the JSON records, and it holds every state group.
    Raises FileNotFoundError or a ValueError that names the file and the problem."""
    json_path = _checkpoint_json(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {json_path} (a training output folder holds {CHECKPOINT_JSON})")
    try:
        meta = json.loads(json_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{json_path}: not a valid checkpoint (not JSON: {e}); it is corrupt or truncated") from None
    required = ("format", "step", "config", "model", "data", "weights", "random_state", "elapsed_seconds",
                "log_window")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or any(k not in meta for k in required):
        raise ValueError(f"{json_path}: not a minidiff training checkpoint (expected format {FORMAT!r} and the "
                         f"entries {', '.join(required)})")
    weights = json_path.parent / meta["weights"]["file"]
    if not weights.is_file():
        raise FileNotFoundError(f"{json_path}: its weights file {weights.name} is missing")
    if _sha256(weights) != meta["weights"]["sha256"]:
        raise ValueError(f"{weights}: its SHA-256 does not match the one {json_path.name} records; the weights "
                         "file is corrupt, truncated or from another checkpoint")
    states: dict[str, dict[str, np.ndarray]] = {group: {} for group in STATE_GROUPS}
    for key, array in checkpoint.load(weights).items():
        group, _, name = key.partition(".")
        if group not in states:
            raise ValueError(f"{weights}: unexpected entry {key!r} (expected names starting with {STATE_GROUPS})")
        states[group][name] = array
    try:
        TrainConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{json_path}: its training config is invalid: {e}") from None
    return Checkpoint(json_path, meta, states)


def build_model(ckpt: Checkpoint) -> Module:
    """The checkpoint's model rebuilt as class(**config) (a minidiff class; weights not loaded)."""
    model = ckpt.meta["model"]
    module_name, _, qualname = model["class"].rpartition(":")
    if not module_name.startswith("minidiff.") or model["config"] is None:
        raise ValueError(f"{ckpt.path}: cannot rebuild the model {model['class']!r} (only minidiff models with a "
                         "config are rebuilt); pass the model to Trainer.resume")
    cls = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls(**model["config"])


def _model_generators(model: Module) -> dict[str, np.random.Generator]:
    """The Generators that the model's modules hold as attributes (dropout's, say), by dotted name."""
    return {f"{prefix}.{attr}" if prefix else attr: value
            for prefix, module in model.named_modules() for attr, value in vars(module).items()
            if isinstance(value, np.random.Generator)}


@contextlib.contextmanager
def _ctrl_c_requests_stop(trainer: Trainer) -> Iterator[None]:
    """While training, the first Ctrl-C asks the loop to stop after the current step; a second one raises
    KeyboardInterrupt at once. (Signal handlers exist only in the main thread.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- the trainer ----------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `Trainer.train` did: the steps it ran, their losses, whether Ctrl-C stopped it, the checkpoint."""

    first_step: int
    last_step: int
    losses: list[float]
    interrupted: bool
    checkpoint: Path


class Trainer:
    """Train `model` on `data` by `config`, writing checkpoints and a log into `out_dir` (see the module
    docstring). `out_dir` must not already hold a checkpoint (continue it with `Trainer.resume`).

    model_config: the keyword arguments that rebuild the model (default: `model.config` if it has one);
    data_description: what the data is, for the record (e.g. {"dataset": "digits", "split": "train"});
    callbacks: functions of the trainer, called after every step; clock: seconds (time.perf_counter;
    a test passes a fake one); show_progress: the tqdm bar.
    """

    def __init__(self, model: Module, config: TrainConfig, data: Any, out_dir: str | Path, *,
                 model_config: Mapping[str, Any] | None = None, data_description: Mapping[str, Any] | None = None,
                 callbacks: Sequence[Callable[[Trainer], None]] = (), clock: Callable[[], float] = time.perf_counter,
                 show_progress: bool = True) -> None:
        self._build(model, config, data, out_dir, model_config, data_description, callbacks, clock, show_progress)
        if (self.out_dir / CHECKPOINT_JSON).exists():
            raise FileExistsError(f"out_dir: {self.out_dir} already holds a training run; continue it with "
                                  "Trainer.resume or choose another folder")

    def _build(self, model: Module, config: TrainConfig, data: Any, out_dir: str | Path,
               model_config: Mapping[str, Any] | None, data_description: Mapping[str, Any] | None,
               callbacks: Sequence[Callable[[Trainer], None]], clock: Callable[[], float], show_progress: bool) -> None:
        if not isinstance(model, Module):
            raise TypeError(f"model: expected a minidiff Module, got {type(model).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        self.model, self.config, self.out_dir = model, config, Path(out_dir)
        self.model_config = dict(model_config) if model_config is not None else getattr(model, "config", None)
        self.objective = Objective.from_config(config)
        noise_seed, data_seed = np.random.SeedSequence(config.seed).spawn(2)
        self.rng = np.random.default_rng(noise_seed)  # t, noise, label dropout
        arrays = _as_arrays(data)
        if arrays is None:
            _check_loader(data)
            self.loader = data
            self.data_info = {"kind": "loader", "class": type(data).__qualname__}
        else:
            self.loader = ArrayBatches(arrays, config.batch_size, np.random.default_rng(data_seed))
            self.data_info = _describe_arrays(arrays)
        self.data_description = dict(data_description) if data_description is not None else None
        self.dtype = next(iter(model.parameters())).dtype
        self.optimizer = AdamW(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
        # LinearWarmup(1) is the constant factor 1: no warmup.
        self.lr_scheduler = LRScheduler(self.optimizer, LinearWarmup(max(config.warmup_steps, 1)))
        self.ema = EMA(model, config.ema_decay, warmup=config.ema_warmup)
        self.callbacks, self.clock, self.show_progress = list(callbacks), clock, show_progress
        self.step, self.elapsed_before, self.grad_norm = 0, 0.0, math.nan
        self.log_window = {"loss": 0.0, "grad_norm": 0.0, "lr": 0.0, "count": 0}  # since the last row
        self.stop_requested = False
        self._iterator: Iterator[Any] | None = None
        self._session_start: float | None = None
        self._saved_step = -1

    # -- the heart: one step ---------------------------------------------------------------------------

    @exercise("ex07.4")
    def train_step(self, batch: Any) -> float:
        """One optimization step on a batch x or (x, labels): draw t and the noise, the loss, its gradient,
        clip, AdamW, advance the LR schedule and the EMA. Returns the loss (before the update)."""
        x0, labels = self._split(batch)
        # Zero the gradients; loss = the objective's loss of self._denoiser(labels) on x0 with self.rng (it
        # draws t and the noise, builds x_t and the target); backpropagate; clip the gradient norm to
        # config.grad_clip (None: no limit), keeping the norm in self.grad_norm; take the optimizer step.
        # BEGIN SOLUTION ex07.4: zero grads, loss, backward, clip into self.grad_norm, optimizer step
        self.optimizer.zero_grad()
        loss = self.objective.loss(self._denoiser(labels), x0, self.rng)
        loss.backward()
        self.grad_norm = clip_grad_norm_(self.model.parameters(), self.config.grad_clip or math.inf)
        self.optimizer.step()
        # END SOLUTION
        self.lr_scheduler.step()
        self.ema.update(self.model)
        return float(loss.item())

    def _split(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """(x0 in the model's dtype, labels int64 or None), labels after label dropout."""
        x0, *rest = (batch,) if isinstance(batch, np.ndarray) else batch
        labels = rest[0] if rest else None
        x0 = np.asarray(x0, dtype=self.dtype)
        if labels is None:
            return x0, None
        labels = np.asarray(labels, dtype=np.int64)  # (B,)
        if self.config.label_dropout > 0:
            dropped = self.rng.random(labels.shape) < self.config.label_dropout
            labels = np.where(dropped, self.config.null_label, labels)
        return x0, labels

    def _denoiser(self, labels: np.ndarray | None) -> Callable[[np.ndarray, np.ndarray], Tensor]:
        if labels is None:
            return lambda xt, t: self.model(Tensor(xt), t)
        return lambda xt, t: self.model(Tensor(xt), t, labels)

    # -- the loop --------------------------------------------------------------------------------------

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every session of the run."""
        session = 0.0 if self._session_start is None else self.clock() - self._session_start
        return self.elapsed_before + session

    def _budget_spent(self) -> bool:
        steps, minutes = self.config.steps, self.config.minutes
        return (steps is not None and self.step >= steps) or (minutes is not None and self.elapsed >= 60 * minutes)

    def train(self) -> TrainResult:
        """Run until the budget is spent or Ctrl-C; save a checkpoint; return what was done."""
        self._open_log()
        first_step, losses, interrupted = self.step, [], False
        self.stop_requested = False
        self._session_start = self.clock()
        steps = None if self.config.steps is None else max(self.config.steps - self.step, 0)
        bar = progress(range(steps) if steps is not None else itertools.count(), total=steps, desc="train",
                       enabled=self.show_progress)
        with _ctrl_c_requests_stop(self):
            try:
                for _ in bar:
                    if self._budget_spent() or self.stop_requested:
                        break
                    losses.append(self._run_step())
                    self._show(bar, losses[-1], first_step)
            except KeyboardInterrupt:
                interrupted = True
        if hasattr(bar, "close"):
            bar.close()
        interrupted = interrupted or self.stop_requested
        if not interrupted:
            self._write_log_row()  # the last, possibly partial, window
        self.elapsed_before, self._session_start = self.elapsed, None
        path = self.save_checkpoint() if self.step != self._saved_step else self.out_dir / CHECKPOINT_JSON
        return TrainResult(first_step, self.step, losses, interrupted, path)

    def _run_step(self) -> float:
        """One step with its bookkeeping. A KeyboardInterrupt inside the step (raised by the model, say)
        puts the generators and the data position back to the step's start, so the checkpoint is exact."""
        start = self._random_state()
        lr = self.lr
        try:
            loss = self.train_step(self._next_batch())
        except KeyboardInterrupt:
            self._set_random_state(*start)
            raise
        self.step += 1
        self._record(loss, lr)
        if self.step % self.config.checkpoint_every == 0:
            self.save_checkpoint()
        for callback in self.callbacks:
            callback(self)
        return loss

    def _random_state(self) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """The states of the trainer's generator, of the model's generators and of the data loader."""
        return (self.rng.bit_generator.state,
                {name: g.bit_generator.state for name, g in _model_generators(self.model).items()},
                self.loader.state_dict())

    def _set_random_state(self, trainer_rng: dict[str, Any], model_rngs: dict[str, Any], data: Any) -> None:
        self.rng.bit_generator.state = trainer_rng
        for name, generator in _model_generators(self.model).items():
            generator.bit_generator.state = model_rngs[name]
        self.loader.load_state_dict(data)
        self._iterator = None

    def _next_batch(self) -> Any:
        for _ in range(2):  # the rest of this epoch, else a new one
            if self._iterator is None:
                self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
        raise ValueError("data: the loader yields no batches")

    def _show(self, bar: Any, loss: float, first_step: int) -> None:
        """loss, steps per second of this session and the time left, in the progress bar's postfix."""
        if not hasattr(bar, "set_postfix"):
            return
        rate = (self.step - first_step) / max(self.clock() - self._session_start, 1e-9)
        left = [math.inf]
        if self.config.steps is not None:
            left.append((self.config.steps - self.step) / rate)
        if self.config.minutes is not None:
            left.append(60 * self.config.minutes - self.elapsed)
        eta = min(left)
        bar.set_postfix(loss=f"{loss:.4g}", steps_per_s=f"{rate:.3g}",
                        eta=time.strftime("%H:%M:%S", time.gmtime(max(eta, 0.0))),
                        refresh=self.step % self.config.log_every == 0)

    # -- the CSV log -----------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_CSV

    def _open_log(self) -> None:
        """Create out_dir and the log; a resumed run keeps the log's complete rows up to its step."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.step > 0 and self.log_path.is_file():
            lines = self.log_path.read_text("utf-8").splitlines(keepends=True)
            rows = [line for line in lines[1:] if line.endswith("\n") and _row_step(line) <= self.step]
        _write_text(self.log_path, ",".join(LOG_COLUMNS) + "\n" + "".join(rows))

    def _record(self, loss: float, lr: float) -> None:
        window = self.log_window
        window["loss"] += loss
        window["grad_norm"] += self.grad_norm
        window["lr"] = lr  # the rate of the row's step, not a mean
        window["count"] += 1
        if self.step % self.config.log_every == 0:
            self._write_log_row()

    def _write_log_row(self) -> None:
        """Append one row (one write, flushed): the mean loss and gradient norm over the window, the LR of its
        last step; then start a new window."""
        n = self.log_window["count"]
        if n == 0:
            return
        window = self.log_window
        values = [window["loss"] / n, window["lr"], window["grad_norm"] / n]
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow([self.step, *map(repr, values), f"{self.elapsed:.3f}"])
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line.getvalue())
            f.flush()
        self.log_window = {"loss": 0.0, "grad_norm": 0.0, "lr": 0.0, "count": 0}

    # -- checkpoints -----------------------------------------------------------------------------------

    def _meta(self, weights: Path) -> dict[str, Any]:
        model = type(self.model)
        return {
            "format": FORMAT, "step": self.step, "config": self.config.to_dict(),
            "model": {"class": f"{model.__module__}:{model.__qualname__}", "config": _to_json(self.model_config)},
            "data": {**self.data_info, "description": self.data_description},
            "weights": {"file": weights.name, "sha256": _sha256(weights)},
            "random_state": _to_json(self._random_state()),
            "elapsed_seconds": self.elapsed, "log_window": self.log_window,
        }

    def save_checkpoint(self) -> Path:
        """Write checkpoint-<step>.safetensors, then checkpoint.json (the commit), then delete the previous
        weights file. Returns the path of checkpoint.json."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = self.out_dir / f"checkpoint-{self.step:08d}.safetensors"
        states = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                  "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.lr_scheduler.state_dict()}
        checkpoint.save({f"{group}.{k}": v for group, state in states.items() for k, v in state.items()}, weights)
        json_path = self.out_dir / CHECKPOINT_JSON
        _write_text(json_path, json.dumps(self._meta(weights), indent=1))
        for old in self.out_dir.glob("checkpoint-*.safetensors"):
            if old != weights:
                old.unlink()
        self._saved_step = self.step
        return json_path

    @classmethod
    def resume(cls, path: str | Path, data: Any, model: Module | None = None, *, config: TrainConfig | None = None,
               data_description: Mapping[str, Any] | None = None, callbacks: Sequence[Callable[[Trainer], None]] = (),
               clock: Callable[[], float] = time.perf_counter, show_progress: bool = True) -> Trainer:
        """Continue the run saved in `path` (its output folder, or its checkpoint.json) exactly where it
        stopped: the same data, the model (rebuilt from the checkpoint when None), and optionally a config
        that differs from the saved one only in steps, minutes, checkpoint_every or log_every. Everything
        is checked before anything is written: a corrupt, truncated or mismatched checkpoint (another
        model's keys or shapes, another objective, other data) raises a ValueError."""
        ckpt = load_checkpoint(path)
        saved = ckpt.config
        config = saved if config is None else _check_resumed_config(ckpt.path, saved, config)
        model = build_model(ckpt) if model is None else model
        trainer = cls.__new__(cls)
        trainer._build(model, config, data, ckpt.path.parent, None, data_description, callbacks, clock, show_progress)
        trainer.model_config = ckpt.meta["model"]["config"] if trainer.model_config is None else trainer.model_config
        trainer._load(ckpt)
        return trainer

    def _load(self, ckpt: Checkpoint) -> None:
        meta, where = ckpt.meta, ckpt.path
        saved_model = meta["model"]["config"]
        if saved_model is not None and _to_json(self.model_config) != saved_model:
            raise ValueError(f"{where}: the checkpoint's model config {saved_model} differs from this model's "
                             f"{_to_json(self.model_config)}")
        saved_data = {k: v for k, v in meta["data"].items() if k != "description"}
        if saved_data != self.data_info:
            raise ValueError(f"{where}: the checkpoint was trained on other data ({saved_data}), got {self.data_info}")
        try:
            for group in STATE_GROUPS:
                getattr(self, group).load_state_dict(ckpt.states[group])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: the checkpoint does not fit this model or optimizer (another model's "
                             f"weights?): {e}") from None
        trainer_rng, model_rngs, data_state = _from_json(meta["random_state"])
        if set(_model_generators(self.model)) != set(model_rngs):
            raise ValueError(f"{where}: the checkpoint's model holds generators {sorted(model_rngs)}, this model "
                             f"{sorted(_model_generators(self.model))}")
        self._set_random_state(trainer_rng, model_rngs, data_state)
        self.step = self._saved_step = int(meta["step"])
        self.ema.num_updates = self.step  # one EMA update per step
        self.elapsed_before = float(meta["elapsed_seconds"])
        self.log_window = dict(meta["log_window"])


def _row_step(line: str) -> float:
    """The step of a log row; a malformed row counts as after every step (dropped)."""
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return math.inf


def _check_resumed_config(where: Path, saved: TrainConfig, config: TrainConfig) -> TrainConfig:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    changed = [f"config.{f.name}: the checkpoint was trained with {getattr(saved, f.name)!r}, got "
               f"{getattr(config, f.name)!r}" for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)]
    if changed:
        raise ValueError(f"{where}: a resumed run may change only {', '.join(RESUMABLE_CHANGES)}:\n  "
                         + "\n  ".join(changed))
    return config
