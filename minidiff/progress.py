"""Progress bars for long loops (sampling, evaluation): tqdm's, or plain lines where tqdm is missing."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator


def _plain_progress(iterable: Iterable, total: int | None, desc: str) -> Iterator:
    """A progress report without tqdm: a line on stderr at every tenth of the way (every 100 items when the
    total is not known, as in a run with a time budget)."""
    every = max(1, total // 10) if total else 100
    for i, item in enumerate(iterable, start=1):
        yield item
        if i % every == 0 or i == total:
            print(f"{desc}: {i}/{total or '?'}", file=sys.stderr, flush=True)


def progress(iterable: Iterable, total: int | None, desc: str, enabled: bool = True) -> Iterable:
    """tqdm's progress bar when tqdm is installed (a dependency of minidiff, but a
    student may have installed without it), else plain lines."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain_progress(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, leave=False)
