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


def test_publish_view(bank: dict[str, str]) -> None:
    run("build-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    out = run("publish-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    manifest = json.loads(Path(bank["data_dir"], "features", "_published_view.json").read_text())
    assert manifest["as_of"] == bank["as_of"] and f"as of {bank['as_of']}" in out


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
    assert "nextoffer-cvr v" in out  # the CVR model is registered like the propensity model
    # no warning in what cron logs, nor in what the kernels printed into the executed notebooks
    # (sklearn's "least populated class", MLflow's CloudPickle notice, IPKernel's)
    assert "Warning" not in out
    import nbformat

    executed = sorted((tmp_path / bank["as_of"]).glob("*.ipynb"))
    assert [p.stem for p in executed] == ["10_train_propensity", "11_train_cvr"]
    for path in executed:
        stderr = [
            o.get("text", "")
            for c in nbformat.read(path, as_version=4).cells
            for o in c.get("outputs", [])
            if o.get("name") == "stderr"
        ]
        assert not [t for t in stderr if "Warning" in t or "CloudPickle" in t], (path, stderr)


def test_monitor(bank: dict[str, str], tmp_path: Path) -> None:
    from src.models.registry import current_champion

    env = {
        "MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"],
        "NEXTOFFER_REPORTS_DIR": str(tmp_path),
    }
    if current_champion("nextoffer-propensity", bank["MLFLOW_TRACKING_URI"]) is None:
        run("retrain", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"], env=env)
    args = ["monitor", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"]]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code in (0, 3), result.output  # 3: drift past the alert threshold
    assert f"monitor {bank['as_of']}:" in result.output
    assert (tmp_path / "monitor" / bank["as_of"] / "monitor.md").exists()


def test_score_both_engines(bank: dict[str, str], tmp_path: Path) -> None:
    """The champion from ``retrain`` (a real propensity model) over the view, embedded then on
    Spark: the same scores table."""
    pytest.importorskip("pyspark")
    env = {
        "MLFLOW_TRACKING_URI": bank["MLFLOW_TRACKING_URI"],
        "NEXTOFFER_REPORTS_DIR": str(tmp_path),
    }
    from src.models.scoring import NoChampion, resolve_champion

    run("build-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    try:
        resolve_champion(tracking_uri=bank["MLFLOW_TRACKING_URI"])
    except NoChampion:  # run alone (-k): make one
        run("retrain", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"], env=env)
    path = Path(bank["data_dir"], "features", f"scores_{bank['as_of']}.parquet")
    out = run("score", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"], env=env)
    embedded = pd.read_parquet(path).sort_values(["customer_id", "product"], ignore_index=True)
    run(
        "score",
        "--as-of",
        bank["as_of"],
        "--engine",
        "spark",
        "--data-dir",
        bank["data_dir"],
        env=env,
    )
    on_spark = pd.read_parquet(path).sort_values(["customer_id", "product"], ignore_index=True)
    assert "nextoffer-propensity/" in out and len(embedded) > 0
    pd.testing.assert_frame_equal(
        embedded.drop(columns="score"), on_spark.drop(columns="score"), check_dtype=False
    )
    assert ((embedded["score"] - on_spark["score"]).abs() <= 1e-9 * embedded["score"]).all()
    # --cvr: retrain registered the CVR champion too; it scores customer x offer
    out = run("score", "--as-of", bank["as_of"], "--cvr", "--data-dir", bank["data_dir"], env=env)
    cvr = pd.read_parquet(Path(bank["data_dir"], "features", f"cvr_scores_{bank['as_of']}.parquet"))
    assert "nextoffer-cvr/" in out, out
    assert len(cvr) == embedded["customer_id"].nunique() * cvr["offer_id"].nunique() > 0
    assert cvr["score"].between(0, 1).all()


def test_detect_spark_and_detect_stream(bank: dict[str, str], tmp_path: Path) -> None:
    """``detect --engine spark`` and a replay through ``detect-stream`` report the embedded
    detections."""
    pytest.importorskip("pyspark")
    from src.features.detection.events import detection_keys
    from src.features.detection.spark_stream import write_replay

    data_dir, as_of = bank["data_dir"], bank["as_of"]
    run("build-view", "--as-of", as_of, "--data-dir", data_dir)
    run("detect", "--as-of", as_of, "--data-dir", data_dir)
    path = Path(data_dir, "features", f"detections_{as_of}.parquet")
    embedded = pd.read_parquet(path)
    run("detect", "--as-of", as_of, "--engine", "spark", "--data-dir", data_dir)
    assert detection_keys(pd.read_parquet(path)) == detection_keys(embedded)
    events = pd.read_parquet(Path(data_dir, "features", "stitched_events.parquet"))
    write_replay(events, tmp_path / "in", files=3, watermark_seconds=60, until=as_of)
    out = run(
        "detect-stream",
        "--source",
        str(tmp_path / "in"),
        "--checkpoint",
        str(tmp_path / "ck"),
        "--output",
        str(tmp_path / "out"),
        "--watermark-seconds",
        "60",
        "--max-files-per-trigger",
        "1",
        "--available-now",
    )
    assert "0 dropped" in out
    streamed = pd.read_parquet(tmp_path / "out")
    assert len(streamed) == len(embedded)


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


def test_campaign(bank: dict[str, str], tmp_path: Path) -> None:
    """campaign validate -> dry-run -> approve (the author may not) -> run -> report -> why."""
    d = ["--data-dir", bank["data_dir"], "--as-of", bank["as_of"]]
    if not Path(bank["data_dir"], "features", f"customer_view_{bank['as_of']}.parquet").exists():
        run("build-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    spec = tmp_path / "lunch.yaml"
    spec.write_text(
        "campaign_id: lunch\nowner: alice\nwho: {rule: 'age BETWEEN 30 AND 39'}\n"
        "when: {at: '2026-02-05T12:00:00'}\nholdout: {share: 0.2}\n"
        "steps: [{step_id: s1, channel: push, offer_id: OF02, content: 'For you at {age}'}]\n"
    )
    assert "valid" in run("campaign", "validate", str(spec), *d)
    out = run("campaign", "dry-run", str(spec), *d)
    assert "after holdout" in out and "after fatigue" in out
    refused = CliRunner().invoke(app, ["campaign", "approve", str(spec), "--user", "alice", *d])
    assert refused.exit_code == 1 and "another user" in refused.output
    assert "Traceback" not in refused.output
    assert "approved by bob" in run("campaign", "approve", str(spec), "--user", "bob", *d)
    out = run("campaign", "run", str(spec), *d)
    assert "sent" in out
    rep = run("campaign", "report", str(spec), *d)
    assert "s1" in rep and "no winner is ever picked on opens" in rep and "overall" in rep
    # the scheduler: a due one-off keeps the manual run's ids (nothing new), then never again
    tick = run("campaign", "tick", "--at", "2026-02-05T13:00:00", *d)
    assert "lunch @ 2026-02-05T12:00:00: enqueued 0" in tick
    assert "lunch @ 2026-02-05T12:00:00: already ran" in run(
        "campaign", "tick", "--at", "2026-02-05T14:00:00", *d
    )
    view = pd.read_parquet(
        Path(bank["data_dir"], "features", f"customer_view_{bank['as_of']}.parquet")
    )
    member = view.loc[view["age"].between(30, 39), "customer_id"].iloc[0]
    why = run("campaign", "why", "lunch", member, *d)
    assert "s1" in why and (
        "contacted" in why
        or "holdout" in why
        or "no_consent" in why
        or "product_held" in why
        or "accident" in why
        or "closed" in why
    )
    outbox = Path(bank["data_dir"], "campaigns", "outbox.jsonl")
    assert outbox.exists()


def test_campaign_rewards(bank: dict[str, str], tmp_path: Path) -> None:
    """campaign rewards: conversions of sent messages are posted and paid once, the rest voided
    on expiry; the reconciliation adds up and a rerun pays nothing twice."""
    from src.campaigns.state import CampaignDB
    from src.contact.store_sql import SQLContactStore

    d = ["--data-dir", bank["data_dir"], "--as-of", bank["as_of"]]
    if not Path(bank["data_dir"], "features", f"customer_view_{bank['as_of']}.parquet").exists():
        run("build-view", "--as-of", bank["as_of"], "--data-dir", bank["data_dir"])
    spec = tmp_path / "cash.yaml"
    spec.write_text(
        "campaign_id: cash\nowner: alice\nwho: {rule: 'age >= 40'}\n"
        "when: {at: '2026-02-05T12:00:00'}\nholdout: {share: 0.0}\n"
        "reward: {amount_krw: 5000, budget_krw: 100000000, expires_days: 14}\n"
        "steps: [{step_id: s1, channel: email, offer_id: OF03}]\n"
    )
    run("campaign", "approve", str(spec), "--user", "bob", *d)
    run("campaign", "run", str(spec), *d)
    db = CampaignDB(SQLContactStore(Path(bank["data_dir"], "campaigns", "campaigns.sqlite")))
    sent = db.outbox("cash")
    sent = sent[sent["status"] == "sent"].sort_values("message_id")
    assert len(sent) >= 4
    converters = sent.iloc[:3]
    db.record_events(
        [(m, "converted", "2026-02-07T10:00:00") for m in converters["message_id"]]
        + [(sent["message_id"].iloc[3], "converted", "2026-03-30T10:00:00")]  # after expiry
    )
    db.store.close()
    out = run("campaign", "rewards", str(spec), "--now", "2026-03-31T00:00:00", *d)
    assert "eligible events 4" in out and "paid now 3" in out
    assert f"voided now {len(sent) - 3}" in out
    assert "  posted:      3          15,000 KRW" in out and "problems: none" in out
    payouts = Path(bank["data_dir"], "campaigns", "payouts.jsonl").read_text().splitlines()
    assert len(payouts) == 3
    again = run("campaign", "rewards", str(spec), "--now", "2026-03-31T00:00:00", *d)
    assert "paid now 0" in again and "voided now 0" in again
    assert len(Path(bank["data_dir"], "campaigns", "payouts.jsonl").read_text().splitlines()) == 3
    no_reward = tmp_path / "plain.yaml"
    no_reward.write_text(
        spec.read_text().split("reward:")[0]
        + "steps: [{step_id: s1, channel: email, offer_id: OF03}]\n"
    )
    bad = CliRunner().invoke(app, ["campaign", "rewards", str(no_reward), *d])
    assert bad.exit_code == 1 and "reward" in bad.output and "Traceback" not in bad.output
