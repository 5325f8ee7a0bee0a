"""The demo's output is the demo's own: no sklearn calibration warning on a product with a
handful of validation positives, no MLflow CloudPickle notice when logging our pyfuncs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from src.models.propensity import (
    CALIBRATION_MIN_PER_CLASS,
    PropensityConfig,
    PropensityModel,
    fit_product,
)
from src.models.tracking import CLOUDPICKLE_NOTICE
from src.settings import Settings

SKLEARN_FOLDS = "The least populated class in y has only"
CONFIG = PropensityConfig(n_estimators=20, min_child_samples=5, early_stopping_rounds=5)


def _data(n_val_pos: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(600, 3)), columns=["a", "b", "c"])
    y_train = (rng.random(400) < 1 / (1 + np.exp(-2 * X["a"].iloc[:400]))).astype(int)
    y_val = np.zeros(200, dtype=int)
    y_val[:n_val_pos] = 1
    return X.iloc[:400], y_train.to_numpy(), X.iloc[400:], y_val


def test_three_validation_positives_train_uncalibrated_without_the_sklearn_warning():
    X_tr, y_tr, X_va, y_va = _data(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = fit_product("loan", X_tr, y_tr, X_va, y_va, CONFIG)
    assert not [w for w in caught if SKLEARN_FOLDS in str(w.message)]
    assert m.calibrated is None
    assert m.calibration == f"none (3 validation positives < {CALIBRATION_MIN_PER_CLASS})"
    assert np.allclose(m.predict(X_va), m.predict_uncalibrated(X_va))


def test_enough_validation_positives_are_calibrated():
    X_tr, y_tr, X_va, y_va = _data(60)
    m = fit_product("loan", X_tr, y_tr, X_va, y_va, CONFIG)
    assert m.calibration in ("sigmoid", "none (calibration map decreasing)")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_log_pyfunc_records_calibration_and_drops_the_cloudpickle_notice():
    from src.models.tracking import configure_mlflow, log_pyfunc

    settings = Settings()  # the session's temp MLflow store (conftest)
    model = PropensityModel(["a", "b", "c"], ["a", "b", "c"])
    X_tr, y_tr, X_va, y_va = _data(3)
    model.products["loan"] = fit_product("loan", X_tr, y_tr, X_va, y_va, CONFIG)
    records = _Records()
    logger = logging.getLogger("mlflow.pyfunc")
    logger.addHandler(records)
    try:
        with mlflow.start_run(experiment_id=configure_mlflow(settings, "clean")) as run:
            log_pyfunc(model, X_va, model.raw_columns)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if m.startswith(CLOUDPICKLE_NOTICE)]
    params = mlflow.get_run(run.info.run_id).data.params
    assert params["loan.calibration"] == model.products["loan"].calibration


@pytest.mark.slow
def test_demo_prints_neither_warning(tmp_path: Path):
    """Small enough to run in a minute, large enough to train (and calibrate) propensity and the
    bandit; stdout and stderr both, as a terminal shows them."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "NEXTOFFER_SIM__CUSTOMERS": "300",
        "NEXTOFFER_SIM__DAYS": "45",
    }
    out = subprocess.run(
        [sys.executable, "-m", "src.cli", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "calibration " in out.stdout  # trained: the per-product lines say which calibration
    assert "registered nextoffer-bandit" in out.stdout
    assert SKLEARN_FOLDS not in text
    assert "causes it to be serialized using CloudPickle" not in text
    assert "Warning" not in text, "the demo's output carries a warning"  # any kind, not just those


def test_retrain_kernels_print_no_tcp_warning(
    small_bank: Settings, tmp_path: Path, capfd: pytest.CaptureFixture[str]
):
    """papermill's kernel talks IPC: ipykernel's "running over TCP without encryption" warning
    (on the kernel's stderr, i.e. the terminal's) is gone."""
    import nbformat

    from src.models.retrain import retrain

    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "data_dir = ''\nas_of = ''\nrun_info_path = ''\nout_dir = ''",
                metadata={"tags": ["parameters"]},
            ),
            nbformat.v4.new_code_cell("print('ran')"),
        ]
    )
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "quiet.ipynb")
    settings = small_bank.model_copy(update={"root": tmp_path})
    retrain(
        settings, "2026-02-01", notebooks=["quiet"], out_dir=tmp_path / "r", log_to_mlflow=False
    )
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err
    assert (tmp_path / "r" / "2026-02-01" / "quiet.ipynb").exists()
