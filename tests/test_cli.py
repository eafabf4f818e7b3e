"""python -m minidiff: info tells a helper what they need; exercises keeps the stubs in sync."""

from __future__ import annotations

import os
import subprocess
import sys

import minidiff as md


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minidiff", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_info_names_versions_backends_build_and_cpu():
    result = run("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("minidiff", md.__version__, "numpy", "backends:", "cuda-emu", "current", "cpu:", "features"):
        assert needle in out
    for name in md.available_backends():
        assert f"{name} " in out
    ext = md.backend._extension()[0]
    if ext is not None:
        info = ext.build_info()
        assert info["compiler"] in out
        assert ("-march=native" in out) and (str(info["march_native"]) in out)


def test_info_says_for_every_backend_whether_it_runs_and_why_not():
    result = run("info", MINIDIFF_BACKEND="numpy")
    for name in md.backend.BACKENDS + md.backend.TEST_BACKENDS:
        why = md.backend.why_unavailable(name)
        assert f"{name}  " in result.stdout
        assert (f"unavailable: {why}" if why else "available") in result.stdout


def test_demo_says_plainly_that_it_is_not_there_yet():
    result = run("demo")
    assert result.returncode == 2
    assert "not available yet" in result.stderr


def test_exercises_check_reports_up_to_date_stubs():
    result = run("exercises", "--check")
    assert result.returncode == 0, result.stdout
    assert "up to date" in result.stdout
