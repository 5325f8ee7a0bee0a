# ruff: noqa: C408  (dict(t=..., page=...) reads best for hand-written event rows)
"""Funnel report and point-in-time rule features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.harness.detection_synthetic import make_events
from src.features.detection import detect, funnel_report, load_rules, rule_features

RULES = {r.name: r for r in load_rules()}
T0 = pd.Timestamp("2026-01-01")


def _dets(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [r[0] for r in rows],
            "rule": [r[1] for r in rows],
            "kind": "match",
            "fired_at": pd.to_datetime([r[2] for r in rows], format="ISO8601"),
        }
    )


def test_rule_features_point_in_time() -> None:
    d = _dets(
        [
            ("C1", "x", "2026-01-10 12:00"),
            ("C1", "x", "2026-01-20 00:00"),
            ("C1", "x", "2026-01-25 00:00"),  # exactly at as_of: ignored
            ("C1", "x", "2026-02-01"),  # after as_of: ignored
            ("C2", "y", "2025-12-20"),
        ]
    )
    f = rule_features(d, "2026-01-25", ["C1", "C2", "C3"], rules=["x", "y"])
    f = f.set_index(["customer_id", "rule"])
    assert f.loc[("C1", "x")].tolist() == [1, 2, 5.0, True]
    assert f.loc[("C2", "y"), "count_30d"] == 0  # 36 days before
    assert f.loc[("C2", "y"), "days_since_last"] == pytest.approx(36.0)
    assert np.isnan(f.loc[("C3", "x"), "days_since_last"]) and f.loc[("C3", "x"), "count_7d"] == 0
    assert len(f) == 6
    g = rule_features(
        d, "2026-01-20 00:00:01", pd.DataFrame({"customer_id": ["C1"]}), rules=["x"], wide=True
    )
    assert g.iloc[0]["x__count_7d"] == 1 and bool(g.iloc[0]["x__flag_7d"])


def test_rule_features_on_detect_output() -> None:
    ev = make_events([dict(t=0, code="LOAN_LIMIT_INQUIRY"), dict(t=8 * 86400, page="home")])
    d = detect(ev, [RULES["loan_inquiry_no_application"]])
    f = rule_features(d, T0 + pd.Timedelta(days=7), ["C1"], rules=list(RULES.values()))
    assert f.set_index("rule").loc["loan_inquiry_no_application", "count_7d"] == 0  # fires at 7d
    f = rule_features(d, T0 + pd.Timedelta(days=7, seconds=1), ["C1"])
    assert f.iloc[0]["count_7d"] == 1 and f.iloc[0]["days_since_last"] == pytest.approx(1 / 86400)


def test_funnel_report_counts_customers_per_day_and_segment() -> None:
    rows = [
        # C1 day 1: input, remittance 10 min later -> both steps
        dict(t=0, page="fx_remit_input", customer_id="C1"),
        dict(t=600, code="FX_REMIT", amount=2e7, customer_id="C1"),
        # C2 day 1: input twice, no remittance
        dict(t=100, page="fx_remit_input", customer_id="C2"),
        dict(t=200, page="fx_remit_input", customer_id="C2"),
        # C3 day 2: input, remittance after 20 min
        dict(t=86400, page="fx_remit_input", customer_id="C3"),
        dict(t=86400 + 1200, code="FX_REMIT", amount=2e7, customer_id="C3"),
    ]
    ev = make_events(rows)
    f = funnel_report(ev, RULES["fx_remit_large"])
    day1 = f[f["period"] == T0]
    assert day1["customers"].tolist() == [2, 1]
    assert day1["conversion"].iloc[1] == pytest.approx(0.5)
    assert day1["median_seconds_from_prev"].iloc[1] == pytest.approx(600)
    day2 = f[f["period"] == T0 + pd.Timedelta(days=1)]
    assert day2["customers"].tolist() == [1, 1]
    assert day2["median_seconds_from_prev"].iloc[1] == pytest.approx(1200)
    cust = pd.DataFrame({"customer_id": ["C1", "C2", "C3"], "seg": ["a", "b", "a"]})
    s = funnel_report(
        ev, RULES["fx_remit_large"], customers=cust, by="seg", today=T0 + pd.Timedelta(hours=5)
    )
    assert set(s["period"]) == {T0}
    assert s.set_index(["seg", "step"])["customers"].to_dict() == {
        ("a", 1): 1,
        ("a", 2): 1,
        ("b", 1): 1,
        ("b", 2): 0,
    }


def test_funnel_timeout_step_counts_only_passed_deadlines() -> None:
    ev = make_events(
        [
            dict(t=0, code="LOAN_LIMIT_INQUIRY", customer_id="C1"),
            dict(t=10, code="LOAN_LIMIT_INQUIRY", customer_id="C2"),
            dict(t=86400, code="LOAN_APPLICATION", customer_id="C2"),
            dict(t=3 * 86400, page="home", customer_id="C9"),
        ]
    )
    f = funnel_report(ev, RULES["loan_inquiry_no_application"])
    assert f["customers"].tolist() == [2, 0]  # C1's week has not passed yet
    f = funnel_report(ev, RULES["loan_inquiry_no_application"], until=T0 + pd.Timedelta(days=8))
    assert f["customers"].tolist() == [2, 1]
