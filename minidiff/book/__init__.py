"""`python -m minidiff book --out DIR`: the chapters as a static website that reads offline.

Each notebook `notebooks/NN_topic.py` (jupytext percent format) runs top to bottom in a fresh kernel (with
MINIDIFF_FAST=1 under `fast`) and becomes one page: its prose with the math as MathML, its code highlighted, what
the code printed and the figures it drew (PNG files under img/), every [E11] a link into equations.html (the
equation index of minidiff.equations), previous / next links; index.html lists the chapters. The site is built in
a hidden folder beside DIR and renamed into place, so a chapter that fails leaves no half site: BookError names the
chapter, the failing cell's line in the notebook and the exception, in one line.

Why MathML: the pages must render without a network (no MathJax or KaTeX from a CDN). latex2mathml converts the
TeX in pure Python to MathML, which Chromium, Firefox and Safari draw natively: no script and no bundled font on
any page, formulas stay text (selectable, zoomable). Needs the `book` extra: pip install -e ".[book]".
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from minidiff import equations
from minidiff.book import pages

NOTEBOOKS = equations.ROOT / "notebooks"
CHAPTER_GLOB = "[0-9][0-9]_*.py"
MARKER = ".minidiff-book"  # in every built site: a folder holding it may be replaced by the next build
CELL_TIMEOUT = 1800.0  # seconds one cell may run (a full-mode training cell takes minutes)
# The figures must come back as images: matplotlib's inline backend (it draws with Agg, no display needed).
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
REQUIREMENTS = {"jupytext": "jupytext", "nbclient": "nbclient", "ipykernel": "ipykernel",
                "markdown_it": "markdown-it-py", "mdit_py_plugins": "mdit-py-plugins",
                "latex2mathml": "latex2mathml", "pygments": "Pygments", "matplotlib_inline": "matplotlib-inline"}


class BookError(Exception):
    """A build that cannot go on (a missing package, an unknown chapter, a failing cell), said in one line."""


def check_requirements() -> None:
    missing = [package for module, package in REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise BookError(f"building the book needs {', '.join(missing)}: pip install -e \".[book]\"")


def find_chapters(folder: Path = NOTEBOOKS, only: Sequence[str] | None = None) -> list[Path]:
    """The notebooks NN_*.py of `folder` in order, or those whose number NN is in `only` ("02", "2" or "02_x")."""
    paths = sorted(Path(folder).glob(CHAPTER_GLOB))
    if not paths:
        raise BookError(f"--notebooks: no chapter notebooks ({CHAPTER_GLOB}) in {folder}")
    if only is None:
        return paths
    numbers = {p.name[:2]: p for p in paths}
    wanted = [re.sub(r"^(\d+).*", lambda m: m.group(1).zfill(2), w.strip()) for w in only if w.strip()]
    unknown = [w for w in wanted if w not in numbers]
    if unknown or not wanted:
        raise BookError(f"--chapters: expected chapter numbers among {', '.join(numbers)}, got "
                        f"{', '.join(unknown) or 'none'}")
    return [numbers[n] for n in sorted(set(wanted))]


def _cell_lines(path: Path) -> list[int]:
    """The line (from 1) where each cell of a percent-format notebook starts: its '# %%' marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [k + 1 for k, line in enumerate(lines) if line.startswith("# %%")]


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(pages.ANSI.sub("", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failure(path: Path, notebook: Any, error: Exception) -> BookError:
    """One line: the chapter, the failing cell (the line of its '# %%' in the notebook), the error and the
    statement that raised it."""
    for index, cell in enumerate(notebook.cells):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errors:
            starts = _cell_lines(path)
            where = f"the cell at line {starts[index]}" if len(starts) == len(notebook.cells) else f"cell {index + 1}"
            ename, evalue = errors[0]["ename"], errors[0]["evalue"]
            # IPython marks the line that raised, in each frame: "----> 4 f(x)"
            marked = [line for line in pages.ANSI.sub("", "\n".join(errors[0].get("traceback", []))).splitlines()
                      if line.startswith("---->")]
            statement = f" (at: {re.sub(r'^-+> *[0-9]+ ', '', marked[-1]).strip()})" if marked else ""
            what = f"{ename}: {evalue}" if evalue.strip() else ename
            return BookError(_one_line(f"chapter {path.stem} failed in {where} of {path}: {what}{statement}"))
    return BookError(_one_line(f"chapter {path.stem} failed: {type(error).__name__}: {error}"))


def execute(path: Path, fast: bool, timeout: float = CELL_TIMEOUT) -> Any:
    """The notebook at `path` run top to bottom in a fresh kernel started in its folder (MINIDIFF_FAST=1 when
    fast, else 0; figures inline); BookError if a cell fails."""
    import jupytext
    import nbclient

    notebook = jupytext.read(path)
    env = {**os.environ, "MINIDIFF_FAST": "1" if fast else "0", "MPLBACKEND": INLINE_BACKEND,
           # an editable install that rebuilds on import prints cmake's output to a stderr the kernel lacks
           "SKBUILD_EDITABLE_VERBOSE": "0"}
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    # The kernel's own log (not the cells' output) would clutter the terminal: kept, and shown if the kernel dies.
    with tempfile.TemporaryFile("w+") as log:
        try:
            client.execute(env=env, stderr=log)
        except nbclient.exceptions.DeadKernelError as e:
            log.seek(0)
            raise BookError(_one_line(f"chapter {path.stem}: the kernel died ({e}); its log: {log.read()[-500:]}")) \
                from None
        except Exception as e:  # a failing cell, a timeout, a kernel that does not start
            raise _failure(path, notebook, e) from None
    return notebook


def write_site(folder: Path, executed: Sequence[tuple[Path, Any]], fast: bool) -> list[str]:
    """Write the pages of the executed notebooks, the index, the equation index and the style into `folder`;
    return TeX that did not convert to MathML (shown as TeX on its page)."""
    known = equations.load()
    markdown = pages.Markdown(known)
    chapters = [pages.Chapter(p.name[:2], p.stem, pages.chapter_heading(nb, p.name[:2])) for p, nb in executed]
    files: dict[str, bytes | str] = {
        pages.INDEX_PAGE: pages.index_page(chapters, fast),
        pages.EQUATIONS_PAGE: pages.equations_page(known, equations.cite(), chapters),
        pages.STYLE: style(),
        MARKER: "Built by `python -m minidiff book`; the next build replaces this folder.\n",
    }
    for k, (chapter, (_, notebook)) in enumerate(zip(chapters, executed, strict=True)):
        prev = chapters[k - 1] if k > 0 else None
        next_ = chapters[k + 1] if k + 1 < len(chapters) else None
        text, figures = pages.chapter_page(notebook, chapter, markdown, known, prev, next_)
        files[chapter.page] = text
        files.update(figures)
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    return markdown.unconverted


def style() -> str:
    """The site's stylesheet: minidiff/book/style.css and Pygments' colours for the code."""
    from pygments.formatters import HtmlFormatter

    own = Path(__file__).with_name("style.css").read_text(encoding="utf-8")
    return own + "\n" + HtmlFormatter(style="default").get_style_defs(".highlight") + "\n"


def _check_replaceable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BookError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BookError(f"--out: {out} is a folder with other files in it (not a book built here): "
                        "give a new or empty folder")


def _replace(built: Path, out: Path) -> None:
    """Put the folder `built` at `out`, replacing a previous build there."""
    if not out.exists():
        os.rename(built, out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    os.rename(out, old)
    os.rename(built, out)
    shutil.rmtree(old, ignore_errors=True)


def build(out: str | Path, fast: bool = False, chapters: Sequence[str] | None = None, folder: Path = NOTEBOOKS,
          timeout: float = CELL_TIMEOUT, log: Callable[[str], None] | None = None) -> Path:
    """Execute the chapters and write the site to `out` (replacing a previous build there); return its
    index.html. Nothing is left at `out` or beside it when a chapter fails."""
    check_requirements()
    out = Path(out)
    _check_replaceable(out)
    paths = find_chapters(folder, chapters)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    building = out.absolute().parent / f".{out.name}.building-{secrets.token_hex(4)}"
    building.mkdir()
    try:
        executed = []
        for path in paths:
            start = time.perf_counter()
            executed.append((path, execute(path, fast, timeout)))
            if log:
                log(f"{path.stem}: executed in {time.perf_counter() - start:.1f} s")
        unconverted = write_site(building, executed, fast)
        if log and unconverted:
            log(f"shown as TeX (latex2mathml could not convert): {', '.join(map(repr, unconverted))}")
        _replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out / pages.INDEX_PAGE


