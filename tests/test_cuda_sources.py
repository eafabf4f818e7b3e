"""Every CUDA source compiles with nvcc for sm_80 and sm_90 (when nvcc exists: always in CI), and
every one has a cuda-emu twin that runs its very source on the CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from nvrtc import NVRTC, find_library

from minidiff.kernels import _cuda

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))
ARCHS = ("80", "90")


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files under {CSRC / 'cuda'}"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_for_sm80_and_sm90(cu, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("MINIDIFF_REQUIRE_NVCC") == "1":
            pytest.fail("nvcc is required here (MINIDIFF_REQUIRE_NVCC=1) but is not on PATH")
        pytest.skip("nvcc not found")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [nvcc, "-std=c++17", "-Werror", "all-warnings", f"-I{CSRC / 'include'}", *gencode, "-c", str(cu),
           "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_every_cuda_source_has_an_emulated_twin(cu):
    twin = CSRC / "emu" / f"{cu.stem}_emu.cpp"
    assert twin.is_file(), f"{cu.name} needs {twin.relative_to(CSRC.parent)} so that CI runs it on the CPU"
    assert f'#include "cuda/{cu.name}"' in twin.read_text()
    assert f"csrc/emu/{twin.name}" in (CSRC.parent / "CMakeLists.txt").read_text()


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cuda_sources_need_no_standard_headers(cu):
    """NVRTC (CuPy's run-time compiler) has no C++ standard library: only project headers."""
    includes = [ln for ln in cu.read_text().splitlines() if ln.startswith("#include")]
    assert all(ln.startswith('#include "minidiff/') for ln in includes), includes


def test_every_cuda_source_declares_its_template_instances():
    assert set(_cuda.INSTANCES) == {cu.name for cu in CU_FILES}


@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_nvrtc_compiles_what_cupy_will_load(cu):
    """CuPy compiles at run time with NVRTC: the same source, options and name expressions here,
    for both architectures, without a GPU."""
    library = find_library()
    if library is None:
        if os.environ.get("MINIDIFF_REQUIRE_NVCC") == "1":
            pytest.fail("NVRTC is required here: pip install nvidia-cuda-nvrtc-cu12 (part of the dev extra)")
        pytest.skip("NVRTC not installed (pip install nvidia-cuda-nvrtc-cu12)")
    nvrtc = NVRTC(library)
    instances = list(_cuda.INSTANCES[cu.name])
    for arch in ARCHS:
        lowered = nvrtc.compile(cu.read_text(), cu.name, [*_cuda.nvrtc_options(), f"-arch=compute_{arch}"], instances)
        assert all(expr.split("<")[0] in mangled for expr, mangled in lowered.items()), lowered
