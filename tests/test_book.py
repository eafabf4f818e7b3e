"""`python -m minidiff book`: the chapters as a static website.

The conversion is checked on notebooks made here (equation links land on anchors that exist, math becomes MathML,
figures become files the pages point to, streams lose their progress bars, no page loads a script); the build on
tiny notebooks executed for real (a failing cell is reported in one line and leaves no half site, a previous site
survives a failed rebuild); and the real chapters end to end: built in fast mode and loaded in headless Chromium,
every page without a console error and with every figure decoded.

Chromium: Debian's `chromium` package. Without it the browser test skips, but fails when CI is set or
MINIDIFF_REQUIRE_CHROMIUM=1 (as MINIDIFF_REQUIRE_TORCH does for torch).
"""

from __future__ import annotations

import base64
import io
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("latex2mathml")
nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

from minidiff import book, cli, equations  # noqa: E402
from minidiff.book import pages  # noqa: E402

UNKNOWN_ID = "[E" + "999]"  # spelled apart: the equation index's own test flags unknown ids written in tests/
# The real chapter(s) the browser test builds: a short one with figures and math (each adds seconds to the test).
BROWSER_CHAPTERS = ("02",)


class Parsed(HTMLParser):
    """The ids, links, image sources and script tags of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        self.ids += [a["id"]] if "id" in a else []
        self.hrefs += [a["href"]] if tag == "a" and "href" in a else []
        self.images += [a["src"]] if tag == "img" else []
        self.scripts += tag == "script"


def broken_links(site: Path) -> list[str]:
    """Every link or image of the site's pages that points nowhere: a page or file that is not there, or an
    anchor that the page it names does not have."""
    parsed = {p.name: Parsed(p.read_text(encoding="utf-8")) for p in site.glob("*.html")}
    broken = []
    for name, page in parsed.items():
        for href in page.hrefs:
            target, _, anchor = href.partition("#")
            target = target or name
            if target not in parsed or (anchor and anchor not in parsed[target].ids):
                broken.append(f"{name}: {href}")
        broken += [f"{name}: <img src={src}>" for src in page.images if not (site / src).is_file()]
    return broken


def png(width: int = 3, height: int = 2) -> bytes:
    import matplotlib.image
    import numpy as np

    buffer = io.BytesIO()
    matplotlib.image.imsave(buffer, np.linspace(0, 1, width * height).reshape(height, width), format="png")
    return buffer.getvalue()


def render(*cells) -> tuple[str, dict[str, bytes], pages.Markdown]:
    known = equations.load()
    markdown = pages.Markdown(known)
    chapter = pages.Chapter("07", "07_made_up", "A made-up chapter: for the tests")
    text, figures = pages.chapter_page(new_notebook(cells=list(cells)), chapter, markdown, known)
    return text, figures, markdown


# --- conversion ------------------------------------------------------------------------------------------------


def test_every_equation_reference_links_to_an_anchor_of_the_equation_index():
    text, _, _ = render(
        new_markdown_cell(f"# 07 · Title\n\nThe posterior [E11] and the marginal [E3]; {UNKNOWN_ID} is no id."),
        new_code_cell("x = 1  # [E13] in a comment", outputs=[new_output("stream", name="stdout", text="[E14]\n")]))
    chapter = Parsed(text)
    index = Parsed(pages.equations_page(equations.load(), {}, []))
    linked = [h for h in chapter.hrefs if h.startswith(pages.EQUATIONS_PAGE + "#")]
    assert sorted(linked) == sorted(f"{pages.EQUATIONS_PAGE}#{e}" for e in ("e11", "e3", "e13", "e14"))
    assert all(h.partition("#")[2] in index.ids for h in linked)
    assert {e.lower() for e in equations.load()} <= set(index.ids)  # every id of the index has its anchor
    assert UNKNOWN_ID in text and f'#{UNKNOWN_ID[1:-1].lower()}"' not in text


def test_headings_get_ids_unique_over_the_page_and_level_two_ones_make_the_contents():
    text, _, _ = render(new_markdown_cell("# 07 · Title\n\n## Summary\n\ntext"),
                        new_markdown_cell("## Summary\n\n### A detail of $x_t$"))
    parsed = Parsed(text)
    assert {"07-title", "summary", "summary-2", "a-detail-of"} <= set(parsed.ids)
    assert len(parsed.ids) == len(set(parsed.ids))
    assert [h for h in parsed.hrefs if h.startswith("#")] == ["#summary", "#summary-2"]


def test_math_becomes_mathml_and_what_does_not_convert_is_shown_as_tex():
    text, _, markdown = render(new_markdown_cell(
        "Inline $x_t = \\sqrt{\\bar\\alpha_t}\\,x_0$ and $\\mathcal N$, then a display:\n\n"
        "$$q(x_t \\mid x_0) = \\mathcal N(x_t; 0, I)$$\n\nand one that fails: $\\text{a<b}$."))
    assert text.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="inline">') == 2
    assert text.count('display="block"') == 1
    assert "\N{MATHEMATICAL SCRIPT CAPITAL N}" in text  # MathML Core ignores mathvariant="script"
    assert 'mathvariant="script"' not in text
    assert markdown.unconverted == ["\\text{a<b}"]
    assert pages.tex_to_mathml("\\log\\tan u", display=False).count("<mspace") == 2  # TeX's thin spaces
    assert "<mspace" not in pages.tex_to_mathml("\\exp(x)", display=False)
    assert pages.tex_to_mathml("\\begin{aligned} a &= b \\\\ c &= d \\end{aligned}", display=True).count("<mtr>") == 2
    assert '<code class="tex">\\text{a&lt;b}</code>' in text


def test_the_math_of_every_chapter_converts():
    jupytext = pytest.importorskip("jupytext")
    markdown = pages.Markdown(equations.load())
    for path in sorted(book.NOTEBOOKS.glob(book.CHAPTER_GLOB)):
        for cell in jupytext.read(path).cells:
            if cell.cell_type == "markdown":
                markdown.render(cell.source, {})
    assert markdown.unconverted == []


def test_figures_become_files_beside_the_page_and_outputs_are_cleaned():
    image = png()
    tqdm = "\r 10%|#         | 1/10 [00:00<00:01,  9.9it/s]\r100%|##########| 10/10 [00:01<00:00,  9.9it/s]\n"
    text, figures, _ = render(new_code_cell("plot()", outputs=[
        new_output("stream", name="stdout", text="loss 0.5\n"),
        new_output("stream", name="stdout", text="working\rdone   \n\x1b[31mred\x1b[0m\n"),
        new_output("stream", name="stderr", text=tqdm + "sampling: 20/50\nUserWarning: careful\n"),
        new_output("display_data", data={"image/png": base64.b64encode(image).decode(), "text/plain": "<Figure>"}),
        new_output("execute_result", data={"text/plain": "<matplotlib.lines.Line2D at 0x7f>"}, execution_count=1),
    ]))
    parsed = Parsed(text)
    assert parsed.images == ["img/07_made_up/01.png"] and figures == {"img/07_made_up/01.png": image}
    assert '<pre class="output stdout">loss 0.5\ndone   \nred</pre>' in text  # joined, overwritten, no colours
    assert '<pre class="output stderr">UserWarning: careful</pre>' in text  # no progress bars
    assert "&lt;matplotlib.lines.Line2D at 0x7f&gt;" in text


def test_pages_load_nothing_from_elsewhere():
    text, _, _ = render(new_markdown_cell("# 07 · T\n\n$x$ [E1]"), new_code_cell("1"))
    for page in (text, pages.index_page([], fast=True), pages.equations_page(equations.load(), {}, [])):
        assert Parsed(page).scripts == 0
        assert not re.search(r'(src|href)="(https?:)?//', page)


def test_a_chapter_links_to_the_previous_and_next_ones_and_the_index_lists_them():
    known = equations.load()
    chapters = [pages.Chapter("02", "02_a", "Forward: schedules"), pages.Chapter("03", "03_b", "Reverse"),
                pages.Chapter("05", "05_c", "Scores: and more")]
    text, _ = pages.chapter_page(new_notebook(cells=[new_markdown_cell("# 03 · Reverse")]), chapters[1],
                                 pages.Markdown(known), known, prev=chapters[0], next_=chapters[2])
    assert Parsed(text).hrefs == ["index.html", "equations.html", "02_a.html", "05_c.html", "02_a.html", "05_c.html"]
    assert '<a href="02_a.html" rel=\'prev\'>← 02 · Forward</a>' in text
    index = pages.index_page(chapters, fast=False)
    assert [h for h in Parsed(index).hrefs if h[0].isdigit()] == ["02_a.html", "03_b.html", "05_c.html"]
    assert '<span class=topic>and more</span>' in index and "Executed in full" in index


def test_chapters_are_chosen_by_number(tmp_path):
    for name in ("00_a.py", "02_b.py", "11_c.py", "notes.py"):
        (tmp_path / name).write_text("# %%\n1\n")
    assert [p.name for p in book.find_chapters(tmp_path)] == ["00_a.py", "02_b.py", "11_c.py"]
    assert [p.name for p in book.find_chapters(tmp_path, ["11", "2", "02"])] == ["02_b.py", "11_c.py"]
    with pytest.raises(book.BookError, match=r"--chapters: expected chapter numbers among 00, 02, 11, got 05"):
        book.find_chapters(tmp_path, ["05", "02"])
    with pytest.raises(book.BookError, match="--notebooks: no chapter notebooks"):
        book.find_chapters(tmp_path / "nothing")


# --- building: executed for real, on tiny notebooks ------------------------------------------------------------

GOOD = """# %% [markdown]
# # 01 · A tiny chapter: printing and drawing
#
# The marginal [E3] is $q(x_t \\mid x_0)$.

# %%
import os

import matplotlib.pyplot as plt

print("fast mode:", os.environ["MINIDIFF_FAST"])
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [0, 1])
plt.show()
"""
BAD = """# %% [markdown]
# # 02 · A chapter that fails

# %%
x = 1

# %%
x / 0
"""


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "01_good.py").write_text(GOOD)
    return folder


@pytest.mark.notebook
def test_a_build_writes_the_site_and_a_failing_chapter_leaves_the_previous_one(notebooks, tmp_path):
    pytest.importorskip("nbclient")
    out = tmp_path / "site"
    index = book.build(out, fast=True, folder=notebooks)
    assert index == out / "index.html"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".minidiff-book", "01_good.html", "equations.html", "img", "index.html", "style.css"])
    chapter = (out / "01_good.html").read_text()
    assert "fast mode: 1" in chapter and Parsed(chapter).images == ["img/01_good/01.png"]
    assert (out / "img/01_good/01.png").read_bytes().startswith(b"\x89PNG")
    assert broken_links(out) == []
    assert 'href="01_good.html">A tiny chapter</a>' in (out / "index.html").read_text()

    (notebooks / "01_good.py").write_text(GOOD.replace("fast mode:", "changed:"))  # runs before 02 fails
    (notebooks / "02_bad.py").write_text(BAD)
    with pytest.raises(book.BookError) as failed:
        book.build(out, fast=True, folder=notebooks)
    assert str(failed.value) == f"chapter 02_bad failed in the cell at line 7 of {notebooks / '02_bad.py'}: " \
        "ZeroDivisionError: division by zero (at: x / 0)"
    assert (out / "01_good.html").read_text() == chapter  # the previous site, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks", "site"]  # no half-built folder left


@pytest.mark.notebook
def test_the_command_reports_a_failing_chapter_in_one_line(notebooks, tmp_path, capsys):
    pytest.importorskip("nbclient")
    (notebooks / "02_bad.py").write_text(BAD)
    out = tmp_path / "site"
    code = cli.main(["book", "--fast", "--chapters", "02", "--notebooks", str(notebooks), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert err == f"error: chapter 02_bad failed in the cell at line 7 of {notebooks / '02_bad.py'}: " \
        "ZeroDivisionError: division by zero (at: x / 0)\n"


def test_the_command_says_which_packages_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(book, "REQUIREMENTS", {"json": "json", "minidiff_no_such_module": "that-package"})
    assert cli.main(["book", "--out", str(tmp_path / "site")]) == 1
    assert capsys.readouterr().err == 'error: building the book needs that-package: pip install -e ".[book]"\n'


def test_the_command_will_not_replace_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert cli.main(["book", "--out", str(tmp_path)]) == 1
    assert "is a folder with other files in it" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    assert cli.main(["book", "--out", str(tmp_path / "x"), "--chapters", "99"]) == 1
    assert capsys.readouterr().err.startswith("error: --chapters: expected chapter numbers among 00, ")


# --- end to end: real chapters in a real browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    from chromium import chromium_binary

    binary = chromium_binary()
    if binary is None:
        why = "headless Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") or os.environ.get("MINIDIFF_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"{why}; required here (CI or MINIDIFF_REQUIRE_CHROMIUM=1)")
        pytest.skip(why)
    pytest.importorskip("websocket", reason="the browser test drives Chromium with websocket-client (dev extra)")
    return binary


PAGE_CHECK = """({
  images: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth})),
  math: document.querySelectorAll("math").length,
  mathDrawn: [...document.querySelectorAll("math")].filter(
    m => m instanceof MathMLElement && m.getBoundingClientRect().width > 0).length,
})"""


@pytest.mark.notebook
def test_the_book_loads_in_a_browser_without_errors_and_with_every_figure(chromium, tmp_path):
    from chromium import Chromium

    pytest.importorskip("nbclient")
    site = book.build(tmp_path / "site", fast=True, chapters=BROWSER_CHAPTERS).parent
    names = sorted(p.name for p in site.glob("*.html"))
    assert len(names) == 2 + len(BROWSER_CHAPTERS)
    assert broken_links(site) == []
    for name in names:
        text = (site / name).read_text(encoding="utf-8")
        assert "<script" not in text and not re.search(r'(src|href)="(https?:)?//', text)
    with Chromium(chromium) as browser:
        for name in names:
            report = browser.load((site / name).as_uri(), PAGE_CHECK)
            assert report.errors == [], name
            value = report.value
            assert all(i["complete"] and i["width"] > 0 for i in value["images"]), (name, value["images"])
            assert value["mathDrawn"] == value["math"], name
            if name.startswith(BROWSER_CHAPTERS):
                assert value["images"] and value["math"] > 0, name
