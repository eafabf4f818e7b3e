"""A copy of the project for students: every exercise's solution taken out of the library.

`python -m minidiff student-copy DIR` writes the files of the repository (those git tracks, or the source tree when
it is not a git checkout) to DIR, where
* every `# BEGIN SOLUTION exN.M: hint` region of the library keeps its two marker lines, and its body becomes the
  stub's `raise NotImplementedError("Exercise N.M: hint")`;
* minidiff/exercises/ holds freshly generated stubs (never the teacher's own, perhaps solved, ones);
* minidiff/exercise_tools.py says STUDENT_COPY = True: every graded function then calls the student's stub, whatever
  MINIDIFF_EXERCISES says, in notebooks, tests and `pytest --student` alike (there is no reference to fall back on).
The copy is built in a temporary folder beside DIR and renamed into place, so DIR never holds half a copy.
A teacher grades what students hand back in the full repository: `pytest --student --exercises-from PATH`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from minidiff import exercise_tools

ROOT = exercise_tools.PACKAGE.parent
FLAG = "STUDENT_COPY = False"  # the line of exercise_tools.py that the copy turns to True
SKIPPED_PARTS = {"__pycache__", "build", "dist", ".git", ".venv", "venv", ".pytest_cache", ".hypothesis",
                 ".ruff_cache", ".ipynb_checkpoints"}
SKIPPED_SUFFIXES = (".pyc", ".so", ".pyd", ".o")


def strip_solutions(text: str, where: str = "") -> tuple[str, list[str]]:
    """`text` with the body of every SOLUTION region replaced by the stub's raise; and the exercise ids found."""
    lines, out, ids = text.splitlines(keepends=True), [], []
    i = 0
    while i < len(lines):
        m = exercise_tools.BEGIN.match(lines[i].rstrip("\r\n"))
        if not m:
            out.append(lines[i])
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if exercise_tools.END.match(lines[j].rstrip("\r\n"))), None)
        if end is None:
            raise ValueError(f"{where}:{i + 1}: BEGIN SOLUTION {m.group(2)} has no END SOLUTION")
        indent, ex_id, hint = m.group(1), m.group(2), (m.group(3) or "").strip()
        out += [lines[i], exercise_tools.stub_line(indent, ex_id, hint) + "\n", lines[end]]
        ids.append(ex_id)
        i = end + 1
    return "".join(out), ids


def project_files(root: Path = ROOT, untracked: bool = False) -> list[Path]:
    """The files to copy, relative to `root`: in a git checkout the tracked ones (untracked: also those git does
    not ignore, such as new files not yet committed); otherwise every file of the source tree (of the package alone
    when it is installed without its sources). Never caches, builds or compiled objects."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached",
                                 *(["--others", "--exclude-standard"] if untracked else [])],
                                capture_output=True, check=True, timeout=60).stdout
        names = [Path(n) for n in listed.decode().split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        tree = root if (root / "pyproject.toml").is_file() else root / exercise_tools.PACKAGE.name
        names = [p.relative_to(root) for p in tree.rglob("*") if p.is_file()]
    return sorted(n for n in set(names) if (root / n).is_file() and not n.name.endswith(SKIPPED_SUFFIXES)
                  and not any(part in SKIPPED_PARTS or part.endswith(".egg-info") for part in n.parts))


def _check_destination(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"DIR: {dest} exists and is not a folder: give a new or empty folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(f"DIR: {dest} is not empty: give a new or empty folder for the student copy")


def write(dest: str | Path, root: Path = ROOT, untracked: bool = False) -> tuple[int, list[str]]:
    """Write the student copy of the project at `root` to `dest` (a new or empty folder); return the number of
    files written and the exercise ids whose solutions were taken out. untracked: see `project_files`."""
    dest = Path(dest)
    _check_destination(dest)
    files = project_files(root, untracked)
    dest.absolute().parent.mkdir(parents=True, exist_ok=True)
    building = dest.absolute().parent / f".{dest.name}.building-{secrets.token_hex(4)}"
    building.mkdir()
    ids: list[str] = []
    try:
        package = Path(exercise_tools.PACKAGE.name)
        stubs = package / exercise_tools.STUBS.name
        for name in files:
            if stubs in name.parents:
                continue  # written fresh below: the teacher's own stubs may hold solutions
            target = building / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == package / "exercise_tools.py":  # its docstring shows the markers: only the flag changes
                text = (root / name).read_text(encoding="utf-8")
                if FLAG not in text:
                    raise ValueError(f"{name}: the line {FLAG!r} is missing: cannot mark the copy")
                target.write_text(text.replace(FLAG, "STUDENT_COPY = True", 1), encoding="utf-8")
            elif package in name.parents and name.suffix == ".py":
                text, found = strip_solutions((root / name).read_text(encoding="utf-8"), str(name))
                ids += found
                target.write_text(text, encoding="utf-8")
            else:
                shutil.copy2(root / name, target)
        exercise_tools.write_stubs(building / stubs, force=True)
        count = sum(1 for p in building.rglob("*") if p.is_file())
        if dest.is_dir():
            dest.rmdir()  # empty (checked above): the finished copy takes its place
        os.rename(building, dest)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return count, sorted(set(ids), key=exercise_tools.parse_id)
