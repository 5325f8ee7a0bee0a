"""Every notebook runs under papermill on small data, and its jupytext pair is in sync."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from src.settings import PACKAGE_ROOT, Settings

NOTEBOOKS = sorted((PACKAGE_ROOT / "notebooks").glob("*.py"))


def _code_cells(notebook: nbformat.NotebookNode) -> list[str]:
    return [cell.source.strip() for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_pair_in_sync(script: Path):
    paired = script.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} missing: run `make notebooks-sync`"
    from_script = jupytext.read(script)
    from_ipynb = nbformat.read(paired, as_version=4)
    assert _code_cells(from_script) == _code_cells(from_ipynb), (
        f"{script.name} and {paired.name} differ: run `make notebooks-sync`"
    )


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_parameters_cell(script: Path):
    cells = jupytext.read(script).cells
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{script.name} needs exactly one cell tagged 'parameters'"


@pytest.mark.slow
@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_under_papermill(script: Path, small_bank: Settings, tmp_path: Path):
    executed = tmp_path / f"{script.stem}.ipynb"
    papermill.execute_notebook(
        str(script.with_suffix(".ipynb")),
        str(executed),
        parameters={"data_dir": str(small_bank.resolve(small_bank.data_dir))},
        cwd=str(script.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    result = nbformat.read(executed, as_version=4)
    errors = [o for c in result.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(script: Path):
    """A parameter papermill cannot parse is silently not overridable (e.g. a ';' in a comment)."""
    cell = next(
        c
        for c in jupytext.read(script).cells
        if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    assigned = [
        line.split("=")[0].strip()
        for line in cell.source.splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    ]
    seen = papermill.inspect_notebook(str(script.with_suffix(".ipynb")))
    assert "data_dir" in seen
    assert sorted(assigned) == sorted(seen)
