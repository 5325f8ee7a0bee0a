"""Every notebook runs under papermill on small data, and its jupytext pair is in sync."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from src.settings import PACKAGE_ROOT, Settings

NOTEBOOKS = sorted((PACKAGE_ROOT / "notebooks").glob("*.py"))
# notebooks that do not read the bank's data_dir run in their own test with their own small
# parameters (21: a generated decision log, tests/test_ope_notebook.py)
OWN_TEST = {"21_ope_on_your_log"}
ON_THE_BANK = [p for p in NOTEBOOKS if p.stem not in OWN_TEST]

# Figures each executed notebook must show as images (a notebook missing here needs none):
# 10: roc, calibration, lift, importance, one customer's reasons, mean abs SHAP; 11: segment ROAS and the conversions vs the oracle.
MIN_IMAGES = {
    "01_customer_view": 5,
    "02_detection_and_journeys": 7,
    "10_train_propensity": 6,
    "11_train_cvr": 2,
    "20_bandit_vs_ab": 3,
    "30_campaigns": 2,
}


def _image_outputs(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", [])
    )


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
@pytest.mark.parametrize("script", ON_THE_BANK, ids=lambda p: p.stem)
def test_runs_under_papermill(
    script: Path, small_bank: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Runs without errors and shows its figures as images (so the kernel's inline backend is
    in charge: nothing imported by a notebook may switch matplotlib's backend)."""
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as in a user's kernel: inline by default
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
    images = _image_outputs(result)
    assert images >= MIN_IMAGES.get(script.stem, 0), (
        f"{script.name}: {images} image outputs, expected at least {MIN_IMAGES.get(script.stem)}"
    )
    figures_as_text = [
        o
        for c in result.cells
        for o in c.get("outputs", [])
        if "<Figure size" in str(o.get("data", {}).get("text/plain", ""))
        and "image/png" not in o.get("data", {})
    ]
    assert not figures_as_text, f"{script.name}: a figure printed as text, not drawn"


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


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_registers_the_kernel_and_binds_from_variables():
    """`make lab` (dry run) registers the named kernel first and works as root in a container."""
    out = subprocess.run(
        ["make", "-n", "lab", "LAB_IP=0.0.0.0", "LAB_PORT=9999"],
        cwd=PACKAGE_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    install = out.index("ipykernel install --user --name nextoffer")
    lab = out.index("jupyter lab notebooks/")
    assert install < lab
    assert "--ip=0.0.0.0 --port=9999" in out[lab:]
    assert ("--allow-root" in out) == (os.geteuid() == 0)


def test_notebooks_register_nothing_by_default_only_retrain_registers():
    """Running a notebook by hand must not move the champion the endpoint hot-swaps to: every
    notebook with a ``register`` parameter defaults it to False, and ``retrain`` passes True."""
    import inspect

    from src.models import retrain

    with_register = {
        p.stem: papermill.inspect_notebook(str(p.with_suffix(".ipynb")))["register"]["default"]
        for p in NOTEBOOKS
        if "register" in papermill.inspect_notebook(str(p.with_suffix(".ipynb")))
    }
    assert {"10_train_propensity", "11_train_cvr"} <= set(with_register)
    assert set(with_register.values()) == {"False"}, with_register
    assert '"register": True' in inspect.getsource(retrain.retrain)
