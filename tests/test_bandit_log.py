"""``train-bandit --log --actions``: the VW bandit from a generic decision log (not the simulated
bank), with numeric/categorical action features, a per-(context, action) feature and an offer
eligible in two slots; scored off-policy on held-out time, registered only if it beats the
champion there."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.models.bandit import BanditConfig, predict_frame
from src.models.bandit_log import (
    LogBandit,
    predict_log_frame,
    read_actions,
    run_log_training,
)
from src.models.ope import LogError

OFFERS = [f"A{i}" for i in range(6)]
SLOTS = {"top": OFFERS[:4], "side": OFFERS[2:]}  # A2, A3 eligible in both


def catalog() -> pd.DataFrame:
    rows = []
    for slot, ids in SLOTS.items():
        for o in ids:
            i = int(o[1:])
            rows.append(
                {
                    "offer_id": o,
                    "slot": slot,
                    "price": float(10 * (i + 1)),
                    "category": ["loan", "card", "fund"][i % 3],
                }
            )
    return pd.DataFrame(rows)


def generic_log(n: int, seed: int = 0) -> pd.DataFrame:
    """Uniform logging; the click depends on the segment x offer category and on a per-offer
    affinity the log carries as a JSON object per row."""
    rng = np.random.default_rng(seed)
    seg = rng.choice(["young", "family", "senior"], n)
    rows = []
    for i in range(n):
        slot = "top" if i % 2 else "side"
        cands = SLOTS[slot]
        affinity = {o: float(np.round(rng.random(), 3)) for o in cands}
        k = rng.integers(0, len(cands))
        offer = cands[k]
        match = ["young", "family", "senior"].index(seg[i]) == int(offer[1:]) % 3
        p_click = 0.02 + 0.10 * match + 0.08 * affinity[offer]
        rows.append(
            {
                "decision_id": f"d{i}",
                "ts": pd.Timestamp("2025-01-01") + pd.Timedelta(minutes=i),
                "slot": slot,
                "segment": seg[i],
                "tenure": float(rng.integers(0, 30)),
                "affinity": json.dumps(affinity),
                "action": offer,
                "prob": 1 / len(cands),
                "reward": float(rng.random() < p_click),
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    log, cat = tmp_path / "log.parquet", tmp_path / "actions.csv"
    generic_log(6000).to_parquet(log, index=False)
    catalog().to_csv(cat, index=False)
    return {"log": log, "actions": cat}


def test_actions_catalog_features_and_slots(files: dict[str, Path]):
    cat, numeric, categorical = read_actions(files["actions"], ["price", "category"])
    assert numeric == ["price"] and categorical == ["category"]
    assert len(cat.features) == 6  # A2, A3 listed twice (two slots), one action each
    assert cat.slots == SLOTS
    bandit = LogBandit(
        BanditConfig(),
        __import__("src.models.bandit_log", fromlist=["LogBanditSpec"]).LogBanditSpec(
            context_categorical=("segment",),
            action_numeric=("price",),
            action_categorical=("category",),
            pair=("affinity",),
        ),
        cat,
    )
    lines = bandit.example(
        {"segment": "young", "affinity": '{"A2": 0.5, "A3": 0}'}, ["A2", "A3"], label=(0, 1.0, 0.5)
    )
    assert lines[0] == "shared |user segment=young"
    assert lines[1] == "0:-1:0.5 |offer offer=A2 |attr price:30 category=fund |pair affinity:0.5"
    assert lines[2] == "|offer offer=A3 |attr price:40 category=loan"


def test_train_from_any_log_reports_and_beats_uniform(files: dict[str, Path]):
    result = run_log_training(
        files["log"],
        files["actions"],
        config=BanditConfig(epsilon=0.05),
        context=["segment", "tenure"],
        action_features=["price", "category"],
        pair_features=["affinity"],
        register=None,
    )
    assert result.train_decisions + result.held_out_decisions == 6000
    assert "ts >=" in result.split
    est = result.report.estimates
    assert {"logging", "bandit", "uniform"} <= set(est["policy"])
    diag = result.report.diagnostics.set_index("policy")
    assert {"max_weight", "ess", "unlogged_share"} <= set(diag.columns)
    assert result.value > result.uniform_value  # it learned segment x category and affinity
    assert result.registered.startswith("not registered")


def test_pmf_sums_to_one_for_an_offer_in_two_slots(files: dict[str, Path]):
    cat, *_ = read_actions(files["actions"], ["price"])
    from src.models.bandit_log import LogBanditSpec

    bandit = LogBandit(BanditConfig(), LogBanditSpec(action_numeric=("price",)), cat)
    rows = pd.DataFrame({"candidates": ["A2,A3,A2", "A0,A1,A2,A3"], "decision_id": ["x", "y"]})
    out = predict_log_frame(bandit, rows)
    for pmf in out["pmf"]:
        assert sum(json.loads(pmf).values()) == pytest.approx(1.0, abs=1e-4)
    assert set(json.loads(out["pmf"][0])) == {"A2", "A3"}


def test_simulated_bank_bandit_does_not_double_an_offer_listed_in_two_slots():
    from src.models.bandit import ContextualBandit

    offers = pd.DataFrame(
        {
            "offer_id": ["OF1", "OF2", "OF2"],
            "slot": ["home", "home", "push"],
            "product": ["loan", "card", "card"],
            "creative": ["a", "b", "b"],
        }
    )
    bandit = ContextualBandit(BanditConfig())
    out = predict_frame(bandit, offers, pd.DataFrame({"candidates": ["OF1,OF2"]}))
    assert sum(json.loads(out["pmf"][0]).values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_registers_only_when_it_beats_the_champion(files: dict[str, Path], tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = {
        "config": BanditConfig(),
        "context": ["segment"],
        "action_features": ["category"],
        "pair_features": ["affinity"],
        "register": "test-log-bandit",
        "tracking_uri": uri,
        "artifact_location": (tmp_path / "artifacts").as_uri(),
    }
    first = run_log_training(files["log"], files["actions"], **common)
    assert "v1 -> champion" in first.registered, first.registered
    described = mlflow.MlflowClient(tracking_uri=uri).get_model_version("test-log-bandit", "1")
    assert "trained on a decision log" in described.description
    assert f"{first.value:.5f}" in described.description
    second = run_log_training(files["log"], files["actions"], **common)  # same data, same value
    assert second.champion_value == pytest.approx(first.value)
    assert second.registered.startswith("not registered: DR"), second.registered


@pytest.mark.parametrize(
    "change, args, message",
    [
        (
            lambda d: d.assign(action=d["action"].replace("A1", "Z9")),
            [],
            "['Z9'] are not in the action catalog",
        ),
        (lambda d: d, ["--context", "ts"], "ts (a timestamp)"),
        (lambda d: d, ["--context", "decision_id"], "decision_id (6,000 distinct values)"),
        (lambda d: d, ["--action-features", "colour"], "action feature column(s) ['colour']"),
        (lambda d: d, ["--pair-features", "nope"], "per-candidate feature column(s) ['nope']"),
        (lambda d: d.drop(columns="prob"), [], "missing column(s) ['prob']"),
    ],
)
def test_cli_bad_inputs_are_named(files: dict[str, Path], tmp_path: Path, change, args, message):
    path = tmp_path / "changed.parquet"
    change(pd.read_parquet(files["log"])).to_parquet(path, index=False)
    out = CliRunner().invoke(
        app,
        [
            "train-bandit",
            "--log",
            str(path),
            "--actions",
            str(files["actions"]),
            "--no-register",
            "--quiet",
            *args,
        ],
    )
    assert out.exit_code == 1, out.output
    assert message in out.output and "Traceback" not in out.output


def test_cli_trains_from_a_log(files: dict[str, Path]):
    out = CliRunner().invoke(
        app,
        [
            "train-bandit",
            "--log",
            str(files["log"]),
            "--actions",
            str(files["actions"]),
            "--context",
            "segment",
            "--action-features",
            "price,category",
            "--pair-features",
            "affinity",
            "--no-register",
            "--quiet",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "logging policy" in out.output and "bandit (DR)" in out.output and "ess" in out.output
    lone = CliRunner().invoke(app, ["train-bandit", "--log", str(files["log"])])
    assert lone.exit_code == 1 and "--log and --actions go together" in lone.output


def test_unknown_actions_in_catalog_are_named(tmp_path: Path):
    path = tmp_path / "cat.csv"
    pd.DataFrame({"name": ["x"]}).to_csv(path, index=False)
    with pytest.raises(LogError, match="missing column 'offer_id'"):
        read_actions(path)
    pd.DataFrame({"offer_id": ["A1", "A1"], "slot": ["s", "t"], "price": [1, 2]}).to_csv(
        path, index=False
    )
    with pytest.raises(LogError, match="'A1' is listed with different action features"):
        read_actions(path, ["price"])
