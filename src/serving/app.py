"""The FastAPI app of the offer slot: ``create_app(settings)``; state lives in the lifespan.

Nothing is loaded at import or in ``create_app``: the lifespan loads the customer view, the
policy file, the detection rules and the decision log (rebuilding the contact caps from it),
then tries the champion models once and keeps polling their aliases. The service is ready
without models — it then decides with the configured fallback order and says so.

Failure contract: a valid request never gets a 5xx. A decision that fails inside the engine, or
cannot be logged, is answered with "show nothing" and the reason, never with an error; the only
5xx left is a reward that cannot be made durable (503: the client must retry, or it is lost).
Failures are logged once per cause and interval (:class:`~src.serving.metrics.FailureLog`).

Hostile input: every malformed body is a 422 naming the field, never a 500 — non-finite numbers
(``NaN``, ``Infinity``, ``1e999``) anywhere, bodies that are not UTF-8 JSON, times that would
overflow; a 422 echoes at most a short prefix of what it refuses (:func:`safe_errors`); bodies
over ``max_body_bytes`` get a 413 before they are read. The API key is read the same way on
every path (:class:`ApiKeys`: a key header sent twice counts as no key). Callers without the
internal key get decisions without reasons (``DecisionResponse.explained``); ``protect_ops``
puts ``/metrics`` and the API docs behind the internal key.

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
import re
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from src.contact.caps import ContactCaps
from src.contact.inbox import InAppInbox
from src.contact.store import ContactStore
from src.contact.triggers import DetectionRecord, SpooledSink
from src.serving.config import PolicyConfig, ServingSettings, resolve_policy
from src.serving.customer_store_shared import (
    FileViewSource,
    PinnedView,
    PostgresViewSource,
    ViewManifest,
    ViewSource,
)
from src.serving.customers import CustomerStore, OnlineFlags
from src.serving.detection_state import SharedStateUnavailable
from src.serving.engine import DecisionEngine, bandit_context, naive_ns
from src.serving.events import EventProcessor, EventTimeError
from src.serving.log import (
    DecisionLog,
    DecisionRecord,
    LogHealth,
    RewardRecord,
    SqliteDecisionLog,
)
from src.serving.metrics import FailureLog, ServiceMetrics, service_metrics
from src.serving.models import (
    BanditModel,
    MlflowModelSource,
    ModelManager,
    ModelSet,
    ModelSource,
    VwScorer,
)
from src.serving.online_learning import OnlineBanditSource, OnlineLearning
from src.serving.schemas import (
    CUSTOMER_ID_PATTERN,
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
_CANONICAL_ID = re.compile(CUSTOMER_ID_PATTERN.rstrip("$").replace("+", "{1,64}") + "$")
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
    views: ViewSource | None = None  # where the served view is published (switched when it moves)
    manifest: ViewManifest | None = None  # the publication served now
    view_error: str | None = None  # why the last published view could not be switched to
    store_unreachable: str | None = None  # the view's store could not be read at the last poll
    source: ModelSource | None = None
    clock: Callable[[], datetime] | None = None
    online: OnlineLearning | None = None  # the bandit learning from rewards (shared_state_url)
    detections: SpooledSink | None = None  # where detections go for trigger campaigns
    failures: FailureLog = field(default_factory=lambda: FailureLog(log, 60.0))


def build_state(
    settings: Settings,
    serving: ServingSettings,
    metrics: ServiceMetrics,
    source: ModelSource | None,
    clock: Callable[[], datetime] | None = None,
    views: ViewSource | None = None,
) -> ServiceState:
    """Load view, policy, rules and log; rebuild the caps (blocking: run it off the event loop).

    ``views``: where the served view is published (default: the settings' view file, pinned)."""
    views = views or view_source(settings, serving, follow=False)
    manifest = views.manifest()
    if manifest is None:
        raise FileNotFoundError(
            "no customer view published: run `nextoffer publish-view --as-of DATE`"
        )
    store = views.open(manifest)
    index = getattr(store, "index", None)
    unreachable = (
        sum(1 for c in index if not _CANONICAL_ID.fullmatch(c)) if isinstance(index, dict) else 0
    )
    if unreachable:
        log.warning(
            "%d customer ids of the view are not in the API's canonical form (%s, at most 64): "
            "no request can name them",
            unreachable,
            CUSTOMER_ID_PATTERN,
        )
    policy = resolve_policy(serving, settings)
    flags, detector = shared_detection(serving, policy)
    caps = ContactCaps(policy)
    contact_store = open_contact_store(serving)
    manager, engine = _generation(
        serving,
        metrics,
        source,
        clock,
        policy,
        store,
        flags,
        caps,
        contact_store=contact_store,
        inbox=open_inbox(contact_store),
    )

    def on_commit(n: int, seconds: float) -> None:
        metrics.log_batch.observe(n)
        metrics.log_commit.observe(seconds)

    decision_log = open_log(serving, on_commit)
    today = engine.now().toordinal()
    # caps counted in the process start from the log; a shared store keeps its own counts
    n = caps.load(decision_log.recent_contacts(today - 7), today) if contact_store is None else 0
    log.info(
        "customer view: %d customers as of %s; %d contacts of the last 7 days from the log",
        len(store),
        store.as_of,
        n,
    )
    events = EventProcessor(
        serving.rules_dir,
        flags,
        policy.mark_ttl_hours,
        timezone=serving.timezone,
        max_skew_seconds=serving.event_max_skew_seconds,
        partitions=serving.event_partitions,
        clock=clock,
        detector=detector,
    )
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
        failures=FailureLog(log, serving.error_log_interval_seconds, metrics.failures),
        views=views,
        manifest=manifest,
        source=source,
        clock=clock,
        online=online_learning(settings, serving, source),
        detections=detection_sink(serving),
    )


def detection_sink(serving: ServingSettings) -> SpooledSink | None:
    """The durable detection queue trigger campaigns read (``detections_url``), behind a local
    spool for outages; None when not configured."""
    if serving.detections_url is None:
        return None
    from src.contact.triggers import DetectionQueue

    url, schema = serving.detections_url.get_secret_value(), serving.detections_schema
    timeout = serving.backend_timeout_seconds
    assert serving.detections_spool is not None  # resolved() fills it in
    return SpooledSink(lambda: DetectionQueue.open(url, schema, timeout), serving.detections_spool)


def online_learning(
    settings: Settings, serving: ServingSettings, source: ModelSource | None
) -> OnlineLearning | None:
    """The online learner's replica side, when ``online_learning`` is on."""
    if not serving.online_learning:
        return None
    if not serving.shared_state_url or not serving.bandit_model:
        raise ValueError("online_learning needs shared_state_url and bandit_model")
    import redis

    from src.models.bandit import BanditConfig

    inner = source.inner if isinstance(source, OnlineBanditSource) else source
    return OnlineLearning(
        redis.Redis.from_url(serving.shared_state_url, socket_timeout=2),
        serving.shared_state_prefix,
        inner,
        serving.bandit_model,
        reward_window_s=serving.online_reward_window_seconds,
        publish_every=serving.online_publish_every,
        lease_s=max(30.0, 3 * serving.model_poll_seconds),
        reward_of=BanditConfig.of(settings.bandit).reward_of,
    )


def shared_detection(serving: ServingSettings, policy: PolicyConfig) -> tuple[OnlineFlags, Any]:
    """(flags, detector): in Redis when ``shared_state_url`` is set (every replica sees a
    detection made by another), else in process (the detector then built by EventProcessor)."""
    if not serving.shared_state_url:
        return OnlineFlags(), None
    import redis

    from src.features.detection import load_rules
    from src.serving.detection_state import RedisDetector, RedisFlags

    client = redis.Redis.from_url(serving.shared_state_url, socket_timeout=2)
    prefix = serving.shared_state_prefix
    flags = RedisFlags(client, prefix, int(policy.mark_ttl_hours * 3600) + 86_400)
    detector = RedisDetector(
        client,
        prefix,
        load_rules(serving.rules_dir),
        allowed_lateness_seconds=serving.event_allowed_lateness_seconds,
    )
    return flags, detector


def view_source(settings: Settings, serving: ServingSettings, follow: bool) -> ViewSource:
    """PostgreSQL when ``customer_store_url`` is set; else the catalog's published view when
    ``follow`` (the view file was not pinned by a setting), else the view file, pinned."""
    if serving.customer_store_url:
        return PostgresViewSource(
            serving.customer_store_url, serving.customer_store_schema, serving.customer_cache_size
        )
    if serving.view_path is None:  # resolved() fills it in; a bare ServingSettings has none
        raise ValueError("serving settings without a customer view: call .resolved(settings)")
    if follow:
        return FileViewSource(settings.catalog, serving.view_path)
    return PinnedView(serving.view_path)


def _generation(
    serving: ServingSettings,
    metrics: ServiceMetrics,
    source: ModelSource | None,
    clock: Callable[[], datetime] | None,
    policy: PolicyConfig,
    store: CustomerStore,
    flags: OnlineFlags,
    caps: ContactCaps,
    carried: ModelSet | None = None,
    contact_store: ContactStore | None = None,
    inbox: InAppInbox | None = None,
) -> tuple[ModelManager, DecisionEngine]:
    """The model manager and engine over one view (a new view gets new ones: propensity scores
    and every cache are by view position). ``carried``: the bandit of the previous view, kept."""

    def on_event(event: str, kind: str) -> None:
        metrics.model_events.labels(kind, event).inc()

    manager = ModelManager(
        source,
        store,
        propensity_name=serving.propensity_model,
        bandit_name=serving.bandit_model,
        on_event=on_event,
    )
    if carried is not None and carried.bandit is not None:
        manager.current = ModelSet(bandit=_rebound(carried.bandit))
    engine = DecisionEngine(
        policy,
        store,
        flags,
        caps,
        manager,
        timezone=serving.timezone,
        seed=serving.seed,
        clock=clock,
        contact_store=contact_store,
        inbox=inbox,
    )
    manager.probe = _bandit_probe(engine)
    return manager, engine


def _rebound(bandit: BanditModel) -> BanditModel:
    """The same bandit with fresh caches (its VW example pieces are cached by view position)."""
    if bandit.scorer is None:
        return bandit
    scorer = VwScorer(bandit.scorer.bandit)
    scorer.fast, scorer.split = bandit.scorer.fast, bandit.scorer.split
    return replace(bandit, pmf_fn=scorer.pmf, check=scorer.check, scorer=scorer)


def switch_view(state: ServiceState) -> bool:
    """Serve the published view if it moved: open it, load its models, then swap the engine in
    one assignment (a request reads ``state.engine`` once). Blocking: call from a thread.
    Any failure keeps the current view and is reported by ``/readyz``."""
    if state.views is None:
        return False
    try:
        manifest = state.views.manifest()
    except Exception as error:  # noqa: BLE001 - the store is down: not ready until it is back
        message = f"{type(error).__name__}: {str(error)[:200]}"
        if message != state.store_unreachable:
            log.warning("the customer store cannot be read (%s)", message)
        state.store_unreachable = message
        return False
    state.store_unreachable = None
    try:
        if manifest is None or (state.manifest is not None and manifest.key == state.manifest.key):
            state.view_error = None if manifest is not None else "no customer view published"
            return False
        store = state.views.open(manifest)
        manager, engine = _generation(
            state.serving,
            state.metrics,
            state.source,
            state.clock,
            state.policy,
            store,
            state.flags,
            state.caps,
            carried=state.manager.current,
            contact_store=state.engine.contact_store,
            inbox=state.engine.inbox,
        )
        manager.refresh()
    except Exception as error:  # noqa: BLE001 - keep serving the current view
        message = f"{type(error).__name__}: {str(error)[:200]}"
        if message != state.view_error:
            log.warning("could not switch to the published customer view (%s)", message)
        state.view_error = message
        return False
    old = state.store
    state.manager, state.store, state.manifest = manager, store, manifest
    state.engine = engine  # the switch: requests from now on decide on the new view
    state.view_error = None
    log.info("serving the customer view as of %s (%d customers)", manifest.as_of, len(store))
    closer = getattr(old, "close", None)
    if callable(closer):
        closer()
    return True


def open_log(serving: ServingSettings, on_commit: Callable[[int, float], None]) -> DecisionLog:
    """The PostgreSQL log shared by replicas when ``log_url`` is set, else the SQLite file."""
    if serving.log_url is not None:
        from src.serving.log_postgres import PostgresDecisionLog

        return PostgresDecisionLog(
            serving.log_url.get_secret_value(),
            serving.log_schema,
            max_batch=serving.commit_max_batch,
            timeout_s=serving.backend_timeout_seconds,
            on_commit=on_commit,
        )
    if serving.log_path is None:  # resolved() fills it in
        raise ValueError("serving settings without a decision log: call .resolved(settings)")
    return SqliteDecisionLog(
        serving.log_path, serving.sqlite_synchronous, serving.commit_max_batch, on_commit=on_commit
    )


SQL_STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
REDIS_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


def open_contact_store(serving: ServingSettings) -> ContactStore | None:
    """The contact store shared by replicas when ``contact_store_url`` is set: Redis
    (``redis://``: the slot's replicas share caps) or SQL (``sqlite:///`` / ``postgresql://``:
    the very table the campaigns charge, with their outbox row in the same transaction, so a
    customer's caps count the slot and every campaign together; point
    ``campaigns.store_url``/``store_schema`` at the same database)."""
    if serving.contact_store_url is None:
        return None
    url = serving.contact_store_url.get_secret_value()
    if url.startswith(SQL_STORE_SCHEMES):
        from src.contact.store_sql import SQLContactStore

        return SQLContactStore(
            url, schema=serving.contact_store_schema, timeout=serving.backend_timeout_seconds
        )
    if not url.startswith(REDIS_STORE_SCHEMES):
        raise ValueError(
            "serving.contact_store_url: expected redis://, sqlite:/// or postgresql:// "
            f"(got a URL starting {url.split(':', 1)[0]!r})"
        )
    from src.contact.store_redis import RedisContactStore

    return RedisContactStore(
        url, serving.contact_key_prefix, timeout_s=serving.backend_timeout_seconds
    )


def open_inbox(contact_store: ContactStore | None) -> InAppInbox | None:
    """The in-app campaign inbox, in the SQL contact store's database (the campaigns write it
    there); None for the in-process or Redis caps (no campaign shares them)."""
    from src.contact.store_sql import SQLContactStore

    return InAppInbox(contact_store) if isinstance(contact_store, SQLContactStore) else None


def backend_problems(state: ServiceState) -> dict[str, str]:
    """What keeps the shared backends from serving: backend -> reason (blocking: a thread)."""
    problems = {}
    ping = getattr(state.log, "ping", None)
    if ping is not None:
        try:
            ping()
        except Exception as error:  # noqa: BLE001 - any failure is the reason to report
            problems["log"] = str(error) or type(error).__name__
    store = state.engine.contact_store
    if store is not None:
        try:
            store.ping()
        except Exception as error:  # noqa: BLE001
            problems["contact_store"] = str(error) or type(error).__name__
    return problems


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
    pinned = (serving or settings.serving).view_path is not None
    serving = (serving or settings.serving).resolved(settings)
    views = view_source(settings, serving, follow=not pinned)
    source = (
        MlflowModelSource(settings.tracking_uri, serving.model_alias)
        if model_source is _DEFAULT_SOURCE
        else model_source
    )
    if serving.online_learning and source is not None and serving.shared_state_url:
        import redis

        source = OnlineBanditSource(  # replicas serve the newest version learned online
            source,
            redis.Redis.from_url(serving.shared_state_url, socket_timeout=2),
            serving.shared_state_prefix,
            serving.bandit_model or "",
        )
    metrics = service_metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await asyncio.to_thread(
            build_state, settings, serving, metrics, source, clock, views
        )
        app.state.service = state
        await _refresh_models(state)
        if tune_gc:
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        pollers = [
            asyncio.create_task(_poll(state), name="model-poller"),
            asyncio.create_task(_poll_view(state), name="view-poller"),
        ]
        if state.online is not None:
            pollers.append(asyncio.create_task(_learn(state), name="online-learner"))
        if state.events.sweeps:
            pollers.append(asyncio.create_task(_sweep_timeouts(state), name="timeout-sweeper"))
        try:
            yield
        finally:
            for poller in pollers:
                poller.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            await asyncio.to_thread(state.log.close)
            if state.engine.contact_store is not None:
                state.engine.contact_store.close()
            if state.detections is not None:
                state.detections.close()

    app = OfferSlotApp(
        title="nextoffer offer slot",
        version="1",
        description="Next best offer decisions, rewards and behaviour events.",
        lifespan=lifespan,
    )
    app.max_body = serving.max_body_bytes
    app.metrics = metrics
    keys = ApiKeys(serving)
    if serving.protect_ops:
        app.ops_keys = keys
    use_fast_path = serving.fast_path if fast_path is None else fast_path
    if use_fast_path:
        app.fast_path = DecisionFastPath(serving, metrics, keys)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.include_router(_v1_router(serving, keys))
    app.include_router(_ops_router(metrics))
    return app


# --- errors: never a 500 for bad input, never a large echo ------------------------------------

MAX_ERRORS = 10  # errors listed in one 422
MAX_ECHO = 64  # characters of a refused value (or a field name) a 422 repeats
_NO_ECHO: Any = object()


def _echo(value: Any) -> Any:
    """What a 422 may repeat of a refused value: short scalars; a long string cut to
    :data:`MAX_ECHO` characters; nothing of a non-finite number, a list or an object."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else _NO_ECHO
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else _NO_ECHO
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode()  # lone surrogates -> "?"
        return value if len(value) <= MAX_ECHO else value[:MAX_ECHO] + "..."
    return _NO_ECHO


def safe_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as published (type, loc, msg, a short input), bounded in count and size
    whatever the body was: JSON-serializable even for NaN inputs."""
    out = []
    for error in list(errors)[:MAX_ERRORS]:
        loc = [
            part if isinstance(part, int) else _echo(str(part))
            for part in list(error.get("loc", ()))[:8]
        ]
        item: dict[str, Any] = {
            "type": str(error.get("type", "value_error"))[:MAX_ECHO],
            "loc": loc,
            "msg": str(error.get("msg", ""))[:200].encode("utf-8", "replace").decode(),
        }
        echo = _echo(error.get("input"))
        if echo is not _NO_ECHO:
            item["input"] = echo
        out.append(item)
    return out


# 422s of requests the schema accepts, refused for what only the server knows (its clock, the log)
SEMANTIC_422 = frozenset({"event_time_too_late", "no_offer"})


def unprocessable(loc: tuple[str | int, ...], msg: str, kind: str) -> RequestValidationError:
    """A 422 naming ``loc`` raised from inside a handler (same shape as the body's)."""
    return RequestValidationError([{"type": kind, "loc": loc, "msg": msg}])


async def _validation_error(request: Request, error: Exception) -> Response:
    errors = error.errors() if isinstance(error, RequestValidationError) else []
    return Response(
        to_json({"detail": safe_errors(errors)}), status_code=422, media_type="application/json"
    )


async def _http_error(request: Request, error: Exception) -> Response:
    """FastAPI's 400 "error parsing the body" (a body that is not UTF-8, or nested too deep for
    the JSON parser) is a 422 like every other malformed body; the rest as FastAPI answers."""
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400:
        return await _validation_error(
            request,
            unprocessable(("body",), "the body is not valid UTF-8 JSON", "json_invalid"),
        )
    return await http_exception_handler(request, error)


# --- API keys -----------------------------------------------------------------------------------

Caller = Literal["internal", "client", "anonymous"]


class ApiKeys:
    """Who is calling, read the same way on every path (fast path, routes, ops endpoints).

    The key is the value of the API key header; a request carrying that header more than once is
    treated as carrying no key (proxies and frameworks disagree on which copy wins).
    ``internal``: the internal key; ``client``: the client key; else ``anonymous``."""

    def __init__(self, serving: ServingSettings) -> None:
        self.header = serving.api_key_header.lower().encode("latin-1")
        self.client = serving.api_key.get_secret_value().encode() if serving.api_key else None
        self.internal = (
            serving.internal_api_key.get_secret_value().encode()
            if serving.internal_api_key
            else None
        )
        self.v1_open = self.client is None  # no client key configured: /v1 needs no key

    def key(self, headers: Any) -> bytes | None:
        """The key of raw ASGI headers (names lower-case), None if absent or sent twice."""
        found = None
        for name, value in headers:
            if name == self.header:
                if found is not None:
                    return None
                found = value
        return found

    def caller(self, headers: Any) -> Caller:
        key = self.key(headers)
        if key is not None:
            if self.internal is not None and secrets.compare_digest(key, self.internal):
                return "internal"
            if self.client is not None and secrets.compare_digest(key, self.client):
                return "client"
        return "anonymous"

    def may_use_v1(self, caller: Caller) -> bool:
        return self.v1_open or caller != "anonymous"


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
        except Exception as error:
            state.failures.failure("model_poll", error, "model poll failed")


async def _learn(state: ServiceState) -> None:
    """The online learner's turn (it learns only on the replica holding the lease)."""
    online = state.online
    assert online is not None
    while True:
        await asyncio.sleep(state.serving.model_poll_seconds)
        try:
            await asyncio.to_thread(online.step)
        except Exception:
            log.exception("online learning step failed")


async def _sweep_timeouts(state: ServiceState) -> None:
    """Fire the shared detector's due timeouts (customers without a next event); an exception
    here must never stop the loop."""
    while True:
        await asyncio.sleep(state.serving.detection_sweep_seconds)
        try:
            for action in await asyncio.to_thread(state.events.sweep):
                state.metrics.detections.labels(action.rule).inc()
        except Exception as error:
            state.failures.failure("detection_sweep", error, "timeout sweep failed")


async def _poll_view(state: ServiceState) -> None:
    """Switch to a newly published customer view; an exception here must never stop the loop."""
    while True:
        await asyncio.sleep(state.serving.view_poll_seconds)
        try:
            if await asyncio.to_thread(switch_view, state):
                await _refresh_models(state)
        except Exception:
            log.exception("view poll failed")


def view_status(state: ServiceState) -> tuple[bool, dict[str, Any]]:
    """(fresh enough, what ``/readyz`` shows about the served view)."""
    manifest = state.manifest
    store = state.engine.store
    age = manifest.age_days(state.engine.now()) if manifest is not None else None
    limit = state.serving.view_max_age_days
    detail: dict[str, Any] = {
        "view_as_of": store.as_of,
        "view_age_days": None if age is None else round(age, 3),
        "view_published_at": manifest.published_at if manifest is not None else None,
        "view_store": "postgresql" if state.serving.customer_store_url else "file",
        "scores_version": getattr(store.published_scores, "version", None),
    }
    if state.view_error:
        detail["view_error"] = state.view_error
    fresh = limit is None or (age is not None and age <= limit)
    if not fresh:
        detail["not_ready"] = (
            f"the customer view as of {store.as_of} is older than view_max_age_days={limit}"
        )
    if state.store_unreachable:
        fresh = False
        detail["not_ready"] = f"customer store unreachable: {state.store_unreachable}"
    return fresh, detail


def shared_state_status(state: ServiceState) -> str | None:
    """None if the shared Redis answers (or none is configured), else why not (blocking)."""
    client = getattr(state.flags, "client", None)
    if client is None:
        return None
    try:
        client.ping()
    except Exception as error:  # noqa: BLE001 - any failure means decisions cannot see flags
        return f"shared state (Redis) unreachable: {type(error).__name__}: {str(error)[:200]}"
    return None


def _service(request: Request) -> ServiceState:
    return request.app.state.service


def _api_key_check(serving: ServingSettings, keys: ApiKeys) -> Callable[..., Awaitable[None]]:
    header = APIKeyHeader(
        name=serving.api_key_header,
        auto_error=False,
        description="Required when the service is started with an API key; sent once.",
    )

    async def check(request: Request, key: str | None = Security(header)) -> None:
        # async: no threadpool hop; the raw headers, not ``key``: a duplicate header is no key
        if not keys.may_use_v1(keys.caller(request.scope["headers"])):
            raise HTTPException(401, detail="missing or wrong API key")

    return check


class ErrorDetail(BaseModel):
    detail: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "API key missing, wrong or sent twice"}
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorDetail, "description": "Body larger than the configured limit"}
}


def _v1_router(serving: ServingSettings, keys: ApiKeys) -> APIRouter:
    protected = serving.api_key is not None  # no key configured: no check, nothing in the spec
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(_api_key_check(serving, keys))] if protected else [],
        responses={**_TOO_LARGE, **(_ERRORS if protected else {})},
    )

    @router.post(
        "/decisions", response_model=DecisionResponse, summary="Choose the offer for a slot"
    )
    async def decide(body: DecisionRequest, request: Request) -> Response:
        explain = keys.caller(request.scope["headers"]) == "internal"
        return Response(
            content=await _decision(_service(request), body, explain),
            media_type="application/json",
        )

    @router.post(
        "/rewards",
        response_model=RewardResponse,
        summary="Record a click or conversion",
        responses={
            404: {"model": ErrorDetail, "description": "Unknown decision id"},
            409: {
                "model": ErrorDetail,
                "description": "A reward of this kind is stored with a different value",
            },
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
            state.failures.failure("reward_log", error, "a reward could not be logged")
            state.metrics.log_failures.labels("reward").inc()
            raise HTTPException(
                503, detail="reward log unavailable; retry", headers={"Retry-After": "1"}
            ) from error
        state.metrics.rewards.labels(body.kind, outcome).inc()
        if outcome == "unknown_decision":
            raise HTTPException(404, detail="unknown decision_id")
        if outcome == "conflict":
            raise HTTPException(
                409, detail=f"a {body.kind} with a different value_krw is stored for this decision"
            )
        if outcome == "no_offer":
            raise unprocessable(
                ("body", "decision_id"),
                "this decision showed no offer: nothing to reward",
                "no_offer",
            )
        if outcome == "stored" and state.online is not None:
            state.online.record_reward(body.decision_id, body.kind, body.value_krw)
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
        try:
            late, actions = state.events.process(body)
        except EventTimeError as error:
            raise unprocessable(("body", "ts"), str(error), "event_time_too_late") from None
        except SharedStateUnavailable as error:
            raise HTTPException(
                503, detail="detection state unavailable; retry", headers={"Retry-After": "1"}
            ) from error
        if actions and state.detections is not None:
            # the detector has consumed the event (a retry would not fire again): the
            # detections are queued, or spooled while the queue is down; if neither can be
            # written the sink holds them for the next event and the request fails (503)
            records = [DetectionRecord(a.customer_id, a.rule, a.fired_at) for a in actions]
            try:
                where = await asyncio.to_thread(state.detections.record, records)
            except OSError as error:
                state.failures.failure("detections", error, "detections neither queued nor spooled")
                raise HTTPException(
                    503,
                    detail="detections could not be recorded; retry",
                    headers={"Retry-After": "1"},
                ) from error
            if where == "spooled":
                state.failures.failure(
                    "detections_queue", None, "detection queue unreachable: detections spooled"
                )
        tz = state.engine.tz
        for a in actions:
            state.metrics.detections.labels(a.rule).inc()
            a.fired_at = a.fired_at.replace(tzinfo=tz)
        return EventResponse(event_id=body.event_id, late=late, actions=actions)

    return router


async def _decision(state: ServiceState, body: DecisionRequest, explain: bool = False) -> bytes:
    """The body of ``POST /v1/decisions`` (the route and :class:`DecisionFastPath` share it):
    decide, make the decision durable, count it; never raises for a valid request.
    ``explain``: the caller may see reasons (internal key)."""
    engine = state.engine
    example = None
    try:
        prefetched = await engine.prefetch(body)  # shared stores: read off the loop
        # the models of this decision: the poller may swap them (from its thread) meanwhile
        models = engine.models.current
        record = engine.decide(body, prefetched, models)
        if state.online is not None:  # before any await: the scorer keeps its last example
            example = state.online.example_of(record, models.bandit)
    except Exception as error:
        state.failures.failure("decide", error, "a decision failed inside the engine")
        record = engine.without_offer(body, "internal_error")
    try:
        await state.log.append_decision(record)
        if state.online is not None and record.policy == "bandit":
            state.online.record_decision(record, example)
    except Exception as error:
        state.failures.failure("decision_log", error, "a decision could not be logged")
        state.metrics.log_failures.labels("decision").inc()
        if not getattr(error, "maybe_written", False):  # else it may be logged: keep it counted
            engine.release(record)
        record = engine.without_offer(body, "log_unavailable", base=record)
    _count_decision(state, record)
    return decision_json(record, engine, explain)


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

    def __init__(self, serving: ServingSettings, metrics: ServiceMetrics, keys: ApiKeys) -> None:
        self.keys = keys
        self.max_body = min(FAST_PATH_MAX_BODY, serving.max_body_bytes)
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
        length = None
        json_body = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
        if not json_body or length is None or not length.isdigit() or int(length) > self.max_body:
            return receive
        caller = self.keys.caller(scope["headers"])
        if not self.keys.may_use_v1(caller):
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
        content = await _decision(state, request, caller == "internal")
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


async def _limit_body(
    scope: MutableMapping[str, Any], receive: Callable, send: Callable, limit: int
) -> Callable | None:
    """413 for a body over ``limit`` bytes, before it is read when it declares its length (a
    chunked body is read up to the limit, then replayed); returns the ``receive`` to go on with,
    or None once answered."""
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
            break
    if length is not None:
        if length.isdigit() and int(length) <= limit:
            return receive
        await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
        return None
    if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return receive
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _send_json(send, 413, {"detail": f"request body larger than {limit} bytes"})
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return _replay(b"".join(chunks), receive)


async def _send_json(send: Callable, status: int, body: Any) -> None:
    content = to_json(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


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


OPS_PATHS = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class OfferSlotApp(FastAPI):
    """The FastAPI app, with :class:`DecisionFastPath` in front of the decision route and, with
    ``protect_ops``, the internal key in front of :data:`OPS_PATHS`."""

    fast_path: DecisionFastPath | None = None
    ops_keys: ApiKeys | None = None
    max_body: int | None = None
    metrics: ServiceMetrics | None = None

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable, send: Callable
    ) -> None:
        if scope["type"] == "http":
            keys = self.ops_keys
            if (
                keys is not None
                and scope["path"] in OPS_PATHS
                and keys.caller(scope["headers"]) != "internal"
            ):
                await _send_json(send, 401, {"detail": "the internal API key is required"})
                self._count(scope["path"], 401)
                return
            if self.max_body is not None:
                limited = await _limit_body(scope, receive, send, self.max_body)
                if limited is None:
                    self._count(scope["path"], 413)
                    return
                receive = limited
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

    def _count(self, path: str, status: int) -> None:
        """Requests answered here, before the metrics middleware, are counted all the same."""
        if self.metrics is not None:
            route = path if path in ROUTES else "other"
            self.metrics.requests.labels(route, str(status)).inc()


def _ops_router(metrics: ServiceMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Health,
        summary="Readiness: view, policy and log loaded, and the log takes writes",
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
        problem = await state.log.health() if isinstance(state.log, LogHealth) else None
        if problem is not None:
            state.failures.failure("readyz", None, "not ready: %s", problem)
            return Response(
                Health(status="not_ready", detail={"log": problem}).model_dump_json(),
                status_code=503,
                media_type="application/json",
            )
        problems = await asyncio.to_thread(backend_problems, state)
        if problems:
            return Response(
                Health(status="not_ready", detail={"unavailable": problems}).model_dump_json(),
                status_code=503,
                media_type="application/json",
                headers={"Retry-After": "1"},
            )
        models = state.engine.models.current
        fresh, view = view_status(state)
        shared = await asyncio.to_thread(shared_state_status, state)
        if shared is not None:
            fresh = False
            view["not_ready"] = shared
        health = Health(
            status="ready" if fresh else "not_ready",
            detail={
                "customers": len(state.engine.store),
                **view,
                "log": type(state.log).__name__,
                **({"log_notice": n} if (n := getattr(state.log, "notice", None)) else {}),
                "contact_store": type(state.engine.contact_store or state.caps).__name__,
                "offers": len(state.policy.offers),
                "model_versions": models.versions(),
                "model_errors": dict(models.errors),
                **(
                    {
                        "online_learning": {
                            "learner": state.online.learner is not None,
                            "recorded": state.online.recorded,
                            "failed": state.online.failed,
                        }
                    }
                    if state.online is not None
                    else {}
                ),
                "mode": "bandit"
                if models.bandit
                else ("propensity_greedy" if models.propensity else "default_order"),
            },
        )
        if not fresh:
            return Response(
                health.model_dump_json(), status_code=503, media_type="application/json"
            )
        return health

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


def decision_json(record: DecisionRecord, engine: DecisionEngine, explain: bool = True) -> bytes:
    """The :class:`DecisionResponse` body, built directly and serialized once by pydantic-core's
    encoder (validating our own output through the response model again would double the cost;
    the schemathesis test checks the body against the published schema). ``explain`` False:
    without the ranking, the exclusions and the cold-start flag (see DecisionResponse)."""
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
            "creative": record.content or chosen.creative,
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
        ]
        if explain
        else [],
        "excluded": [{"offer_id": o, "reason": r} for o, r in record.excluded.items()]
        if explain
        else [],
        "model_versions": record.model_versions,
        "cold_start": record.cold_start if explain else None,
        "fallback": record.fallback,
        "fallback_reason": record.fallback_reason,
        "created_at": datetime.fromisoformat(record.created_at)
        .replace(tzinfo=engine.tz)
        .isoformat(),
        "explained": explain,
    }
    return to_json(body)
