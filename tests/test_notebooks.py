"""Every chapter notebook runs top to bottom in a real kernel, in fast mode (MINIDIFF_FAST=1).
The notebooks assert on statistics themselves; here a failing cell fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MINIDIFF_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # An editable install that rebuilds on import prints cmake's output to sys.stderr, which a kernel has no
    # file descriptor for; the rebuild itself still happens.
    monkeypatch.setenv("SKBUILD_EDITABLE_VERBOSE", "0")
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def test_optional_reference_skips_a_missing_library_unless_ci_requires_it(monkeypatch, capsys):
    """A notebook's comparison cell gets the module, or None and one line saying what installing it shows;
    with MINIDIFF_REQUIRE_TORCH=1 (CI) a missing reference library is an error, never a silent skip."""
    import json

    import minidiff as md

    monkeypatch.delenv("MINIDIFF_REQUIRE_TORCH", raising=False)
    assert md.optional_reference("json", "nothing") is json
    assert md.optional_reference("minidiff_no_such_library", "the comparison") is None
    assert capsys.readouterr().out == "`pip install torch diffusers` shows the comparison here\n"
    monkeypatch.setenv("MINIDIFF_REQUIRE_TORCH", "1")
    with pytest.raises(ImportError, match="minidiff_no_such_library"):
        md.optional_reference("minidiff_no_such_library", "the comparison")
