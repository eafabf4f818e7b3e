"""Checkpoints: a state dict (names -> arrays) saved as safetensors or as .npz, written atomically.

    checkpoint.save(model.state_dict(), "model.safetensors")
    model.load_state_dict(checkpoint.load("model.safetensors"))

The format follows the file's suffix. safetensors, written here without the `safetensors` package,
is read by it too (`safetensors.torch.load_file` gives PyTorch tensors for a PyTorch twin):

    8 bytes        N, the length of the header, unsigned little-endian
    N bytes        a JSON object {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}
                   (optionally "__metadata__": {str: str}), padded with spaces to a multiple of 8
    the rest       the tensors' raw little-endian bytes, C order; offsets count from the end of the header

A file is first written to a temporary file in the same directory, flushed to disk, then renamed over
the target (os.replace): a crash leaves the old checkpoint or the new one, never half of one. Loading
checks the whole file and raises a ValueError naming it when it is truncated or corrupt.

Large published weights (a diffusers U-Net of 35.7M parameters) are read with `load(path, mmap=True,
dtype=np.float32)`: the file is memory-mapped rather than read into memory and copied, and float16 or bfloat16
tensors are converted to float32 (both exactly).
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from minidiff.autodiff.tensor import Tensor

SAFETENSORS_DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype("u1"), "I8": np.dtype("i1"), "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"), "U32": np.dtype("<u4"), "I32": np.dtype("<i4"), "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"), "F16": np.dtype("<f2"), "F32": np.dtype("<f4"), "F64": np.dtype("<f8"),
}
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
# bfloat16 (the top 16 bits of a float32) has no NumPy dtype: `load` converts it when given a float dtype.
BF16 = "BF16"
_BF16_BITS = np.dtype("<u2")


def save(state_dict: Mapping[str, np.ndarray | Tensor], path: str | os.PathLike) -> Path:
    """Write `state_dict` (names -> arrays or Tensors of bool, int or float dtypes) to `path`, in the
    format its suffix names (.safetensors or .npz), atomically. Returns the path."""
    path = Path(path)
    write, _ = _format(path)
    arrays = _arrays(state_dict)
    _write_atomically(path, lambda f: write(arrays, f))
    return path


def load(path: str | os.PathLike, *, mmap: bool = False, dtype: Any = None) -> dict[str, np.ndarray]:
    """Read a state dict written by `save` (or by the safetensors package, or np.savez) from `path`.
    Raises FileNotFoundError when there is no such file and ValueError when it is truncated or corrupt.

    mmap=True (.safetensors only): the arrays are read-only views of the memory-mapped file, paged in from
    disk as they are read, never copied whole into memory. dtype (a float dtype): every floating-point tensor
    (F16, BF16, F32, F64) is converted to it, integer and bool tensors are left as they are; a BF16 tensor is
    read only this way. Without either, every array is a private copy in the dtype of the file.
    """
    path = Path(path)
    _, read = _format(path)
    if not isinstance(mmap, bool):
        raise TypeError(f"mmap: expected True or False, got {mmap!r}")
    if mmap and read is not _read_safetensors:
        raise ValueError(f"mmap: only .safetensors files are memory-mapped, got {str(path)!r}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"dtype: expected a float dtype (float16, float32 or float64) or None, got {dtype}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if read is _read_safetensors:
        return _read_safetensors(path, mmap=mmap, dtype=dtype)
    return {name: _as_float(array, dtype) for name, array in read(path).items()}


def _format(path: Path) -> tuple[Callable, Callable]:
    """(writer, reader) of the format that the file name's suffix names."""
    if path.suffix not in _FORMATS:
        raise ValueError(f"path: expected a file name ending in {' or '.join(_FORMATS)}, got {str(path)!r}")
    return _FORMATS[path.suffix]


def _arrays(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The values as C-ordered little-endian arrays, after checking names and dtypes."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping of names to arrays, got {type(state_dict).__name__}")
    arrays = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"state_dict: names must be non-empty strings other than '__metadata__', got {name!r}")
        if not isinstance(value, Tensor | np.ndarray | np.generic):
            raise TypeError(f"state_dict[{name!r}]: expected an array or a Tensor, got {type(value).__name__}")
        array = np.asarray(value.data if isinstance(value, Tensor) else value)
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"state_dict[{name!r}]: dtype {array.dtype} cannot be saved "
                            f"(expected one of {', '.join(str(d) for d in _DTYPE_NAMES)})")
        arrays[name] = np.asarray(array, dtype=dtype, order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)
    return arrays


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write` to a new temporary file beside `path`, fsync it, then rename it over `path`."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"path: the directory {path.parent} does not exist")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temporary, "xb") as f:  # "x": never reuse an existing file; mode follows the umask
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- safetensors ----------------------------------------------------------------------------------------


def _write_safetensors(arrays: dict[str, np.ndarray], f: BinaryIO) -> None:
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": _DTYPE_NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the tensor data starts 8-byte aligned
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for array in arrays.values():
        f.write(array.tobytes())


def _read_safetensors(path: Path, mmap: bool = False, dtype: np.dtype | None = None) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (see `load` for mmap and dtype), after checking the whole layout."""

    def corrupt(why: str) -> ValueError:
        return ValueError(f"{path}: not a valid safetensors file: {why}")

    size = path.stat().st_size
    if size < 8:  # (np.memmap cannot map an empty file)
        raise corrupt(f"the file has {size} bytes, fewer than the 8 of the header length (truncated?)")
    data = np.memmap(path, dtype=np.uint8, mode="r") if mmap else np.frombuffer(path.read_bytes(), np.uint8)
    (n,) = struct.unpack("<Q", data[:8].tobytes())
    if n > len(data) - 8:
        raise corrupt(f"the header length {n} exceeds the {len(data) - 8} bytes that follow (truncated?)")
    try:
        header = json.loads(data[8:8 + n].tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise corrupt(f"the header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise corrupt(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise corrupt("__metadata__ is not an object of strings")
    body = data[8 + n:]  # (bytes,) uint8
    arrays, spans = {}, []
    for name, entry in header.items():
        stored, shape, (begin, end) = _entry(name, entry, corrupt, bf16=dtype is not None)
        if not 0 <= begin <= end <= len(body):
            raise corrupt(f"{name!r}: data_offsets [{begin}, {end}] are outside the {len(body)} data bytes "
                          "(truncated?)")
        if end - begin != math.prod(shape) * stored.itemsize:
            raise corrupt(f"{name!r}: data_offsets span {end - begin} bytes, but shape {shape} of {stored} needs "
                          f"{math.prod(shape) * stored.itemsize}")
        array = np.asarray(body[begin:end]).view(stored).reshape(shape)  # a view of the file's bytes
        if entry["dtype"] == BF16:
            array = (array.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is a float32's top half
        arrays[name] = _as_float(array, dtype, copy=not mmap)  # without mmap, arrays of their own
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise corrupt(f"the tensors' data overlap or leave a gap at byte {covered}")
        covered = end
    if covered != len(body):
        raise corrupt(f"{len(body) - covered} bytes after the last tensor belong to none")
    return arrays


def _as_float(array: np.ndarray, dtype: np.dtype | None, copy: bool = False) -> np.ndarray:
    """array, its floating-point values converted to dtype when one is given (a copy when `copy`)."""
    if dtype is not None and array.dtype.kind == "f":
        return array.astype(dtype, copy=copy)
    return array.copy() if copy else array


def _entry(name: str, entry: Any, corrupt: Callable[[str], ValueError], bf16: bool = False) -> tuple[
        np.dtype, tuple[int, ...], tuple[int, int]]:
    """(the dtype of the stored bytes, shape, data offsets) of one header entry, checked for types. BF16 is
    accepted (stored as 16-bit words) only when `bf16`."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise corrupt(f"{name!r}: expected an object with dtype, shape and data_offsets, got {entry!r:.100}")
    if entry["dtype"] not in SAFETENSORS_DTYPES and not (bf16 and entry["dtype"] == BF16):
        hint = "; load(path, dtype=np.float32) converts BF16" if entry["dtype"] == BF16 else ""
        raise corrupt(f"{name!r}: dtype {entry['dtype']!r} is not supported "
                      f"(expected one of {list(SAFETENSORS_DTYPES)}){hint}")
    shape, offsets = entry["shape"], entry["data_offsets"]

    def is_count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or not all(map(is_count, shape)):
        raise corrupt(f"{name!r}: shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(is_count, offsets)):
        raise corrupt(f"{name!r}: data_offsets {offsets!r} is not a pair of non-negative integers")
    stored = _BF16_BITS if entry["dtype"] == BF16 else SAFETENSORS_DTYPES[entry["dtype"]]
    return stored, tuple(shape), (offsets[0], offsets[1])


# --- npz ------------------------------------------------------------------------------------------------


def _write_npz(arrays: dict[str, np.ndarray], f: BinaryIO) -> None:
    """The layout of np.savez (one <name>.npy per array in a zip), without its keyword arguments, which
    would take a state dict key such as "file" or "allow_pickle" for themselves."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Each <name>.npy member of the zip, read whole (so that zip checks its CRC-32) and parsed by NumPy."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise ValueError(f"member {member!r} is not a .npy array")
                arrays[member.removesuffix(".npy")] = np.lib.format.read_array(io.BytesIO(archive.read(member)),
                                                                               allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError, NotImplementedError) as e:
        raise ValueError(f"{path}: not a valid .npz file: {e}") from None
    return arrays


_FORMATS = {".safetensors": (_write_safetensors, _read_safetensors), ".npz": (_write_npz, _read_npz)}
