"""The feature table: time split, labels from the window after as_of, and no leakage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.data.schemas import PRODUCTS
from src.features.feature_table import (
    build_feature_table,
    data_period,
    feature_columns,
    label_column,
    model_matrix,
    plan_as_of_dates,
)
from src.settings import Settings


def test_plan_puts_validation_and_test_after_training():
    plan = plan_as_of_dates("2026-01-01", "2026-04-01", window_days=30)
    assert max(plan.train) < min(plan.val) < min(plan.test)
    assert plan.test[-1] + pd.Timedelta(days=plan.window_days) <= pd.Timestamp("2026-04-01")
    embargoed = plan_as_of_dates("2026-01-01", "2026-04-01", window_days=30, min_history_days=7, embargo=True)
    for d in embargoed.train + embargoed.val:  # every training label is known on the test date
        assert d + pd.Timedelta(days=30) <= embargoed.test[0]


def test_plan_shrinks_the_window_on_a_short_bank_or_refuses():
    plan = plan_as_of_dates("2026-01-01", "2026-02-04", window_days=30)
    assert plan.window_days < 30 and plan.train
    with pytest.raises(ValueError, match="too short"):
        plan_as_of_dates("2026-01-01", "2026-02-04", window_days=30, shrink_window=False)


@pytest.fixture(scope="module")
def table(small_bank: Settings) -> pd.DataFrame:
    start, end = data_period(small_bank.raw_dir)
    plan = plan_as_of_dates(start, end, window_days=30)
    return build_feature_table(small_bank.raw_dir, plan.dates, plan.window_days)


def test_labels_are_signups_in_the_window(table: pd.DataFrame, small_bank: Settings):
    txn = pd.read_parquet(small_bank.raw_dir / "transactions.parquet")
    signups = txn.loc[txn["code"] == "PRODUCT_SIGNUP"]
    as_of = table["as_of"].iloc[-1]
    rows = table.loc[table["as_of"] == as_of].set_index("customer_id")
    window = rows.index.size and signups.loc[(signups["ts"] >= as_of)]
    assert len(window), "no signups after as_of: the test bank is too small to test labels"
    for p in PRODUCTS:
        # the label window is the same as the plan's: recompute from the rows' as_of and any window length
        positives = rows.index[rows[label_column(p)]]
        assert set(positives) <= set(window.loc[window["product"] == p, "customer_id"])
    assert sum(rows[label_column(p)].sum() for p in PRODUCTS) > 0


def test_features_are_model_ready(table: pd.DataFrame):
    cols = feature_columns(table)
    assert not any(c.startswith("label_") or c in ("customer_id", "as_of", "is_closed") for c in cols)
    X = model_matrix(table, cols)
    assert X.dtypes.eq("float64").all()
    assert {"life_stage=student", "gender=F"} <= set(X.columns)


def test_no_leakage_events_after_as_of_change_labels_not_features(small_bank: Settings, tmp_path: Path):
    """Add a burst of events after as_of — signups, page views, transactions for one customer:
    every feature of every row stays the same, the labels change."""
    raw = tmp_path / "raw"
    shutil.copytree(small_bank.raw_dir, raw)
    start, end = data_period(raw)
    as_of = start + (end - start) / 2
    as_of = as_of.normalize()
    before = build_feature_table(raw, [as_of], window_days=14)
    cust = before["customer_id"].iloc[0]

    txn = pd.read_parquet(raw / "transactions.parquet")
    future = pd.DataFrame({
        "event_id": txn["event_id"].max() + 1 + np.arange(len(PRODUCTS) + 3),
        "ts": [as_of + pd.Timedelta(hours=1 + i) for i in range(len(PRODUCTS) + 3)],
        "customer_id": cust,
        "code": ["PRODUCT_SIGNUP"] * len(PRODUCTS) + ["FX_REMIT", "TRANSFER", "LOAN_LIMIT_INQUIRY"],
        "channel": "app", "amount": 1e6, "currency": "KRW",
        "product": list(PRODUCTS) + [None, None, "loan"], "session_id": pd.NA,
    }).astype(txn.dtypes.to_dict())
    pd.concat([txn, future], ignore_index=True).to_parquet(raw / "transactions.parquet")
    clicks = pd.read_parquet(raw / "clickstream.parquet")
    mine = clicks.loc[clicks["customer_id"] == cust].head(20).copy()
    if len(mine):
        mine["event_id"] = future["event_id"].max() + 1 + np.arange(len(mine))
        mine["ts"] = as_of + pd.Timedelta(minutes=5)
        mine["session_id"] = clicks["session_id"].max() + 1
        pd.concat([clicks, mine], ignore_index=True).to_parquet(raw / "clickstream.parquet")

    after = build_feature_table(raw, [as_of], window_days=14)
    cols = feature_columns(before)
    pd.testing.assert_frame_equal(before[["customer_id", *cols]], after[["customer_id", *cols]])
    labels = [label_column(p) for p in PRODUCTS]
    row = after.loc[after["customer_id"] == cust, labels].iloc[0]
    assert row.all(), "the added signups must show up as labels"
    assert not before.loc[before["customer_id"] == cust, labels].iloc[0].all()
