"""Which compiled backends a test may use here."""

from __future__ import annotations

import os

import pytest

COMPILED = ("cpp", "cuda-emu")


def require_backend(name: str) -> None:
    """Skip a test whose backend cannot run here, or fail under MINIDIFF_REQUIRE_EXTENSION=1 (CI)."""
    from minidiff import backend

    why = backend.why_unavailable(name)
    if why:
        if name in ("cpp", "cuda-emu") and os.environ.get("MINIDIFF_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"backend {name} is required here (MINIDIFF_REQUIRE_EXTENSION=1): {why}")
        pytest.skip(f"backend {name} unavailable: {why}")
