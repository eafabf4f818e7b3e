"""Test configuration: hypothesis profiles, markers, student grading mode, torch and CUDA gating.

Options:
    --student            grade the student stubs in minidiff/exercises/ (only exercise tests run)
    --exercise exNN.M    with --student: grade only these exercises (repeatable)
Environment:
    HYPOTHESIS_PROFILE   "ci" (deterministic; the default when CI is set) or "dev"
    MINIDIFF_REQUIRE_TORCH=1   torch-marked tests fail instead of skipping when torch is missing
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=60, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True, scope="session")
def _one_blas_thread():
    """BLAS on one thread: the suite's matrices are small and pytest -n auto already fills the cores; two
    BLAS threads per worker on two cores made the training tests several times slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("minidiff")
    group.addoption("--student", action="store_true", help="grade the stubs in minidiff/exercises/")
    group.addoption("--exercise", action="append", default=[], metavar="exNN.M",
                    help="with --student: grade only this exercise (repeatable)")


def pytest_configure(config: pytest.Config) -> None:
    # Must happen before minidiff is imported: the @exercise decorator reads it at import time.
    if config.getoption("--student"):
        os.environ["MINIDIFF_EXERCISES"] = ",".join(config.getoption("--exercise")) or "all"
    elif config.getoption("--exercise"):
        raise pytest.UsageError("--exercise goes with --student")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    graded = set(config.getoption("--exercise"))
    kept, dropped = [], []
    for item in items:
        ex = item.get_closest_marker("exercise")
        if ex is not None:
            ex_id = ex.args[0]
            if not re.fullmatch(r"ex\d{2}\.\d+", ex_id):
                raise pytest.UsageError(f"{item.nodeid}: exercise marker wants 'exNN.M', got {ex_id!r}")
            item.add_marker(getattr(pytest.mark, f"ch{ex_id[2:4]}"))
        if config.getoption("--student"):
            # Only exercise tests are graded on stubs; everything else would fail for unrelated reasons.
            wanted = ex is not None and (not graded or ex.args[0] in graded)
            (kept if wanted else dropped).append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            if os.environ.get("MINIDIFF_REQUIRE_TORCH") == "1":
                pytest.fail("torch is required here (MINIDIFF_REQUIRE_TORCH=1): pip install -e '.[torch]'")
            pytest.skip("torch is not installed (pip install -e '.[torch]')")
    if item.get_closest_marker("cuda"):
        from minidiff import backend

        why = backend.why_unavailable("cuda")
        if why:
            pytest.skip(f"needs a CUDA GPU: {why}")

