"""The HTML of the book: a chapter page from an executed notebook, the index and the equation index.

Pure functions of their inputs: they return the page's text and the figure files it refers to; minidiff.book runs
the notebooks and writes the site. Markdown is CommonMark (markdown-it-py) with tables; `$...$` and `$$...$$` are
turned into MathML by latex2mathml, which current browsers draw natively, so a page loads no script at all and
reads offline; every `[E11]` (in prose, code and printed output) links to that entry of the equation index.
"""

from __future__ import annotations

import base64
import html
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from minidiff.equations import Citations, Equation

INDEX_PAGE = "index.html"
EQUATIONS_PAGE = "equations.html"
STYLE = "style.css"
EQ_REF = re.compile(r"\[(E\d+)\]")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Progress reports on stderr: tqdm's bars ("40%|####  | 20/50 [00:01<00:02, 9.8it/s]", "12it [00:01, ...]") and
# minidiff.progress's plain lines ("sampling: 20/50").
PROGRESS_LINE = re.compile(r"(\| *\d+/\d+|\d+it) \[\d+:\d+|^[\w .,-]+: \d+/(\d+|\?)$")
HEADING = re.compile(r"^#\s+(.+)$", re.M)
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg"}
MATH_VARIANTS = {"script": "SCRIPT", "double-struck": "DOUBLE-STRUCK", "fraktur": "FRAKTUR", "bold": "BOLD",
                 "bold-italic": "BOLD ITALIC", "sans-serif": "SANS-SERIF", "monospace": "MONOSPACE"}
# Environments latex2mathml does not know, as ones it does that lay out the same way.
TEX_ENVIRONMENTS = {r"\begin{aligned}": r"\begin{align*}", r"\end{aligned}": r"\end{align*}",
                    r"\begin{gathered}": r"\begin{array}{c}", r"\end{gathered}": r"\end{array}"}
# A function name (\log, \sin^2, ...: latex2mathml's only multi-letter <mi>) not followed by a bracket: TeX sets a
# thin space after it, which MathML leaves to the author ("log tan u", not "logtanu").
FUNCTION_NAME = re.compile(r"(<mi>[A-Za-z]{2,}</mi>|<(msub|msup)><mi>[A-Za-z]{2,}</mi><(mi|mn)>[^<]*</\3></\2>)"
                           r"(?!<mo[^>]*>(&#x00028;|&#x0005B;|&#x0007B;|[(\[{])</mo>)")
STYLED = re.compile(rf'<(mi|mn|mtext) mathvariant="({"|".join(MATH_VARIANTS)})">([^<]*)</\1>')


@dataclass(frozen=True)
class Chapter:
    """A chapter of the site: its number ("02"), notebook stem ("02_forward_process") and heading."""

    number: str
    stem: str
    heading: str  # "The forward process: schedules, SNR, the closed-form marginal"

    @property
    def page(self) -> str:
        return f"{self.stem}.html"

    @property
    def name(self) -> str:
        """The heading before its first colon ("The forward process")."""
        return self.heading.split(": ", 1)[0]

    @property
    def topic(self) -> str:
        """The heading after its first colon ("schedules, SNR, the closed-form marginal"), or ""."""
        return self.heading.split(": ", 1)[1] if ": " in self.heading else ""


def chapter_heading(notebook: Any, number: str) -> str:
    """The text of the first level-1 heading of the notebook's markdown, without its "NN · " prefix."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and (m := HEADING.search(cell.source)):
            return re.sub(rf"^{number}\s*[·:.-]\s*", "", m.group(1).strip())
    return f"Chapter {number}"


# --- links to the equation index -----------------------------------------------------------------------------


def equation_link(eq: Equation) -> str:
    title = html.escape(f"{eq.id}: {eq.name}. {eq.formula}")
    return f'<a class="eq" href="{EQUATIONS_PAGE}#{eq.id.lower()}" title="{title}">[{eq.id}]</a>'


def link_equations(escaped: str, equations: dict[str, Equation]) -> str:
    """Every known [Eid] of an HTML-escaped text as a link to the equation index (unknown ids stay text)."""
    return EQ_REF.sub(lambda m: equation_link(equations[m.group(1)]) if m.group(1) in equations else m.group(0),
                      escaped)


# --- markdown with math --------------------------------------------------------------------------------------


def _styled_letter(char: str, variant: str) -> str:
    """A letter in one of Unicode's mathematical alphabets ("N", "SCRIPT" -> U+1D4A9, "R", "DOUBLE-STRUCK" -> U+211D:
    some letters sit in the older Letterlike Symbols block), or the letter itself where there is none."""
    if not char.isascii() or not char.isalpha():
        return char
    case = "CAPITAL" if char.isupper() else "SMALL"
    for name in (f"MATHEMATICAL {variant} {case} {char.upper()}", f"{variant} {case} {char.upper()}"):
        try:
            return unicodedata.lookup(name)
        except KeyError:
            pass
    return char


def _unicode_variants(mathml: str) -> str:
    r"""MathML Core (what browsers draw) ignores mathvariant but "normal": a styled letter (latex2mathml writes
    `\mathcal N` as <mi mathvariant="script">N</mi>) becomes the letter of Unicode's mathematical alphabet."""
    def replace(m: re.Match) -> str:
        letters = "".join(_styled_letter(c, MATH_VARIANTS[m.group(2)]) for c in html.unescape(m.group(3)))
        return f"<{m.group(1)}>{html.escape(letters, quote=False)}</{m.group(1)}>"

    return STYLED.sub(replace, mathml)


def _function_spaces(mathml: str) -> str:
    return FUNCTION_NAME.sub(r'\1<mspace width="0.1667em" />', mathml)


def tex_to_mathml(tex: str, display: bool) -> str | None:
    """MathML for a TeX formula, or None where latex2mathml cannot convert it (or produces malformed XML)."""
    from latex2mathml.converter import convert

    for name, stand_in in TEX_ENVIRONMENTS.items():
        tex = tex.replace(name, stand_in)
    try:
        mathml = _function_spaces(_unicode_variants(convert(tex, display="block" if display else "inline")))
        ET.fromstring(mathml)  # e.g. "\text{a<b}" comes out with a bare "<"
    except Exception:  # latex2mathml raises many kinds of errors on TeX it does not know
        return None
    return mathml


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _heading_ids(state: Any) -> None:
    """Core rule: an id on every heading, unique over all the cells rendered with the same env (one page), and the
    level-2 headings listed in env["toc"] as (id, inline token) for the page's table of contents."""
    used = state.env.setdefault("ids", set())
    toc = state.env.setdefault("toc", [])
    for i, token in enumerate(state.tokens):
        if token.type != "heading_open":
            continue
        inline = state.tokens[i + 1]
        base = _slug("".join(c.content for c in inline.children or () if c.type in ("text", "code_inline")))
        slug, k = base or "section", 1
        while slug in used:
            k += 1
            slug = f"{base or 'section'}-{k}"
        used.add(slug)
        token.attrSet("id", slug)
        if token.tag == "h2":
            toc.append((slug, inline))


class Markdown:
    """CommonMark with tables, math as MathML, [Eid] links and heading ids. Pass one env dict for all the cells
    of a page (heading ids stay unique on the page); TeX that does not convert is shown as TeX and listed in
    `unconverted`."""

    def __init__(self, equations: dict[str, Equation]):
        from markdown_it import MarkdownIt
        from mdit_py_plugins.dollarmath import dollarmath_plugin

        self.equations = equations
        self.unconverted: list[str] = []
        self.md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
        self.md.use(dollarmath_plugin, allow_labels=False, double_inline=True, renderer=self._math)
        # $$...$$ inside a paragraph: a block-displayed span (a <div> may not stand inside a <p>)
        self.md.add_render_rule("math_inline_double", lambda _self, tokens, idx, _options, _env: (
            f'<span class="math display">{self._math(tokens[idx].content.strip(), {"display_mode": True})}</span>'))
        self.md.inline.ruler.before("link", "equation_ref", self._equation_ref)
        self.md.add_render_rule("equation_ref", lambda _self, tokens, idx, _options, _env: (
            equation_link(self.equations[tokens[idx].meta["id"]])))
        self.md.core.ruler.push("heading_ids", _heading_ids)

    def render(self, text: str, env: dict) -> str:
        return self.md.render(text, env)

    def render_inline(self, token: Any, env: dict) -> str:
        return self.md.renderer.renderInline(token.children or [], self.md.options, env)

    def _math(self, tex: str, options: dict) -> str:
        mathml = tex_to_mathml(tex, options["display_mode"])
        if mathml is None:
            self.unconverted.append(tex)
            return f'<code class="tex">{html.escape(tex)}</code>'
        return mathml

    def _equation_ref(self, state: Any, silent: bool) -> bool:
        m = EQ_REF.match(state.src, state.pos)
        if m is None or m.group(1) not in self.equations:
            return False
        if not silent:
            state.push("equation_ref", "", 0).meta["id"] = m.group(1)
        state.pos = m.end()
        return True


# --- code cells and their outputs ----------------------------------------------------------------------------


def clean_stream(text: str, stderr: bool = False) -> str:
    """A stream as a terminal would leave it: no ANSI colours, each carriage return's overwrite resolved; on
    stderr, progress-bar lines dropped."""
    lines = []
    for line in ANSI.sub("", text).split("\n"):
        line = next((part for part in reversed(line.split("\r")) if part), "")
        if not (stderr and PROGRESS_LINE.search(line.strip())):
            lines.append(line)
    return "\n".join(lines).strip("\n")


def _merged_streams(outputs: Iterable[Any]) -> list[dict]:
    """The outputs with consecutive writes to the same stream joined (a kernel sends them in pieces)."""
    merged: list[dict] = []
    for out in outputs:
        previous = merged[-1] if merged else {}
        if out["output_type"] == "stream" and previous.get("output_type") == "stream" and \
                previous["name"] == out["name"]:
            merged[-1] = {**previous, "text": previous["text"] + out["text"]}
        else:
            merged.append(dict(out))
    return merged


@dataclass
class Figures:
    """The image files of one page: path relative to the site -> bytes."""

    folder: str
    files: dict[str, bytes] = field(default_factory=dict)

    def add(self, data: bytes, extension: str) -> str:
        path = f"img/{self.folder}/{len(self.files) + 1:02d}.{extension}"
        self.files[path] = data
        return path


def _highlight(source: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return highlight(source, PythonLexer(), HtmlFormatter(nowrap=True))


def render_output(out: dict, figures: Figures, alt: str, equations: dict[str, Equation]) -> str:
    """One output of a code cell: a printed stream, a figure (written as a file beside the page), HTML, text or
    an error."""
    kind = out["output_type"]
    if kind == "stream":
        text = clean_stream(out["text"], stderr=out["name"] == "stderr")
        return f'<pre class="output {out["name"]}">{link_equations(html.escape(text), equations)}</pre>' if text \
            else ""
    if kind == "error":
        trace = ANSI.sub("", "\n".join(out.get("traceback") or [f'{out["ename"]}: {out["evalue"]}']))
        return f'<pre class="output error">{html.escape(trace)}</pre>'
    data = out.get("data", {})
    for mime, extension in IMAGE_TYPES.items():
        if mime in data:
            path = figures.add(base64.b64decode(data[mime]), extension)
            return f'<figure><img src="{path}" alt="{html.escape(alt)}"></figure>'
    if "image/svg+xml" in data:
        return f'<figure class="svg">{data["image/svg+xml"]}</figure>'
    if "text/html" in data:
        return f'<div class="output html">{data["text/html"]}</div>'
    if "text/plain" in data:
        return f'<pre class="output result">{link_equations(html.escape(data["text/plain"]), equations)}</pre>'
    return ""


def render_code_cell(cell: Any, figures: Figures, alt: Callable[[int], str], equations: dict[str, Equation]) -> str:
    source = link_equations(_highlight(cell.source), equations) if cell.source.strip() else ""
    outputs = []
    for out in _merged_streams(cell.get("outputs", [])):
        outputs.append(render_output(out, figures, alt(len(figures.files) + 1), equations))
    parts = ([f'<pre class="source highlight"><code>{source}</code></pre>'] if source else []) + \
        [o for o in outputs if o]
    return f'<div class="cell">{"".join(parts)}</div>' if parts else ""


# --- pages ---------------------------------------------------------------------------------------------------


def _link(href: str, text: str, rel: str = "") -> str:
    return f'<a href="{href}"{f" rel={rel!r}" if rel else ""}>{text}</a>'


def page(title: str, body: str, prev: Chapter | None = None, next_: Chapter | None = None) -> str:
    """A whole HTML page: the bar (the book, the equation index), the body, then previous / next chapter."""
    def pager() -> str:
        left = _link(prev.page, f"← {prev.number} · {html.escape(prev.name)}", "prev") if prev else ""
        right = _link(next_.page, f"{next_.number} · {html.escape(next_.name)} →", "next") if next_ else ""
        return f'<nav class="pager"><span>{left}</span><span>{right}</span></nav>'

    bar = (f'<header class="bar">{_link(INDEX_PAGE, "minidiff · the book")}'
           f'{_link(EQUATIONS_PAGE, "equation index")}</header>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f'<link rel="stylesheet" href="{STYLE}">',
        '<link rel="icon" href="data:,">', "</head>", "<body>", bar,
        pager() if prev or next_ else "", f"<main>\n{body}\n</main>", pager() if prev or next_ else "",
        "</body>", "</html>", ""])


def chapter_page(notebook: Any, chapter: Chapter, markdown: Markdown, equations: dict[str, Equation],
                 prev: Chapter | None = None, next_: Chapter | None = None) -> tuple[str, dict[str, bytes]]:
    """(the page of an executed notebook, its figure files by path relative to the site)."""
    env: dict = {}
    figures = Figures(chapter.stem)
    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cells.append(f'<div class="markdown">\n{markdown.render(cell.source, env)}</div>')
        elif cell.cell_type == "code":
            cells.append(render_code_cell(cell, figures, lambda n: f"chapter {chapter.number}, figure {n}",
                                          equations))
    toc = "".join(f'<li><a href="#{slug}">{markdown.render_inline(token, env)}</a></li>'
                  for slug, token in env.get("toc", []))
    contents = f'<nav class="toc"><details><summary>Contents</summary><ol>{toc}</ol></details></nav>' if toc else ""
    body = "\n".join([contents, *[c for c in cells if c]])
    return page(f"{chapter.number} · {chapter.heading} (minidiff)", body, prev, next_), figures.files


def index_page(chapters: Sequence[Chapter], fast: bool) -> str:
    rows = "\n".join(
        f'<li><span class="number">{c.number}</span> {_link(c.page, html.escape(c.name))}'
        f'{f" <span class=topic>{html.escape(c.topic)}</span>" if c.topic else ""}</li>' for c in chapters)
    mode = ("Executed in fast mode (<code>MINIDIFF_FAST=1</code>): smaller data, fewer steps and a shorter "
            "chain than a full run, so some figures are rougher.") if fast else \
        "Executed in full (without <code>MINIDIFF_FAST</code>)."
    body = (f"<h1>minidiff: diffusion models from scratch</h1>\n"
            f"<p>The chapters of minidiff, each run top to bottom with its printed results and figures. Every "
            f"<code>[E11]</code> links to the {_link(EQUATIONS_PAGE, 'equation index')}, which lists for each "
            f"equation its paper, the code that implements it, the tests that check it and the chapters that "
            f"derive it.</p>\n<p class=\"mode\">{mode}</p>\n<ol class=\"chapters\">\n{rows}\n</ol>")
    return page("minidiff: the book", body)


def equations_page(equations: dict[str, Equation], cited: dict[str, Citations], chapters: Sequence[Chapter]) -> str:
    """Every equation under its anchor (#e11, as in docs/EQUATIONS.md): formula, paper, the chapters of the site
    that derive it (linked), the code that implements it and the tests that check it."""
    by_stem = {c.stem: c for c in chapters}

    def chapter_links(notebooks: list[str]) -> str:
        stems = [n.rsplit("/", 1)[-1].rsplit(".", 1)[0] for n in notebooks]
        return ", ".join(_link(by_stem[s].page, f"{by_stem[s].number} · {html.escape(by_stem[s].name)}")
                         if s in by_stem else html.escape(s) for s in stems) or "none yet"

    def listing(items: list[str], what: str) -> str:
        if not items:
            return "none yet"
        entries = "".join(f"<li><code>{html.escape(i)}</code></li>" for i in items)
        return f"<details><summary>{len(items)} {what}</summary><ul>{entries}</ul></details>"

    rows, sections, section = [], [], None
    for eid, eq in equations.items():
        c = cited.get(eid, Citations())
        rows.append(f'<tr><td><a href="#{eid.lower()}">{eid}</a></td><td>{html.escape(eq.name)}</td>'
                    f"<td>{chapter_links(c.notebooks)}</td></tr>")
        if eq.section != section:
            section = eq.section
            sections.append(f'<h2 id="{_slug(section)}">{html.escape(section)}</h2>')
        sections.append(
            f'<section class="equation" id="{eid.lower()}"><h3>{eid}: {html.escape(eq.name)}</h3>'
            f'<p class="formula"><code>{html.escape(eq.formula)}</code></p><dl>'
            f"<dt>paper</dt><dd>{html.escape(eq.paper)}</dd>"
            f"<dt>chapters</dt><dd>{chapter_links(c.notebooks)}</dd>"
            f"<dt>code</dt><dd>{listing(c.code, 'functions')}</dd>"
            f"<dt>tests</dt><dd>{listing(c.tests, 'tests')}</dd></dl></section>")
    body = ("<h1>The equation index</h1>\n<p>Each equation of the book with its formula, the paper it comes from, "
            "the chapters that derive it, the functions that implement it and the tests that check it (the same "
            "index as <code>python -m minidiff equations</code> and docs/EQUATIONS.md).</p>\n"
            '<table class="equations"><thead><tr><th>id</th><th>name</th><th>chapters</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>\n" + "\n".join(sections))
    return page("The equation index (minidiff)", body)
