"""The main job end to end through the CLI, as `make demo` runs it (tiny size)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.settings import Settings


@pytest.mark.slow
def test_demo_builds_the_view_and_says_where(tmp_path: Path):
    result = CliRunner().invoke(  # its own registry: the demo registers the first versions
        app,
        ["demo", "--customers", "150", "--days", "10", "--data-dir", str(tmp_path)],
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert result.exit_code == 0, result.output
    view_path = tmp_path / "features" / "customer_view_2026-01-11.parquet"
    assert view_path.exists()
    view = pd.read_parquet(view_path)
    customers = pd.read_parquet(tmp_path / "raw" / "customers.parquet")
    assert set(view["customer_id"]) <= set(customers["customer_id"])
    assert str(view_path) in result.output
    assert "0 rejected" in result.output
    # ten days cannot hold a time split: training says so, the endpoint serves its fallback order
    assert "skipped: period 2026-01-01..2026-01-10 too short" in result.output
    assert "NEW-CUSTOMER" in result.output and "cold_start" in result.output
    # the bandit is trained from the logged exposures and the endpoint chooses with it
    assert "registered nextoffer-bandit v1 as champion" in result.output
    assert "policy=bandit" in result.output


def copy_bank(bank: Settings, data_dir: Path) -> None:
    """The small bank's raw, validated and truth layers, to change or write beside."""
    shutil.copytree(bank.resolve(bank.data_dir), data_dir, dirs_exist_ok=True)


@pytest.mark.slow
def test_train_bandit_promotes_only_a_better_bandit(small_bank: Settings, tmp_path: Path):
    """A second bandit trained on the same log is scored against the champion on the same
    held-out days; the registry records the comparison either way."""
    import mlflow

    copy_bank(small_bank, tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": tracking}
    first = CliRunner().invoke(app, ["train-bandit", "--data-dir", str(tmp_path)], env=env)
    assert first.exit_code == 0, first.output
    assert "v1 -> champion: no champion yet" in first.output
    second = CliRunner().invoke(app, ["train-bandit", "--data-dir", str(tmp_path)], env=env)
    assert second.exit_code == 0, second.output
    assert "v2 -> " in second.output and "vs champion v1" in second.output
    client = mlflow.MlflowClient(tracking_uri=tracking)
    version = client.get_model_version("nextoffer-bandit", "2")
    # the same log and seed give the same bandit: equal scores never displace the champion
    assert version.tags["promotion.compared_to_version"] == "1"
    assert version.tags["promotion.outcome"] == "kept_champion"
    assert str(client.get_model_version_by_alias("nextoffer-bandit", "champion").version) == "1"
    # the registry says what a version is and how it scored, without opening its run
    assert "contextual bandit" in version.description
    assert "held-out value (doubly robust)" in version.description
    assert "Promotion: kept as challenger" in version.description


def test_validate_fails_on_bad_rows_and_quarantines_them(small_bank: Settings, tmp_path: Path):
    copy_bank(small_bank, tmp_path)
    transactions = pd.read_parquet(tmp_path / "raw" / "transactions.parquet")
    bad_event = int(transactions["event_id"].iloc[3])
    transactions.loc[3, "amount"] = -5.0
    transactions.to_parquet(tmp_path / "raw" / "transactions.parquet", index=False)

    strict = CliRunner().invoke(app, ["validate", "--data-dir", str(tmp_path)])
    assert strict.exit_code == 1
    for expected in ("transactions", "amount", str(bad_event)):
        assert expected in strict.output

    lenient = CliRunner().invoke(app, ["validate", "--quarantine", "--data-dir", str(tmp_path)])
    assert lenient.exit_code == 0, lenient.output
    rejects = pd.read_parquet(tmp_path / "rejects" / "transactions.rejects.parquet")
    assert rejects["event_id"].tolist() == [str(bad_event)]
    assert "amount" in rejects["reject_reason"].iloc[0]


def test_detect_writes_detections_and_rejects_bad_rules(small_bank: Settings, tmp_path: Path):
    copy_bank(small_bank, tmp_path)
    ok = CliRunner().invoke(app, ["detect", "--data-dir", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    detections = pd.read_parquet(next((tmp_path / "features").glob("detections_*.parquet")))
    assert detections["rule"].nunique() >= 3  # the small bank shows most shipped behaviours
    features = pd.read_parquet(next((tmp_path / "features").glob("rule_features_*.parquet")))
    assert features["customer_id"].is_unique

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: broken\nwithin: 10m\naction: {type: flag}\nsteps:\n"
        "  - name: s1\n    source: click\n"
        "    where: {page: no_such_page}\n"
    )
    refused = CliRunner().invoke(app, ["detect", "--rules", str(bad), "--data-dir", str(tmp_path)])
    assert refused.exit_code == 1
    assert "bad.yaml" in refused.output and "no_such_page" in refused.output


def test_evaluate_policy_prints_estimates_and_names_a_missing_field(
    small_bank: Settings, tmp_path: Path
):
    exposures = small_bank.catalog.read("exposures")
    log = exposures.rename(columns={"offer_id": "action", "logged_prob": "prob"}).assign(
        reward=exposures["click"].astype(float)
    )[["decision_id", "slot", "action", "prob", "reward"]]
    log.to_parquet(tmp_path / "log.parquet", index=False)
    result = CliRunner().invoke(app, ["evaluate-policy", str(tmp_path / "log.parquet")])
    assert result.exit_code == 0, result.output
    for estimator in ("ips", "snips", "dm", "dr"):
        assert estimator in result.output

    log.drop(columns=["prob"]).to_csv(tmp_path / "bad.csv", index=False)
    refused = CliRunner().invoke(app, ["evaluate-policy", str(tmp_path / "bad.csv")])
    assert refused.exit_code == 1
    assert "prob" in refused.output and "bad.csv" in refused.output


def test_detection_from_the_written_stream_equals_restitching(small_bank: Settings, tmp_path: Path):
    """The demo reuses step 3's stitched stream; that must not change a single detection."""
    from src.pipeline import default_as_of, run_customer_view, run_detection

    copy_bank(small_bank, tmp_path)
    settings = small_bank.model_copy(update={"data_dir": tmp_path})
    as_of = default_as_of(settings)
    written = run_customer_view(settings, as_of=as_of)["stitched_events"]
    fresh = pd.read_parquet(run_detection(settings, as_of=as_of)["detections"])
    reused = pd.read_parquet(
        run_detection(settings, as_of=as_of, stitched_events_path=written)["detections"]
    )
    assert len(fresh) > 0
    pd.testing.assert_frame_equal(fresh, reused)
