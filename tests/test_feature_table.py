"""The feature table: time split, labels from the window after as_of, and no leakage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.data.catalog import Catalog
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
    embargoed = plan_as_of_dates(
        "2026-01-01", "2026-04-01", window_days=30, min_history_days=7, embargo=True
    )
    for d in embargoed.train + embargoed.val:  # every training label is known on the test date
        assert d + pd.Timedelta(days=30) <= embargoed.test[0]


def test_plan_shrinks_the_window_on_a_short_bank_or_refuses():
    plan = plan_as_of_dates("2026-01-01", "2026-02-04", window_days=30)
    assert plan.window_days < 30 and plan.train
    with pytest.raises(ValueError, match="too short"):
        plan_as_of_dates("2026-01-01", "2026-02-04", window_days=30, shrink_window=False)


@pytest.fixture(scope="module")
def table(small_bank: Settings) -> pd.DataFrame:
    start, end = data_period(small_bank.catalog)
    plan = plan_as_of_dates(start, end, window_days=30)
    return build_feature_table(small_bank.catalog, plan.dates, plan.window_days)


def test_labels_are_signups_in_the_window(table: pd.DataFrame, small_bank: Settings):
    txn = small_bank.catalog.read("transactions")
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
    assert not any(
        c.startswith("label_") or c in ("customer_id", "as_of", "is_closed") for c in cols
    )
    X = model_matrix(table, cols)
    assert X.dtypes.eq("float64").all()
    assert {"life_stage=student", "gender=F"} <= set(X.columns)


def test_no_leakage_events_after_as_of_change_labels_not_features(
    small_bank: Settings, tmp_path: Path
):
    """Add a burst of events after as_of — signups, page views, transactions for one customer:
    every feature of every row stays the same, the labels change."""
    raw = Catalog(tmp_path)
    shutil.copytree(small_bank.validated_dir, raw.validated_dir)
    start, end = data_period(raw)
    as_of = start + (end - start) / 2
    as_of = as_of.normalize()
    before = build_feature_table(raw, [as_of], window_days=14)
    cust = before["customer_id"].iloc[0]

    txn = pd.read_parquet(raw.path("transactions"))
    future = pd.DataFrame(
        {
            "event_id": txn["event_id"].max() + 1 + np.arange(len(PRODUCTS) + 3),
            "ts": [as_of + pd.Timedelta(hours=1 + i) for i in range(len(PRODUCTS) + 3)],
            "customer_id": cust,
            "code": ["PRODUCT_SIGNUP"] * len(PRODUCTS)
            + ["FX_REMIT", "TRANSFER", "LOAN_LIMIT_INQUIRY"],
            "channel": "app",
            "amount": 1e6,
            "currency": "KRW",
            "product": list(PRODUCTS) + [None, None, "loan"],
            "session_id": pd.NA,
        }
    ).astype(txn.dtypes.to_dict())
    pd.concat([txn, future], ignore_index=True).to_parquet(raw.path("transactions"))
    clicks = pd.read_parquet(raw.path("clickstream"))
    mine = clicks.loc[clicks["customer_id"] == cust].head(20).copy()
    if len(mine):
        mine["event_id"] = future["event_id"].max() + 1 + np.arange(len(mine))
        mine["ts"] = as_of + pd.Timedelta(minutes=5)
        mine["session_id"] = clicks["session_id"].max() + 1
        pd.concat([clicks, mine], ignore_index=True).to_parquet(raw.path("clickstream"))

    after = build_feature_table(raw, [as_of], window_days=14)
    cols = feature_columns(before)
    pd.testing.assert_frame_equal(before[["customer_id", *cols]], after[["customer_id", *cols]])
    labels = [label_column(p) for p in PRODUCTS]
    row = after.loc[after["customer_id"] == cust, labels].iloc[0]
    assert row.all(), "the added signups must show up as labels"
    assert not before.loc[before["customer_id"] == cust, labels].iloc[0].all()


def test_derived_rates_come_from_the_raw_columns_and_need_nothing_else():
    rows = pd.DataFrame(
        {
            "pv_loan_30d": [4, 0, 3],
            "logins_30d": [2, 0, 0],
            "page_views_30d": [8, 0, 3],
            "long_views_loan_30d": [1, 0, 3],
        }
    )
    X = model_matrix(rows, list(rows.columns))
    np.testing.assert_allclose(X["pv_rate_loan_30d"], [2.0, 0.0, 3.0])  # no login: per one login
    np.testing.assert_allclose(X["pv_share_loan_30d"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(X["long_share_loan_30d"], [0.25, 0.0, 1.0])
    assert not any(
        c.startswith(("pv_rate_fx", "pv_rate_loan_7d")) for c in X.columns
    )  # inputs absent
    plain = model_matrix(rows, list(rows.columns), derived=False)
    assert list(plain.columns) == list(rows.columns)


def test_rule_features_plug_in_is_point_in_time(small_bank: Settings, tmp_path: Path):
    """The detection plug-in adds rule_* columns; a rule firing only after as_of changes none."""
    from src.features.feature_table import detection_rule_features

    raw = Catalog(tmp_path)
    shutil.copytree(small_bank.validated_dir, raw.validated_dir)
    start, end = data_period(raw)
    as_of = (start + (end - start) / 2).normalize()
    extra = detection_rule_features()
    before = build_feature_table(raw, [as_of], window_days=14, extra=extra)
    rule_cols = [c for c in before.columns if c.startswith("rule_")]
    assert rule_cols and any(c.endswith("__count_30d") for c in rule_cols)
    counts = [c for c in rule_cols if "__count_" in c or "__flag_" in c]
    assert before[counts].notna().all().all()  # every customer gets a count (0 if it never fired)
    assert before[[c for c in rule_cols if c.endswith("__count_30d")]].to_numpy().sum() > 0

    # a large FX remittance right after the remit page, both after as_of: fx_remit_large fires then
    cust = before["customer_id"].iloc[0]
    clicks = pd.read_parquet(raw.path("clickstream"))
    mine = clicks.loc[clicks["customer_id"].notna()].head(1).copy()
    mine[["customer_id", "page", "action", "ts"]] = [
        cust,
        "fx_remit_input",
        "view",
        as_of + pd.Timedelta(hours=1),
    ]
    mine["event_id"] = clicks["event_id"].max() + 10
    mine["session_id"] = clicks["session_id"].max() + 1
    pd.concat([clicks, mine], ignore_index=True).to_parquet(raw.path("clickstream"))
    txn = pd.read_parquet(raw.path("transactions"))
    big = txn.head(1).copy()
    big[["customer_id", "code", "amount", "currency", "ts"]] = [
        cust,
        "FX_REMIT",
        5e7,
        "KRW",
        as_of + pd.Timedelta(hours=1, minutes=5),
    ]
    big["event_id"] = clicks["event_id"].max() + 11
    pd.concat([txn, big], ignore_index=True).to_parquet(raw.path("transactions"))
    after = build_feature_table(raw, [as_of], window_days=14, extra=extra)
    pd.testing.assert_frame_equal(
        before[["customer_id", *rule_cols]], after[["customer_id", *rule_cols]]
    )
    later = build_feature_table(raw, [as_of + pd.Timedelta(days=1)], window_days=7, extra=extra)
    assert later.set_index("customer_id").loc[cust, "rule_fx_remit_large__count_7d"] >= 1
