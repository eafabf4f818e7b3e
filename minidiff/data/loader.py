"""DataLoader: shuffled mini-batches of in-memory arrays, optional random horizontal flips, all drawn from one
numpy Generator, with a state dict for exact resume (a resumed training run sees the same batches, bit for bit).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from minidiff.data import _validate as _v

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over `arrays` (a tuple of arrays with the same first dimension N: images, labels, ...) in
    batches of `batch_size`, each batch a tuple with one slice of every array (copies, never views).

    shuffle: a fresh permutation of the N examples every epoch, drawn from `rng`; else file order.
    drop_last: leave out the last, smaller batch of an epoch.
    flip: mirror each image of the first array, which must be (N, C, H, W), left to right (the last
        axis) with probability 1/2, drawn from `rng` per batch; the other arrays are left alone.
    rng: the numpy Generator that shuffle and flip draw from (needed when either is on). For an exact
        resume give the loader a Generator of its own: its state is part of `state_dict()`.

    Iterating continues the current epoch where it stopped (after a `break`, or after `load_state_dict`)
    and starts the next one once the current one is finished; `len()` is the number of batches per epoch,
    `epoch` the number of epochs started and `position` the number of batches handed out in the current one.
    """

    def __init__(self, arrays: Sequence[Any], batch_size: int, *, shuffle: bool = True, drop_last: bool = False,
                 flip: bool = False, rng: np.random.Generator | None = None) -> None:
        self.arrays = _check_arrays(arrays)
        self.num_examples = len(self.arrays[0])
        self.batch_size = _v.positive_int(batch_size, "batch_size")
        self.shuffle = _v.flag(shuffle, "shuffle")
        self.drop_last = _v.flag(drop_last, "drop_last")
        self.flip = _v.flag(flip, "flip")
        self.rng = _v.generator(rng, optional=True)
        if (self.shuffle or self.flip) and self.rng is None:
            raise ValueError("rng: pass a numpy.random.Generator (np.random.default_rng(seed)) to shuffle or flip")
        if self.flip and self.arrays[0].ndim != 4:
            raise ValueError(f"flip: expected images of shape (N, C, H, W) as the first array, got shape "
                             f"{self.arrays[0].shape}")
        if self.drop_last and self.batch_size > self.num_examples:
            raise ValueError(f"batch_size: with drop_last=True, expected at most the {self.num_examples} examples "
                             f"(else an epoch has no batch), got {self.batch_size}")
        self.epoch = 0  # epochs started
        self.position = 0  # batches handed out in the current epoch
        self._order: np.ndarray | None = None  # (N,) the current epoch's order of the examples
        self._rng_at_epoch_start: dict | None = None  # the Generator's state just before it drew that order

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        if self._order is None or self.position == len(self):
            self._start_epoch()
        while self.position < len(self):
            batch = self._batch(self._order[self.position * self.batch_size:(self.position + 1) * self.batch_size])
            self.position += 1
            yield batch

    def _start_epoch(self) -> None:
        self._rng_at_epoch_start = self._rng_state()
        self._order = self._draw_order()
        self.epoch += 1
        self.position = 0

    def _draw_order(self) -> np.ndarray:
        return self.rng.permutation(self.num_examples) if self.shuffle else np.arange(self.num_examples)

    def _batch(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = tuple(array[rows] for array in self.arrays)  # fancy indexing: copies
        if self.flip:
            images = batch[0]  # (b, C, H, W)
            mirrored = self.rng.random(len(rows)) < 0.5  # (b,)
            images[mirrored] = images[mirrored, ..., ::-1]
        return batch

    # --- exact resume --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: epoch, position in it, the Generator's state now and at the epoch's start
        (from which the epoch's order is redrawn), and the settings it must be resumed with. Plain ints,
        bools, strings and dicts (JSON-serializable)."""
        return {"num_examples": self.num_examples, "batch_size": self.batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "flip": self.flip, "epoch": self.epoch, "position": self.position,
                "rng_at_epoch_start": self._rng_at_epoch_start, "rng": self._rng_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()` of a loader over the same data with the same settings: the next
        batches are the ones that loader would have given. The Generator is set to the saved state."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state: expected the mapping from DataLoader.state_dict(), got {type(state).__name__}")
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise ValueError(f"state: not a DataLoader state dict, missing {sorted(missing)}")
        for key in ("num_examples", "batch_size", "shuffle", "drop_last", "flip"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state: saved by a loader with {key}={state[key]!r}, this one has "
                                 f"{key}={getattr(self, key)!r}")
        epoch, position = state["epoch"], state["position"]
        if not (isinstance(epoch, int) and isinstance(position, int) and epoch >= 0 and 0 <= position <= len(self)
                and (epoch > 0 or position == 0)):
            raise ValueError(f"state: expected 0 <= position <= {len(self)} within a started epoch, got epoch "
                             f"{epoch!r}, position {position!r}")
        at_epoch_start = self._check_rng_state(state["rng_at_epoch_start"]) if epoch > 0 else None
        now = self._check_rng_state(state["rng"])
        self._order = None
        if epoch > 0:
            if at_epoch_start is not None:
                self.rng.bit_generator.state = at_epoch_start
            self._order = self._draw_order()
        if now is not None:
            self.rng.bit_generator.state = now
        self._rng_at_epoch_start = at_epoch_start
        self.epoch, self.position = epoch, position

    def _rng_state(self) -> dict | None:
        return None if self.rng is None else self.rng.bit_generator.state

    def _check_rng_state(self, state: Any) -> dict | None:
        """A saved Generator state for this loader's Generator (None when the loader has none)."""
        if self.rng is None:
            return None
        name = type(self.rng.bit_generator).__name__
        if not isinstance(state, Mapping) or state.get("bit_generator") != name:
            raise ValueError(f"state: expected the state of a {name} Generator, got {state!r:.80}")
        return dict(state)


def _check_arrays(arrays: Any) -> tuple[np.ndarray, ...]:
    """A non-empty tuple or list of numpy arrays with the same first dimension N >= 1."""
    if not isinstance(arrays, tuple | list):
        raise TypeError(f"arrays: expected a tuple of arrays (e.g. (images, labels)), got {type(arrays).__name__}")
    if not arrays:
        raise ValueError("arrays: expected a tuple of at least one array, got an empty one")
    for i, array in enumerate(arrays):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"arrays[{i}]: expected a numpy array, got {type(array).__name__}")
    lengths = [array.shape[0] if array.ndim else 0 for array in arrays]
    if lengths[0] == 0 or any(n != lengths[0] for n in lengths):
        raise ValueError(f"arrays: expected arrays with the same number N >= 1 of examples along their first "
                         f"dimension, got shapes {[array.shape for array in arrays]}")
    return tuple(arrays)
