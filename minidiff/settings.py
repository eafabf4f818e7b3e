"""Process-wide switches read from the environment."""

from __future__ import annotations

import os


def fast_mode() -> bool:
    """MINIDIFF_FAST=1: notebooks and demos shrink data, steps and T to run in seconds (CI uses it)."""
    return os.environ.get("MINIDIFF_FAST", "").strip() not in ("", "0")
