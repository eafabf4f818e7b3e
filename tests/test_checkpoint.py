"""minidiff.checkpoint: safetensors and .npz round trips on hypothesis-drawn state dicts, the byte layout
of the safetensors format, interchange with the safetensors package and PyTorch, atomic writes, and a
clear error for every kind of bad file."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from models import SmallCNN
from strategies import shapes
from tolerances import assert_close

from minidiff import checkpoint
from minidiff.autodiff import Tensor

FORMATS = (".safetensors", ".npz")
DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
          np.float16, np.float32, np.float64]
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12).filter(
    lambda s: s != "__metadata__")


@st.composite
def state_dicts(draw):
    names = draw(st.lists(NAMES, max_size=6, unique=True))
    out = {}
    for name in names:
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=False) if dtype.kind == "f" else None
        out[name] = draw(hnp.arrays(dtype, shapes(max_dims=3, max_side=5), elements=elements))
    return out


def assert_same_state(loaded, expected):
    assert list(loaded) == list(expected), "the same names, in the same order"
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape, name
        assert loaded[name].tobytes() == array.tobytes(), f"{name}: not bit for bit"


@pytest.mark.parametrize("suffix", FORMATS)
@given(state=state_dicts())
def test_round_trip_is_bit_exact(suffix, state, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / f"state{suffix}"
    assert checkpoint.save(state, path) == path
    assert_same_state(checkpoint.load(path), state)


def test_round_trip_of_a_model_its_tensors_and_awkward_layouts(tmp_path):
    model = SmallCNN(np.random.default_rng(0), dtype=np.float32)
    big_endian = np.arange(6, dtype=">f8").reshape(2, 3)
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    state = {**model.state_dict(), "tensor": Tensor(np.ones(3)), "big_endian": big_endian, "fortran": fortran,
             "scalar": np.float32(2.5), "file": np.zeros(1), "allow_pickle": np.zeros(1)}  # np.savez's keywords
    for suffix in FORMATS:
        loaded = checkpoint.load(checkpoint.save(state, tmp_path / f"m{suffix}"))
        expected = {k: np.asarray(v.data if isinstance(v, Tensor) else v) for k, v in state.items()}
        for name, array in expected.items():
            assert np.array_equal(loaded[name], array) and loaded[name].shape == array.shape, name
        assert loaded["big_endian"].dtype == np.dtype("<f8") and loaded["scalar"].dtype == np.float32
        fresh = SmallCNN(np.random.default_rng(1), dtype=np.float32)
        fresh.load_state_dict({k: loaded[k] for k in model.state_dict()})
        x = Tensor(np.random.default_rng(2).standard_normal((1, 3, 4, 4)).astype(np.float32))
        assert np.array_equal(fresh(x).data, model(x).data)


def test_safetensors_byte_layout(tmp_path):
    """8-byte little-endian header length, a JSON header padded to 8 bytes, then the raw bytes in order."""
    a, b = np.arange(3, dtype=np.float32), np.array([[1, -2]], dtype=np.int64)
    path = checkpoint.save({"a": a, "b": b}, tmp_path / "x.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header == {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                      "b": {"dtype": "I64", "shape": [1, 2], "data_offsets": [12, 28]}}
    assert raw[8 + n:] == a.astype("<f4").tobytes() + b.astype("<i8").tobytes()


# --- interchange --------------------------------------------------------------------------------------


@given(state=state_dicts())
def test_the_safetensors_package_reads_our_files_and_we_read_its(state, tmp_path_factory):
    from safetensors.numpy import load_file, save_file

    directory = tmp_path_factory.mktemp("interop")
    ours = checkpoint.save(state, directory / "ours.safetensors")
    theirs = load_file(ours)
    assert sorted(theirs) == sorted(state)
    for name, array in state.items():
        assert theirs[name].dtype == array.dtype and theirs[name].tobytes() == array.tobytes()
    save_file(state, directory / "theirs.safetensors", metadata={"format": "np", "step": "7"})
    loaded = checkpoint.load(directory / "theirs.safetensors")
    assert sorted(loaded) == sorted(state)
    for name, array in state.items():
        assert loaded[name].dtype == array.dtype and loaded[name].tobytes() == array.tobytes()


def test_numpy_reads_our_npz_and_we_read_numpys(tmp_path):
    state = {"w": np.arange(4.0), "n": np.array(3)}
    with np.load(checkpoint.save(state, tmp_path / "ours.npz")) as archive:
        assert sorted(archive.files) == ["n", "w"] and np.array_equal(archive["w"], state["w"])
    np.savez(tmp_path / "plain.npz", **state)
    np.savez_compressed(tmp_path / "packed.npz", **state)
    for name in ("plain.npz", "packed.npz"):
        loaded = checkpoint.load(tmp_path / name)
        assert all(np.array_equal(loaded[k], v) for k, v in state.items())


@pytest.mark.torch
def test_a_pytorch_model_loads_a_minidiff_safetensors_file_and_gives_the_same_output(tmp_path):
    import torch
    from reference.torch_models import SmallCNNTorch
    from safetensors.torch import load_file

    model = SmallCNN(np.random.default_rng(0))
    path = checkpoint.save(model.state_dict(), tmp_path / "cnn.safetensors")
    twin = SmallCNNTorch()
    twin.load_state_dict(load_file(path), strict=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6))
    assert_close(model(Tensor(x)).data, twin(torch.from_numpy(x)).detach().numpy())


# --- atomic writes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_a_failed_write_leaves_the_old_file_and_no_temporary(suffix, tmp_path, monkeypatch):
    path = checkpoint.save({"w": np.zeros(3)}, tmp_path / f"m{suffix}")
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save({"w": np.ones(3)}, path)
    monkeypatch.undo()
    with pytest.raises(TypeError, match="'bad'"):
        checkpoint.save({"w": np.ones(3), "bad": np.array(["text"])}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name], "no temporary file may stay behind"
    checkpoint.save({"w": np.ones(3)}, path)
    assert np.array_equal(checkpoint.load(path)["w"], np.ones(3))
    assert os.listdir(tmp_path) == [path.name]


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        checkpoint.save({}, tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        checkpoint.save({}, tmp_path / "no_such_dir" / "m.npz")
    with pytest.raises(TypeError, match="mapping"):
        checkpoint.save([("w", np.zeros(1))], tmp_path / "m.npz")
    with pytest.raises(ValueError, match="__metadata__"):
        checkpoint.save({"__metadata__": np.zeros(1)}, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="'w'"):
        checkpoint.save({"w": [1.0, 2.0]}, tmp_path / "m.npz")


# --- bad files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_missing_file(suffix, tmp_path):
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(FileNotFoundError, match=f"absent\\{suffix}"):
        checkpoint.load(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_truncation_is_a_clear_error_naming_the_file(suffix, tmp_path):
    raw = checkpoint.save({"w": np.arange(5.0), "b": np.ones((2, 2), np.float32)}, tmp_path / f"m{suffix}").read_bytes()
    cut = tmp_path / f"cut{suffix}"
    for length in range(len(raw)):
        cut.write_bytes(raw[:length])
        with pytest.raises(ValueError, match=f"cut\\{suffix}: not a valid"):
            checkpoint.load(cut)


def safetensors_file(path, header, body: bytes = b"", raw_header: bytes | None = None):
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return path


BAD_SAFETENSORS = {
    "header not JSON": (None, b"", b"{not json"),
    "header not an object": ([1, 2], b"", None),
    "unknown dtype": ({"w": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\0", None),
    "bf16 (NumPy has none)": ({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"\0\0", None),
    "offsets past the end": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, None),
    "offsets not matching the shape": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4,
                                       None),
    "negative shape": ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", None),
    "offsets reversed": ({"w": {"dtype": "U8", "shape": [0], "data_offsets": [1, 0]}}, b"\0", None),
    "overlapping tensors": ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                             "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}}, b"\0" * 3, None),
    "bytes belonging to no tensor": ({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 3, None),
    "missing field": ({"a": {"dtype": "U8", "shape": [2]}}, b"\0" * 2, None),
    "metadata not strings": ({"__metadata__": {"step": 3}}, b"", None),
}


@pytest.mark.parametrize("case", list(BAD_SAFETENSORS))
def test_corrupt_safetensors_header_is_a_clear_error(case, tmp_path):
    header, body, raw_header = BAD_SAFETENSORS[case]
    path = safetensors_file(tmp_path / "bad.safetensors", header, body, raw_header)
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a valid safetensors file"):
        checkpoint.load(path)


def test_corrupt_npz_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    for content in (b"", b"PK\x03\x04garbage", os.urandom(100)):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=r"bad\.npz: not a valid \.npz file"):
            checkpoint.load(path)
    np.save(tmp_path / "one.npy", np.zeros(2))
    (tmp_path / "one.npy").rename(path)  # a single array, not an archive
    with pytest.raises(ValueError, match=r"bad\.npz"):
        checkpoint.load(path)
    np.savez(path, objects=np.array([{"a": 1}], dtype=object))  # pickled objects are refused
    with pytest.raises(ValueError, match=r"bad\.npz.*pickle"):
        checkpoint.load(path)
    good = checkpoint.save({"w": np.arange(64.0)}, tmp_path / "flip.npz")
    raw = bytearray(good.read_bytes())
    raw[raw.index(np.arange(64.0).tobytes()) + 100] ^= 0xFF  # a flipped bit in the data: the CRC catches it
    good.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flip\.npz"):
        checkpoint.load(good)


# --- memory-mapped reading and float conversion ------------------------------------------------------------


def test_mmap_gives_the_same_arrays_as_views_of_the_file(tmp_path):
    """mmap=True: bit for bit what load gives, read-only, and views of the file itself: bytes written into the
    file afterwards show through (a copy would not see them)."""
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([1, -2], np.int64),
             "h": np.array([0.5, -1.25], np.float16), "empty": np.zeros((0, 3), np.float64)}
    path = checkpoint.save(state, tmp_path / "m.safetensors")
    mapped = checkpoint.load(path, mmap=True)
    assert_same_state(mapped, state)
    assert not any(a.flags.writeable for a in mapped.values()), "memory-mapped arrays must be read-only"
    raw = path.read_bytes()
    with open(path, "r+b") as f:  # overwrite w's bytes in place
        f.seek(raw.index(state["w"].tobytes()))
        f.write(np.full(6, 7.0, np.float32).tobytes())
    assert np.array_equal(mapped["w"], np.full((2, 3), 7.0, np.float32)), "not a view of the mapped file"
    assert np.array_equal(checkpoint.load(path)["w"], mapped["w"])


def test_mmap_every_truncation_is_a_clear_error(tmp_path):
    raw = checkpoint.save({"w": np.arange(5.0), "b": np.ones((2, 2), np.float32)}, tmp_path / "m.safetensors") \
        .read_bytes()
    cut = tmp_path / "cut.safetensors"
    for length in range(len(raw)):
        cut.write_bytes(raw[:length])
        with pytest.raises(ValueError, match=r"cut\.safetensors: not a valid"):
            checkpoint.load(cut, mmap=True)


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The bfloat16 words of float32 values whose low 16 bits are zero (so they are exactly bfloat16)."""
    bits = values.astype(np.float32).view(np.uint32)
    assert not np.any(bits & 0xFFFF), "test values must be exact bfloat16 numbers"
    return (bits >> 16).astype("<u2")


@pytest.mark.parametrize("mmap", [False, True])
def test_dtype_converts_float16_and_bfloat16_exactly_and_leaves_integers(mmap, tmp_path):
    """float16 -> float32 is exact (every half is a float); a bfloat16 is the top half of a float32, so numbers
    with 16 zero low bits (1, -2.5, 3.140625, 2^-126, -inf) come back exactly. Integers keep their dtype."""
    half = np.array([1e-4, -3.5, 65504.0, 0.0], np.float16)
    exact = np.array([1.0, -2.5, 3.140625, 2.0**-126, -np.inf], np.float32)
    bits = bfloat16_bits(exact)
    header = {"h": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
              "b": {"dtype": "BF16", "shape": [5], "data_offsets": [8, 18]},
              "i": {"dtype": "I32", "shape": [1], "data_offsets": [18, 22]}}
    path = safetensors_file(tmp_path / "mixed.safetensors", header,
                            half.tobytes() + bits.tobytes() + np.array([7], "<i4").tobytes())
    loaded = checkpoint.load(path, mmap=mmap, dtype=np.float32)
    assert loaded["h"].dtype == np.float32 and np.array_equal(loaded["h"], half.astype(np.float32))
    assert loaded["b"].dtype == np.float32 and np.array_equal(loaded["b"], exact), loaded["b"]
    assert loaded["i"].dtype == np.int32 and loaded["i"].tolist() == [7]
    assert checkpoint.load(path, mmap=mmap, dtype=np.float64)["b"].dtype == np.float64
    with pytest.raises(ValueError, match=r"'b': dtype 'BF16' is not supported .*dtype=np\.float32\) converts BF16"):
        checkpoint.load(path, mmap=mmap)


def test_dtype_and_mmap_arguments(tmp_path):
    npz = checkpoint.save({"w": np.arange(3.0), "n": np.arange(2)}, tmp_path / "m.npz")
    converted = checkpoint.load(npz, dtype=np.float32)
    assert converted["w"].dtype == np.float32 and converted["n"].dtype == np.arange(2).dtype
    with pytest.raises(ValueError, match=r"mmap: only \.safetensors files are memory-mapped"):
        checkpoint.load(npz, mmap=True)
    with pytest.raises(TypeError, match="dtype: expected a float dtype"):
        checkpoint.load(npz, dtype=np.int32)
    with pytest.raises(TypeError, match="mmap: expected True or False"):
        checkpoint.load(npz, mmap="yes")
