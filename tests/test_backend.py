"""Backend selection: names, defaults, the environment variable, the NumPy fallback, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from backends import require_backend

import minidiff as md
from minidiff import backend


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_numpy_is_always_available():
    assert "numpy" in md.available_backends()
    assert backend.why_unavailable("numpy") == ""


def test_use_backend_restores_the_previous_backend():
    before = md.get_backend()
    with md.use_backend("numpy") as name:
        assert name == "numpy" == md.get_backend()
    assert md.get_backend() == before
    with pytest.raises(KeyError), md.use_backend("numpy"):
        raise KeyError("restored even on error")
    assert md.get_backend() == before


def test_set_backend_persists():
    before = md.get_backend()
    try:
        md.set_backend("numpy")
        assert md.get_backend() == "numpy"
    finally:
        md.set_backend(before)


@pytest.mark.parametrize("name", ["torch", "", "CPP", None])
def test_unknown_backend_names_are_refused(name):
    with pytest.raises(ValueError, match="backend: expected one of numpy, cpp, cuda, cuda-emu"):
        md.set_backend(name)


def test_unavailable_backend_says_what_is_missing_and_how_to_get_it():
    why = backend.why_unavailable("cuda")
    if not why:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available: .*To get it: install CuPy"):
        md.set_backend("cuda")


def test_default_is_the_fastest_available():
    result = run_python("import minidiff; print(minidiff.get_backend())", MINIDIFF_BACKEND="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == md.available_backends()[0]


@pytest.mark.parametrize("name", ["numpy", "cpp", "cuda-emu"])
def test_environment_variable_picks_the_backend(name):
    require_backend(name)
    result = run_python("import minidiff; print(minidiff.get_backend())", MINIDIFF_BACKEND=name)
    assert result.stdout.strip() == name, result.stderr


def test_environment_variable_with_a_bad_name_fails_clearly():
    result = run_python("import minidiff; minidiff.get_backend()", MINIDIFF_BACKEND="tpu")
    assert result.returncode != 0
    assert "backend: expected one of numpy, cpp, cuda, cuda-emu, got 'tpu'" in result.stderr


def test_without_the_extension_numpy_runs_and_one_line_says_why():
    """A student without a compiler: _C cannot be imported; everything falls back to NumPy."""
    code = """
        import sys, warnings
        sys.modules["minidiff._C"] = None  # makes `from minidiff import _C` raise ImportError
        import numpy as np, minidiff
        from minidiff.kernels import StepCoefs, sampler_step
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(minidiff.get_backend(), minidiff.available_backends())
            with minidiff.use_backend("numpy"):
                pass
            x = np.ones(3)
            print(sampler_step(x, x, None, StepCoefs(2.0, 1.0)).tolist())
        print(len(caught), str(caught[0].message))
        try:
            minidiff.set_backend("cpp")
        except RuntimeError as err:
            print(err)
    """
    result = run_python(code, MINIDIFF_BACKEND="")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "numpy ['numpy']"
    assert lines[1] == "[3.0, 3.0, 3.0]"
    assert lines[2].startswith("1 minidiff: using the NumPy backend: minidiff._C could not be imported")
    assert "backend 'cpp' is not available" in lines[3] and "To get it:" in lines[3]
    assert md.get_num_threads() >= 1


def test_set_num_threads_reaches_the_kernels():
    require_backend("cpp")
    before = md.get_num_threads()
    try:
        md.set_num_threads(1)
        assert md.get_num_threads() == 1
        x = np.arange(2**17, dtype=np.float64)
        with md.use_backend("cpp"):
            out = md.kernels.sampler_step(x, x, None, md.kernels.StepCoefs(1.0, 1.0))
        np.testing.assert_array_equal(out, 2 * x)
    finally:
        md.set_num_threads(before)


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", 10**6])
def test_set_num_threads_refuses_nonsense(n):
    with pytest.raises(ValueError, match=r"n: expected an int in 1\.\.1024"):
        md.set_num_threads(n)


def test_cpp_set_num_threads_rechecks_the_bound():
    require_backend("cpp")
    with pytest.raises(ValueError, match=r"n: expected a number of threads in 1\.\.1024, got 5000"):
        md.backend.extension().set_num_threads(5000)


def test_omp_num_threads_is_honoured():
    require_backend("cpp")
    result = run_python("import minidiff; print(minidiff.get_num_threads())", OMP_NUM_THREADS="1")
    assert result.stdout.strip() == "1", result.stderr


def test_openmp_threads_sleep_between_kernels_unless_the_user_chose_otherwise():
    """Spinning OpenMP workers (libgomp's default) take the cores from the NumPy work between kernels (a U-Net
    forward ran slower on 2 threads than on 1): loading the extension asks for OMP_WAIT_POLICY=PASSIVE, and
    keeps a policy the user set."""
    import subprocess
    import sys

    code = "import os, minidiff as md; md.available_backends(); print(os.environ.get('OMP_WAIT_POLICY'))"
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if given is not None:
            env["OMP_WAIT_POLICY"] = given
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, out.stderr
