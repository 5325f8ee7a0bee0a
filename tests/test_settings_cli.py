"""The settings object and the CLI's wiring (no heavy work)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from src.cli import app
from src.settings import PACKAGE_ROOT, Settings


def test_paths_are_relative_to_project_root(monkeypatch):
    monkeypatch.delenv("NEXTOFFER_DATA_DIR", raising=False)
    settings = Settings()
    assert settings.raw_dir == PACKAGE_ROOT / "data" / "raw"
    assert settings.truth_dir == PACKAGE_ROOT / "data" / "truth"


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTOFFER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTOFFER_CUSTOMERS", "123")
    settings = Settings()
    assert settings.raw_dir == tmp_path / "raw"
    assert settings.customers == 123


def test_settings_construction_touches_no_files(tmp_path):
    settings = Settings(root=tmp_path)
    _ = settings.raw_dir, settings.features_dir, settings.rejects_dir
    assert list(tmp_path.iterdir()) == []


def test_cli_lists_subcommands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "validate", "build-view", "demo", "to-spark-sql"):
        assert command in result.output


def test_cli_import_is_light():
    """Heavy libraries load inside commands, so `nextoffer --help` stays instant."""
    code = "import sys, src.cli; print(sorted(m for m in ('pandas', 'duckdb', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_artifacts_live_beside_the_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    assert Settings().artifact_root == tmp_path / "store" / "artifacts"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert Settings().artifact_root == PACKAGE_ROOT / "mlruns" / "artifacts"
    assert Settings().tracking_uri == f"sqlite:///{PACKAGE_ROOT / 'mlruns' / 'mlflow.db'}"
