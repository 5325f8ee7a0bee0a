"""``/v1/events``: one click or transaction through the online detector, rule actions out.

Detections become flags the decision path reads (:class:`~src.serving.customers.OnlineFlags`):
``rule_<name>`` for every detection and ``mark_<product>`` for a ``mark_offer`` action (with
``from_page: true`` the product is the one the page belongs to). The detector is the same
:class:`~src.features.detection.OnlineDetector` the batch parity tests check.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from src.data.schemas import KRW_REFERENCE_RATES, PRODUCTS
from src.features.detection import Detection, Event, OnlineDetector, load_rules
from src.serving.customers import OnlineFlags
from src.serving.schemas import EventRequest, TriggeredAction

_EPOCH = datetime(1970, 1, 1)


def _ns(when: datetime) -> int:
    if when.tzinfo is not None:
        when = when.replace(tzinfo=None)  # event times are naive local time, as in the data
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def product_of_page(page: str | None) -> str | None:
    """The product a page belongs to (``loan_limit_result`` -> loan), if any."""
    if not page:
        return None
    head = page.split("_", 1)[0]
    return head if head in PRODUCTS else None


def flags_of(detection: Detection, pages: dict[int, str | None]) -> list[str]:
    """Flags a detection sets on its customer."""
    out = [f"rule_{detection.rule}"]
    action = detection.action or {}
    if action.get("type") == "mark_offer":
        product = action.get("product")
        if product is None and action.get("from_page") and detection.fired_event_id is not None:
            product = product_of_page(pages.get(detection.fired_event_id))
        if product:
            out.append(f"mark_{product}")
    return out


class EventProcessor:
    """The online detector behind a lock (events may arrive from several handler tasks)."""

    def __init__(
        self, rules_dir: Path | None, flags: OnlineFlags, ttl_hours: float, detector: Any = None
    ) -> None:
        # detector: anything with OnlineDetector's process/late_events/state_size, e.g. the
        # per-customer state shared by replicas (src.serving.detection_state.RedisDetector)
        self.detector = detector if detector is not None else OnlineDetector(load_rules(rules_dir))
        self.flags = flags
        self.ttl_ns = int(ttl_hours * 3600 * 1e9)
        self._lock = threading.Lock()

    def process(self, request: EventRequest) -> tuple[bool, list[TriggeredAction]]:
        """(late, actions) for one event; flags are set before returning."""
        amount_krw = request.amount_krw
        if (
            amount_krw is None
            and request.amount is not None
            and request.currency in KRW_REFERENCE_RATES
        ):
            amount_krw = request.amount * KRW_REFERENCE_RATES[request.currency]
        nan = float("nan")
        event = Event(
            event_id=request.event_id,
            ts=_ns(request.ts),
            customer_id=request.customer_id,
            source=request.source,
            channel=request.channel,
            session_id=request.session_id,
            page=request.page,
            action=request.action,
            dwell_seconds=nan if request.dwell_seconds is None else float(request.dwell_seconds),
            referrer=request.referrer,
            code=request.code,
            amount=nan if request.amount is None else float(request.amount),
            currency=request.currency,
            product=request.product,
            amount_krw=nan if amount_krw is None else float(amount_krw),
        )
        with self._lock:
            late_before = self.detector.late_events
            detections = self.detector.process(event)
            late = self.detector.late_events > late_before
        pages = {request.event_id: request.page}
        out = []
        for d in detections:
            self.flags.set(d.customer_id, flags_of(d, pages), d.fired_at + self.ttl_ns)
            out.append(
                TriggeredAction(
                    customer_id=d.customer_id,
                    rule=d.rule,
                    kind=d.kind,
                    fired_at=_time(d.fired_at),
                    action=_plain(d.action),
                )
            )
        return late, out

    def state_size(self) -> int:
        with self._lock:
            return self.detector.state_size()


def _plain(action: Any) -> dict[str, Any] | None:
    if action is None:
        return None
    return {k: v for k, v in dict(action).items() if v is not None}
