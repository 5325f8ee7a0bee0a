"""Shared fixtures: one small simulated bank per test session, reused read-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.settings import Settings

SMALL_BANK = {"customers": 400, "days": 35, "seed": 11}


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every test (and every notebook kernel it starts) tracks into a temp SQLite store.

    Set in the process environment, not monkeypatched per test, so papermill's kernels inherit it;
    the project's own mlruns/ is never written by the test suite.
    """
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at a small simulated bank (raw, validated + truth) in a temp data dir.

    Tests must not write into it; copy it first if a test needs to change the data.
    """
    from src.pipeline import run_simulation, run_validation

    data_dir: Path = tmp_path_factory.mktemp("bank")
    settings = Settings(data_dir=data_dir, **SMALL_BANK)
    run_simulation(settings, progress=False)
    run_validation(settings)
    return settings
