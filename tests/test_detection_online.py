# ruff: noqa: C408  (dict(t=..., page=...) reads best for hand-written event rows)
"""Online evaluator: bounded state, clock ticks, input forms, late events."""

from __future__ import annotations

import pandas as pd

from benchmarks.harness.detection_synthetic import make_events, synthetic_events
from src.features.detection import OnlineDetector, load_rules
from src.features.detection.events import as_event, events_from_frame

RULES = {r.name: r for r in load_rules()}
T0 = pd.Timestamp("2026-01-01")


def test_state_is_bounded_and_expires_on_a_long_stream() -> None:
    events = synthetic_events(60_000, customers=300, seed=5, days=30)
    det = OnlineDetector(list(RULES.values()), sweep_every=2_000)
    sizes, fired = [], 0
    for i, e in enumerate(events_from_frame(events)):
        fired += len(det.process(e))
        if i % 5_000 == 4_999:
            sizes.append(det.state_size())
    assert fired > 100
    # Bounded: the state does not grow with the stream (the second half is no bigger).
    half = len(sizes) // 2
    assert max(sizes[half:]) <= 1.5 * max(sizes[:half])
    # Everything expires: eight days after the last event (longest window 7 d) nothing is left
    # but rule states blocking nothing and no candidate.
    last = pd.Timestamp(events["ts"].max())
    det.tick(last + pd.Timedelta(days=8))
    stats = det.state_stats()
    assert stats["candidates"] == 0 and stats["count_timestamps"] == 0
    assert stats["sessions"] == 0 and stats["heap"] == 0 and stats["rule_states"] == 0


def test_tick_fires_timeouts_strictly_after_deadline() -> None:
    det = OnlineDetector([RULES["signup_abandoned"]])
    assert (
        det.process(
            {
                "event_id": 1,
                "ts": T0,
                "customer_id": "C1",
                "source": "click",
                "page": "signup_step1",
                "action": "view",
                "session_id": 1,
            }
        )
        == []
    )
    assert det.tick(T0 + pd.Timedelta(minutes=20)) == []
    assert det.state_stats()["candidates"] == 1
    fired = det.tick(T0 + pd.Timedelta(minutes=20, seconds=1))
    assert [(d.rule, d.kind, d.fired_at, d.event_ids) for d in fired] == [
        ("signup_abandoned", "timeout", (T0 + pd.Timedelta(minutes=20)).value, (1, None))
    ]
    assert fired[0].action["type"] == "show_survey"
    assert det.tick(T0 + pd.Timedelta(hours=1)) == []


def test_other_customers_events_move_the_clock() -> None:
    det = OnlineDetector([RULES["signup_abandoned"]])
    evs = list(
        events_from_frame(
            make_events(
                [dict(t=0, page="signup_step1"), dict(t=1201, page="home", customer_id=None)]
            )
        )
    )
    assert det.process(evs[0]) == []
    assert len(det.process(evs[1])) == 1  # an anonymous click, 20 min 1 s later


def test_late_events_are_counted_and_ignored() -> None:
    det = OnlineDetector([RULES["fx_remit_large"]])
    evs = list(
        events_from_frame(
            make_events(
                [
                    dict(t=0, page="fx_remit_input"),
                    dict(t=100, page="home"),
                    dict(t=50, code="FX_REMIT", amount=2e7),
                ]
            )
        )
    )
    evs = [evs[0], evs[2], evs[1]]  # the remittance at t=50 arrives after the click at t=100
    for e in evs:
        assert det.process(e) == []
    assert det.late_events == 1


def test_dict_and_event_inputs_agree() -> None:
    df = make_events(
        [dict(t=0, page="fx_remit_input"), dict(t=60, code="FX_REMIT", amount=2e7, currency="KRW")]
    )
    a = OnlineDetector([RULES["fx_remit_large"]]).process_many(events_from_frame(df))
    b = OnlineDetector([RULES["fx_remit_large"]]).process_many(df.to_dict("records"))
    assert [d.key() for d in a] == [d.key() for d in b] and len(a) == 1
    assert as_event(df.to_dict("records")[1]).amount == 2e7
