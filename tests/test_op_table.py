"""Every op of the op table (tests/op_table.py) on its own samples, on every backend and dtype: forward and
backward against PyTorch autograd (float64 elementwise to the tolerance table, float32 relative to each array's
largest element), float64 central differences (gradcheck) on every backend, the kernels' NumPy twins (a compiled
backend against the "numpy" one), non-contiguous and negative-stride inputs against contiguous ones, the output
in the input's dtype; and a table that has an entry for every op, found by introspection, so a new op cannot be
added without its own samples."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from functools import partial

import numpy as np
import pytest
from backends import require_backend
from op_cases import Case, check_against_torch, check_gradcheck, run_ours
from op_table import TABLE, public_functional_ops
from tolerances import assert_close

import minidiff as md
from minidiff.autodiff import Function, Tensor

BACKENDS = ("numpy", "cpp")  # each kernel picks its implementation from md.get_backend()
FLOATS = (np.dtype(np.float64), np.dtype(np.float32))
DTYPES = [pytest.param(dtype, id=dtype.name) for dtype in FLOATS]
LAYOUTS = ("fortran", "strided", "reversed")

CASES = [pytest.param(entry, sample, id=f"{entry.name}-{sample.name}") for entry in TABLE for sample in entry.samples()]
GRADCHECK_CASES = [case for case in CASES if not case.values[1].skip_gradcheck]
TWIN_CASES = [case for case in CASES if case.values[0].twins]
# Other layouts in float64 for every op, and in float32 too where a kernel reads the memory (an entry with twins).
LAYOUT_CASES = [pytest.param(entry, sample, backend, dtype, id=f"{case.id}-{backend}-{dtype.name}")
                for case in CASES for entry, sample in [case.values] for backend in BACKENDS for dtype in FLOATS
                if dtype == np.float64 or entry.twins]


@pytest.fixture(scope="module", autouse=True)
def _torch_on_one_thread():
    """PyTorch on one thread (as in test_interop.py): on these tiny tensors its thread pool, on the shared 2-core
    machine, cost ~50 times the op itself."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def on(backend: str):
    require_backend(backend)
    with md.use_backend(backend):
        yield


def as_case(entry, sample) -> tuple[str, Case]:
    ours, theirs = partial(entry.ours, **sample.options), partial(entry.theirs, **sample.options)
    return f"{entry.name}[{sample.name}]", Case(sample.arrays, ours, theirs)


def assert_runs_equal(got, expected, sample, what: str) -> None:
    """Two runs of one case (output, gradients), each array to its dtype's table relative to its largest element
    times the sample's condition (other orders of summation round differently; a wrong element is off by more)."""
    (out, grads, _), (ref_out, ref_grads, _) = got, expected
    for i, (g, e) in enumerate([(out, ref_out), *zip(grads, ref_grads, strict=True)]):
        part = "forward" if i == 0 else f"grad of input {i - 1}"
        scale = np.full(e.shape, sample.condition * np.abs(e).max(initial=0.0))
        assert_close(g, e, dtype=e.dtype, scale=scale, what=f"{what} {part}:")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("entry", "sample"), CASES)
def test_matches_pytorch(entry, sample, backend, dtype):
    """Forward and backward against PyTorch autograd, attention [E45] among them."""
    with on(backend):
        check_against_torch(as_case(entry, sample), dtype, entry.out_dtype(dtype, sample.options), sample.condition)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("entry", "sample"), GRADCHECK_CASES)
def test_passes_gradcheck(entry, sample, backend):
    """The backward against float64 central differences (but at the samples they cannot judge: a tie, a kink)."""
    with on(backend):
        check_gradcheck(as_case(entry, sample))


@pytest.mark.parametrize(("entry", "sample", "backend", "dtype"), LAYOUT_CASES)
def test_other_layouts_give_the_contiguous_result_in_the_input_dtype(entry, sample, backend, dtype):
    """Fortran-ordered, strided and negative-stride inputs give what C-contiguous ones give; the output has the
    entry's dtype (the input's but for a cast) and every gradient the input's."""
    name, case = as_case(entry, sample)
    with on(backend):
        contiguous = run_ours(case, dtype)
        assert contiguous[0].dtype == entry.out_dtype(dtype, sample.options), f"{name}: output dtype"
        assert all(g.dtype == dtype for g in contiguous[1]), f"{name}: gradient dtypes"
        for layout in LAYOUTS:
            assert_runs_equal(run_ours(case, dtype, layout), contiguous, sample, f"{name} {layout} inputs")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize(("entry", "sample"), TWIN_CASES)
def test_backend_matches_the_numpy_twin(entry, sample, backend, dtype):
    """A compiled backend against the "numpy" backend, which runs the kernels' NumPy twins (entry.twins)."""
    name, case = as_case(entry, sample)
    with on("numpy"):
        twin = run_ours(case, dtype)
    with on(backend):
        assert_runs_equal(run_ours(case, dtype), twin, sample, f"{name} on {backend}")


# --- the table covers every op ------------------------------------------------------------------------------------


def functions_reached(entry, sample) -> set[type]:
    """The Function classes in the graph of the entry's output on this sample."""
    out = entry.ours(*(Tensor(a, requires_grad=True) for a in sample.arrays), **sample.options)
    found, stack = set(), [out]
    while stack:
        node = stack.pop()._node
        if node is not None:
            found.add(node.fn)
            stack.extend(p for p in node.parents if p is not None)
    return found


def function_classes() -> set[type]:
    """Every Function subclass defined in minidiff (all its modules imported)."""
    for info in pkgutil.walk_packages(md.__path__, "minidiff."):
        if not (info.name.endswith("__main__") or info.name.startswith("minidiff.exercises")):
            importlib.import_module(info.name)
    found, todo = set(), [Function]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("minidiff.") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_op_has_an_entry():
    """Every public op of minidiff.functional is an entry's op, and every Function of minidiff is reached by an
    entry's samples: a new op fails here until it is in tests/op_table.py with samples of its own."""
    names = [entry.name for entry in TABLE]
    assert len(set(names)) == len(names), "two entries share a name"
    tested = {entry.op for entry in TABLE}
    missing = sorted(name for name, f in public_functional_ops().items() if f not in tested)
    assert not missing, f"minidiff.functional ops without an entry in tests/op_table.py: {missing}"
    reached = set().union(*(functions_reached(case.values[0], case.values[1]) for case in CASES))
    missing = sorted(f"{f.__module__}.{f.__qualname__}" for f in function_classes() - reached)
    assert not missing, f"Functions no sample of tests/op_table.py reaches: {missing}"


# Kernel twins that are no differentiable op of their own, and where they are checked.
NOT_OPS = {
    "gemm.gemm_ref": "the matrix product inside conv2d's C++ kernel: tests/test_kernels_gemm.py",
    "sampler_step.sampler_step_ref": "a sampler update, which has no gradient: tests/test_kernels_sampler_step.py",
}


def kernel_twins() -> set[str]:
    """Every public NumPy twin of minidiff.kernels: the functions named *_ref, as "module.function"."""
    found = set()
    for info in pkgutil.iter_modules(importlib.import_module("minidiff.kernels").__path__):
        module = importlib.import_module(f"minidiff.kernels.{info.name}")
        found |= {f"{info.name}.{name}" for name, f in vars(module).items()
                  if name.endswith("_ref") and not name.startswith("_") and callable(f)
                  and f.__module__ == module.__name__}
    return found


def test_every_kernel_twin_is_an_entry_twin():
    """Every NumPy twin (`*_ref`) of minidiff.kernels is an entry's twin (or in NOT_OPS, which says why not), so
    test_backend_matches_the_numpy_twin compares its compiled versions with it on the entry's samples; and every
    twin an entry names exists."""
    listed = {twin for entry in TABLE for twin in entry.twins}
    missing = sorted(kernel_twins() - listed - set(NOT_OPS))
    assert not missing, f"kernel twins that no entry of tests/op_table.py lists: {missing}"
    for twin in listed:
        module, name = twin.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(f"minidiff.kernels.{module}"), name, None)), \
            f"tests/op_table.py names the twin minidiff.kernels.{twin}, which does not exist"
