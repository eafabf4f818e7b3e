"""The exercise machinery: stubs are generated from the reference, and no exercise test is vacuous
(each one fails when its exercise is replaced by the stub; the normal run shows it passes on the
reference)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import feedback
import numpy as np
import pytest
from tolerances import assert_close

from minidiff import exercise_tools, student_copy

ROOT = Path(__file__).resolve().parent.parent
EXERCISE_IDS = sorted({e.id for e in exercise_tools.collect()}, key=exercise_tools.parse_id)
# In a student copy the "solutions" are the stubs' raises: the tests that need the real ones skip there.
needs_solutions = pytest.mark.skipif(exercise_tools.STUDENT_COPY, reason="a student copy has no reference solutions")


def test_stubs_are_up_to_date():
    assert exercise_tools.stale_files() == [], "run `python -m minidiff exercises` and commit the result"


def test_every_stub_raises_not_implemented_with_its_number():
    for e in exercise_tools.collect():
        chapter, number = exercise_tools.parse_id(e.id)
        assert f'raise NotImplementedError("Exercise {chapter}.{number}:' in e.source


def files_marking(exercise_id: str) -> list[str]:
    """The test files that mention @pytest.mark.exercise(exercise_id) (collecting only those keeps a student-mode
    run short; test_correct_answers_in_the_stubs_pass collects the whole suite in student mode)."""
    mark = re.compile(r"""exercise\(\s*["']""" + re.escape(exercise_id) + r"""["']""")
    return [str(p) for p in sorted((ROOT / "tests").glob("test_*.py"))
            if p.name != Path(__file__).name and mark.search(p.read_text(encoding="utf-8"))]


def test_every_exercise_test_fails_on_its_stub(tmp_path):
    """One student-mode run on the bare stubs grades every exercise (student mode runs each exercise's tests with
    the others at their reference solutions, as `--exercise` alone would; one run instead of one per exercise saves
    a PyTorch and diffusers import each). Every test of every exercise must fail on its stub."""
    files = sorted({f for exercise_id in EXERCISE_IDS for f in files_marking(exercise_id)})
    report = tmp_path / "report.xml"
    env = {k: v for k, v in os.environ.items() if k != "MINIDIFF_EXERCISES"}
    cmd = [sys.executable, "-m", "pytest", "--student", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
           f"--junitxml={report}", *files]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)
    # Exit 1: tests ran and failed. Anything else (2: a collection error, 5: nothing collected) means the
    # stubs broke something outside the exercise tests, which would then "fail" for the wrong reason.
    assert result.returncode == 1, f"pytest --student exited {result.returncode}:\n{result.stdout[-3000:]}"
    outcomes: dict[str, list[tuple[str, str]]] = {}  # exercise id -> [(test name, "passed" | "failed" | ...)]
    for case in ET.parse(report).getroot().iter("testcase"):
        exercise = next((p.get("value") for p in case.iter("property") if p.get("name") == "exercise"), None)
        assert exercise is not None, f"{case.get('name')} ran in student mode without an exercise marker"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes.setdefault(exercise, []).append((case.get("name"), outcome))
    problems = [f"{e} has no test marked @pytest.mark.exercise({e!r})" for e in EXERCISE_IDS if e not in outcomes]
    for exercise, cases in outcomes.items():
        if passed := [name for name, outcome in cases if outcome == "passed"]:
            problems.append(f"these tests of {exercise} pass on the stub, so they grade nothing: {passed}")
        if skipped := [name for name, outcome in cases if outcome == "skipped"]:
            problems.append(f"{exercise}: exercise tests must not skip on the stub: {skipped}")
    assert not problems, "\n".join(problems)


@needs_solutions
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
    monkeypatch.setenv("MINIDIFF_EXERCISES", "ex11.4")
    with pytest.raises(NotImplementedError, match=r"Exercise 11\.4"):
        exercise_tools.exercise("ex11.4")(reference)(None, None, None, None, None)
    monkeypatch.setenv("MINIDIFF_EXERCISES", "ex11.5")
    assert exercise_tools.exercise("ex11.4")(reference) is reference
    monkeypatch.delenv("MINIDIFF_EXERCISES")
    assert exercise_tools.exercise("ex11.4")(reference) is reference


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
                                  "ex02.2": ["q_sample", "0/11", "not", "started"],
                                  "ex02.3": ["q_sample_trajectory", "0/8", "not", "started"]}


@needs_solutions
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
                                  "ex02.2": ["q_sample", "0/11", "11", "failing"],
                                  "ex02.3": ["q_sample_trajectory", "8/8", "done"]}
    assert "ex02.1 (" not in text  # details only for exercises not done
    assert "ex02.2 (q_sample)" in text
    assert "Failing test case: test_e3_q_sample_is_the_closed_form_element_by_element" in text  # minimal example
    assert "ExceptionGroup" not in text and "Traceback" not in text
    assert max(len(ln) for ln in lines) <= 160


def _function_source(text: str, name: str) -> str:
    node = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name)
    return "\n".join(text.splitlines()[node.lineno - 1 - len(node.decorator_list):node.end_lineno])


@needs_solutions
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
                                  "ex02.2": ["q_sample", "11/11", "done"],
                                  "ex02.3": ["q_sample_trajectory", "8/8", "done"]}, "\n".join(lines)


# --- failures that teach ------------------------------------------------------------------------------------


def _message(actual, expected, **kwargs) -> str:
    with pytest.raises(AssertionError) as caught:
        assert_close(actual, expected, **kwargs)
    return str(caught.value)


def test_assert_close_says_what_is_wrong_without_an_array_dump():
    e = np.linspace(0.5, 3.0, 12).reshape(3, 4)
    assert _message(None, e, what="x_t") == "x_t:\ngot None: does the function `return` its result?"
    assert "wrong shape: got (4, 3), expected (3, 4); the right size in another layout?" in _message(e.T, e)
    assert "wrong shape: got (3, 4, 1), expected (3, 4); an axis too many or too few?" in _message(e[..., None], e)
    broken = e.copy()
    broken[1, 2] = np.nan
    assert "1 of 12 elements are NaN, the first at (1, 2) where" in _message(broken, e)
    text = _message(np.sqrt(2) * e, e, what="x_t at t = 3:")
    assert text.splitlines()[0] == "x_t at t = 3:"
    assert "12 of 12 elements off; the worst at (2, 3): got 4.243, expected 3 (|error| 1.24" in text
    assert "everywhere 1.41421 times the expected values" in text
    assert "array(" not in text and len(text.splitlines()) == 3
    assert "the sign is flipped everywhere" in _message(-e, e)
    assert "everywhere the expected values + 0.25" in _message(e + 0.25, e)
    assert "the right values in the wrong places" in _message(e[:, ::-1], e)
    assert _message(np.float32(0.5), 0.25).startswith("got 0.5, expected 0.25 (|error| 0.25, allowed")


def test_plain_asserts_on_dtypes_and_shapes_are_explained():
    got = feedback.explain_comparison("==", np.dtype(np.float64), np.dtype(np.float32))
    assert got[0].startswith("wrong dtype: got float64, expected float32: keep the inputs' dtype")
    assert feedback.explain_comparison("==", np.dtype(np.float32), np.float64)[0].startswith(
        "wrong dtype: got float32, expected float64: compute in the inputs' dtype")
    assert feedback.explain_comparison("==", np.dtype(np.float32), np.dtype(np.float32)) is None
    assert feedback.explain_comparison("==", (3,), (3, 2)) == [
        "wrong shape: got (3,), expected (3, 2); an axis too many or too few? (keepdims=True, [:, None], what "
        "broadcasting added)"]
    assert feedback.explain_comparison("==", 0.5, pytest.approx(0.25)) == ["got 0.5, expected 0.25 +- 2.5e-07 "
                                                                          "(got / expected = 2)"]
    assert feedback.explain_comparison("<", 1, 0) is None


@needs_solutions
def test_a_wrong_dtype_reads_as_a_sentence_in_the_score_table(tmp_path):
    """The issue's example: q_sample computed in float64 for float32 data. The student sees the failed assert, then
    "wrong dtype: got float64, expected float32" and what to do; not `dtype('float64') == dtype('float32')`."""
    package = tmp_path / "dtype_stubs"
    package.mkdir()
    for name, text in exercise_tools.render(exercise_tools.collect(), solved=True).items():
        (package / name).write_text(text)
    solved = (package / "ch02.py").read_text()
    wrong = solved.replace("xt = x0 * sqrt_alpha_bar", "xt = x0.astype(np.float64) * sqrt_alpha_bar")
    assert wrong != solved
    (package / "ch02.py").write_text(wrong)
    lines = _student_run("--exercise", "ex02.2", *files_marking("ex02.2"), package=package)
    text = "\n".join(lines)
    assert "assert got.dtype == x0.dtype and got.shape == x0.shape" in text
    assert "wrong dtype: got float64, expected float32: keep the inputs' dtype" in text
    assert "dtype('float" not in text and "+  where" not in text, text


# --- student copies and grading what students hand in ------------------------------------------------------


@pytest.fixture(scope="module")
def student_copy_dir(tmp_path_factory) -> Path:
    """A student copy of this checkout (with the files not committed yet, so that it works while developing)."""
    if exercise_tools.STUDENT_COPY:
        pytest.skip("a student copy has no reference solutions to take out")
    dest = tmp_path_factory.mktemp("copy") / "student"
    count, ids = student_copy.write(dest, untracked=True)
    assert count > 50 and ids == EXERCISE_IDS
    return dest


def _text_files(root: Path) -> dict[Path, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            try:
                out[path.relative_to(root)] = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
    return out


def _regions(text: str) -> tuple[list[str], list[str]]:
    """(the lines inside SOLUTION regions, the other lines), stripped."""
    inside, outside, within = [], [], False
    for line in text.splitlines():
        if exercise_tools.BEGIN.match(line) or exercise_tools.END.match(line):
            within = bool(exercise_tools.BEGIN.match(line))
            continue
        (inside if within else outside).append(line.strip())
    return inside, outside


def test_student_copy_holds_no_solution_line(student_copy_dir):
    """Every line of a SOLUTION region that appears nowhere else in the project is absent from every file of the
    copy; each region's body is its stub's raise; the stubs are freshly generated; the copy is marked."""
    sources = {n: (ROOT / n).read_text(encoding="utf-8") for n in student_copy.project_files(ROOT, untracked=True)
               if n.suffix in {".py", ".md", ".toml", ".txt", ".cpp", ".h", ".cu", ".cfg"}
               and n.parts[:2] != ("minidiff", "exercises")}
    library = [n for n in sources if n.parts[0] == "minidiff" and n.suffix == ".py" and n.name != "exercise_tools.py"]
    solution, elsewhere = set(), set()
    for name, text in sources.items():
        inside, outside = _regions(text) if name in library else ([], text.splitlines())
        solution |= set(inside)
        elsewhere |= {line.strip() for line in outside}
    secret = {line for line in solution - elsewhere if line and not line.startswith("#")}
    assert len(secret) > 2 * len(EXERCISE_IDS)
    copied = _text_files(student_copy_dir)
    leaks = sorted({f"{name}: {line.strip()}" for name, text in copied.items() for line in text.splitlines()
                    if line.strip() in secret})
    assert leaks == [], leaks[:10]
    begins = [ln for name in library for ln in copied[name].splitlines() if exercise_tools.BEGIN.match(ln)]
    assert len(begins) == sum(bool(exercise_tools.BEGIN.match(ln)) for n in library for ln in sources[n].splitlines())
    bodies = [body for name in library for body in _regions(copied[name])[0]]
    assert len(bodies) == len(begins) and all(b.startswith('raise NotImplementedError("Exercise ') for b in bodies)
    assert exercise_tools.stale_files(student_copy_dir / "minidiff" / "exercises") == []
    assert "\nSTUDENT_COPY = True\n" in copied[Path("minidiff/exercise_tools.py")]
    assert not list(student_copy_dir.parent.glob(".student.building-*"))


def test_student_copy_refuses_a_folder_with_files_and_names_it(student_copy_dir, tmp_path):
    (tmp_path / "mine.txt").write_text("a student's notes")
    result = subprocess.run([sys.executable, "-m", "minidiff", "student-copy", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: DIR: {tmp_path} is not empty: give a new or empty folder for the " \
                                    "student copy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def _in_copy(copy: Path, *args: str) -> subprocess.CompletedProcess:
    """Python in the copy: -S keeps this environment's editable install of minidiff (a .pth hook) out, so the
    copy's own minidiff is imported; the environment's other packages come from its site-packages."""
    paths = dict.fromkeys([str(copy), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDIFF_EXERCISES")}
    env |= {"PYTHONPATH": os.pathsep.join(paths), "MINIDIFF_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-S", *args], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def test_student_copy_imports_and_grades_the_students_own_code(student_copy_dir):
    """In the copy every graded function is the student's: bare stubs fail, and the solved chapter 02 passes its
    exercise tests (2.2's tests run the student's own 2.1 and 2.3: the copy has no reference to fall back on)."""
    probe = _in_copy(student_copy_dir, "-c", "import minidiff, minidiff.exercise_tools as t; "
                     "print(minidiff.__file__, t.STUDENT_COPY, sorted(t.student_ids()))")
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split() == [str(student_copy_dir / "minidiff" / "__init__.py"), "True", "['all']"]
    tests = [str(Path(f).relative_to(ROOT)) for f in files_marking("ex02.2")]
    grade = ["-m", "pytest", "--student", "--exercise", "ex02.2", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
    bare = _in_copy(student_copy_dir, *grade)
    assert bare.returncode == 1 and "ex02.2" in bare.stdout and "not started" in bare.stdout, bare.stdout[-3000:]
    stubs = student_copy_dir / "minidiff" / "exercises" / "ch02.py"
    original = stubs.read_text()
    stubs.write_text(exercise_tools.render(exercise_tools.collect(), solved=True)["ch02.py"])
    try:
        solved = _in_copy(student_copy_dir, *grade)
    finally:
        stubs.write_text(original)
    assert solved.returncode == 0, solved.stdout[-3000:]


@needs_solutions
def test_a_teacher_grades_a_students_folder_with_the_others_at_their_reference(tmp_path):
    """`pytest --student --exercises-from PATH`: a student's minidiff/exercises/ (here: 2.2 and 2.3 solved, 2.1 left
    as the stub) is graded in the full repository, each exercise with the others at their reference solutions."""
    folder = tmp_path / "alice" / "minidiff" / "exercises"
    folder.mkdir(parents=True)
    solved = exercise_tools.render(exercise_tools.collect(), solved=True)
    bare = exercise_tools.render(exercise_tools.collect())
    (folder / "ch02.py").write_text(solved["ch02.py"].replace(_function_source(solved["ch02.py"], "cosine_betas"),
                                                              _function_source(bare["ch02.py"], "cosine_betas")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIDIFF_EXERCISES")}
    cmd = [sys.executable, "-m", "pytest", "--student", "--exercises-from", str(tmp_path / "alice"), "-m", "ch02",
           "-p", "no:cacheprovider", "-p", "no:xdist", *files_marking("ex02.1"), *files_marking("ex02.2")]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stdout[-3000:]
    assert _score_rows(lines) == {"ex02.1": ["cosine_betas", "0/6", "not", "started"],
                                  "ex02.2": ["q_sample", "11/11", "done"],
                                  "ex02.3": ["q_sample_trajectory", "8/8", "done"]}, "\n".join(lines)
    wrong = subprocess.run([*cmd[:4], "--exercises-from", str(tmp_path / "nobody"), "--co"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert wrong.returncode == 4 and f"--exercises-from: {tmp_path / 'nobody'} holds no chNN.py stubs" in wrong.stderr
