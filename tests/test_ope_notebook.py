"""Notebook 21 (OPE on your own log) runs under papermill on a small generated log and shows its
figures; its jupytext pair is in sync (the shared notebook tests check that too)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

from src.settings import PACKAGE_ROOT

NOTEBOOK = PACKAGE_ROOT / "notebooks" / "21_ope_on_your_log.ipynb"


@pytest.mark.slow
def test_notebook_21_runs_on_a_small_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    executed = tmp_path / NOTEBOOK.name
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"n_decisions": 3000, "n_bootstrap": 20},
        cwd=str(NOTEBOOK.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    result = nbformat.read(executed, as_version=4)
    outputs = [o for c in result.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    text = "".join(o.get("text", "") for o in outputs)
    assert "independent-position assumption" in text and "ess" in text
