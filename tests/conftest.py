"""Test configuration: hypothesis profiles, markers, student grading mode, torch and CUDA gating.

Options:
    --student            grade the student stubs in minidiff/exercises/ (only exercise tests run)
    --exercise exNN.M    with --student: grade only these exercises (repeatable)
    --exercises-from PATH   with --student: grade the stubs in PATH (a student's minidiff/exercises/ folder, or a
                         whole copy of theirs) instead of minidiff/exercises/, each exercise with the others at
                         their reference solutions (how a teacher grades what students hand in)
Environment:
    HYPOTHESIS_PROFILE   "ci" (deterministic; the default when CI is set) or "dev"
    MINIDIFF_REQUIRE_TORCH=1   torch-marked tests fail instead of skipping when torch is missing
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import feedback
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
    group.addoption("--exercises-from", metavar="PATH",
                    help="with --student: grade the stubs in PATH (a student's minidiff/exercises/ or their copy)")


def pytest_configure(config: pytest.Config) -> None:
    # Must happen before minidiff is imported: the @exercise decorator reads it at import time.
    if config.getoption("--student"):
        os.environ["MINIDIFF_EXERCISES"] = ",".join(config.getoption("--exercise")) or "all"
        if config.getoption("--exercises-from"):
            os.environ["MINIDIFF_EXERCISES_PACKAGE"] = str(_stub_folder(config.getoption("--exercises-from")))
        _kind_output(config)
    elif config.getoption("--exercise") or config.getoption("--exercises-from"):
        raise pytest.UsageError("--exercise and --exercises-from go with --student")


def _stub_folder(path: str) -> Path:
    """The folder of chNN.py stubs in PATH: PATH itself, or PATH/minidiff/exercises (a whole student copy)."""
    folder = Path(path).expanduser().resolve()
    for candidate in (folder, folder / "minidiff" / "exercises"):
        if candidate.is_dir() and any(candidate.glob("ch[0-9][0-9].py")):
            return candidate
    raise pytest.UsageError(f"--exercises-from: {path} holds no chNN.py stubs (give a student's minidiff/exercises/ "
                            "folder or their whole copy)")


def _kind_output(config: pytest.Config) -> None:
    """Student mode: short arrays, one minimal hypothesis example, and (unless --tb is given) the score table
    with one line per distinct failure instead of pytest's tracebacks."""
    import numpy as np

    np.set_printoptions(threshold=20, edgeitems=2, precision=5)
    settings.register_profile("student", settings.default, report_multiple_bugs=False, print_blob=False)
    settings.load_profile("student")
    if config.option.tbstyle == "auto":
        config.option.tbstyle = "no"
        config.option.reportchars = ""


def pytest_assertrepr_compare(config: pytest.Config, op: str, left, right) -> list[str] | None:
    """Student mode: a failed `==` of a plain assert explained in words (a dtype, a shape; see feedback.py)."""
    return feedback.explain_comparison(op, left, right) if config.getoption("--student") else None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Student mode collects only the test files that grade exercises: the others may need PyTorch or the
    developer tools, which a student's install (`pip install -e ".[student]"`) does not have."""
    if config.getoption("--student") and collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        return "mark.exercise(" not in collection_path.read_text(encoding="utf-8")
    return None


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



@pytest.fixture(autouse=True)
def _grade_one_exercise_at_a_time(request: pytest.FixtureRequest):
    """Student mode: during an exercise test only that exercise calls the student's stub; every other exercise
    runs its reference solution, so each exercise is graded on its own."""
    ex = request.node.get_closest_marker("exercise")
    if ex is None or not request.config.getoption("--student"):
        yield
        return
    from minidiff import exercise_tools

    exercise_tools.grade_only({ex.args[0]})
    try:
        yield
    finally:
        exercise_tools.grade_only(None)


# --- student mode: the score table --------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Student mode: tag each exercise test's report with its exercise and a short account of a failure (the
    place in the student's stub, then the first lines of the error); xdist carries user_properties over."""
    report = yield
    ex = item.get_closest_marker("exercise")
    if ex is not None and item.config.getoption("--student"):
        report.user_properties.append(("exercise", ex.args[0]))
        if report.failed and call.excinfo is not None:
            report.user_properties.append(("why", feedback.short_failure(call.excinfo)))
    return report


_SCORES: dict[str, dict[str, tuple[bool, str | None]]] = {}  # exercise id -> test node id -> (passed, why)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    props = dict(report.user_properties)
    if "exercise" in props:
        tests = _SCORES.setdefault(props["exercise"], {})
        passed, why = tests.get(report.nodeid, (True, None))
        passed = passed and not report.failed and (report.when != "call" or report.passed)
        tests[report.nodeid] = (passed, why or props.get("why"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Student mode: a row per graded exercise (its function, tests passed of run, a status), then each distinct
    failure of the exercises not yet done, once."""
    if not config.getoption("--student") or not _SCORES:
        return
    from minidiff import exercise_tools

    functions: dict[str, list[str]] = {}
    for e in exercise_tools.collect():
        functions.setdefault(e.id, []).append(e.qualname)
    tr = terminalreporter
    tr.section("exercise scores")
    tr.write_line(f"{'exercise':<9} {'function':<38} {'passed':>7}  status")
    details = []
    for ex_id in sorted(_SCORES, key=exercise_tools.parse_id):
        results = _SCORES[ex_id]
        passed = sum(ok for ok, _ in results.values())
        failures: dict[str, str] = {}  # distinct message -> the first test failing with it
        for nodeid, (ok, why) in results.items():
            if not ok and why:
                failures.setdefault(why, nodeid.split("::")[-1])
        started = not failures or not all("NotImplementedError" in w for w in failures)
        status = "done" if passed == len(results) else f"{len(results) - passed} failing" if started else "not started"
        function = ", ".join(functions.get(ex_id, ["?"]))
        tr.write_line(f"{ex_id:<9} {function:<38} {f'{passed}/{len(results)}':>7}  {status}")
        if status.endswith("failing"):
            shown = list(failures.items())[:3]
            details += [f"{ex_id} ({function}), {len(failures)} different failure(s):"]
            details += [f"  {test}:\n      " + why.replace("\n", "\n      ") for why, test in shown]
    if details:
        tr.write_line("")
        for line in details:
            tr.write_line(line)
    if config.option.tbstyle == "no":
        tr.write_line("full tracebacks: add --tb=short (and --exercise exNN.M to grade one exercise)")
