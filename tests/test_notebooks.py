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
