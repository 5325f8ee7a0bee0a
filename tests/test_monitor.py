"""Drift monitoring: PSI per feature and per score, and an exit code cron can alert on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.models.monitor import (
    ALERT_EXIT_CODE,
    drift_table,
    feature_windows,
    mark_truncation,
    psi,
    verdict,
)
from src.settings import MonitorSettings, Settings


def test_psi_is_zero_on_the_same_population_and_large_on_a_shift():
    rng = np.random.default_rng(0)
    ref = pd.Series(rng.normal(size=20_000))
    same = pd.Series(rng.normal(size=20_000))
    shifted = pd.Series(rng.normal(0.5, 1, size=20_000))
    assert psi(ref, same) < 0.01
    assert 0.1 < psi(ref, shifted) < 0.6  # half a standard deviation: about 0.25
    assert psi(ref, ref * 10) > 2  # a unit change (won -> ten won) is a large shift


def test_psi_counts_missing_values_and_categories():
    ref = pd.Series([1.0, 2.0, 3.0, 4.0] * 250)
    assert psi(ref, ref) == pytest.approx(0.0)
    half_missing = ref.where(np.arange(len(ref)) % 2 == 0)
    assert psi(ref, half_missing) > 1  # a feed that stopped filling a column
    cats = pd.Series(["young", "family", "retired"] * 300)
    assert psi(cats, cats) == pytest.approx(0.0)
    assert psi(cats, pd.Series(["young"] * 900)) > 1
    assert psi(cats, pd.Series(["young", "family", "retired", "student"] * 225)) > 0.1  # new value


def test_verdict_alerts_on_a_score_or_on_many_features():
    config = MonitorSettings(psi_warn=0.1, psi_alert=0.25, max_feature_alert_share=0.1)
    rng = np.random.default_rng(1)
    ref = pd.DataFrame(rng.normal(size=(5000, 10)), columns=[f"f{i}" for i in range(10)])
    cur = pd.DataFrame(rng.normal(size=(5000, 10)), columns=ref.columns)
    ok = drift_table(ref, cur, list(ref.columns), config)
    assert verdict(ok, config) == ("ok", [])
    cur["f0"] = cur["f0"] + 0.8  # one feature of ten past alert: warn, not alert (10% is allowed)
    one = drift_table(ref, cur, list(ref.columns), config)
    assert one.set_index("column").loc["f0", "status"] == "alert"
    assert verdict(one, config)[0] == "warn"
    cur["f1"] = cur["f1"] * 3
    two = drift_table(ref, cur, list(ref.columns), config)
    status, reasons = verdict(two, config)
    assert status == "alert" and "f0" in reasons[0] and "f1" in reasons[0]
    scores = drift_table(ref[["f2"]], cur[["f2"]] + 1.0, ["f2"], config, "score")
    status, reasons = verdict(pd.concat([ok, scores]), config)
    assert status == "alert" and "scores past" in reasons[0]


def test_feature_windows_come_from_the_data_dictionary():
    windows = feature_windows(
        ["page_views_90d", "txn_deposit_amt_krw_30d", "app_share_7d", "days_since_last_txn"]
    )
    assert windows["page_views_90d"] == (90, True)  # a count: grows with history
    assert windows["txn_deposit_amt_krw_30d"] == (30, True)
    assert windows["app_share_7d"] == (7, False)  # a share: no direction
    assert "days_since_last_txn" not in windows  # "all history", not a fixed window


def test_history_truncated_features_do_not_alert_unless_they_move_against_the_history():
    """A 90-day count on a reference snapshot with 42 days of history, today with 60: higher
    today by construction, reported but not counted; 30-day and 7-day columns had their full
    window on both sides and count. A truncated count that is *lower* today (a feed delivering
    one event in ten) cannot be truncation and counts."""
    config = MonitorSettings(psi_warn=0.1, psi_alert=0.25, max_feature_alert_share=0.1)
    rng = np.random.default_rng(2)
    n = 4000
    ref = pd.DataFrame(
        {
            "page_views_90d": rng.poisson(42, n),
            "page_views_30d": rng.poisson(30, n),
            "page_views_7d": rng.poisson(7, n),
            "sessions_90d": rng.poisson(42, n),
        }
    )
    cur = pd.DataFrame(
        {
            "page_views_90d": rng.poisson(60, n),  # more history: higher
            "page_views_30d": rng.poisson(30, n),
            "page_views_7d": rng.poisson(7, n),
            "sessions_90d": rng.poisson(60, n),
        }
    )
    cols = list(ref.columns)
    windows = feature_windows(cols)
    table = mark_truncation(drift_table(ref, cur, cols, config), windows, 42, 60)
    flags = table.set_index("column")
    assert flags.loc["page_views_90d", "status"] == "alert"  # the PSI is still reported
    assert flags["truncated"].to_dict() == {
        "page_views_90d": True,
        "page_views_30d": False,
        "page_views_7d": False,
        "sessions_90d": True,
    }
    assert not flags.loc["page_views_90d", "counted"] and flags.loc["page_views_7d", "counted"]
    assert verdict(table, config)[0] == "ok"  # 2 of 4 past alert, both explained by history
    # without the history (a legacy reference) nothing is excused: the same table alerts
    assert (
        verdict(mark_truncation(drift_table(ref, cur, cols, config), windows, None, 60), config)[0]
        == "alert"
    )
    # a broken feed: the truncated count is lower today despite more history -> counted
    cur["sessions_90d"] = rng.poisson(6, n)
    broken = mark_truncation(drift_table(ref, cur, cols, config), windows, 42, 60)
    assert broken.set_index("column").loc["sessions_90d", "counted"]
    status, reasons = verdict(broken, config)
    assert status == "alert" and "sessions_90d" in reasons[0] and "page_views_90d" not in reasons[0]


def _run(*args: str, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.mark.slow
def test_monitor_cli_exits_zero_on_the_training_population_and_three_on_a_drifted_bank(
    small_bank: Settings, tmp_path: Path
):
    """Train a champion on the small bank as of its last day and monitor the view of that same
    day, as the README's cron does right after `retrain`: exit 0 (the reference is the test
    snapshot, and the 30-day windows the test snapshot could not fill are reported apart, not
    counted). Then the same day on a copy of the bank whose clickstream feed delivered one
    event in ten (a broken web tracker): exit 3, with the report, plots and an MLflow run."""
    import mlflow

    from src.features.feature_table import data_period
    from src.models.train import run_propensity_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri, "NEXTOFFER_REPORTS_DIR": str(tmp_path / "reports")}
    settings = Settings(data_dir=small_bank.data_dir, mlflow_tracking_uri=uri)
    as_of = f"{data_period(settings.catalog)[1]:%Y-%m-%d}"
    run = run_propensity_training(settings, as_of=as_of, progress=False)
    assert run.promotion is not None and run.promotion.promoted
    # the registered version says what it is and where its card is
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    description = client.get_model_version("nextoffer-propensity", "1").description
    assert "mean AUC" in description and f"runs:/{run.run_id}/model_card.md" in description
    assert "## Held-out metrics" in mlflow.artifacts.load_text(f"runs:/{run.run_id}/model_card.md")
    reference = mlflow.artifacts.load_dict(f"runs:/{run.run_id}/monitor/reference.json")
    assert reference["snapshot"] == f"{run.plan.test[-1]:%Y-%m-%d}"
    first_train_date = as_of  # the retraining day

    code, out = _run(
        "monitor", "--as-of", first_train_date, "--data-dir", str(small_bank.data_dir), env=env
    )
    assert code == 0, out
    assert f"monitor {first_train_date}: OK" in out or f"monitor {first_train_date}: WARN" in out
    report = tmp_path / "reports" / "monitor" / first_train_date
    for name in ("monitor.md", "psi.csv", "feature_psi.png", "score_distributions.png"):
        assert (report / name).exists(), name
    table = pd.read_csv(report / "psi.csv")
    assert set(table["kind"]) == {"feature", "score"}
    assert (table.loc[table["kind"] == "score", "psi"] < 0.25).all()

    drifted = tmp_path / "drifted"
    shutil.copytree(small_bank.raw_dir, drifted / "raw")
    clicks = pd.read_parquet(drifted / "raw" / "clickstream.parquet")
    clicks.iloc[::10].to_parquet(drifted / "raw" / "clickstream.parquet")
    assert _run("validate", "--data-dir", str(drifted), env=env)[0] == 0
    code, out = _run(
        "monitor",
        "--as-of",
        first_train_date,
        "--data-dir",
        str(drifted),
        "--out-dir",
        str(tmp_path / "drift-report"),
        env=env,
    )
    assert code == ALERT_EXIT_CODE, out
    assert "ALERT" in out and "page_views_30d" in out
    table = pd.read_csv(tmp_path / "drift-report" / first_train_date / "psi.csv")
    views = table.loc[table["column"].str.startswith("page_views_")]
    assert (views["status"] == "alert").all()

    runs = client.search_runs([client.get_experiment_by_name("monitor").experiment_id])
    assert sorted(r.data.tags["status"] for r in runs) in (["alert", "ok"], ["alert", "warn"])
    assert all(r.data.params["model_version"] == run.promotion.version for r in runs)


def test_monitor_without_a_champion_is_one_line(small_bank: Settings, tmp_path: Path):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    code, out = _run(
        "monitor", "--as-of", "2026-02-01", "--data-dir", str(small_bank.data_dir), env=env
    )
    assert code == 1 and "no champion" in out and "Traceback" not in out
