"""The online detector's state and the rule flags per customer in Redis, shared by replicas.

Against the real Redis on 127.0.0.1:6379 (keys under a uuid prefix, deleted after); under
``CI=true`` a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from benchmarks.harness.detection_synthetic import synthetic_events
from src.features.detection import Event, OnlineDetector, load_rules
from src.features.detection.events import events_from_frame
from src.serving.app import create_app
from src.serving.config import ServingSettings
from src.serving.detection_state import RedisDetector, RedisFlags
from src.settings import Settings
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _key(d) -> tuple:
    return (d.customer_id, d.rule, d.kind, d.anchor_at, d.fired_at, d.event_ids)


def test_two_replicas_sharing_redis_detect_what_one_detector_per_customer_does(redis_prefix):
    """A customer's events spread at random over two replicas give exactly the detections of an
    in-process detector fed that customer's events alone (the per-customer clock)."""
    client, prefix = redis_prefix
    rules = load_rules()
    events = list(events_from_frame(synthetic_events(6_000, customers=25, seed=3, days=10)))
    replicas = [RedisDetector(client, prefix, rules), RedisDetector(client, prefix, rules)]
    local: dict[str, OnlineDetector] = defaultdict(lambda: OnlineDetector(rules))
    rng = random.Random(0)
    shared, expected = [], []
    for e in events:
        shared.extend(replicas[rng.randrange(2)].process(e))
        if e.customer_id is not None:
            expected.extend(local[e.customer_id].process(e))
    assert len(expected) > 20  # the stream does fire rules, of several kinds
    assert len({d.kind for d in expected}) >= 2
    assert sorted(map(_key, shared)) == sorted(map(_key, expected))
    assert sum(r.late_events for r in replicas) == sum(d.late_events for d in local.values())
    assert replicas[0].state_size() > 0  # the state lives in Redis, under the prefix


def test_concurrent_writers_retry_instead_of_losing_an_update(redis_prefix, monkeypatch):
    """B commits an event of the customer between A's read and A's write: A retries on B's
    state, and the stored state is a single detector's over the events in commit order."""
    from src.serving import detection_state

    client, prefix = redis_prefix
    rules = load_rules()
    events = list(events_from_frame(synthetic_events(3_000, customers=3, seed=4, days=5)))
    cust = next(e.customer_id for e in events if e.customer_id is not None)
    mine = [e for e in events if e.customer_id == cust][:60]
    a, b = RedisDetector(client, prefix, rules), RedisDetector(client, prefix, rules)
    real_load = detection_state.load_state
    pending: list = []

    def load_then_interfere(det, customer_id, raw):
        if pending and det is a.detector:
            b.process(pending.pop())  # lands after A has read the state
        real_load(det, customer_id, raw)

    monkeypatch.setattr(detection_state, "load_state", load_then_interfere)
    committed = []
    for first, second in zip(mine[::2], mine[1::2], strict=False):
        pending.append(first)
        a.process(second)
        committed += [first, second]
    assert a.conflicts == len(committed) // 2 and b.conflicts == 0
    reference = OnlineDetector(rules)
    for e in committed:
        reference.process(e)
    stored = client.get(a.key(cust))
    assert stored is not None
    assert stored.decode() == detection_state.dump_state(reference)


def test_flags_keep_the_latest_expiry_and_expire_in_event_time(redis_prefix):
    client, prefix = redis_prefix
    flags = RedisFlags(client, prefix, ttl_s=60)
    flags.set("C1", ["rule_x", "mark_fx"], 2_000)
    flags.set("C1", ["rule_x"], 1_000)  # an earlier expiry does not shorten it
    assert flags.active("C1", 1_500) == ("mark_fx", "rule_x")
    assert flags.active("C1", 2_000) == ()
    assert flags.active("C2", 0) == ()
    assert 0 < client.ttl(flags.key("C1")) <= 60


def test_an_event_on_one_replica_changes_the_decision_on_another(
    redis_prefix, small_bank: Settings, tmp_path: Path
):
    """Two apps on one Redis prefix: the fx mark set by events posted to A ranks fx first on B."""
    import pandas as pd

    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    _, prefix = redis_prefix
    as_of = default_as_of(small_bank)
    view = build_customer_view(small_bank.catalog, as_of)
    view_path = tmp_path / f"customer_view_{pd.Timestamp(as_of):%Y-%m-%d}.parquet"
    view.to_parquet(view_path)
    customer = view.loc[~view["is_closed"] & ~view["is_accident_reported"], "customer_id"].iloc[0]

    def replica(name: str):
        serving = ServingSettings(
            view_path=view_path,
            log_path=tmp_path / f"{name}.sqlite",
            seed=1,
            bandit_model=None,
            propensity_model=None,
            shared_state_url=REDIS_URL,
            shared_state_prefix=prefix,
            internal_api_key="internal-test-key",  # the ranking is shown to internal callers only
        )
        return TestClient(
            create_app(small_bank, serving, model_source=None),
            headers={"X-API-Key": "internal-test-key"},
        )

    base = {"customer_id": customer, "channel": "app"}
    decision = {"customer_id": customer, "slot": "home_banner"}
    with replica("a") as a, replica("b") as b:
        context = {"channel": "app", "time": "2026-02-05T10:10:00"}
        before = b.post("/v1/decisions", json={**decision, "context": context}).json()
        first = a.post(
            "/v1/events",
            json={
                **base,
                "event_id": 1,
                "ts": "2026-02-05T10:00:00",
                "source": "click",
                "page": "fx_remit_input",
                "action": "view",
            },
        )
        assert first.json()["actions"] == []
        second = b.post(  # the second step reaches the other replica
            "/v1/events",
            json={
                **base,
                "event_id": 2,
                "ts": "2026-02-05T10:03:00",
                "source": "txn",
                "code": "FX_REMIT",
                "amount": 9000,
                "currency": "USD",
            },
        )
        assert [a["rule"] for a in second.json()["actions"]] == ["fx_remit_large"]
        after = a.post("/v1/decisions", json={**decision, "context": context}).json()
    fx = [o["offer_id"] for o in after["ranked"] if o["product"] == "fx"]
    assert fx and after["ranked"][0]["offer_id"] == fx[0]
    assert before["ranked"][0]["offer_id"] != fx[0]  # it was the mark that moved it


# --- timeouts without a next event: the sweeper ------------------------------------------------

_FAR = 2**62  # a server clock far ahead: the sweep time is the latest event time seen


def _full_key(d) -> tuple:
    return (d.customer_id, d.rule, d.kind, d.anchor_at, d.fired_at, d.fired_event_id, d.event_ids)


def test_sweeps_on_two_replicas_fire_each_timeout_once_as_batch_does(redis_prefix):
    """Events spread over two replicas, each replica sweeping now and then (and both at the end,
    concurrently): every detection once, exactly the batch evaluation's, and timeouts fired by
    sweeps with no later event of their customer."""
    import threading

    from src.features.detection import detect
    from src.features.detection.events import detection_keys

    client, prefix = redis_prefix
    rules = load_rules()
    frame = synthetic_events(4_000, customers=40, seed=7, days=6)
    events = list(events_from_frame(frame, order="time"))
    replicas = [RedisDetector(client, prefix, rules, 0), RedisDetector(client, prefix, rules, 0)]
    rng = random.Random(1)
    got = []
    for i, e in enumerate(events):
        got.extend(replicas[rng.randrange(2)].process(e))
        if i % 97 == 0:
            got.extend(replicas[rng.randrange(2)].sweep_due(_FAR))
    final: list[list] = [[], []]
    start = threading.Barrier(2)

    def sweep(i: int) -> None:
        start.wait()
        final[i] = replicas[i].sweep_due(_FAR)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got += final[0] + final[1]
    want = sorted(detection_keys(detect(frame, rules)))  # until: the latest event time
    assert sorted(map(_full_key, got)) == want  # a duplicate would make the lists differ
    swept = sum(r.swept for r in replicas)
    assert swept > 5 and any(d.kind == "timeout" for d in final[0] + final[1])
    assert replicas[0].sweep_due(_FAR) == [] == replicas[1].sweep_due(_FAR)
    pending = client.zrange(f"{prefix}:detdue", 0, -1, withscores=True)
    last_us = max(e.ts for e in events) // 1000
    assert all(score >= last_us for _, score in pending)  # only deadlines not yet passed


def _signup_start(event_id: int, ts: str, customer: str = "C1"):
    from src.features.detection import Event

    return Event(
        event_id=event_id,
        ts=_ns(ts),
        customer_id=customer,
        source="click",
        page="signup_step1",
        action="view",
        session_id=1,
    )


def _ns(ts: str) -> int:
    import pandas as pd

    return int(pd.Timestamp(ts).value)


def test_a_sweep_racing_another_replica_retries_and_the_timeout_fires_once(
    redis_prefix, monkeypatch
):
    """B's sweep commits between A's read and A's write of the customer's state: A's EXEC fails,
    A re-reads a state whose timeout has fired, and fires nothing."""
    from src.serving import detection_state

    client, prefix = redis_prefix
    rules = [r for r in load_rules() if r.name == "signup_abandoned"]
    a, b = RedisDetector(client, prefix, rules, 0), RedisDetector(client, prefix, rules, 0)
    a.process(_signup_start(1, "2026-01-01 10:00"))
    b.process(_signup_start(2, "2026-01-01 10:30", customer="C2"))  # the clock passes 10:20
    real_load = detection_state.load_state
    b_fired: list = []

    def load_then_interfere(det, customer_id, raw):
        if det is a._sweeper and not b_fired:
            b_fired.extend(b.sweep_due(_FAR))  # lands after A has read the state
        real_load(det, customer_id, raw)

    monkeypatch.setattr(detection_state, "load_state", load_then_interfere)
    a_fired = a.sweep_due(_FAR)
    assert [(d.customer_id, d.kind, d.fired_at) for d in b_fired] == [
        ("C1", "timeout", _ns("2026-01-01 10:20"))
    ]
    assert a_fired == [] and a.conflicts == 1
    assert client.zscore(f"{prefix}:detdue", "C1") is None  # nothing left pending for C1


def test_the_sweep_clock_is_capped_by_the_server_and_waits_for_the_allowed_lateness(
    redis_prefix,
):
    """T = min(server now, latest event time) - lateness: an event arriving within the lateness
    still cancels the absence; a client's clock ahead of the server fires nothing early."""
    client, prefix = redis_prefix
    rules = [r for r in load_rules() if r.name == "signup_abandoned"]
    det = RedisDetector(client, prefix, rules, allowed_lateness_seconds=60)
    det.process(_signup_start(1, "2026-01-01 10:00"))
    det.process(_signup_start(2, "2026-01-01 10:25", customer="C2"))  # ahead of the server
    assert det.sweep_due(_ns("2026-01-01 10:20:30")) == []  # 10:19:30 < the 10:20 deadline
    done = det.process(
        Event(
            event_id=3,
            ts=_ns("2026-01-01 10:19"),  # arrives late, but within the lateness
            customer_id="C1",
            source="click",
            page="signup_done",
            action="view",
            session_id=1,
        )
    )
    assert done == [] and det.late_events == 0
    assert det.sweep_due(_ns("2026-01-02 00:00")) == []  # C1 signed up: nothing to fire
    assert det.sweep_time(_ns("2026-01-02 00:00")) == _ns("2026-01-01 10:24")  # event-time cap


def test_the_app_sweeper_sets_the_flag_of_a_timeout_without_a_next_event(redis_prefix):
    """EventProcessor.sweep (the app's background task calls it) sets the timeout's flag."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from src.serving.events import EventProcessor
    from src.serving.schemas import EventRequest

    client, prefix = redis_prefix
    rules = [r for r in load_rules() if r.name == "signup_abandoned"]
    flags = RedisFlags(client, prefix, ttl_s=3600)
    tz = ZoneInfo("Asia/Seoul")
    now = [datetime(2026, 1, 1, 10, 5, tzinfo=tz)]
    events = EventProcessor(
        None,
        flags,
        24.0,
        clock=lambda: now[0],
        detector=RedisDetector(client, prefix, rules, allowed_lateness_seconds=60),
    )
    assert events.sweeps
    click = {"channel": "app", "source": "click", "session_id": 1, "action": "view"}

    def post(event_id: int, ts: str, page: str, customer: str) -> None:
        body = {"event_id": event_id, "ts": ts, "page": page, "customer_id": customer, **click}
        events.process(EventRequest.model_validate(body))

    post(1, "2026-01-01T10:00:00", "signup_step1", "C1")
    assert events.sweep() == []  # nothing is due yet
    now[0] = datetime(2026, 1, 1, 10, 30, tzinfo=tz)
    post(2, "2026-01-01T10:30:00", "home", "C9")  # another customer: C1 sends nothing more
    now[0] = datetime(2026, 1, 1, 10, 40, tzinfo=tz)
    actions = events.sweep()
    assert [(a.customer_id, a.rule, a.kind) for a in actions] == [
        ("C1", "signup_abandoned", "timeout")
    ]
    assert flags.active("C1", _ns("2026-01-01 10:21")) == ("rule_signup_abandoned",)
    assert events.sweep() == []


def test_the_service_sweeps_a_timeout_without_a_next_event(
    redis_prefix, small_bank: Settings, tmp_path: Path
):
    """The app's background sweeper (started with shared state) fires the pending timeout of a
    customer who sent nothing more, and sets its flag; no request is needed for it."""
    import time

    import pandas as pd

    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    client, prefix = redis_prefix
    as_of = default_as_of(small_bank)
    view_path = tmp_path / f"customer_view_{pd.Timestamp(as_of):%Y-%m-%d}.parquet"
    build_customer_view(small_bank.catalog, as_of).to_parquet(view_path)
    serving = ServingSettings(
        view_path=view_path,
        log_path=tmp_path / "log.sqlite",
        seed=1,
        bandit_model=None,
        propensity_model=None,
        shared_state_url=REDIS_URL,
        shared_state_prefix=prefix,
        detection_sweep_seconds=0.05,
    )
    click = {"channel": "app", "source": "click", "action": "view", "session_id": 1}
    with TestClient(create_app(small_bank, serving, model_source=None)) as app:
        assert app.app.state.service.events.sweeps
        for event_id, ts, page, customer in [
            (1, "2026-02-05T10:00:00", "signup_step1", "S1"),
            (2, "2026-02-05T10:30:00", "home", "S2"),  # the latest event time passes 10:20
        ]:
            body = {"event_id": event_id, "ts": ts, "page": page, "customer_id": customer}
            assert app.post("/v1/events", json={**body, **click}).json()["actions"] == []
        flags = RedisFlags(client, prefix, ttl_s=60)
        key = flags.key("S1")
        for _ in range(200):  # the sweeper runs every 0.05 s; not a timing assertion
            if client.exists(key):
                break
            time.sleep(0.05)
        fired_ns = int(pd.Timestamp("2026-02-05T10:20:00").value)
        assert flags.active("S1", fired_ns) == ("rule_signup_abandoned",)
        assert 'rule="signup_abandoned"' in app.get("/metrics").text
