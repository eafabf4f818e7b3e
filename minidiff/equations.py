"""The equation index: every id E1..E51 with its name, formula and paper (from equations.json), and, found in
the project itself, the functions that implement it, the tests that check it and the notebooks that derive it.

`python -m minidiff equations` prints it; `python -m minidiff equations --write` regenerates docs/EQUATIONS.md,
which tests/test_equations.py keeps in step with the code. An id counts as
  code      for a function, method or class under minidiff/ (not minidiff/exercises/) whose docstring starts
            with "[Eid]" (several ids may lead: "[E12][E13] ...");
  test      for a test function under tests/ with the id in its name (test_e12_...) or its docstring;
  notebook  for a notebook source under notebooks/ that mentions "[Eid]".
"""

from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project: minidiff/, tests/, notebooks/, docs/
PAGE = Path("docs") / "EQUATIONS.md"
LEAD = re.compile(r"^\s*((?:\[E\d+\]\s*)+)")  # the ids a docstring starts with
ANY_ID = re.compile(r"\[(E\d+)\]")
TEST_NAME_ID = re.compile(r"(?:^|_)e(\d+)(?=_|$)")  # test_e12_... or test_..._e3_e1_...
NOTEBOOK_SUFFIXES = {".py", ".md", ".ipynb"}


@dataclass(frozen=True)
class Equation:
    id: str
    section: str
    name: str
    formula: str
    paper: str


@dataclass
class Citations:
    code: list[str] = field(default_factory=list)  # "minidiff.diffusion.forward.q_sample"
    tests: list[str] = field(default_factory=list)  # "tests/test_diffusion_forward.py::test_e3_..."
    notebooks: list[str] = field(default_factory=list)  # "notebooks/02_forward_process.py"


def load() -> dict[str, Equation]:
    """id -> Equation, in index order, from minidiff/equations.json."""
    rows = json.loads(Path(__file__).with_name("equations.json").read_text(encoding="utf-8"))
    return {row["id"]: Equation(**row) for row in rows}


# --- what the project cites -------------------------------------------------------------------------------


def _sources(folder: Path, suffixes: set[str] = frozenset({".py"})) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix in suffixes and ".ipynb_checkpoints" not in p.parts)


def _definitions(tree: ast.AST, prefix: str = ""):
    """(qualname, node) of every function and class, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield prefix + node.name, node
            yield from _definitions(node, f"{prefix}{node.name}.")
        else:
            yield from _definitions(node, prefix)


def _parse(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError):
        return None


def leading_ids(docstring: str | None) -> list[str]:
    """The ids a docstring starts with: '[E12][E13] mu ...' -> ['E12', 'E13']."""
    m = LEAD.match(docstring or "")
    return ANY_ID.findall(m.group(1)) if m else []


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cite(root: Path = ROOT) -> dict[str, Citations]:
    """id -> where the project at `root` cites it (ids not in the index included; see unknown_ids)."""
    found: dict[str, Citations] = {}
    package = root / "minidiff"
    for path in _sources(package):
        tree = None if "exercises" in path.relative_to(package).parts else _parse(path)
        if tree is None:
            continue
        for qualname, node in _definitions(tree):
            for eid in leading_ids(ast.get_docstring(node)):
                found.setdefault(eid, Citations()).code.append(f"{_module_name(path, root)}.{qualname}")
    for path in _sources(root / "tests"):
        tree = _parse(path)
        for qualname, node in _definitions(tree) if tree else ():
            if isinstance(node, ast.ClassDef) or not node.name.startswith("test"):
                continue
            ids = {f"E{n}" for n in TEST_NAME_ID.findall(node.name.lower())}
            ids |= set(ANY_ID.findall(ast.get_docstring(node) or ""))
            for eid in sorted(ids):
                test = f"{path.relative_to(root).as_posix()}::{qualname.replace('.', '::')}"
                found.setdefault(eid, Citations()).tests.append(test)
    for path in _sources(root / "notebooks", NOTEBOOK_SUFFIXES):
        for eid in sorted(set(ANY_ID.findall(path.read_text(encoding="utf-8", errors="replace")))):
            found.setdefault(eid, Citations()).notebooks.append(path.relative_to(root).as_posix())
    return found


def unknown_ids(root: Path = ROOT, known: dict[str, Equation] | None = None) -> list[str]:
    """'file:line: [Eid]' for every cited id that the index does not have (code, stubs, tests, notebooks)."""
    known = load() if known is None else known
    out = []
    folders = [(root / "minidiff", {".py"}), (root / "tests", {".py"}), (root / "notebooks", NOTEBOOK_SUFFIXES)]
    for folder, suffixes in folders:
        for path in _sources(folder, suffixes):
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            for number, line in enumerate(lines, 1):
                ids = ANY_ID.findall(line) + [f"E{n}" for n in TEST_NAME_ID.findall(_test_name(line))]
                out += [f"{path.relative_to(root).as_posix()}:{number}: [{e}]" for e in ids if e not in known]
    return out


def _test_name(line: str) -> str:
    m = re.match(r"\s*(?:async\s+)?def\s+(test\w*)", line)
    return m.group(1).lower() if m else ""


# --- printing and the page --------------------------------------------------------------------------------


def render_text(ids: list[str] | None = None, root: Path = ROOT) -> str:
    """Without ids: one line per equation (id, name, how many functions and tests, the notebooks).
    With ids: each one in full."""
    known, cited = load(), cite(root)
    bad = [i for i in ids or [] if i.upper() not in known]
    if bad:
        raise ValueError(f"ids: expected ids of the index (E1..E{len(known)}), got {', '.join(bad)}")
    if not ids:
        lines = [f"{'id':<4} {'name':<34} {'code':>4} {'tests':>5}  notebooks"]
        for eid, eq in known.items():
            c = cited.get(eid, Citations())
            notebooks = ", ".join(Path(n).stem for n in c.notebooks) or "-"
            lines.append(f"{eid:<4} {eq.name:<34} {len(c.code):>4} {len(c.tests):>5}  {notebooks}")
        lines.append("details: python -m minidiff equations E11 E12")
        return "\n".join(lines) + "\n"
    blocks = []
    for eid in (i.upper() for i in ids):
        eq, c = known[eid], cited.get(eid, Citations())
        rows = [f"{eid}: {eq.name}  ({eq.section})", f"  formula:   {eq.formula}", f"  paper:     {eq.paper}"]
        for label, items in (("code", c.code), ("tests", c.tests), ("notebooks", c.notebooks)):
            rows += [f"  {label + ':':<10} {item}" if k == 0 else f"{'':<13}{item}" for k, item in enumerate(items)]
            rows += [] if items else [f"  {label + ':':<10} -"]
        blocks.append("\n".join(rows))
    return "\n\n".join(blocks) + "\n"


def render_markdown(root: Path = ROOT) -> str:
    """docs/EQUATIONS.md: a table of contents, then each equation with its formula, paper, code, tests and
    notebooks, linked relative to docs/."""
    known, cited = load(), cite(root)
    out = [
        "# The equation index",
        "",
        "Generated by `python -m minidiff equations --write` from minidiff/equations.json and the code; do not",
        "edit by hand. A function implementing an equation starts its docstring with the id (`\"\"\"[E11] ...`),",
        "a test checking it has the id in its name (`test_e11_...`) or docstring, a notebook deriving it cites",
        "`[E11]`. Notation: `alpha_t = 1 - beta_t`, `alpha_bar_t = prod_{s<=t} alpha_s`, `eps ~ N(0, I)`,",
        "timesteps `t = 1..T`.",
        "",
        "| id | name | code | tests | notebooks |",
        "|---|---|---|---|---|",
    ]
    for eid, eq in known.items():
        c = cited.get(eid, Citations())
        notebooks = ", ".join(Path(n).stem for n in c.notebooks) or "-"
        out.append(f"| [{eid}](#{eid.lower()}) | {eq.name} | {len(c.code)} | {len(c.tests)} | {notebooks} |")
    section = None
    for eid, eq in known.items():
        if eq.section != section:
            section = eq.section
            out += ["", f"## {section}"]
        c = cited.get(eid, Citations())
        out += ["", f'### <a id="{eid.lower()}"></a>{eid}: {eq.name}', "", f"`{eq.formula}`", "",
                f"- paper: {eq.paper}",
                f"- code: {_links(c.code, lambda q: _code_path(q, root))}",
                f"- tests: {_links(c.tests, lambda t: t.split('::')[0])}",
                f"- notebooks: {_links(c.notebooks, lambda n: n)}"]
    return "\n".join(out) + "\n"


def _code_path(qualified: str, root: Path) -> str:
    """'minidiff.diffusion.forward.q_sample' -> 'minidiff/diffusion/forward.py' (or .../__init__.py)."""
    parts = qualified.split(".")
    for k in range(len(parts) - 1, 0, -1):
        base = Path(*parts[:k])
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if (root / candidate).is_file():
                return candidate.as_posix()
    return Path(*parts[:-1]).with_suffix(".py").as_posix()


def _links(items: list[str], path_of) -> str:
    return ", ".join(f"[`{item}`](../{path_of(item)})" for item in items) or "none yet"


def page_is_stale(root: Path = ROOT) -> bool:
    page = root / PAGE
    return not page.is_file() or page.read_text(encoding="utf-8") != render_markdown(root)


def write_page(root: Path = ROOT) -> Path:
    """Regenerate docs/EQUATIONS.md under `root`, atomically (a temporary file renamed over the page)."""
    page = root / PAGE
    page.parent.mkdir(exist_ok=True)
    temporary = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(render_markdown(root), encoding="utf-8")
        os.replace(temporary, page)
    finally:
        temporary.unlink(missing_ok=True)
    return page
