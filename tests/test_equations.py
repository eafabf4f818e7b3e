"""The equation index (minidiff/equations.py, docs/EQUATIONS.md): the page is what the code generates, every
cited id exists, and the code column agrees with what importing minidiff finds (an independent walk)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import minidiff
from minidiff import equations

ROOT = Path(__file__).resolve().parent.parent


def test_the_page_is_up_to_date():
    assert not equations.page_is_stale(), "run `python -m minidiff equations --write` and commit docs/EQUATIONS.md"


def test_every_cited_id_is_in_the_index():
    assert equations.unknown_ids() == [], "cite only ids of minidiff/equations.json (or add the equation there)"


def test_the_index_has_every_id_once_with_name_formula_and_paper():
    known = equations.load()
    assert list(known) == [f"E{n}" for n in range(1, len(known) + 1)]
    assert len(known) >= 51
    assert all(eq.section and eq.name and eq.formula and eq.paper for eq in known.values())


def _imported_citations() -> set[tuple[str, str]]:
    """(id, module.qualname) of every function, class and method whose docstring starts with ids, found by
    importing minidiff's modules (not by parsing them, as the index does)."""
    found = set()
    for info in pkgutil.walk_packages(minidiff.__path__, "minidiff."):
        if info.name.endswith("__main__") or info.name.startswith("minidiff.exercises"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != info.name or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            members = [obj, *(m for m in vars(obj).values() if inspect.isclass(obj))]
            for member in members:
                member = getattr(member, "__func__", getattr(member, "fget", member))  # staticmethod, property
                if inspect.isfunction(member) or inspect.isclass(member):
                    doc = member.__doc__ and inspect.cleandoc(member.__doc__)
                    found |= {(eid, f"{info.name}.{member.__qualname__}") for eid in equations.leading_ids(doc)}
    return found


def test_the_code_column_is_what_importing_minidiff_finds():
    indexed = {(eid, name) for eid, c in equations.cite().items() for name in c.code}
    imported = _imported_citations()
    assert imported - indexed == set(), "cited in a docstring but missing from the index"
    assert indexed - imported == set(), "in the index but no importable function or class starts its docstring so"


def test_the_test_and_notebook_columns_point_at_what_cites_the_id():
    for eid, c in equations.cite().items():
        for test in c.tests:
            path, *names = test.split("::")
            text = (ROOT / path).read_text(encoding="utf-8")
            assert f"def {names[-1]}(" in text, test
            body = text.split(f"def {names[-1]}(", 1)[1].split("\ndef ", 1)[0]
            assert f"_{eid.lower()}_" in f"_{names[-1].lower()}_" or f"[{eid}]" in body, test
        for notebook in c.notebooks:
            assert f"[{eid}]" in (ROOT / notebook).read_text(encoding="utf-8"), notebook


@pytest.fixture
def project(tmp_path) -> Path:
    """A tiny project citing E3 in code, a test and a notebook; a stub citing E3 too (stubs are not code)."""
    (tmp_path / "minidiff" / "exercises").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "minidiff" / "forward.py").write_text(
        'class Process:\n    def sample(self):\n        """[E3][E4] x_t = ..."""\n\n\n'
        'def helper():\n    """Not an equation; mentions [E3] later."""\n')
    (tmp_path / "minidiff" / "exercises" / "ch02.py").write_text('def sample():\n    """[E3] stub"""\n')
    (tmp_path / "tests" / "test_forward.py").write_text(
        'def test_e3_marginal():\n    pass\n\n\nclass TestSNR:\n    def test_ratio(self):\n        """[E4] ..."""\n')
    (tmp_path / "notebooks" / "02_forward.py").write_text("# The marginal [E3]\n")
    return tmp_path


def test_citations_of_a_small_project(project):
    cited = equations.cite(project)
    assert cited["E3"].code == ["minidiff.forward.Process.sample"]
    assert cited["E4"].code == ["minidiff.forward.Process.sample"]
    assert cited["E3"].tests == ["tests/test_forward.py::test_e3_marginal"]
    assert cited["E4"].tests == ["tests/test_forward.py::TestSNR::test_ratio"]
    assert cited["E3"].notebooks == ["notebooks/02_forward.py"]
    assert cited["E4"].notebooks == []


def test_an_unknown_id_is_reported_with_its_place(project):
    unknown = f"E{len(equations.load()) + 1}"
    (project / "tests" / "test_more.py").write_text(f'def test_{unknown.lower()}_x():\n    """[{unknown}]"""\n')
    places = [f"tests/test_more.py:{line}: [{unknown}]" for line in (1, 2)]  # in the name, in the docstring
    assert equations.unknown_ids(project) == places


def test_the_page_goes_stale_when_a_test_is_added_and_write_page_refreshes_it(project):
    assert equations.page_is_stale(project)  # no page yet
    page = equations.write_page(project)
    assert not equations.page_is_stale(project)
    assert "[`minidiff.forward.Process.sample`](../minidiff/forward.py)" in page.read_text()
    with open(project / "tests" / "test_forward.py", "a") as f:
        f.write("\n\ndef test_e5_linear():\n    pass\n")
    assert equations.page_is_stale(project)
    assert sorted(p.name for p in page.parent.iterdir()) == ["EQUATIONS.md"]  # no temporary left behind


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minidiff", "equations", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_prints_an_id_in_full_and_refuses_unknown_ids():
    e11 = equations.load()["E11"]
    out = run("E11").stdout
    assert e11.formula in out and e11.paper in out
    assert "minidiff.diffusion.posterior.q_posterior_mean_variance" in out
    bad = run("E0")
    assert bad.returncode == 1
    assert "ids: expected ids of the index (E1..E" in bad.stderr


def test_cli_check_agrees_with_the_page():
    result = run("--check")
    assert result.returncode == 0, result.stdout
    assert "up to date" in result.stdout
