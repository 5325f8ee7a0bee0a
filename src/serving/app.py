"""The FastAPI app of the offer slot: ``create_app(settings)``; state lives in the lifespan.

Nothing is loaded at import or in ``create_app``: the lifespan loads the customer view, the
policy file, the detection rules and the decision log (rebuilding the contact caps from it),
then tries the champion models once and keeps polling their aliases. The service is ready
without models — it then decides with the configured fallback order and says so.

Failure contract: a valid request never gets a 5xx. A decision that fails inside the engine, or
cannot be logged, is answered with "show nothing" and the reason, never with an error; the only
5xx left is a reward that cannot be made durable (503: the client must retry, or it is lost).

Hot path: a valid ``POST /v1/decisions`` is answered by :class:`DecisionFastPath` in front of
FastAPI (same handler, same body; anything else goes through the route), the engine reuses what
it computed for the customer before (``DecisionEngine.audience``, the VW example pieces in
``models.VwScorer``), the response is serialized once, and the server process freezes its
start-up heap out of the garbage collector's way (``create_app(tune_gc=True)``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic_core import to_json

from src.contact.caps import ContactCaps
from src.serving.config import PolicyConfig, ServingSettings, resolve_policy
from src.serving.customers import CustomerStore, OnlineFlags
from src.serving.engine import DecisionEngine, bandit_context, naive_ns
from src.serving.events import EventProcessor
from src.serving.log import DecisionLog, DecisionRecord, RewardRecord, SqliteDecisionLog
from src.serving.metrics import ServiceMetrics, service_metrics
from src.serving.models import BanditModel, MlflowModelSource, ModelManager, ModelSource
from src.serving.schemas import (
    DecisionRequest,
    DecisionResponse,
    EventRequest,
    EventResponse,
    ExplanationResponse,
    Health,
    RewardRequest,
    RewardResponse,
)
from src.settings import Settings

log = logging.getLogger("nextoffer.serving")
ROUTES = ("/v1/decisions", "/v1/rewards", "/v1/events", "/healthz", "/readyz", "/metrics")
_DEFAULT_SOURCE: Any = object()
GC_THRESHOLDS = (
    20_000,
    50,
    100,
)  # gen0 allocations, gen1 and gen2 collection ratios (default 700, 10, 10)


@dataclass
class ServiceState:
    """Everything a request handler touches, built once in the lifespan."""

    serving: ServingSettings
    policy: PolicyConfig
    store: CustomerStore
    flags: OnlineFlags
    caps: ContactCaps
    manager: ModelManager
    engine: DecisionEngine
    events: EventProcessor
    log: DecisionLog
    metrics: ServiceMetrics
    started_at: float
    counters: dict[tuple[str, ...], Any] = field(default_factory=dict)  # metric children by labels


def build_state(
    settings: Settings,
    serving: ServingSettings,
    metrics: ServiceMetrics,
    source: ModelSource | None,
    clock: Callable[[], datetime] | None = None,
) -> ServiceState:
    """Load view, policy, rules and log; rebuild the caps (blocking: run it off the event loop)."""
    if serving.view_path is None:  # resolved() fills it in; a bare ServingSettings has none
        raise ValueError("serving settings without a customer view: call .resolved(settings)")
    store = CustomerStore.from_parquet(serving.view_path)
    policy = resolve_policy(serving, settings)
    flags = OnlineFlags()
    caps = ContactCaps(policy)

    def on_event(event: str, kind: str) -> None:
        metrics.model_events.labels(kind, event).inc()

    manager = ModelManager(
        source,
        store,
        propensity_name=serving.propensity_model,
        bandit_name=serving.bandit_model,
        on_event=on_event,
    )
    engine = DecisionEngine(
        policy,
        store,
        flags,
        caps,
        manager,
        timezone=serving.timezone,
        seed=serving.seed,
        clock=clock,
    )
    manager.probe = _bandit_probe(engine)

    def on_commit(n: int, seconds: float) -> None:
        metrics.log_batch.observe(n)
        metrics.log_commit.observe(seconds)

    if serving.log_path is None:  # resolved() fills it in
        raise ValueError("serving settings without a decision log: call .resolved(settings)")
    decision_log = SqliteDecisionLog(
        serving.log_path, serving.sqlite_synchronous, serving.commit_max_batch, on_commit=on_commit
    )
    today = engine.now().toordinal()
    n = caps.load(decision_log.recent_contacts(today - 7), today)
    log.info(
        "customer view: %d customers as of %s; %d contacts of the last 7 days from the log",
        len(store),
        store.as_of,
        n,
    )
    events = EventProcessor(serving.rules_dir, flags, policy.mark_ttl_hours)
    return ServiceState(
        serving,
        policy,
        store,
        flags,
        caps,
        manager,
        engine,
        events,
        decision_log,
        metrics,
        time.time(),
    )


def _bandit_probe(engine: DecisionEngine) -> Callable[[BanditModel], None]:
    """A bandit must answer one realistic request before it replaces the current one."""

    def probe(bandit: BanditModel) -> None:
        slot, offers = next(iter(engine.by_slot.items()))
        row = (
            engine.store.row(0, engine.eligibility_columns + bandit.context_columns)
            if len(engine.store)
            else None
        )
        usage = engine.caps.usage("__probe__", "app", engine.now().toordinal())
        context = bandit_context(row, engine.now(), "app", usage, None, ())
        candidates = [
            {"offer_id": o.offer_id, "product": o.product, "slot": slot, "creative": o.creative}
            for o in offers
        ]
        if bandit.check is not None:
            bandit.check({**context, "seen": {offers[0].offer_id: 1}}, candidates)
        if bandit.scorer is not None:
            bandit.scorer.check_split(_split_cases(engine, bandit, offers), candidates)
        bandit.pmf(context, candidates)

    return probe


def _split_cases(
    engine: DecisionEngine, bandit: BanditModel, offers: list
) -> list[tuple[dict, dict, tuple]]:
    """Requests the cached assembly of VW examples must reproduce exactly before it is used:
    customers across the view (and a cold start) x times, channels, exposures, seen offers and
    online flags (rule columns of the bandit and others)."""
    n = len(engine.store)
    positions: list[int | None] = (
        [*sorted({round(i * (n - 1) / 15) for i in range(16)})] if n else []
    )
    positions.append(None)
    columns = engine.eligibility_columns + bandit.context_columns
    rules = tuple(getattr(getattr(bandit.scorer, "spec", None), "rules", ()))
    flag_sets = [(), ("mark_loan",), tuple(sorted({*rules[:2], "rule_probe"}))]
    channels = list(engine.policy.consent_by_channel) or ["app"]
    seen = {offers[0].offer_id: 1, offers[-1].offer_id: 3} if offers else {}
    cases = []
    for k, position in enumerate(positions):
        customer = {} if position is None else engine.store.row(position, columns)
        for j, name in enumerate(bandit.propensity_features):
            customer[name] = round(0.05 + 0.9 * ((k + j) % 7) / 7, 4)
        for hour, weekday, exposures, s, flags in (
            (k % 24, k % 7, 0, {}, ()),
            (23 - k % 24, 6, 4, seen, flag_sets[1]),
            (12, 2, 1, seen, flag_sets[2]),
        ):
            if bandit.scorer is None or not bandit.scorer.flags_supported(flags):
                continue
            request = {
                "hour": hour,
                "weekday": weekday,
                "channel": channels[k % len(channels)],
                "exposures_7d": exposures,
                "seen": s,
            }
            cases.append((customer, request, flags))
    return cases


class MetricsMiddleware:
    """Request counts and latency per route (pure ASGI: no per-request task or body copy)."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._latency = {r: metrics.latency.labels(r) for r in (*ROUTES, "other")}
        self._counts: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope["path"] if scope["path"] in self._latency else "other"
            self._latency[route].observe(time.perf_counter() - started)
            counter = self._counts.get((route, status))
            if counter is None:
                counter = self._counts[(route, status)] = self.metrics.requests.labels(
                    route, str(status)
                )
            counter.inc()


def create_app(
    settings: Settings | None = None,
    serving: ServingSettings | None = None,
    *,
    model_source: ModelSource | None = _DEFAULT_SOURCE,
    clock: Callable[[], datetime] | None = None,
    fast_path: bool | None = None,
    tune_gc: bool = False,
) -> FastAPI:
    """The service. ``model_source``: default the MLflow registry of ``settings``; None: no models
    (fallback order only); a fake in tests. ``clock``: aware "now" (tests of day boundaries).
    ``fast_path``: answer valid decision requests with :class:`DecisionFastPath` (default: the
    ``fast_path`` setting).
    ``tune_gc`` (the server process, not tests): once loaded, move everything into the garbage
    collector's permanent generation (``gc.freeze``) and collect the young generation less often,
    so no request pays for a full collection over the view's millions of objects."""
    settings = settings or Settings()
    serving = (serving or settings.serving).resolved(settings)
    source = (
        MlflowModelSource(settings.tracking_uri, serving.model_alias)
        if model_source is _DEFAULT_SOURCE
        else model_source
    )
    metrics = service_metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await asyncio.to_thread(build_state, settings, serving, metrics, source, clock)
        app.state.service = state
        await _refresh_models(state)
        if tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        poller = asyncio.create_task(_poll(state), name="model-poller")
        try:
            yield
        finally:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
            await asyncio.to_thread(state.log.close)

    app = OfferSlotApp(
        title="nextoffer offer slot",
        version="1",
        description="Next best offer decisions, rewards and behaviour events.",
        lifespan=lifespan,
    )
    use_fast_path = serving.fast_path if fast_path is None else fast_path
    if use_fast_path:
        app.fast_path = DecisionFastPath(serving, metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(_v1_router(serving))
    app.include_router(_ops_router(metrics))
    return app


async def _refresh_models(state: ServiceState) -> None:
    try:
        await asyncio.wait_for(
            asyncio.to_thread(state.manager.refresh), state.serving.model_load_timeout_seconds
        )
    except TimeoutError:
        log.warning(
            "model refresh still running after %.0fs; serving with what is loaded",
            state.serving.model_load_timeout_seconds,
        )
    versions = state.manager.current.versions()
    for kind in ("propensity", "bandit"):
        state.metrics.model_version.labels(kind).set(float(versions.get(kind, 0) or 0))


async def _poll(state: ServiceState) -> None:
    """Alias checks and housekeeping; an exception here must never stop the loop."""
    while True:
        await asyncio.sleep(state.serving.model_poll_seconds)
        try:
            await _refresh_models(state)
            now = state.engine.now()
            state.caps.prune(now.toordinal())
            state.flags.prune(naive_ns(now))
        except Exception:
            log.exception("model poll failed")


def _service(request: Request) -> ServiceState:
    return request.app.state.service


def _api_key_check(serving: ServingSettings) -> Callable[..., Awaitable[None]]:
    header = APIKeyHeader(
        name=serving.api_key_header,
        auto_error=False,
        description="Required when the service is started with an API key.",
    )
    expected = serving.api_key.get_secret_value().encode() if serving.api_key else None

    async def check(key: str | None = Security(header)) -> None:  # async: no threadpool hop
        if expected is not None and (
            key is None or not secrets.compare_digest(key.encode(), expected)
        ):
            raise HTTPException(401, detail="missing or wrong API key")

    return check


class ErrorDetail(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "API key missing or wrong"}
}


def _v1_router(serving: ServingSettings) -> APIRouter:
    protected = serving.api_key is not None  # no key configured: no check, nothing in the spec
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(_api_key_check(serving))] if protected else [],
        responses=_ERRORS if protected else {},
    )

    @router.post(
        "/decisions", response_model=DecisionResponse, summary="Choose the offer for a slot"
    )
    async def decide(body: DecisionRequest, request: Request) -> Response:
        return Response(
            content=await _decision(_service(request), body), media_type="application/json"
        )

    @router.post(
        "/rewards",
        response_model=RewardResponse,
        summary="Record a click or conversion",
        responses={
            404: {"model": ErrorDetail, "description": "Unknown decision id"},
            503: {"model": ErrorDetail, "description": "Log unavailable: retry"},
        },
    )
    async def reward(body: RewardRequest, request: Request) -> RewardResponse:
        state = _service(request)
        record = RewardRecord(
            body.decision_id,
            body.kind,
            body.value_krw,
            state.engine.now().isoformat(timespec="microseconds"),
        )
        try:
            outcome = await state.log.append_reward(record)
        except Exception as error:
            log.exception("reward for %s could not be logged", body.decision_id)
            state.metrics.log_failures.labels("reward").inc()
            raise HTTPException(
                503, detail="reward log unavailable; retry", headers={"Retry-After": "1"}
            ) from error
        state.metrics.rewards.labels(body.kind, outcome).inc()
        if outcome == "unknown_decision":
            raise HTTPException(404, detail="unknown decision_id")
        return RewardResponse(
            decision_id=body.decision_id, kind=body.kind, stored=outcome == "stored"
        )

    @router.get(
        "/explanations/{customer_id}",
        response_model=ExplanationResponse,
        summary="Why the champion propensity model scores a customer as it does",
        responses={404: {"model": ErrorDetail, "description": "Unknown customer or no model"}},
    )
    async def explain(customer_id: str, request: Request, top: int = 5) -> ExplanationResponse:
        state = _service(request)
        scores = state.manager.current.propensity
        position = state.store.position(customer_id)
        if position is None:
            raise HTTPException(404, detail=f"customer_id {customer_id!r} not in the view")
        if scores is None or scores.explainer is None:
            raise HTTPException(404, detail="no explainable propensity model loaded")
        rows = state.store.frame.iloc[[position]]
        reasons = await asyncio.to_thread(scores.reasons, rows, max(1, min(top, 20)))
        return ExplanationResponse(
            customer_id=customer_id, model_version=scores.version, reasons=reasons
        )

    @router.post(
        "/events", response_model=EventResponse, summary="Feed one click or transaction event"
    )
    async def event(body: EventRequest, request: Request) -> EventResponse:
        state = _service(request)
        late, actions = state.events.process(body)
        tz = state.engine.tz
        for a in actions:
            state.metrics.detections.labels(a.rule).inc()
            a.fired_at = a.fired_at.replace(tzinfo=tz)
        return EventResponse(event_id=body.event_id, late=late, actions=actions)

    return router


async def _decision(state: ServiceState, body: DecisionRequest) -> bytes:
    """The body of ``POST /v1/decisions`` (the route and :class:`DecisionFastPath` share it):
    decide, make the decision durable, count it; never raises for a valid request."""
    engine = state.engine
    try:
        record = engine.decide(body)
    except Exception:
        log.exception("decision failed for customer %s", body.customer_id)
        record = engine.without_offer(body, "internal_error")
    try:
        await state.log.append_decision(record)
    except Exception:
        log.exception("decision %s could not be logged", record.decision_id)
        state.metrics.log_failures.labels("decision").inc()
        if record.offer_id:
            state.caps.release(record.customer_id, record.channel, record.day, record.offer_id)
        record = engine.without_offer(body, "log_unavailable", base=record)
    _count_decision(state, record)
    return decision_json(record, engine)


FAST_PATH_MAX_BODY = 16_384  # bytes; a decision request is ~150


class DecisionFastPath:
    """``POST /v1/decisions`` without FastAPI's per-request machinery (middleware stack, routing,
    dependency solving, a Request object, ``json.loads`` then validation): the body is validated
    by pydantic-core straight from bytes against the same :class:`DecisionRequest` and answered
    by the same :func:`_decision`. Whatever it is not sure about goes to the FastAPI route
    unchanged (the body replayed): service not ready, a content type other than JSON, no or a
    large Content-Length, a missing or wrong API key (-> 401), a body that does not validate
    (-> FastAPI's 422 naming the field). The route stays what OpenAPI publishes; the request
    count and latency metrics are kept here as the middleware would."""

    route = "/v1/decisions"

    def __init__(self, serving: ServingSettings, metrics: ServiceMetrics) -> None:
        self.key_header = serving.api_key_header.lower().encode()
        self.expected = serving.api_key.get_secret_value().encode() if serving.api_key else None
        self.latency = metrics.latency.labels(self.route)
        self.ok = metrics.requests.labels(self.route, "200")
        self.validate = DecisionRequest.model_validate_json
        self.handled = 0

    async def __call__(
        self, app: FastAPI, scope: MutableMapping[str, Any], receive: Callable, send: Callable
    ) -> Callable | None:
        """Answer the request and return None, or return the ``receive`` to hand it on with."""
        started = time.perf_counter()
        state = getattr(app.state, "service", None)
        if state is None:
            return receive
        length = key = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
            elif name == self.key_header:
                key = value
        if (
            not json_body
            or length is None
            or not length.isdigit()
            or int(length) > FAST_PATH_MAX_BODY
        ):
            return receive
        if self.expected is not None and (
            key is None or not secrets.compare_digest(key, self.expected)
        ):
            return receive
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away before sending its body
        body = message.get("body", b"")
        if message.get("more_body", False):
            chunks = [body]
            while message.get("more_body", False):
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        try:
            request = self.validate(body)
        except ValueError:
            return _replay(body, receive)
        content = await _decision(state, request)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        self.handled += 1
        self.latency.observe(time.perf_counter() - started)
        self.ok.inc()
        return None


def _replay(body: bytes, receive: Callable) -> Callable:
    """A ``receive`` that hands out ``body`` again, then whatever the client sends next."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OfferSlotApp(FastAPI):
    """The FastAPI app, with :class:`DecisionFastPath` in front of the decision route."""

    fast_path: DecisionFastPath | None = None

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable, send: Callable
    ) -> None:
        fast = self.fast_path
        if (
            fast is not None
            and scope["type"] == "http"
            and scope["path"] == fast.route
            and scope["method"] == "POST"
        ):
            handed_on = await fast(self, scope, receive, send)
            if handed_on is None:
                return
            receive = handed_on
        await super().__call__(scope, receive, send)


def _ops_router(metrics: ServiceMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: view, policy and log loaded",
        responses={503: {"model": Health}},
    )
    async def readyz(request: Request) -> Any:
        state: ServiceState | None = getattr(request.app.state, "service", None)
        if state is None:
            return Response(
                Health(status="starting").model_dump_json(),
                status_code=503,
                media_type="application/json",
            )
        models = state.manager.current
        return Health(
            status="ready",
            detail={
                "customers": len(state.store),
                "view_as_of": state.store.as_of,
                "offers": len(state.policy.offers),
                "model_versions": models.versions(),
                "model_errors": dict(models.errors),
                "mode": "bandit"
                if models.bandit
                else ("propensity_greedy" if models.propensity else "default_order"),
            },
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _count_decision(state: ServiceState, record: DecisionRecord) -> None:
    metrics, children = state.metrics, state.counters
    key = (record.slot, record.offer_id or "none", record.policy)
    counter = children.get(key)
    if counter is None:
        counter = children[key] = metrics.decisions.labels(*key)
    counter.inc()
    if record.fallback_reason:
        metrics.fallbacks.labels(record.fallback_reason).inc()
    if record.cold_start:
        metrics.cold_starts.inc()
    if record.excluded:
        for reason in set(record.excluded.values()):
            metrics.exclusions.labels(reason.split(":", 1)[0]).inc()


def decision_json(record: DecisionRecord, engine: DecisionEngine) -> bytes:
    """The :class:`DecisionResponse` body, built directly and serialized once by pydantic-core's
    encoder (validating our own output through the response model again would double the cost;
    the schemathesis test checks the body against the published schema)."""
    offers = engine.offers
    prob = dict(zip(record.candidates, record.pmf, strict=True))
    ranked = sorted(record.candidates, key=lambda o: (-prob[o], -(record.scores.get(o) or 0.0)))
    chosen = offers.get(record.offer_id) if record.offer_id else None
    body = {
        "decision_id": record.decision_id,
        "customer_id": record.customer_id,
        "slot": record.slot,
        "channel": record.channel,
        "offer": {
            "offer_id": chosen.offer_id,
            "product": chosen.product,
            "creative": chosen.creative,
        }
        if chosen
        else None,
        "probability": record.prob,
        "policy": record.policy,
        "ranked": [
            {
                "offer_id": o,
                "product": offers[o].product,
                "score": record.scores.get(o),
                "probability": prob[o],
            }
            for o in ranked
        ],
        "excluded": [{"offer_id": o, "reason": r} for o, r in record.excluded.items()],
        "model_versions": record.model_versions,
        "cold_start": record.cold_start,
        "fallback": record.fallback,
        "fallback_reason": record.fallback_reason,
        "created_at": datetime.fromisoformat(record.created_at)
        .replace(tzinfo=engine.tz)
        .isoformat(),
    }
    return to_json(body)
