# ruff: noqa: C408  (dict(t=..., page=...) reads best for hand-written event rows)
"""Each shipped rule on hand-written streams: fires / does not fire, timeouts included.

Every case runs through batch, online and the reference loop and requires the same answer.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from benchmarks.harness.detection_reference import evaluate_all
from benchmarks.harness.detection_synthetic import make_events
from src.features.detection import load_rules
from src.features.detection.events import detection_keys

RULES = {r.name: r for r in load_rules()}
T0 = pd.Timestamp("2026-01-01")
MIN, DAY = 60, 86400


def run(rule: str, rows: list[dict[str, Any]], until: Any = None) -> pd.DataFrame:
    """Detections of one shipped rule; asserts the three evaluators agree."""
    res = evaluate_all(make_events(rows), [RULES[rule]], until=until)
    keys = {k: detection_keys(v) for k, v in res.items()}
    assert keys["batch"] == keys["online"] == keys["reference"], keys
    return res["batch"]


def at(seconds: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(seconds=seconds)


# -- fx_remit_large -------------------------------------------------------------------------
def test_fx_remit_fires_on_large_krw_remit_within_30m() -> None:
    """The threshold is in KRW whatever the remittance currency (reference rates)."""
    d = run(
        "fx_remit_large",
        [
            dict(t=0, page="fx_remit_input"),
            dict(t=10 * MIN, code="FX_REMIT", amount=9_999_999, currency="KRW"),  # too small
            dict(t=20 * MIN, code="FX_REMIT", amount=5_000, currency="USD"),  # 7.0M KRW: too small
            dict(t=25 * MIN, code="FX_REMIT", amount=8_000, currency="USD"),  # 11.2M KRW
        ],
    )
    assert len(d) == 1
    row = d.iloc[0]
    assert row.kind == "match" and row.fired_at == at(25 * MIN) and row.event_ids == (1, 4)
    assert row.fired_event_id == 4 and row.anchor_at == at(0)


def test_fx_remit_window_is_inclusive_and_bounded() -> None:
    assert (
        len(
            run(
                "fx_remit_large",
                [dict(t=0, page="fx_remit_input"), dict(t=30 * MIN, code="FX_REMIT", amount=2e7)],
            )
        )
        == 1
    )
    assert (
        len(
            run(
                "fx_remit_large",
                [
                    dict(t=0, page="fx_remit_input"),
                    dict(t=30 * MIN + 1, code="FX_REMIT", amount=2e7),
                ],
            )
        )
        == 0
    )
    # The remittance before the input page does not count; another customer's does not either.
    assert (
        len(
            run(
                "fx_remit_large",
                [
                    dict(t=0, code="FX_REMIT", amount=2e7),
                    dict(t=1, page="fx_remit_input"),
                    dict(t=60, code="FX_REMIT", amount=2e7, customer_id="C2"),
                ],
            )
        )
        == 0
    )


def test_fx_remit_repeated_inputs_one_detection_failed_attempt_does_not_block() -> None:
    d = run(
        "fx_remit_large",
        [
            dict(t=0, page="fx_remit_input"),
            dict(t=20 * MIN, page="fx_remit_input"),
            dict(t=25 * MIN, page="fx_remit_input"),
            dict(t=45 * MIN, code="FX_REMIT", amount=3e7),  # 45 min after the first input
        ],
    )
    # The first attempt fails (window); the second succeeds; the third is a duplicate of it.
    assert d["event_ids"].tolist() == [(2, 4)]


def test_tie_on_ts_broken_by_event_id() -> None:
    rows = [
        dict(t=0, page="fx_remit_input", event_id=5),
        dict(t=0, code="FX_REMIT", amount=2e7, event_id=7),
    ]
    assert len(run("fx_remit_large", rows)) == 1
    rows[1]["event_id"] = 3  # same ts, earlier id: the remittance came first
    assert len(run("fx_remit_large", rows)) == 0


# -- loan_inquiry_no_application --------------------------------------------------------------
def test_loan_inquiry_timeout_after_7_days() -> None:
    rows = [
        dict(t=0, code="LOAN_LIMIT_INQUIRY"),
        dict(t=DAY, code="LOAN_LIMIT_INQUIRY"),
        dict(t=8 * DAY, page="home"),
    ]
    d = run("loan_inquiry_no_application", rows)
    assert len(d) == 1  # the second inquiry is inside the first one's week
    row = d.iloc[0]
    assert row.kind == "timeout" and row.fired_at == at(7 * DAY)
    assert pd.isna(row.fired_event_id) and row.event_ids == (1, None)


def test_loan_inquiry_application_within_7_days_cancels() -> None:
    assert (
        len(
            run(
                "loan_inquiry_no_application",
                [
                    dict(t=0, code="LOAN_LIMIT_INQUIRY"),
                    dict(t=7 * DAY, code="LOAN_APPLICATION"),
                    dict(t=30 * DAY, page="home"),
                ],
            )
        )
        == 0
    )


def test_loan_inquiry_timeout_needs_the_clock_past_the_deadline() -> None:
    rows = [
        dict(t=0, code="LOAN_LIMIT_INQUIRY"),
        dict(t=7 * DAY, page="home", customer_id="C2"),
    ]  # exactly at the deadline
    assert len(run("loan_inquiry_no_application", rows)) == 0
    # Any customer's later event moves the clock past it ...
    rows.append(dict(t=7 * DAY + 1, page="home", customer_id="C3"))
    assert len(run("loan_inquiry_no_application", rows)) == 1
    # ... and so does an explicit evaluation time.
    assert len(run("loan_inquiry_no_application", rows[:1], until=at(7 * DAY + 1))) == 1
    assert len(run("loan_inquiry_no_application", rows[:1], until=at(7 * DAY))) == 0


def test_loan_inquiry_again_after_applying_starts_a_new_week() -> None:
    d = run(
        "loan_inquiry_no_application",
        [
            dict(t=0, code="LOAN_LIMIT_INQUIRY"),
            dict(t=DAY, code="LOAN_APPLICATION"),
            dict(t=2 * DAY, code="LOAN_LIMIT_INQUIRY"),
            dict(t=20 * DAY, page="home"),
        ],
    )
    assert d["fired_at"].tolist() == [at(9 * DAY)]


# -- signup_abandoned -----------------------------------------------------------------------
def test_signup_abandoned() -> None:
    fired = run(
        "signup_abandoned",
        [
            dict(t=0, page="signup_step1"),
            dict(t=5 * MIN, page="signup_step2"),
            dict(t=30 * MIN, page="home"),
        ],
    )
    assert fired["fired_at"].tolist() == [at(20 * MIN)]
    done = run(
        "signup_abandoned",
        [
            dict(t=0, page="signup_step1"),
            dict(t=19 * MIN, page="signup_done"),
            dict(t=30 * MIN, page="home"),
        ],
    )
    assert len(done) == 0
    late = run(
        "signup_abandoned", [dict(t=0, page="signup_step1"), dict(t=21 * MIN, page="signup_done")]
    )
    assert len(late) == 1  # completion after 20 minutes is too late


# -- product_page_dwell ---------------------------------------------------------------------
def test_product_page_dwell_with_daily_cooldown() -> None:
    d = run(
        "product_page_dwell",
        [
            dict(t=0, page="fund_detail", dwell_seconds=179.9),
            dict(t=MIN, page="home", dwell_seconds=500),  # not a product page
            dict(t=2 * MIN, page="fund_detail", dwell_seconds=180),
            dict(t=3 * MIN, page="savings_detail", dwell_seconds=300),  # within the cooldown
            dict(t=DAY + 3 * MIN, page="savings_detail", dwell_seconds=300),
        ],
    )
    assert d["event_ids"].tolist() == [(3,), (5,)]


# -- campaign_target_not_reached ----------------------------------------------------------------
def test_campaign_target_not_reached() -> None:
    rows = [
        dict(t=0, page="home", referrer="push", session_id=1),
        dict(t=11 * MIN, page="events", session_id=1),  # too late
        dict(t=60 * MIN, page="home", referrer="sms", session_id=2),
        dict(t=65 * MIN, page="events", session_id=2),  # reached: no detection
        dict(t=120 * MIN, page="home", referrer="direct", session_id=3),  # not a campaign
        dict(t=180 * MIN, page="home", referrer="push", session_id=4),
        dict(t=181 * MIN, page="loan_main", referrer="push", session_id=4),  # not a start
        dict(t=240 * MIN, page="home", customer_id="C9"),
    ]
    d = run("campaign_target_not_reached", rows)
    assert d["fired_at"].tolist() == [at(10 * MIN), at(190 * MIN)]
    assert d["event_ids"].tolist() == [(1, None), (6, None)]


def test_session_start_after_gap_in_same_session() -> None:
    d = run(
        "campaign_target_not_reached",
        [
            dict(t=0, page="events", referrer="push", session_id=1),  # starts on the target
            dict(t=31 * MIN, page="home", referrer="push", session_id=1),  # > 30 min gap: new start
            dict(t=60 * MIN, page="home", customer_id="C9"),
        ],
    )
    assert d["event_ids"].tolist() == [(2, None)]


# -- repeated_errors --------------------------------------------------------------------------
def test_repeated_errors_same_page_within_5_minutes() -> None:
    err = dict(action="error")
    d = run(
        "repeated_errors",
        [
            dict(t=0, page="loan_apply_step2", **err),
            dict(t=60, page="loan_apply_step3", **err),  # other page: not counted together
            dict(t=120, page="loan_apply_step2", **err),
            dict(t=200, page="loan_apply_step2"),  # a view, not an error
            dict(t=300, page="loan_apply_step2", **err),  # third error in [0, 300]: fires
            dict(t=310, page="loan_apply_step2", **err),  # fourth: inside the 30 min cooldown
            dict(t=3000, page="signup_step2", **err),
            dict(t=3100, page="signup_step2", **err),
            dict(t=3401, page="signup_step2", **err),  # 401 s after the first: not 3 in 5 min
        ],
    )
    assert d["event_ids"].tolist() == [(5,)]
    assert d.iloc[0].fired_at == at(300)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_null_customer_events_never_match(rule: str) -> None:
    rows = [
        dict(
            t=i * MIN,
            customer_id=None,
            page=p,
            action="error",
            dwell_seconds=999,
            referrer="push",
            session_id=i,
        )
        for i, p in enumerate(
            [
                "fx_remit_input",
                "signup_step1",
                "fund_detail",
                "loan_apply_step1",
                "loan_apply_step1",
                "loan_apply_step1",
            ]
        )
    ]
    rows.append(dict(t=DAY * 30, customer_id=None, page="home"))
    assert len(run(rule, rows)) == 0
