"""The offer-slot service in process: decisions, eligibility, rewards, events, metrics, every
fallback, export, and schemathesis against the published OpenAPI document.

One small bank (the session's ``small_bank``) with champion models registered in a temporary
MLflow registry is shared by the module; apps are created per test (``create_app``).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from src.serving.app import create_app
from src.serving.config import ServingSettings, policy_from_offers
from src.serving.models import BanditModel, MlflowModelSource
from src.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def bank(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small bank's view as of its last day, plus champion models in a private registry."""
    from benchmarks.harness.serving_fixtures import register_models
    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    work = tmp_path_factory.mktemp("serving")
    view_path = work / "customer_view.parquet"
    build_customer_view(small_bank.catalog, default_as_of(small_bank)).to_parquet(view_path)
    settings = small_bank.model_copy(
        update={
            "mlruns_dir": work / "mlruns",
            "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        }
    )
    versions = register_models(settings, view_path)
    return {
        "settings": settings,
        "view_path": view_path,
        "view": pd.read_parquet(view_path),
        "versions": versions,
        "work": work,
    }


INTERNAL = {"X-API-Key": "internal-test-key"}  # callers with it see exclusion reasons


def _serving(bank: dict, tmp_path: Path, **kw) -> ServingSettings:
    kw.setdefault("internal_api_key", INTERNAL["X-API-Key"])
    return ServingSettings(
        view_path=bank["view_path"], log_path=tmp_path / "log.sqlite", seed=1, **kw
    )


def _decide(
    client: TestClient, customer_id: str, channel: str = "app", slot: str = "home_banner", **kw
):
    return client.post(
        "/v1/decisions",
        json={"customer_id": customer_id, "slot": slot, "context": {"channel": channel, **kw}},
    )


@pytest.fixture()
def with_models(bank: dict, tmp_path: Path):
    app = create_app(bank["settings"], _serving(bank, tmp_path))
    with TestClient(app, headers=INTERNAL) as client:
        yield client


@pytest.fixture()
def no_models(bank: dict, tmp_path: Path):
    app = create_app(bank["settings"], _serving(bank, tmp_path), model_source=None)
    with TestClient(app, headers=INTERNAL) as client:
        yield client


def test_decision_with_champion_models(with_models: TestClient, bank: dict):
    view = bank["view"].set_index("customer_id")
    ok = view[~view["is_closed"] & ~view["is_accident_reported"]].index[:20]
    for customer_id in ok:
        r = _decide(with_models, customer_id, time="2026-02-05T10:00:00+09:00")
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["policy"] == "bandit" and not d["fallback"] and not d["cold_start"]
        assert d["model_versions"] == {"propensity": "1", "bandit": "1"}
        probs = {o["offer_id"]: o["probability"] for o in d["ranked"]}
        assert sum(probs.values()) == pytest.approx(1.0)
        if d["offer"]:
            assert d["probability"] == pytest.approx(probs[d["offer"]["offer_id"]])
        assert all(0 <= o["score"] <= 1 for o in d["ranked"])
        for e in d["excluded"]:  # a product held is a product the view counts as open
            if e["reason"] == "product_held":
                product = next(
                    o.product
                    for o in policy_from_offers(bank["settings"].catalog.read("offers")).offers
                    if o.offer_id == e["offer_id"]
                )
                assert view.loc[customer_id, f"n_{product}"] > 0


def test_closed_accident_and_consent_exclude_everything(no_models: TestClient, bank: dict):
    view = bank["view"]
    cases = {
        "closed_account": view.loc[view["is_closed"], "customer_id"],
        "accident_report": view.loc[
            view["is_accident_reported"] & ~view["is_closed"], "customer_id"
        ],
        "no_consent_push": view.loc[
            ~view["consent_push"] & ~view["is_closed"] & ~view["is_accident_reported"],
            "customer_id",
        ],
    }
    for reason, ids in cases.items():
        assert len(ids), f"the small bank has no {reason} customer"
        d = _decide(no_models, ids.iloc[0], channel="push").json()
        assert d["offer"] is None and d["ranked"] == [] and d["policy"] == "none"
        assert {e["reason"] for e in d["excluded"]} == {reason}


def test_cold_start_is_flagged(with_models: TestClient):
    d = _decide(with_models, "NEW-CUSTOMER-1").json()
    assert d["cold_start"] and d["offer"] is not None and d["policy"] == "bandit"
    pushed = _decide(with_models, "NEW-CUSTOMER-1", channel="push").json()
    assert pushed["offer"] is None and {e["reason"] for e in pushed["excluded"]} == {
        "no_consent_on_record"
    }


def test_rewards_are_idempotent_and_unknown_decisions_404(no_models: TestClient, bank: dict):
    d = _decide(no_models, bank["view"]["customer_id"].iloc[3]).json()
    first = no_models.post("/v1/rewards", json={"decision_id": d["decision_id"], "kind": "click"})
    again = no_models.post("/v1/rewards", json={"decision_id": d["decision_id"], "kind": "click"})
    conv = no_models.post(
        "/v1/rewards",
        json={"decision_id": d["decision_id"], "kind": "conversion", "value_krw": 50000},
    )
    assert (
        first.json()["stored"] is True and again.json()["stored"] is False and conv.json()["stored"]
    )
    assert (
        no_models.post("/v1/rewards", json={"decision_id": "nope", "kind": "click"}).status_code
        == 404
    )


@pytest.mark.parametrize(
    "body, field",
    [
        ({"slot": "home_banner", "context": {"channel": "app"}}, "customer_id"),
        ({"customer_id": "C1", "slot": "sidebar", "context": {"channel": "app"}}, "slot"),
        ({"customer_id": "C1", "slot": "home_banner", "context": {"channel": "fax"}}, "channel"),
        (
            {
                "customer_id": "C1",
                "slot": "home_banner",
                "context": {"channel": "app", "time": "yesterday"},
            },
            "time",
        ),
        (
            {"customer_id": "C1", "slot": "home_banner", "context": {"channel": "app"}, "extra": 1},
            "extra",
        ),
    ],
)
def test_invalid_request_is_422_naming_the_field(no_models: TestClient, body: dict, field: str):
    r = no_models.post("/v1/decisions", json=body)
    assert r.status_code == 422
    assert any(field in err["loc"] for err in r.json()["detail"])


def test_fast_path_answers_exactly_like_the_fastapi_route(bank: dict, tmp_path: Path):
    """Valid decisions skip FastAPI's request machinery; the answer is the route's (same seed, same
    requests: same choices), and whatever the fast path does not handle reaches the route."""
    answers, fast = [], []
    for use_fast in (True, False):
        app = create_app(
            bank["settings"], _serving(bank, tmp_path / str(use_fast)), fast_path=use_fast
        )
        with TestClient(app, headers=INTERNAL) as client:
            out = []
            for customer_id in [*bank["view"]["customer_id"].iloc[:15], "NEW-1"]:
                d = _decide(client, customer_id, time="2026-02-05T10:00:00+09:00").json()
                out.append({k: v for k, v in d.items() if k not in ("decision_id", "created_at")})
            body = {"customer_id": "C1", "slot": "home_banner", "context": {"channel": "app"}}
            out.append(
                [
                    client.post(
                        "/v1/decisions",
                        content=b"{not json",
                        headers={"Content-Type": "application/json"},
                    ).status_code,
                    client.post(
                        "/v1/decisions",
                        content=b'{"customer_id": 3}',
                        headers={"Content-Type": "application/json"},
                    ).json()["detail"][0]["loc"],
                    client.post("/v1/decisions", data=body).status_code,  # a form, not JSON
                    client.post(
                        "/v1/decisions", json=body, headers={"Content-Type": "text/plain"}
                    ).status_code,
                ]
            )
            answers.append(out)
            fast.append(app.fast_path.handled if app.fast_path else 0)
    assert answers[0] == answers[1]
    assert answers[0][-1][0] == 422 and answers[0][-1][1] == ["body", "customer_id"]
    assert fast == [16, 0]


def test_api_key_protects_v1(bank: dict, tmp_path: Path):
    app = create_app(
        bank["settings"], _serving(bank, tmp_path, api_key="s3cret"), model_source=None
    )
    with TestClient(app) as client:
        body = {"customer_id": "C1", "slot": "home_banner", "context": {"channel": "app"}}
        assert client.post("/v1/decisions", json=body).status_code == 401
        assert (
            client.post("/v1/decisions", json=body, headers={"X-API-Key": "wrong"}).status_code
            == 401
        )
        assert (
            client.post("/v1/decisions", json=body, headers={"X-API-Key": "s3cret"}).status_code
            == 200
        )
        assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_decisions_and_fallbacks(no_models: TestClient, bank: dict):
    for customer_id in bank["view"]["customer_id"].iloc[:5]:
        _decide(no_models, customer_id)
    text = no_models.get("/metrics").text
    assert 'nextoffer_http_requests_total{route="/v1/decisions",status="200"} 5.0' in text
    assert 'nextoffer_fallbacks_total{reason="no_model"} 5.0' in text
    assert "nextoffer_http_request_seconds_bucket" in text and "nextoffer_decisions_total{" in text


def test_event_marks_an_offer_and_the_fallback_ranks_it_first(bank: dict, tmp_path: Path):
    view = bank["view"]
    customer_id = view.loc[~view["is_closed"] & ~view["is_accident_reported"], "customer_id"].iloc[
        0
    ]
    app = create_app(
        bank["settings"],
        _serving(bank, tmp_path, bandit_model=None, propensity_model=None),
        model_source=None,
    )
    with TestClient(app, headers=INTERNAL) as client:
        base = {"customer_id": customer_id, "channel": "app"}
        r1 = client.post(
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
        r2 = client.post(
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
        assert r1.json()["actions"] == []
        actions = r2.json()["actions"]
        assert [(a["rule"], a["action"]) for a in actions] == [
            ("fx_remit_large", {"type": "mark_offer", "product": "fx"})
        ]
        late = client.post(
            "/v1/events",
            json={
                **base,
                "event_id": 3,
                "ts": "2026-02-05T09:00:00",
                "source": "click",
                "page": "home",
                "action": "view",
            },
        )
        assert late.json()["late"] is True
        d = _decide(client, customer_id, time="2026-02-05T10:10:00").json()
        fx = [o["offer_id"] for o in d["ranked"] if o["product"] == "fx"]
        assert fx and d["ranked"][0]["offer_id"] == fx[0]


# --- fallbacks --------------------------------------------------------------------------------


def test_fallback_no_model_uses_the_default_order(no_models: TestClient, bank: dict):
    d = _decide(no_models, bank["view"]["customer_id"].iloc[1]).json()
    assert d["policy"] == "default_order" and d["fallback"] and d["fallback_reason"] == "no_model"
    assert d["model_versions"] == {}
    assert no_models.get("/readyz").json()["detail"]["mode"] == "default_order"


def test_fallback_registry_down_at_start(bank: dict, tmp_path: Path, monkeypatch):
    from src.serving.service import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast instead of backing off
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = MlflowModelSource(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    app = create_app(bank["settings"], _serving(bank, tmp_path), model_source=down)
    with TestClient(app, headers=INTERNAL) as client:
        ready = client.get("/readyz").json()["detail"]
        assert ready["model_versions"] == {} and set(ready["model_errors"]) == {
            "propensity",
            "bandit",
        }
        d = _decide(client, bank["view"]["customer_id"].iloc[1]).json()
        assert d["policy"] == "default_order" and d["fallback_reason"] == "no_model"
        assert (
            'nextoffer_model_refresh_total{event="failed",model="bandit"}'
            in client.get("/metrics").text
        )


class FlakySource:
    """The real registry until ``down`` is set; then every call fails like an unreachable server."""

    def __init__(self, inner: MlflowModelSource) -> None:
        self.inner, self.down = inner, False

    def champion_version(self, name: str) -> str | None:
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.inner.champion_version(name)

    def load(self, name: str, version: str):
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.inner.load(name, version)


def test_registry_down_later_keeps_the_last_good_models_and_alias_change_swaps(
    bank: dict, tmp_path: Path
):
    from benchmarks.harness.serving_fixtures import (
        PROPENSITY_NAME,
        ViewLogistic,
        log_propensity,
        register,
    )

    settings = bank["settings"]
    source = FlakySource(MlflowModelSource(settings.tracking_uri))
    app = create_app(settings, _serving(bank, tmp_path), model_source=source)
    customer_id = bank["view"]["customer_id"].iloc[2]
    with TestClient(app, headers=INTERNAL) as client:
        manager = app.state.service.manager
        before = manager.current
        source.down = True
        after = manager.refresh()
        assert after.propensity is before.propensity and after.bandit is before.bandit
        assert set(after.errors) == {"propensity", "bandit"}
        assert _decide(client, customer_id).json()["policy"] == "bandit"

        source.down = False  # a better propensity model becomes champion: swapped in whole
        uri = log_propensity(settings, bank["view"], ViewLogistic(base=-1.0))
        version = register(settings, uri, PROPENSITY_NAME, score=0.9)
        swapped = manager.refresh()
        assert swapped.propensity.version == version != before.propensity.version
        assert swapped.bandit is before.bandit and not swapped.errors
        d = _decide(client, customer_id).json()
        assert d["model_versions"]["propensity"] == version


def test_fallback_when_the_bandit_raises(with_models: TestClient, bank: dict):
    manager = with_models.app.state.service.manager

    def broken(context, candidates):
        raise RuntimeError("vw exploded")

    manager.current = replace(manager.current, bandit=BanditModel("1", broken, ()))
    d = _decide(with_models, bank["view"]["customer_id"].iloc[4]).json()
    assert (
        d["policy"] == "propensity_greedy" and d["fallback_reason"] == "bandit_error" and d["offer"]
    )
    assert (
        'nextoffer_fallbacks_total{reason="bandit_error"} 1.0' in with_models.get("/metrics").text
    )


def test_a_propensity_model_with_bad_output_is_not_swapped_in(bank: dict, tmp_path: Path):
    class Garbage:
        metadata = None

        def predict(self, rows):
            return pd.DataFrame({"loan": [float("nan")] * len(rows)})

    class Source:
        def champion_version(self, name):
            return "7"

        def load(self, name, version):
            return Garbage()

    app = create_app(
        bank["settings"], _serving(bank, tmp_path, bandit_model=None), model_source=Source()
    )
    with TestClient(app, headers=INTERNAL) as client:
        assert client.app.state.service.manager.current.propensity is None
        assert "propensity" in client.get("/readyz").json()["detail"]["model_errors"]
        assert (
            _decide(client, bank["view"]["customer_id"].iloc[0]).json()["policy"] == "default_order"
        )


def test_unloggable_decision_shows_nothing_and_frees_the_contact(no_models: TestClient, bank: dict):
    state = no_models.app.state.service

    class DownLog:
        async def append_decision(self, record):
            raise sqlite3.OperationalError("disk I/O error")

    real, state.log = state.log, DownLog()
    try:
        customer_id = bank["view"]["customer_id"].iloc[5]
        d = _decide(no_models, customer_id).json()
        assert d["offer"] is None and d["fallback_reason"] == "log_unavailable"
        today = state.engine.now().toordinal()
        assert state.caps.usage(customer_id, "app", today).channel_day == 0
    finally:
        state.log = real


def test_engine_error_is_answered_not_raised(no_models: TestClient, bank: dict, monkeypatch):
    engine = no_models.app.state.service.engine
    monkeypatch.setattr(engine, "decide", lambda request, prefetched=None, models=None: 1 / 0)
    r = _decide(no_models, bank["view"]["customer_id"].iloc[0])
    assert r.status_code == 200 and r.json()["fallback_reason"] == "internal_error"


# --- the log -------------------------------------------------------------------------------


def test_export_log_feeds_off_policy_evaluation(bank: dict, tmp_path: Path):
    from src.models.ope import read_log
    from src.models.ope_log import evaluate_log
    from src.serving.service import export_log

    serving = _serving(bank, tmp_path)
    app = create_app(bank["settings"], serving)
    with TestClient(app, headers=INTERNAL) as client:
        for i, customer_id in enumerate(bank["view"]["customer_id"].iloc[:40]):
            d = _decide(client, customer_id).json()
            if d["offer"] and i % 3 == 0:
                client.post("/v1/rewards", json={"decision_id": d["decision_id"], "kind": "click"})
    paths = export_log(bank["settings"], tmp_path / "export", serving)
    log = read_log(paths["evaluation_log"])
    assert len(log) > 10 and log["reward"].sum() > 0
    assert {"action", "prob", "reward", "candidates", "slot"} <= set(log.columns)
    table = evaluate_log(log, {"uniform": "uniform"}, reward_model=False)
    assert set(table["estimator"]) >= {"ips", "snips"}
    decisions = pd.read_parquet(paths["decisions"])
    assert len(decisions) == 40 and decisions["decision_id"].is_unique


# --- the OpenAPI contract ----------------------------------------------------------------------


def test_openapi_contract_with_schemathesis(bank: dict, tmp_path: Path):
    """Generated requests for every operation: no 5xx, responses match the published schema."""
    import schemathesis

    app = create_app(bank["settings"], _serving(bank, tmp_path), model_source=None)
    with TestClient(app):  # runs the lifespan; schemathesis then calls the same app in process
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures: list[tuple] = []
        for operation in schema.get_all_operations():
            _check_operation(operation.ok(), failures)
        assert failures == []


def _check_operation(op, failures: list[tuple]) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=100 if os.environ.get("CI") else 25,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy())
    def check(case) -> None:
        from schemathesis.specs.openapi.checks import positive_data_acceptance

        from src.serving.app import SEMANTIC_422

        response = case.call()
        if response.status_code >= 500:
            failures.append((op.label, response.status_code, response.text[:200]))
        semantic = (
            response.status_code == 422
            and {e["type"] for e in response.json()["detail"]} <= SEMANTIC_422
        )  # valid by the schema, refused for the server's clock or log
        case.validate_response(
            response, excluded_checks=[positive_data_acceptance] if semantic else []
        )

    check()
