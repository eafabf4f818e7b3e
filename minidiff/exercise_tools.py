"""Exercises: reference code with its solution marked, and the student stubs generated from it.

In the reference code an exercise is a function (or method) decorated with ``@exercise("exN.M")``
whose body holds one marked region::

    @exercise("ex11.4")
    def sampler_step_ref(x, eps, z, coefs, out):
        # BEGIN SOLUTION ex11.4: hint shown to the student
        ...solution...
        # END SOLUTION
        out[...] = x_prev
        return out

`python -m minidiff exercises` writes minidiff/exercises/chNN.py: each such function with its region
replaced by ``raise NotImplementedError("Exercise N.M: hint")``. Students fill those in.

Grading: ``pytest --student`` sets MINIDIFF_EXERCISES (to "all" or a comma-separated list of ids)
before minidiff is imported; then ``exercise`` hands every call of the reference function to the
student's stub instead, wherever the function is used. Without it, ``exercise`` returns the
reference function unchanged.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

F = TypeVar("F", bound=Callable)

PACKAGE = Path(__file__).resolve().parent
STUBS = PACKAGE / "exercises"
ID = re.compile(r"^ex(\d{2})\.(\d+)$")
BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION (ex\d{2}\.\d+)(?::\s*(.*))?$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
# A student copy (`python -m minidiff student-copy`) has no solutions: there every graded function calls the student's
# stub, whatever MINIDIFF_EXERCISES says. The copy is made with this line set to True.
STUDENT_COPY = False


def parse_id(exercise_id: str) -> tuple[int, int]:
    m = ID.match(exercise_id)
    if not m:
        raise ValueError(f"exercise_id: expected 'exNN.M' (e.g. 'ex00.1'), got {exercise_id!r}")
    return int(m.group(1)), int(m.group(2))


def student_ids() -> set[str] | None:
    """The exercises graded on the student's stubs (from MINIDIFF_EXERCISES): None, a set, or {'all'}."""
    if STUDENT_COPY:
        return {"all"}
    raw = os.environ.get("MINIDIFF_EXERCISES", "").strip()
    return {s.strip() for s in raw.split(",") if s.strip()} if raw else None


def stub_package() -> str:
    """Where graded stubs are imported from: minidiff.exercises, or MINIDIFF_EXERCISES_PACKAGE: a package name (the
    suite points it at solved stubs to check that correct answers pass) or a folder of chNN.py files (a student's
    work that a teacher grades: `pytest --student --exercises-from PATH`)."""
    return os.environ.get("MINIDIFF_EXERCISES_PACKAGE", "").strip() or "minidiff.exercises"


FOLDER_PACKAGE = "_minidiff_graded_exercises"  # the name a folder of stubs is imported under


def stub_module(chapter: int):
    """The module of the student's stubs of `chapter` (from `stub_package()`)."""
    source = stub_package()
    if os.sep not in source and "/" not in source:
        return importlib.import_module(f"{source}.ch{chapter:02d}")
    if FOLDER_PACKAGE not in sys.modules:
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"MINIDIFF_EXERCISES_PACKAGE: {folder} is not a folder of exercise stubs")
        spec = importlib.util.spec_from_loader(FOLDER_PACKAGE, loader=None, is_package=True)
        package = importlib.util.module_from_spec(spec)
        package.__path__ = [str(folder.resolve())]
        sys.modules[FOLDER_PACKAGE] = package
    return importlib.import_module(f"{FOLDER_PACKAGE}.ch{chapter:02d}")


_focus: frozenset[str] | None = None  # set by the grader around each exercise test (see `grade_only`)


def grade_only(exercise_ids: Iterable[str] | None) -> None:
    """In student mode, send only the calls of these exercises to the student's stubs; the others run their
    reference solutions, so a test of 2.2 fails for 2.2's mistakes, never for 2.1's. None: every graded
    exercise calls its stub (as notebooks run on a student's solutions with MINIDIFF_EXERCISES=all). The test
    harness (tests/conftest.py) sets it to each exercise test's own id."""
    global _focus
    _focus = None if exercise_ids is None else frozenset(exercise_ids)


def exercise(exercise_id: str) -> Callable[[F], F]:
    """Mark a reference function as exercise `exercise_id`; in student mode, route calls to the stub."""
    chapter, _ = parse_id(exercise_id)

    def decorate(reference: F) -> F:
        graded = student_ids()
        if not graded or not ({"all", exercise_id} & graded):
            return reference

        @functools.wraps(reference)
        def call_stub(*args, **kwargs):
            if _focus is not None and exercise_id not in _focus and not STUDENT_COPY:
                return reference(*args, **kwargs)
            target = stub_module(chapter)
            for part in reference.__qualname__.split("."):
                target = getattr(target, part)
            return target(*args, **kwargs)

        return call_stub  # type: ignore[return-value]

    return decorate


# ---------------------------------------------------------------------------------------------------
# Generating the stubs


@dataclass
class Exercise:
    id: str
    hint: str
    module: str  # minidiff.kernels.sampler_step
    qualname: str  # sampler_step_ref or Mul.backward
    source: str  # the stub's source, dedented to its class (if any)
    solution: str  # the same function with the solution in place of the raise
    imports: list[str]  # import lines the stub needs


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts)


def _absolute_imports(tree: ast.Module, module: str) -> dict[str, str]:
    """name -> an import line that binds it in a stub (relative imports made absolute)."""
    package = module.rsplit(".", 1)[0]
    bound: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                bound[a.asname or a.name.split(".")[0]] = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                line = f"from {base} import {a.name}" + (f" as {a.asname}" if a.asname else "")
                bound[a.asname or a.name] = line
    return bound


def _module_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def _find_exercises(path: Path) -> list[Exercise]:
    text = path.read_text()
    if "# BEGIN SOLUTION" not in text:
        return []
    lines = text.splitlines()
    tree = ast.parse(text)
    module = _module_name(path)
    imports = _absolute_imports(tree, module)
    module_names = _module_level_names(tree)
    found = []
    for i, line in enumerate(lines):
        m = BEGIN.match(line)
        if not m:
            continue
        indent, ex_id, hint = m.group(1), m.group(2), (m.group(3) or "").strip()
        parse_id(ex_id)
        end = next((j for j in range(i + 1, len(lines)) if END.match(lines[j])), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: BEGIN SOLUTION {ex_id} has no END SOLUTION")
        func, owner = _enclosing_function(tree, i + 1)
        if func is None:
            raise ValueError(f"{path}:{i + 1}: BEGIN SOLUTION {ex_id} is not inside a function")
        decorators = [ast.unparse(d) for d in func.decorator_list]
        if f"exercise({ex_id!r})" not in [d.replace('"', "'") for d in decorators]:
            raise ValueError(f"{path}:{func.lineno}: {func.name} holds {ex_id} but lacks @exercise({ex_id!r})")
        first = func.decorator_list[0].lineno if func.decorator_list else func.lineno
        raise_line = stub_line(indent, ex_id, hint)

        def dedented(middle: list[str], func=func, first=first, end=end, i=i) -> str:
            body = [*lines[first - 1 : i], *middle, *lines[end + 1 : func.end_lineno]]
            body = [ln for ln in body if not ln.strip().startswith("@exercise(")]
            return "\n".join(ln[func.col_offset :] if ln.strip() else "" for ln in body)

        used = {n.id for n in ast.walk(func) if isinstance(n, ast.Name)}
        needed = sorted({imports[n] for n in used if n in imports and n != "exercise"})
        needed += [f"from {module} import {n}" for n in sorted(used & module_names) if n != func.name]
        qualname = f"{owner.name}.{func.name}" if owner else func.name
        found.append(Exercise(ex_id, hint, module, qualname, dedented([raise_line]), dedented(lines[i + 1 : end]),
                              needed))
    return found


def _enclosing_function(tree: ast.Module, lineno: int):
    """The innermost function containing `lineno`, and the class it is a method of (or None)."""
    best, owner = None, None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                inside = item.lineno <= lineno <= (item.end_lineno or item.lineno)
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and inside:
                    best, owner = item, node
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.lineno <= lineno <= node.end_lineno
            and (best is None or node.lineno > best.lineno)
        ):
            best, owner = node, None
    return best, owner


def stub_line(indent: str, ex_id: str, hint: str) -> str:
    """What a stub has in place of a solution region."""
    return f'{indent}raise NotImplementedError("Exercise {_short(ex_id)}: {hint or "write this part"}")'


def _short(ex_id: str) -> str:
    chapter, number = parse_id(ex_id)
    return f"{chapter}.{number}"


def collect() -> list[Exercise]:
    """Every marked exercise of the package, in id order."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if STUBS in path.parents or path.name == "exercise_tools.py":
            continue
        found += _find_exercises(path)
    # An exercise may span several functions (a forward and its backward), one region in each.
    places = [(e.module, e.qualname) for e in found]
    twice = sorted({f"{m}.{q}" for m, q in places if places.count((m, q)) > 1})
    if twice:
        raise ValueError(f"more than one SOLUTION region in: {', '.join(twice)}")
    return sorted(found, key=lambda e: parse_id(e.id))


def render(exercises: list[Exercise], solved: bool = False) -> dict[str, str]:
    """file name -> text of every stub file (chNN.py, plus __init__.py). solved=True keeps the
    solutions in place of the raises: what a student who got everything right would have."""
    chapters: dict[int, list[Exercise]] = {}
    for e in exercises:
        chapters.setdefault(parse_id(e.id)[0], []).append(e)
    files = {
        "__init__.py": '"""Student exercise stubs, generated by `python -m minidiff exercises`: edit the bodies\n'
        'of chNN.py that raise NotImplementedError, then run `pytest --student -m chNN`."""\n'
    }
    for chapter, items in sorted(chapters.items()):
        defined = {e.qualname.split(".")[0] for e in items}  # the chapter's own stubs win over imports
        imports = sorted({line for e in items for line in e.imports if line.split()[-1] not in defined},
                         key=lambda ln: (ln.startswith("from"), ln))
        parts = [
            f'"""Chapter {chapter:02d} exercises.\n\n'
            "Generated from the reference code by `python -m minidiff exercises`; regenerating never overwrites\n"
            "your edits (it writes chNN.py.new beside an edited file). Replace each `raise NotImplementedError`\n"
            "by your solution, then grade it:\n"
            f'    pytest --student -m ch{chapter:02d}\n"""\n',
            "from __future__ import annotations\n",
            "\n".join(imports) + "\n" if imports else "",
        ]
        blocks: dict[str, list[str]] = {}  # top-level name -> its pieces; methods of one class share a block
        for e in items:
            title = f"# Exercise {_short(e.id)} (reference: {e.module}.{e.qualname})"
            source = e.solution if solved else e.source
            top = e.qualname.split(".")[0]
            if "." in e.qualname:
                method = "\n".join(("    " + ln) if ln else "" for ln in [title, *source.splitlines()])
                blocks.setdefault(top, [f"class {top}:"]).append(method)
            else:
                blocks[top] = [title, source]
        parts += ["\n" + "\n".join(pieces) + "\n" for pieces in blocks.values()]
        files[f"ch{chapter:02d}.py"] = "\n".join(p.rstrip("\n") + "\n" if p else "" for p in parts)
    return files


HEADER = re.compile(r"^# Generated by `python -m minidiff exercises`; stub sha256 ([0-9a-f]{16})\n")


def _with_header(text: str) -> str:
    """The file as written: a first line holding the hash of the rest, so an edit by the student shows."""
    return f"# Generated by `python -m minidiff exercises`; stub sha256 {_digest(text)}\n{text}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stub_state(path: Path, new: str | None) -> str:
    """How the stub file at `path` stands against `new` (what the generator writes now): "missing",
    "current" (nothing to write: the same text, or the student's edits of this very stub), "generated"
    (untouched since an older generation: safe to replace) or "edited" (the student's work)."""
    if not path.is_file():
        return "missing"
    text = path.read_text(encoding="utf-8")
    m, m_new = HEADER.match(text), HEADER.match(new or "")
    if text == new or (m and m_new and m.group(1) == m_new.group(1)):
        return "current"
    return "generated" if m and m.group(1) == _digest(text[m.end() :]) else "edited"


def stale_files(folder: Path = STUBS) -> list[str]:
    """Stub files that differ from what the reference code generates (empty when up to date)."""
    expected = {name: _with_header(text) for name, text in render(collect()).items()}
    present = {p.name for p in folder.glob("*.py")}
    out = [n for n, text in expected.items() if not (folder / n).is_file() or (folder / n).read_text() != text]
    return out + sorted(present - set(expected))


def write_stubs(folder: Path = STUBS, force: bool = False) -> list[str]:
    """(Re)write the stubs in `folder`, atomically, one message per file changed. A stub the student edited
    is kept: the new one goes beside it as chNN.py.new (force=True overwrites it)."""
    expected = {name: _with_header(text) for name, text in render(collect()).items()}
    folder.mkdir(exist_ok=True)
    messages = []
    for name in sorted({p.name for p in folder.glob("*.py")} - set(expected)):
        if force or _stub_state(folder / name, None) == "generated":
            (folder / name).unlink()
            messages.append(f"removed {folder.name}/{name} (no exercises left in it)")
    for name, text in expected.items():
        path, state = folder / name, _stub_state(folder / name, text)
        if state == "current" and (not force or path.read_text(encoding="utf-8") == text):
            continue
        if state == "edited" and not force:
            path = folder / f"{name}.new"
            messages.append(f"kept {folder.name}/{name}: it has your edits; the new stub is {path.name} (--force "
                            "overwrites)")
        else:
            messages.append(f"wrote {folder.name}/{name}")
        tmp = folder / f".{path.name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return messages
