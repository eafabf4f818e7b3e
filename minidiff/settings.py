"""Process-wide switches read from the environment."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def fast_mode() -> bool:
    """MINIDIFF_FAST=1: notebooks and demos shrink data, steps and T to run in seconds (CI uses it)."""
    return os.environ.get("MINIDIFF_FAST", "").strip() not in ("", "0")


def optional_reference(name: str, shows: str) -> ModuleType | None:
    """The reference library `name` ("torch" or "diffusers") for a comparison cell of a notebook, or None with
    a one-line note of what installing it shows. minidiff never needs either; with MINIDIFF_REQUIRE_TORCH=1 (as
    in CI, where both are installed) a missing one is an error instead of a skipped comparison."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("MINIDIFF_REQUIRE_TORCH") == "1":
            raise
        print(f"`pip install torch diffusers` shows {shows} here")
        return None
