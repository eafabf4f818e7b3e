"""The exercise machinery: stubs are generated from the reference, and no exercise test is vacuous
(each one fails when its exercise is replaced by the stub; the normal run shows it passes on the
reference)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from minidiff import exercise_tools

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_IDS = sorted({e.id for e in exercise_tools.collect()}, key=exercise_tools.parse_id)


def test_stubs_are_up_to_date():
    assert exercise_tools.stale_files() == [], "run `python -m minidiff exercises` and commit the result"


def test_every_stub_raises_not_implemented_with_its_number():
    for e in exercise_tools.collect():
        chapter, number = exercise_tools.parse_id(e.id)
        assert f'raise NotImplementedError("Exercise {chapter}.{number}:' in e.source


def files_marking(exercise_id: str) -> list[str]:
    """The test files that mention @pytest.mark.exercise(exercise_id) (collecting only those keeps each stub
    check to a few seconds; test_correct_answers_in_the_stubs_pass collects the whole suite in student mode)."""
    mark = re.compile(r"""exercise\(\s*["']""" + re.escape(exercise_id) + r"""["']""")
    return [str(p) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if p.name != Path(__file__).name and mark.search(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("exercise_id", EXERCISE_IDS)
def test_exercise_tests_fail_on_the_stub(exercise_id, tmp_path):
    files = files_marking(exercise_id)
    assert files, f"{exercise_id} has no test marked @pytest.mark.exercise({exercise_id!r})"
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_EXERCISES"}
    cmd = [sys.executable, "-m", "pytest", "--student", "--exercise", exercise_id, "-q", "-p", "no:cacheprovider",
           "-p", "no:xdist", f"--junitxml={report}", *files]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    # Exit 1: tests ran and failed. Anything else (2: a collection error, 5: nothing collected) means the
    # stubs broke something outside the exercise tests, which would then "fail" for the wrong reason.
    assert result.returncode == 1, f"pytest --student exited {result.returncode}:\n{result.stdout[-3000:]}"
    suite = ET.parse(report).getroot().find("testsuite")
    counts = {k: int(suite.get(k)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 1, f"{exercise_id} has no test marked @pytest.mark.exercise({exercise_id!r})"
    passed = [c.get("name") for c in suite.iter("testcase") if not list(c)]
    assert not passed, f"these tests of {exercise_id} pass on the stub, so they grade nothing: {passed}"
    assert counts["skipped"] == 0, f"{exercise_id}: exercise tests must not skip on the stub"


def test_correct_answers_in_the_stubs_pass(tmp_path):
    """Stubs filled in with the reference solutions (what a student who got everything right would
    have) pass every exercise test in student mode: the stubs import all that a solution needs."""
    package = tmp_path / "solved_stubs"
    package.mkdir()
    for name, text in exercise_tools.render(exercise_tools.collect(), solved=True).items():
        (package / name).write_text(text)
    report = tmp_path / "report.xml"
    env = {**os.environ, "MINIDIFF_EXERCISES_PACKAGE": "solved_stubs",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "--student", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           f"--junitxml={report}", str(ROOT / "tests")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    suite = ET.parse(report).getroot().find("testsuite")
    assert int(suite.get("tests")) >= len(EXERCISE_IDS)


def test_student_mode_routes_calls_to_the_stub(monkeypatch):
    """The decorator hands calls to minidiff.exercises.chNN when the id is graded, and only then."""

    def reference(*args):
        return "reference"

    reference.__qualname__ = "sampler_step_ref"  # as if defined at the top of its module
    monkeypatch.setenv("MINIDIFF_EXERCISES", "ex00.1")
    with pytest.raises(NotImplementedError, match=r"Exercise 0\.1"):
        exercise_tools.exercise("ex00.1")(reference)(None, None, None, None, None)
    monkeypatch.setenv("MINIDIFF_EXERCISES", "ex00.2")
    assert exercise_tools.exercise("ex00.1")(reference) is reference
    monkeypatch.delenv("MINIDIFF_EXERCISES")
    assert exercise_tools.exercise("ex00.1")(reference) is reference


def test_bad_exercise_ids_are_refused():
    with pytest.raises(ValueError, match=r"exercise_id: expected 'exNN\.M'"):
        exercise_tools.exercise("ex1.1")
