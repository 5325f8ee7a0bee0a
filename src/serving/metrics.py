"""Prometheus metrics of one service instance, in its own registry (no process-global state,
so two apps in one test process do not share counters)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class ServiceMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    decisions: Counter
    fallbacks: Counter
    cold_starts: Counter
    exclusions: Counter
    rewards: Counter
    detections: Counter
    model_events: Counter
    model_version: Gauge
    log_batch: Histogram
    log_commit: Histogram
    log_failures: Counter
    failures: Counter


def service_metrics() -> ServiceMetrics:
    r = CollectorRegistry(auto_describe=True)
    p = "nextoffer_"
    return ServiceMetrics(
        registry=r,
        requests=Counter(
            f"{p}http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        ),
        latency=Histogram(
            f"{p}http_request_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        decisions=Counter(
            f"{p}decisions",
            "Decisions by slot, chosen offer and policy",
            ["slot", "offer", "policy"],
            registry=r,
        ),
        fallbacks=Counter(
            f"{p}fallbacks",
            "Decisions not made by the champion bandit, by reason",
            ["reason"],
            registry=r,
        ),
        cold_starts=Counter(
            f"{p}cold_starts", "Decisions for customers not in the view", registry=r
        ),
        exclusions=Counter(
            f"{p}exclusions", "Offers excluded from decisions, by reason", ["reason"], registry=r
        ),
        rewards=Counter(
            f"{p}rewards", "Rewards received by kind and outcome", ["kind", "outcome"], registry=r
        ),
        detections=Counter(
            f"{p}detections", "Rule detections from /v1/events", ["rule"], registry=r
        ),
        model_events=Counter(
            f"{p}model_refresh", "Model loads and failures", ["model", "event"], registry=r
        ),
        model_version=Gauge(
            f"{p}model_version", "Serving model version (0: none)", ["model"], registry=r
        ),
        log_batch=Histogram(
            f"{p}log_commit_batch_size",
            "Writes per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        ),
        log_commit=Histogram(
            f"{p}log_commit_seconds",
            "Duration of a group commit",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        log_failures=Counter(
            f"{p}log_write_failures",
            "Decisions/rewards that could not be logged",
            ["kind"],
            registry=r,
        ),
        failures=Counter(
            f"{p}failures",
            "Failures inside the service by cause (code path and exception type)",
            ["cause"],
            registry=r,
        ),
    )


class FailureLog:
    """Failures logged once per cause and interval, not a traceback per request.

    The first failure of a cause (a code path plus the exception's type) is logged with its
    traceback; repeats within ``interval`` seconds are only counted, and the next report says how
    many there were. Every failure is also counted in ``counter`` (labels: the cause), so the
    rate is visible in metrics even while the log is quiet. Causes are a small fixed set (code
    paths x exception types), so the state is bounded."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        counter: Counter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.counter = counter
        self.clock = clock
        self._last: dict[str, float] = {}
        self._repeats: dict[str, int] = {}

    def failure(self, where: str, error: BaseException | None, message: str, *args: Any) -> bool:
        """Count one failure at ``where``; log it if its cause was quiet for ``interval``.
        Returns whether it was logged."""
        cause = f"{where}:{type(error).__name__}" if error is not None else where
        if self.counter is not None:
            self.counter.labels(cause).inc()
        now = self.clock()
        last = self._last.get(cause)
        if last is not None and now - last < self.interval:
            self._repeats[cause] = self._repeats.get(cause, 0) + 1
            return False
        repeats = self._repeats.pop(cause, 0)
        self._last[cause] = now
        if repeats:
            message += f" ({repeats} more since the last report of this cause)"
        first = last is None
        self.logger.error(
            message + ("" if first or error is None else f": {type(error).__name__}: {error}"),
            *args,
            exc_info=error if first else None,
        )
        return True
