"""One smoke test per CLI command, run for real on the session's small bank (not just --help).

The chain follows what a team runs: validate -> build-view -> detect -> train-bandit -> serve
(decisions and rewards over HTTP) -> export-log -> evaluate-policy on the exported log; the
commands that make their own data (simulate, demo, ingest, train-table) run on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.settings import PACKAGE_ROOT, Settings

pytestmark = pytest.mark.slow


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, f"nextoffer {' '.join(args)}\n{result.output}\n{result.exception}"
    return result.output


@pytest.fixture(scope="module")
def bank(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A private copy of the small bank's raw tables and its own MLflow store."""
    data_dir = tmp_path_factory.mktemp("smoke")
    shutil.copytree(small_bank.raw_dir, data_dir / "raw")
    shutil.copytree(small_bank.truth_dir, data_dir / "truth")
    run("validate", "--data-dir", str(data_dir))  # so any one test can run alone (-k)
    return {
        "data_dir": str(data_dir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{data_dir / 'mlflow.db'}",
        "as_of": "2026-02-05",  # the day after the small bank's 35 days
    }


def test_simulate(tmp_path: Path) -> None:
    out = run(
        "simulate", "--customers", "30", "--days", "5", "--quiet", "--data-dir", str(tmp_path)
    )
    assert "customers" in out and (tmp_path / "raw" / "clickstream.parquet").exists()


def test_validate(bank: dict[str, str]) -> None:
    out = run("validate", "--data-dir", bank["data_dir"])
    assert "transactions" in out and Path(bank["data_dir"], "validated", "_manifest.json").exists()


def test_build_view(bank: dict[str, str]) -> None:
    out = run("build-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    view = pd.read_parquet(
        Path(bank["data_dir"], "features", f"customer_view_{bank['as_of']}.parquet")
    )
    assert len(view) > 0 and "customer_view" in out


def test_feature_table(bank: dict[str, str]) -> None:
    out = run(
        "feature-table",
        "--as-of",
        "2026-01-25",
        "--window-days",
        "7",
        "--data-dir",
        bank["data_dir"],
    )
    table = pd.read_parquet(Path(bank["data_dir"], "features", "feature_table.parquet"))
    assert "feature_table" in out and len(table) > 0 and "label_loan" in table


def test_detect(bank: dict[str, str]) -> None:
    run("detect", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    assert Path(bank["data_dir"], "features", f"rule_features_{bank['as_of']}.parquet").exists()


def test_train_bandit(bank: dict[str, str]) -> None:
    env = {"MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"]}
    out = run("train-bandit", "--data-dir", bank["data_dir"], env=env)
    assert "nextoffer-bandit" in out


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except OSError:
        return 0, {}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(bank: dict[str, str]) -> Iterator[str]:
    """``nextoffer serve`` as a process on a free port, on the bank's view and registry."""
    from src.serving.service import free_port

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"]}
    command = [str(Path(sys.executable).parent / "nextoffer"), "serve", "--port", str(port)]
    log = Path(bank["data_dir"]) / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*command, "--data-dir", bank["data_dir"]], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _get(url + "/readyz")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "serve not ready in 120 s\n" + log.read_text()
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve(bank: dict[str, str], server: str) -> None:
    customers = pd.read_parquet(
        Path(bank["data_dir"], "validated", "customers.parquet"), columns=["customer_id"]
    )["customer_id"]
    served = 0
    for customer_id in customers.head(20):
        decision = _post(
            server + "/v1/decisions",
            {"customer_id": customer_id, "slot": "home_banner", "context": {"channel": "app"}},
        )
        if decision["offer"]:
            served += 1
            reward = {"decision_id": decision["decision_id"], "kind": "click"}
            assert _post(server + "/v1/rewards", reward)["stored"]
    assert served > 0


def test_export_log_and_evaluate_policy(bank: dict[str, str], server: str) -> None:
    out_dir = Path(bank["data_dir"]) / "exported"
    run("export-log", str(out_dir), "--data-dir", bank["data_dir"])
    log = next(out_dir.glob("evaluation_log.parquet"))
    out = run("evaluate-policy", str(log), "--policy", "uniform")
    assert "dr" in out and "ips" in out


def test_to_spark_sql() -> None:
    out = run("to-spark-sql", "customer_view")
    assert "SELECT" in out and ":as_of" in out  # Spark's named parameter for the cut-off


def test_retrain(bank: dict[str, str], tmp_path: Path) -> None:
    env = {
        "MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"],
        "NEXTOFFER_REPORTS_DIR": str(tmp_path),
    }
    out = run("retrain", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"], env=env)
    assert "propensity" in out


def test_demo(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    out = run("demo", "--customers", "120", "--days", "8", "--data-dir", str(tmp_path), env=env)
    assert "7/7" in out and "done in" in out


def test_ingest(tmp_path: Path) -> None:
    mapping = PACKAGE_ROOT / "examples" / "bank_export" / "mapping.yaml"
    out = run("ingest", "--mapping", str(mapping), "--data-dir", str(tmp_path))
    assert "transactions" in out and (tmp_path / "raw" / "transactions.parquet").exists()


def test_train_table(bank: dict[str, str], tmp_path: Path) -> None:
    """A bank's own flat file: the customers table, 'will they accept push' as the target."""
    customers = pd.read_parquet(Path(bank["data_dir"], "validated", "customers.parquet"))
    table = customers.drop(columns=["accident_reported_at", "closed_at"])
    table.to_csv(tmp_path / "customers.csv", index=False)
    env = {"MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"]}
    out = run(
        "train-table", str(tmp_path / "customers.csv"), "--target", "consent_push",
        "--drop", "customer_id", "--time-col", "joined_at", "--folds", "3", env=env,
    )  # fmt: skip
    assert "AUC" in out or "auc" in out
