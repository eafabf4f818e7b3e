"""The exercise machinery: stubs are generated from the reference, and no exercise test is vacuous
(each one fails when its exercise is replaced by the stub; the normal run shows it passes on the
reference)."""

from __future__ import annotations

import ast
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


def _solve(path: Path) -> str:
    """A student's answer: every raise of the stub file at `path` replaced (the text no longer matches its header)."""
    text = re.sub(r'raise NotImplementedError\("Exercise [^\n]*', "return None  # my answer", path.read_text())
    path.write_text(text)
    return text


def test_regenerating_keeps_a_students_edited_stub_and_writes_the_new_one_beside_it(tmp_path):
    stubs = tmp_path / "exercises"
    written = exercise_tools.write_stubs(stubs)
    generated = {p.name: p.read_text() for p in stubs.glob("*.py")}
    assert sorted(generated) == sorted(exercise_tools.render(exercise_tools.collect()))
    assert len(written) == len(generated)
    assert exercise_tools.stale_files(stubs) == []
    # The student solves ch02 and reruns the generator: the reference is the same, so nothing is written.
    mine = _solve(stubs / "ch02.py")
    assert exercise_tools.write_stubs(stubs) == []
    # The reference changes (simulated: the files hold an older generation's stubs, with valid headers).
    for name in ("ch02.py", "ch03.py"):
        old = generated[name].split("\n", 1)[1].replace("pytest --student", "pytest   --student")
        (stubs / name).write_text(exercise_tools._with_header(old))
    mine = _solve(stubs / "ch02.py")
    messages = exercise_tools.write_stubs(stubs)
    assert messages == ["kept exercises/ch02.py: it has your edits; the new stub is ch02.py.new (--force overwrites)",
                        "wrote exercises/ch03.py"]
    assert (stubs / "ch02.py").read_text() == mine
    assert (stubs / "ch02.py.new").read_text() == generated["ch02.py"]
    assert (stubs / "ch03.py").read_text() == generated["ch03.py"]  # untouched by the student: replaced
    assert exercise_tools.write_stubs(stubs, force=True) == ["wrote exercises/ch02.py"]
    assert (stubs / "ch02.py").read_text() == generated["ch02.py"]
    assert not list(stubs.glob(".*.tmp"))


def test_a_stub_without_header_counts_as_edited(tmp_path):
    """A file the generator did not write (or whose header line was deleted) is never overwritten silently."""
    stubs = tmp_path / "exercises"
    exercise_tools.write_stubs(stubs)
    (stubs / "ch01.py").write_text("# my own notes\n")
    (stubs / "ch99.py").write_text("# a file of mine\n")
    messages = exercise_tools.write_stubs(stubs)
    assert messages == ["kept exercises/ch01.py: it has your edits; the new stub is ch01.py.new (--force overwrites)"]
    assert (stubs / "ch01.py").read_text() == "# my own notes\n"
    assert (stubs / "ch99.py").is_file()
    assert sorted(exercise_tools.stale_files(stubs)) == ["ch01.py", "ch99.py"]


def _student_run(*args: str, package: Path | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_EXERCISES"}
    if package is not None:
        env |= {"MINIDIFF_EXERCISES_PACKAGE": package.name,
                "PYTHONPATH": os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "--student", "-p", "no:cacheprovider", "-p", "no:xdist", *args]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stdout[-3000:]
    return result.stdout.splitlines()


def _score_rows(lines: list[str]) -> dict[str, list[str]]:
    start = next(i for i, ln in enumerate(lines) if ln.startswith("exercise  function")) + 1
    end = next(i for i in range(start, len(lines)) if not re.match(r"ex\d{2}\.\d+ ", lines[i]))
    return {ln.split()[0]: ln.split()[1:] for ln in lines[start:end]}


def test_student_run_on_bare_stubs_is_short_with_a_score_table():
    lines = _student_run("-m", "ch02", "tests/")
    assert len(lines) < 80, "\n".join(lines)
    assert _score_rows(lines) == {"ex02.1": ["cosine_betas", "0/6", "not", "started"],
                                  "ex02.2": ["q_sample", "0/11", "not", "started"]}


def test_student_run_shows_a_short_first_failure_per_message_and_no_hypothesis_groups(tmp_path):
    """2.1 solved, 2.2 with sqrt(alpha_bar) in place of sqrt(1 - alpha_bar): 2.1 done, 2.2 failing, in few lines
    with the minimal hypothesis example and no array dumps."""
    package = tmp_path / "my_stubs"
    package.mkdir()
    for name, text in exercise_tools.render(exercise_tools.collect(), solved=True).items():
        (package / name).write_text(text)
    solved = (package / "ch02.py").read_text()
    wrong = solved.replace("eps * sqrt_one_minus_alpha_bar", "eps * sqrt_alpha_bar")
    assert wrong != solved
    (package / "ch02.py").write_text(wrong)
    lines = _student_run("-m", "ch02", *files_marking("ex02.1"), *files_marking("ex02.2"), package=package)
    text = "\n".join(lines)
    assert len(lines) < 80, text
    assert _score_rows(lines) == {"ex02.1": ["cosine_betas", "6/6", "done"],
                                  "ex02.2": ["q_sample", "0/11", "11", "failing"]}
    assert "ex02.1 (" not in text  # details only for exercises not done
    assert "ex02.2 (q_sample)" in text
    assert "Failing test case: test_e3_q_sample_is_the_closed_form_element_by_element" in text  # minimal example
    assert "ExceptionGroup" not in text and "Traceback" not in text
    assert max(len(ln) for ln in lines) <= 160


def _function_source(text: str, name: str) -> str:
    node = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name)
    return "\n".join(text.splitlines()[node.lineno - 1 - len(node.decorator_list):node.end_lineno])


def test_each_exercise_is_graded_with_the_others_at_their_reference_solutions(tmp_path):
    """2.1 left as the stub, 2.2 solved: 2.2's tests (which build schedules with 2.1's cosine_betas) pass, since
    while a test of 2.2 runs only 2.2 calls the student's code; 2.1's fail."""
    package = tmp_path / "half_done"
    package.mkdir()
    solved = exercise_tools.render(exercise_tools.collect(), solved=True)
    bare = exercise_tools.render(exercise_tools.collect())
    for name, text in solved.items():
        (package / name).write_text(text)
    ch02 = solved["ch02.py"].replace(_function_source(solved["ch02.py"], "cosine_betas"),
                                     _function_source(bare["ch02.py"], "cosine_betas"))
    assert "Exercise 2.1" in ch02 and ch02 != solved["ch02.py"]
    (package / "ch02.py").write_text(ch02)
    lines = _student_run("-m", "ch02", *files_marking("ex02.1"), *files_marking("ex02.2"), package=package)
    assert _score_rows(lines) == {"ex02.1": ["cosine_betas", "0/6", "not", "started"],
                                  "ex02.2": ["q_sample", "11/11", "done"]}, "\n".join(lines)
