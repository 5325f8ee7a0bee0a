"""No input may break the offer slot (issue 15): every hostile body, header or event time gets a
documented 4xx naming the field, never a 500, a reset or a silent "no offer"; callers without the
internal key learn nothing private; the embedded log never acknowledges a row it cannot keep.

A four-customer view and a two-offer policy written here (no simulated bank, no models), so
each test starts an app in well under a second.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from src.serving.app import MAX_ECHO, SEMANTIC_422, create_app
from src.serving.config import ServingSettings
from src.serving.events import partition_of
from src.serving.log import DecisionRecord, RewardRecord, SqliteDecisionLog, read_log
from src.serving.metrics import FailureLog
from src.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SEOUL = ZoneInfo("Asia/Seoul")
NOW = datetime(2026, 2, 5, 10, 0, tzinfo=SEOUL)
INTERNAL = "internal-key"
JSON = {"Content-Type": "application/json"}
VIEW = pd.DataFrame(
    {
        "customer_id": ["C1", "C2", "C3", "C4"],
        "is_closed": [False, True, False, False],
        "is_accident_reported": [False, False, True, False],
        "consent_push": [True, True, True, False],
        "consent_sms": [False] * 4,
        "consent_messenger": [False] * 4,
        "consent_email": [False] * 4,
        "n_loan": [0, 0, 0, 1],
        "n_savings": [0] * 4,
        "n_fund": [0] * 4,
        "n_card": [0] * 4,
        "n_pension": [0] * 4,
    }
)
POLICY = {
    "offers": [
        {"offer_id": "L1", "slots": ["home_banner"], "product": "loan"},
        {"offer_id": "F1", "slots": ["home_banner"], "product": "fx"},
    ],
    "fallback_epsilon": 0.0,
    "offer_cap": {"per_day": 100, "per_week": 100},
    "channel_cap": {"per_day": 100, "per_week": 100},
}
DECISION = {"customer_id": "C1", "slot": "home_banner", "context": {"channel": "app"}}
REWARD = {"decision_id": "d1", "kind": "conversion", "value_krw": 5000}
EVENT = {
    "event_id": 1,
    "ts": "2026-02-05T09:00:00",
    "customer_id": "C1",
    "source": "txn",
    "channel": "app",
    "code": "TRANSFER_OUT",
    "amount": 1000,
    "currency": "KRW",
}


def _bank(tmp_path: Path, view: pd.DataFrame = VIEW) -> tuple[Settings, Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    view_path = tmp_path / "customer_view_2026-02-04.parquet"
    view.to_parquet(view_path)
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(POLICY))
    return Settings(data_dir=tmp_path / "data"), view_path, policy_path


def _app(tmp_path: Path, view: pd.DataFrame = VIEW, **kw):
    settings, view_path, policy_path = _bank(tmp_path, view)
    fast_path = kw.pop("fast_path", None)
    serving = ServingSettings(
        view_path=view_path,
        policy_path=policy_path,
        log_path=tmp_path / "log" / "decisions.sqlite",
        seed=1,
        **kw,
    )
    return create_app(settings, serving, model_source=None, clock=lambda: NOW, fast_path=fast_path)


@pytest.fixture()
def client(tmp_path: Path):
    with TestClient(_app(tmp_path, internal_api_key=INTERNAL)) as c:
        yield c


def _post(client: TestClient, path: str, raw: bytes | str, **headers: str):
    return client.post(
        path, content=raw.encode() if isinstance(raw, str) else raw, headers={**JSON, **headers}
    )


def _locs(response) -> list[tuple]:
    return [tuple(e["loc"]) for e in response.json()["detail"]]


# --- non-finite numbers, strict types, times -----------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


def _with_token(body: dict, path: tuple[str, ...], token: str) -> str:
    """``body`` as JSON with the value at ``path`` replaced by a raw token (NaN is not JSON)."""
    marker = "__TOKEN__"
    copy = json.loads(json.dumps(body))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = marker
    return json.dumps(copy).replace(f'"{marker}"', token)


CASES = [
    ("/v1/decisions", DECISION, ("customer_id",)),
    ("/v1/decisions", DECISION, ("slot",)),
    ("/v1/decisions", DECISION, ("context", "channel")),
    ("/v1/decisions", DECISION, ("context", "time")),
    ("/v1/decisions", DECISION, ("context", "device")),
    ("/v1/rewards", REWARD, ("value_krw",)),
    ("/v1/rewards", REWARD, ("decision_id",)),
    ("/v1/events", EVENT, ("amount",)),
    ("/v1/events", EVENT, ("event_id",)),
    ("/v1/events", EVENT, ("ts",)),
    ("/v1/events", {**EVENT, "dwell_seconds": 1.0}, ("dwell_seconds",)),
    ("/v1/events", {**EVENT, "amount_krw": 1.0}, ("amount_krw",)),
]


@pytest.mark.parametrize("token", NON_FINITE)
def test_non_finite_numbers_anywhere_are_a_422_naming_the_field(client: TestClient, token: str):
    """Today: a 500 and a reset connection (the 422 could not be serialized)."""
    for path, body, field in CASES:
        r = _post(client, path, _with_token(body, field, token))
        assert r.status_code == 422, (path, field, r.text)
        assert ("body", *field) in _locs(r), (path, field, r.text)
    extra = _post(client, "/v1/decisions", _with_token({**DECISION, "x": 0}, ("x",), token))
    assert extra.status_code == 422 and ("body", "x") in _locs(extra)


@given(
    case=st.sampled_from(CASES),
    token=st.sampled_from(NON_FINITE),
    nest=st.integers(min_value=0, max_value=3),
)
@settings(
    max_examples=60 if os.environ.get("CI") else 20,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_non_finite_numbers_property(tmp_path_factory: pytest.TempPathFactory, case, token, nest):
    """Any field, any non-finite token, also nested in arrays: a 422 naming the field."""
    path, body, field = case
    app = _HOSTILE_APPS.get("app")
    if app is None:
        app = _HOSTILE_APPS["app"] = TestClient(_app(tmp_path_factory.mktemp("prop")))
        app.__enter__()
    raw = _with_token(body, field, "[" * nest + token + "]" * nest)
    r = _post(app, path, raw)
    assert r.status_code == 422 and ("body", *field) in _locs(r), (raw, r.text)


_HOSTILE_APPS: dict[str, TestClient] = {}


def _json_like() -> st.SearchStrategy[bytes]:
    """Bytes near JSON: valid documents with raw tokens spliced in, truncated or mis-encoded."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    docs = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )
    spliced = st.tuples(docs, st.sampled_from(NON_FINITE + ["-", "1e", '"\\ud800"', "\x00"])).map(
        lambda t: json.dumps(t[0]).replace("null", t[1], 1).encode()
    )
    return st.one_of(
        st.binary(max_size=200),
        docs.map(lambda d: json.dumps(d).encode()),
        spliced,
        docs.map(lambda d: json.dumps(d).encode("utf-16")),
        docs.map(lambda d: json.dumps(d).encode()[:-1]),
    )


@given(raw=_json_like(), path=st.sampled_from(["/v1/decisions", "/v1/rewards", "/v1/events"]))
@settings(
    max_examples=300 if os.environ.get("CI") else 60,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_arbitrary_bytes_never_get_a_5xx(tmp_path_factory: pytest.TempPathFactory, raw, path):
    """Whatever the body: a documented 4xx (or a 200 for what happens to be valid), JSON."""
    app = _HOSTILE_APPS.get("raw")
    if app is None:
        app = _HOSTILE_APPS["raw"] = TestClient(_app(tmp_path_factory.mktemp("raw")))
        app.__enter__()
    r = _post(app, path, raw)
    assert r.status_code in (200, 404, 409, 413, 422), (raw, r.status_code, r.text[:200])
    r.json()


@pytest.fixture(autouse=True, scope="module")
def _close_property_app():
    yield
    for c in _HOSTILE_APPS.values():
        c.__exit__(None, None, None)


@pytest.mark.parametrize(
    "path, body, field, value",
    [
        ("/v1/rewards", REWARD, ("value_krw",), "100"),
        ("/v1/rewards", REWARD, ("value_krw",), True),
        ("/v1/events", EVENT, ("event_id",), "1"),
        ("/v1/events", EVENT, ("event_id",), 1.5),
        ("/v1/events", EVENT, ("event_id",), True),
        ("/v1/events", {**EVENT, "session_id": 1}, ("session_id",), False),
        ("/v1/events", EVENT, ("amount",), "1000"),
        ("/v1/events", EVENT, ("ts",), 0),
        ("/v1/events", EVENT, ("ts",), "1700000000"),
        ("/v1/events", EVENT, ("ts",), True),
        ("/v1/decisions", DECISION, ("context", "time"), 0),
        ("/v1/decisions", DECISION, ("context", "time"), "0"),
        ("/v1/decisions", DECISION, ("context", "time"), 1.7e9),
        ("/v1/decisions", DECISION, ("context", "time"), False),
        ("/v1/decisions", DECISION, ("customer_id",), 7),
    ],
)
@pytest.mark.parametrize("fast_path", [True, False])
def test_strict_types_where_the_api_means_numbers_and_times(
    tmp_path: Path, path: str, body: dict, field: tuple, value, fast_path: bool
):
    """Today ``"100"``, ``true`` and ``0`` (a time) are accepted."""
    with TestClient(_app(tmp_path, fast_path=fast_path)) as client:
        r = _post(client, path, _with_token(body, field, json.dumps(value)))
    assert r.status_code == 422 and ("body", *field) in _locs(r), r.text


@pytest.mark.parametrize("fast_path", [True, False])
def test_lone_surrogates_are_a_422_naming_the_field(tmp_path: Path, fast_path: bool):
    """JSON may escape a lone surrogate; no UTF-8 text (nor the log) can hold one. Today: a 500
    (the 422 naming it could not be encoded), or a valid-looking decision that cannot be logged."""
    cases = [
        ("/v1/decisions", DECISION, ("customer_id",)),
        ("/v1/decisions", DECISION, ("context", "device")),
        ("/v1/decisions", DECISION, ("context", "page")),
        ("/v1/rewards", REWARD, ("decision_id",)),
        ("/v1/events", EVENT, ("channel",)),
        ("/v1/events", EVENT, ("code",)),
    ]
    with TestClient(_app(tmp_path, fast_path=fast_path)) as client:
        for path, body, field in cases:
            for token in ('"\\ud800"', '"ok\\udfff"'):
                r = _post(client, path, _with_token(body, field, token))
                assert r.status_code == 422 and ("body", *field) in _locs(r), (field, r.text)
        extra = _post(client, "/v1/decisions", json.dumps(DECISION)[:-1] + ', "\\ud800": 1}')
        assert extra.status_code == 422, extra.text


@pytest.mark.parametrize(
    "when",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00"],
)
def test_times_that_would_overflow_on_conversion_are_a_422(client: TestClient, when: str):
    """Today: 200 with "no offer" (fallback_reason internal_error) after an OverflowError."""
    body = {**DECISION, "context": {"channel": "app", "time": when}}
    r = client.post("/v1/decisions", json=body)
    assert r.status_code == 422 and ("body", "context", "time") in _locs(r), r.text
    r = client.post("/v1/events", json={**EVENT, "ts": when})
    assert r.status_code == 422 and ("body", "ts") in _locs(r), r.text


# --- bodies: encoding, size, echo ----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"customer_id": "C\xff1", "slot": "home_banner", "context": {"channel": "app"}}',
        b"\xef\xbb\xbf\xff\xfe",
        "[" * 5000 + "]" * 5000,  # nested too deep for the JSON parser
        b"{not json",
    ],
)
@pytest.mark.parametrize("fast_path", [True, False])
def test_a_body_that_is_not_utf8_json_is_a_422(tmp_path: Path, raw, fast_path: bool):
    """Today an invalid UTF-8 body is an undocumented 400."""
    with TestClient(_app(tmp_path, fast_path=fast_path)) as client:
        r = _post(client, "/v1/decisions", raw)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][0] == "body"
        spec = client.get("/openapi.json").json()
    documented = spec["paths"]["/v1/decisions"]["post"]["responses"]
    assert "422" in documented and "400" not in documented


def test_a_body_over_the_limit_is_a_413_before_it_is_read(tmp_path: Path):
    with TestClient(_app(tmp_path, max_body_bytes=1024)) as client:
        small = {**DECISION, "context": {"channel": "app", "page": "p" * 40}}
        assert client.post("/v1/decisions", json=small).status_code == 200
        big = _post(client, "/v1/decisions", b'{"customer_id": "' + b"A" * 5000 + b'"}')
        assert big.status_code == 413 and "1024" in big.json()["detail"]

        def chunks():  # no Content-Length: read up to the limit, then refused
            yield b'{"customer_id": "'
            for _ in range(100):
                yield b"A" * 100
            yield b'"}'

        chunked = client.post("/v1/rewards", content=chunks(), headers=JSON)
        assert chunked.status_code == 413
        assert client.get("/readyz").status_code == 200
        spec = client.get("/openapi.json").json()
        text = client.get("/metrics").text
    assert 'nextoffer_http_requests_total{route="/v1/decisions",status="413"} 1.0' in text
    assert 'nextoffer_http_requests_total{route="/v1/rewards",status="413"} 1.0' in text
    assert "413" in spec["paths"]["/v1/rewards"]["post"]["responses"]
    assert ServingSettings().max_body_bytes <= 64 * 1024  # small by default


def test_a_422_never_echoes_a_large_input(client: TestClient):
    """Today a 100 MB body gets a 100 MB 422 back."""
    limit = ServingSettings().max_body_bytes
    bodies = [
        {**DECISION, "customer_id": "A" * (limit - 200)},
        {**DECISION, "x" * (limit - 200): 1},  # a long unknown field name
        {**DECISION, "context": {"channel": "app", "device": ["d"] * ((limit - 200) // 5)}},
        [DECISION] * 60,
    ]
    for body in bodies:
        raw = json.dumps(body)
        assert len(raw) <= limit
        r = _post(client, "/v1/decisions", raw)
        assert r.status_code == 422, r.text[:300]
        assert len(r.content) < 2_000, len(r.content)
        for error in r.json()["detail"]:
            assert len(str(error.get("input", ""))) <= MAX_ECHO + 3


# --- events: bounded time, one clock per partition -----------------------------------------------


def _two_partitions(partitions: int) -> tuple[str, str]:
    first = "C1"
    other = next(
        f"X{i}"
        for i in range(1000)
        if partition_of(f"X{i}", partitions) != partition_of(first, partitions)
    )
    return first, other


def test_a_far_future_event_is_a_422_and_moves_no_clock(client: TestClient):
    """Today one event stamped in 2099 made every later event "late" for everyone."""
    far = client.post("/v1/events", json={**EVENT, "ts": "2099-01-01T00:00:00"})
    assert far.status_code == 422 and ("body", "ts") in _locs(far), far.text
    aware = client.post("/v1/events", json={**EVENT, "ts": "2026-02-05T02:00:00Z"})  # 11:00 local
    assert aware.status_code == 422 and ("body", "ts") in _locs(aware), aware.text
    assert client.post("/v1/events", json=EVENT).json()["late"] is False


def test_the_detector_clock_is_kept_per_partition(client: TestClient):
    events = client.app.state.service.events
    a, b = _two_partitions(len(events.detectors))
    ahead = (NOW + timedelta(minutes=4)).replace(tzinfo=None).isoformat()  # within the skew
    on_time = NOW.replace(tzinfo=None).isoformat()
    r = client.post("/v1/events", json={**EVENT, "customer_id": a, "ts": ahead})
    assert r.status_code == 200 and r.json()["late"] is False
    # another partition's clock did not move: its events at "now" are evaluated
    r = client.post("/v1/events", json={**EVENT, "event_id": 2, "customer_id": b, "ts": on_time})
    assert r.json()["late"] is False
    # the skewed customer's own partition is ahead: its older event is late, as before
    r = client.post("/v1/events", json={**EVENT, "event_id": 3, "customer_id": a, "ts": on_time})
    assert r.json()["late"] is True
    # an event without a customer moves no clock
    r = client.post(
        "/v1/events", json={**EVENT, "event_id": 4, "customer_id": None, "ts": ahead}
    ).json()
    assert r["late"] is False and r["actions"] == []
    r = client.post("/v1/events", json={**EVENT, "event_id": 5, "customer_id": b, "ts": on_time})
    assert r.json()["late"] is False


def test_event_skew_is_a_setting(tmp_path: Path):
    with TestClient(_app(tmp_path, event_max_skew_seconds=0)) as client:
        ahead = (NOW + timedelta(seconds=1)).replace(tzinfo=None).isoformat()
        assert client.post("/v1/events", json={**EVENT, "ts": ahead}).status_code == 422
        assert client.post("/v1/events", json=EVENT).status_code == 200


# --- rewards ---------------------------------------------------------------------------------


def _decision_id(client: TestClient, customer_id: str) -> dict:
    r = client.post("/v1/decisions", json={**DECISION, "customer_id": customer_id})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_reward_with_a_different_value_is_a_409_and_the_first_stands(client: TestClient):
    """Today the second value was silently dropped with a 200."""
    d = _decision_id(client, "C1")
    assert d["offer"] is not None
    body = {"decision_id": d["decision_id"], "kind": "conversion", "value_krw": 50_000}
    assert client.post("/v1/rewards", json=body).json()["stored"] is True
    assert client.post("/v1/rewards", json=body).json()["stored"] is False  # same value: a retry
    conflict = client.post("/v1/rewards", json={**body, "value_krw": 60_000})
    assert conflict.status_code == 409 and "value_krw" in conflict.json()["detail"]
    assert client.post("/v1/rewards", json={**body, "value_krw": None}).status_code == 409
    click = {"decision_id": d["decision_id"], "kind": "click"}
    assert client.post("/v1/rewards", json=click).json()["stored"] is True
    assert client.post("/v1/rewards", json=click).json()["stored"] is False
    assert client.post("/v1/rewards", json={**click, "value_krw": 1}).status_code == 409
    _, rewards = read_log(client.app.state.service.log.path)
    assert rewards.set_index("kind").loc["conversion", "value_krw"] == 50_000


def test_a_reward_for_a_decision_that_showed_nothing_is_rejected(client: TestClient):
    d = _decision_id(client, "C2")  # a closed account: nothing shown
    assert d["offer"] is None
    r = client.post("/v1/rewards", json={"decision_id": d["decision_id"], "kind": "click"})
    assert r.status_code == 422 and ("body", "decision_id") in _locs(r)
    _, rewards = read_log(client.app.state.service.log.path)
    assert rewards.empty
    text = client.get("/metrics").text
    assert 'nextoffer_rewards_total{kind="click",outcome="no_offer"} 1.0' in text


def _record(decision_id: str, offer_id: str | None) -> DecisionRecord:
    return DecisionRecord(
        decision_id, "2026-02-05T10:00:00", 1, "C1", "home_banner", "app", None, None, None,
        offer_id, None, 1.0 if offer_id else None, (), (), {}, {}, "default_order", {}, False,
        False, None, None,
    )  # fmt: skip


def test_reward_outcomes_of_the_log(tmp_path: Path):
    """The semantics the DecisionLog protocol documents (a PostgreSQL log must match them)."""
    log = SqliteDecisionLog(tmp_path / "log.sqlite")
    try:
        log.submit_blocking("decision", _record("shown", "L1"))
        log.submit_blocking("decision", _record("nothing", None))

        def reward(decision_id: str, kind: str = "conversion", value: float | None = 10.0):
            return log.submit_blocking("reward", RewardRecord(decision_id, kind, value, "t"))

        assert reward("shown") == "stored"
        assert reward("shown") == "duplicate"
        assert reward("shown", value=10.5) == "conflict"
        assert reward("shown", value=None) == "conflict"
        assert reward("shown", "click", None) == "stored"
        assert reward("shown", "click", None) == "duplicate"
        assert reward("nothing") == "no_offer"
        assert reward("unknown") == "unknown_decision"
    finally:
        log.close()


# --- API keys and privacy --------------------------------------------------------------------


@pytest.mark.parametrize("fast_path", [True, False])
def test_duplicate_api_key_headers_are_no_key_on_every_path(tmp_path: Path, fast_path: bool):
    """Today the fast path read the last copy and the route the first."""
    app = _app(tmp_path, api_key="good", fast_path=fast_path)
    with TestClient(app) as client:
        requests = [
            ("/v1/decisions", DECISION),
            ("/v1/rewards", REWARD),
            ("/v1/events", EVENT),
        ]
        for path, body in requests:
            raw = json.dumps(body).encode()
            for pair in (["good", "bad"], ["bad", "good"], ["good", "good"]):
                headers = [("content-type", "application/json")] + [("x-api-key", k) for k in pair]
                r = client.post(path, content=raw, headers=headers)
                assert r.status_code == 401, (path, pair, r.status_code)
            assert _post(client, path, raw, **{"X-API-Key": "good"}).status_code in (200, 404)


def _comparable(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("decision_id", "created_at", "customer_id")}


@pytest.mark.parametrize("fast_path", [True, False])
def test_callers_without_the_internal_key_learn_no_reasons(tmp_path: Path, fast_path: bool):
    """Today any caller could read "closed_account" or "accident_report" and cold_start (whether
    the id exists) off the response."""
    with TestClient(_app(tmp_path, internal_api_key=INTERNAL, fast_path=fast_path)) as client:
        push = {"channel": "push"}
        public = [
            client.post("/v1/decisions", json={**DECISION, "customer_id": c, "context": push})
            for c in ("C2", "C3", "C4", "NOBODY")  # closed, accident, no consent, unknown
        ]
        answers = [_comparable(r.json()) for r in public]
        assert all(a == answers[0] for a in answers), answers
        assert answers[0]["excluded"] == [] and answers[0]["ranked"] == []
        assert answers[0]["cold_start"] is None and answers[0]["explained"] is False
        internal = client.post(
            "/v1/decisions",
            json={**DECISION, "customer_id": "C2", "context": push},
            headers={"X-API-Key": INTERNAL},
        ).json()
        assert internal["explained"] is True and internal["cold_start"] is False
        assert {e["reason"] for e in internal["excluded"]} == {"closed_account"}
        log_path = client.app.state.service.log.path
    decisions, _ = read_log(log_path)
    reasons = decisions.set_index("customer_id")["excluded"]
    assert "closed_account" in reasons["C2"].iloc[0] and "accident_report" in reasons["C3"]


def test_metrics_and_docs_can_be_protected(tmp_path: Path):
    ops = ("/metrics", "/docs", "/redoc", "/openapi.json")
    with TestClient(_app(tmp_path / "open")) as client:
        assert all(client.get(p).status_code == 200 for p in ops)
    app = _app(tmp_path / "closed", internal_api_key=INTERNAL, api_key="client", protect_ops=True)
    with TestClient(app) as client:
        for path in ops:
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"X-API-Key": "client"}).status_code == 401
            twice = [("x-api-key", INTERNAL), ("x-api-key", INTERNAL)]
            assert client.get(path, headers=twice).status_code == 401
            assert client.get(path, headers={"X-API-Key": INTERNAL}).status_code == 200
        assert (
            client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        )
    with pytest.raises(ValidationError, match="internal_api_key"):
        ServingSettings(protect_ops=True)


def test_customer_ids_are_matched_by_their_canonical_form(tmp_path: Path, caplog):
    view = VIEW.assign(customer_id=[101, 102, 103, 104])
    with TestClient(_app(tmp_path, view, internal_api_key=INTERNAL)) as client:

        def decide(customer_id):
            return client.post(
                "/v1/decisions",
                json={**DECISION, "customer_id": customer_id, "context": {"channel": "push"}},
                headers={"X-API-Key": INTERNAL},
            )

        assert decide("102").json()["excluded"][0]["reason"] == "closed_account"  # int id
        assert decide("0102").json()["cold_start"] is True  # exact string, no number parsing
        for bad in (" 102", "102 ", "１０２", "10\u200b2", ""):
            assert decide(bad).status_code == 422, bad
    odd = VIEW.assign(customer_id=["C1", "C 2", "c3", "x" * 65])
    with (
        caplog.at_level(logging.WARNING, logger="nextoffer.serving"),
        TestClient(_app(tmp_path / "odd", odd)),
    ):
        pass
    assert any("2 customer ids" in r.getMessage() for r in caplog.records)  # said, not dropped
    with TestClient(_app(tmp_path / "s", internal_api_key=INTERNAL)) as client:
        r = client.post(
            "/v1/decisions",
            json={**DECISION, "customer_id": "c2", "context": {"channel": "push"}},
            headers={"X-API-Key": INTERNAL},
        )
        assert r.json()["cold_start"] is True  # case-sensitive


# --- failures are logged once per cause ----------------------------------------------------------


def test_failures_are_logged_once_per_cause(client: TestClient, monkeypatch, caplog):
    """Today: a traceback per request."""

    def broken(request, prefetched=None, models=None):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(client.app.state.service.engine, "decide", broken)
    with caplog.at_level(logging.ERROR, logger="nextoffer.serving"):
        for _ in range(30):
            r = client.post("/v1/decisions", json=DECISION)
            assert r.status_code == 200 and r.json()["fallback_reason"] == "internal_error"
    records = [r for r in caplog.records if "engine" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    text = client.get("/metrics").text
    assert 'nextoffer_failures_total{cause="decide:RuntimeError"} 30.0' in text


def test_failure_log_reports_repeats_after_the_interval(caplog):
    now = [0.0]
    failures = FailureLog(logging.getLogger("nextoffer.test"), 60.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="nextoffer.test"):
        logged = [failures.failure("write", OSError("disk"), "write failed") for _ in range(5)]
        now[0] = 61.0
        logged.append(failures.failure("write", OSError("disk"), "write failed"))
        logged.append(failures.failure("write", ValueError("x"), "write failed"))  # another cause
    assert logged == [True, False, False, False, False, True, True]
    assert "4 more" in caplog.records[1].getMessage() and caplog.records[1].exc_info is None


# --- the embedded log's faults ---------------------------------------------------------------


def test_log_files_are_created_0600(client: TestClient):
    path = client.app.state.service.log.path
    assert client.post("/v1/decisions", json=DECISION).status_code == 200
    for f in [path, Path(f"{path}-wal"), Path(f"{path}-shm")]:
        assert f.exists() and stat.S_IMODE(f.stat().st_mode) == 0o600, f


def _readyz(client: TestClient) -> tuple[int, dict]:
    r = client.get("/readyz")
    return r.status_code, r.json()


def _logged_ids(path: Path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT decision_id FROM decisions")}
    finally:
        con.close()


def test_a_deleted_log_file_is_recreated_and_says_what_was_lost(client: TestClient, caplog):
    """Deleted between commits: the next write opens a new file (0600) and is durable there; no
    restart. The rows acknowledged before were in the deleted file: said once, log and /readyz."""
    log_ = client.app.state.service.log
    path = log_.path
    before = client.post("/v1/decisions", json=DECISION).json()
    assert before["offer"] is not None
    for f in [path, Path(f"{path}-wal"), Path(f"{path}-shm")]:
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="nextoffer.serving"):
        d = client.post("/v1/decisions", json=DECISION).json()
        assert d["offer"] is not None  # acknowledged: it is in the new file
        status, body = _readyz(client)
    assert status == 200 and "deleted" in body["detail"]["log_notice"]
    assert len([r for r in caplog.records if "was deleted" in r.getMessage()]) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and log_.reopened == 1
    assert _logged_ids(path) == {d["decision_id"]}
    reward = {"decision_id": d["decision_id"], "kind": "click"}
    assert client.post("/v1/rewards", json=reward).json()["stored"] is True
    lost = {"decision_id": before["decision_id"], "kind": "click"}  # it was in the deleted file
    assert client.post("/v1/rewards", json=lost).status_code == 404


def test_a_log_file_deleted_during_a_commit_acknowledges_nothing_then_recovers(
    client: TestClient, monkeypatch
):
    """The batch reached the unlinked inode only: not acknowledged; the next one is."""
    path = client.app.state.service.log.path
    real_insert = SqliteDecisionLog._insert
    deleted: list[bool] = []

    def insert_then_delete(con, rows):
        real_insert(con, rows)
        if not deleted:
            deleted.append(True)
            path.unlink()

    monkeypatch.setattr(SqliteDecisionLog, "_insert", staticmethod(insert_then_delete))
    lost = client.post("/v1/decisions", json=DECISION).json()
    assert lost["offer"] is None and lost["fallback_reason"] == "log_unavailable"
    reward = client.post("/v1/rewards", json={"decision_id": lost["decision_id"], "kind": "click"})
    assert reward.status_code in (404, 503)  # never stored against an unacknowledged decision
    kept = client.post("/v1/decisions", json=DECISION).json()
    assert kept["offer"] is not None
    assert lost["decision_id"] not in _logged_ids(path)
    assert kept["decision_id"] in _logged_ids(path)


def test_a_replaced_log_file_is_adopted(client: TestClient):
    """An operator's replacement (a restored copy, a rotation) is where the next rows go."""
    path = client.app.state.service.log.path
    path.rename(path.with_suffix(".moved"))
    path.write_bytes(b"")
    status, body = _readyz(client)
    assert status == 200 and "replaced" in body["detail"]["log_notice"]
    d = client.post("/v1/decisions", json=DECISION).json()
    assert d["offer"] is not None and d["decision_id"] in _logged_ids(path)


def test_a_log_path_that_cannot_be_reopened_makes_it_not_ready(client: TestClient):
    path = client.app.state.service.log.path
    path.unlink()
    path.write_bytes(b"not a database" * 100)
    status, body = _readyz(client)
    assert status == 503 and "heartbeat" in body["detail"]["log"]
    assert client.post("/v1/decisions", json=DECISION).json()["offer"] is None
    path.unlink()  # the operator clears it: recovers without a restart
    assert client.post("/v1/decisions", json=DECISION).json()["offer"] is not None
    assert _readyz(client)[0] == 200


def test_a_read_only_log_file_makes_it_not_ready(tmp_path: Path):
    app = _app(tmp_path)
    with TestClient(app) as client:
        path = client.app.state.service.log.path
        path.chmod(0o400)
        status, body = _readyz(client)
        assert status == 503 and "read-only" in body["detail"]["log"]
        path.chmod(0o600)
        assert _readyz(client)[0] == 200
    if os.geteuid() != 0:
        return  # as a user, SQLite itself refuses to open it: the start fails, naming the file
    path.chmod(0o400)  # read-only from the start (root may still write: the mode decides)
    try:
        with TestClient(_app(tmp_path)) as client:
            status, body = _readyz(client)
            assert status == 503 and "read-only" in body["detail"]["log"]
    finally:
        path.chmod(0o600)


def test_a_full_log_makes_it_not_ready_until_writes_succeed(client: TestClient):
    """SQLITE_FULL (here from a page limit; a full disk gives the same error): decisions show
    nothing, rewards get a 503, /readyz says why; all recover once there is room."""
    log = client.app.state.service.log
    d = client.post("/v1/decisions", json=DECISION).json()
    assert d["offer"] is not None
    pages = log._con.execute("PRAGMA page_count").fetchone()[0]
    log._con.execute(f"PRAGMA max_page_count = {pages}")
    filler = {**DECISION, "context": {"channel": "app", "page": "p" * 60, "device": "d" * 60}}
    shown = 0
    for _ in range(300):  # until the next page is needed
        r = client.post("/v1/decisions", json=filler).json()
        if r["fallback_reason"] == "log_unavailable":
            break
        shown += 1
    else:
        pytest.fail("the log never filled up")
    status, body = _readyz(client)
    assert status == 503 and "full" in body["detail"]["log"], body
    conv = {"decision_id": d["decision_id"], "kind": "conversion", "value_krw": 1.0}
    assert client.post("/v1/rewards", json=conv).status_code in (200, 503)
    log._con.execute(f"PRAGMA max_page_count = {pages * 100}")
    assert client.post("/v1/decisions", json=DECISION).json()["fallback_reason"] == "no_model"
    assert _readyz(client)[0] == 200
    decisions, _ = read_log(log.path)
    assert len(decisions) == 2 + shown  # every acknowledged decision is in the file


# --- the OpenAPI contract, fuzzed harder ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_contract_positive_and_negative(tmp_path: Path, mode: str):
    """Schemathesis over every operation, valid and invalid data (more examples under CI): no
    5xx, every status and body as published."""
    import schemathesis
    from schemathesis import GenerationMode

    app = _app(tmp_path)
    with TestClient(app):
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures: list[tuple] = []
        for operation in schema.get_all_operations():
            _fuzz(operation.ok(), GenerationMode(mode), failures)
        assert failures == []


def _fuzz(op, mode, failures: list[tuple]) -> None:
    from hypothesis.errors import Unsatisfiable
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    strategy = op.as_strategy(generation_mode=mode)

    @settings(
        max_examples=100 if os.environ.get("CI") else 30,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case) -> None:
        response = case.call()
        if response.status_code >= 500:
            failures.append((op.label, response.status_code, response.text[:200]))
        excluded = []
        if (
            response.status_code == 422
            and {e["type"] for e in response.json()["detail"]} <= SEMANTIC_422
        ):  # valid by the schema, refused by what the server knows
            excluded.append(positive_data_acceptance)
        try:
            case.validate_response(response, excluded_checks=excluded)
        except Exception as error:  # collected: one report for every operation
            failures.append((op.label, response.status_code, str(error)[:300]))

    try:
        check()
    except Unsatisfiable:  # negative data for an operation without inputs (GET /healthz)
        assert mode.value == "negative", op.label


# --- a real server ----------------------------------------------------------------------------


def test_a_real_server_answers_hostile_bodies_on_one_kept_alive_connection(tmp_path: Path):
    """Over uvicorn, not the test client: NaN, 1e999, bad UTF-8 and an oversized body are
    answered (no 500, no reset) and the same keep-alive connection serves the next request; the
    server's own log file is 0600 too."""
    import http.client

    from src.serving.service import ServerProcess, serving_env

    settings, view_path, policy_path = _bank(tmp_path)
    serving = ServingSettings(
        view_path=view_path,
        policy_path=policy_path,
        log_path=tmp_path / "log" / "decisions.sqlite",
        propensity_model=None,
        bandit_model=None,
    )
    log_file = tmp_path / "server.log"
    with ServerProcess(serving_env(settings, serving)).start(log_file=log_file) as server:
        con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        bodies = [
            (b'{"customer_id": NaN, "slot": "home_banner", "context": {"channel": "app"}}', 422),
            (_with_token(REWARD, ("value_krw",), "1e999").encode(), 422),
            (
                b'{"customer_id": "C\xff", "slot": "home_banner", "context": {"channel": "app"}}',
                422,
            ),
            (b"{" + b" " * 100_000 + b"}", 413),
            (json.dumps(DECISION).encode(), 200),
        ]
        for body, status in bodies:
            path = "/v1/rewards" if b"kind" in body else "/v1/decisions"
            con.request("POST", path, body, {"Content-Type": "application/json"})
            response = con.getresponse()
            answer = response.read()
            assert response.status == status, (body[:60], response.status, answer[:200])
            json.loads(answer)
            if status == 413:  # the unread body cannot be skipped: the server closes, by design
                con.close()
                con = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        con.close()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
