"""Timing helpers shared by the benchmarks: pinned threads, interleaved runs, medians, ratios.

The machine is shared and noisy, so a benchmark never reports one absolute time: it runs the
contenders in turn (A B C A B C ...), takes medians, and reports each as a ratio to PyTorch measured
in the same run.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import minidiff as md


@contextlib.contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Every library in the run uses n threads: minidiff's kernels, PyTorch, and NumPy's BLAS."""
    import torch
    from threadpoolctl import threadpool_limits

    before_md, before_torch = md.get_num_threads(), torch.get_num_threads()
    md.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        md.set_num_threads(before_md)
        torch.set_num_threads(before_torch)


def interleaved_medians(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                        min_seconds: float = 0.02) -> dict[str, float]:
    """Median seconds per call of each contender, timed in turns. A call shorter than `min_seconds`
    is repeated inside one timing so that the clock's resolution does not matter."""
    inner = {}
    for name, fn in contenders.items():
        for _ in range(warmup):
            fn()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            fn()
            count += 1
        inner[name] = max(1, count)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def ratio_table(title: str, medians: dict[str, float], reference: str = "torch") -> str:
    ref = medians[reference]
    lines = [title, f"  {'contender':<16} {'median':>12} {'vs ' + reference:>10}"]
    for name, seconds in medians.items():
        lines.append(f"  {name:<16} {seconds * 1e6:10.1f}us {seconds / ref:9.2f}x")
    return "\n".join(lines)
