"""``/v1/events``: one click or transaction through the online detector, rule actions out.

Detections become flags the decision path reads (:class:`~src.serving.customers.OnlineFlags`):
``rule_<name>`` for every detection and ``mark_<product>`` for a ``mark_offer`` action (with
``from_page: true`` the product is the one the page belongs to). The detector is the same
:class:`~src.features.detection.OnlineDetector` the batch parity tests check.

Event time is the client's word, so it is bounded and its reach is limited:

- an event stamped more than ``max_skew`` past the server's clock is refused
  (:class:`EventTimeError`, a 422 naming ``ts``): it would fire every pending timeout and make
  every later event "late";
- the detector's clock is kept per partition: customers are hashed (CRC-32 of the id) into
  ``partitions`` detectors, each with its own event-time clock, so one customer's (or one
  producer's) clock skew only affects the customers of its partition, never everyone. Rules are
  per customer, so partitioning by customer changes no detection. An event without a customer
  moves no clock (it cannot match a rule);
- an aware time is converted to the service's local time first (event times are naive local
  time, as in the data).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from src.data.schemas import KRW_REFERENCE_RATES, PRODUCTS
from src.features.detection import Detection, Event, OnlineDetector, load_rules
from src.serving.customers import OnlineFlags
from src.serving.schemas import EventRequest, TriggeredAction

_EPOCH = datetime(1970, 1, 1)


def _ns(when: datetime) -> int:
    if when.tzinfo is not None:
        when = when.replace(tzinfo=None)  # event times are naive local time, as in the data
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


class EventTimeError(ValueError):
    """An event time the detector must not take (too far past the server's clock)."""


def partition_of(customer_id: str, partitions: int) -> int:
    """The detector partition of a customer: stable across processes and restarts."""
    return zlib.crc32(customer_id.encode()) % partitions


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
    """Online detectors, one per customer partition, behind a lock (events may arrive from
    several handler tasks). ``clock``: aware "now" of the server; ``max_skew_seconds``: how far
    past it an event may be stamped."""

    def __init__(
        self,
        rules_dir: Path | None,
        flags: OnlineFlags,
        ttl_hours: float,
        *,
        timezone: str = "Asia/Seoul",
        max_skew_seconds: float = 300.0,
        partitions: int = 64,
        clock: Callable[[], datetime] | None = None,
        detector: Any = None,
    ) -> None:
        # detector: anything with OnlineDetector's process/late_events/state_size, e.g. the
        # per-customer state shared by replicas (src.serving.detection_state.RedisDetector),
        # whose clock is already per customer; else one in-process detector per partition
        if detector is not None:
            self.detectors = [detector]
        else:
            rules = load_rules(rules_dir)
            self.detectors = [OnlineDetector(rules) for _ in range(partitions)]
        self.flags = flags
        self.ttl_ns = int(ttl_hours * 3600 * 1e9)
        self.tz = ZoneInfo(timezone)
        self.max_skew = timedelta(seconds=max_skew_seconds)
        self.clock = clock or (lambda: datetime.now(self.tz))
        self._lock = threading.Lock()

    def local_time(self, ts: datetime) -> datetime:
        """The event's naive local time; raises :class:`EventTimeError` past the allowed skew."""
        when = ts.astimezone(self.tz).replace(tzinfo=None) if ts.tzinfo is not None else ts
        latest = self.clock().astimezone(self.tz).replace(tzinfo=None) + self.max_skew
        if when > latest:
            raise EventTimeError(
                f"event time {when.isoformat()} (local) is more than "
                f"{self.max_skew.total_seconds():g} s past the server's clock"
            )
        return when

    def process(self, request: EventRequest) -> tuple[bool, list[TriggeredAction]]:
        """(late, actions) for one event; flags are set before returning."""
        when = self.local_time(request.ts)
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
            ts=_ns(when),
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
        if request.customer_id is None:
            return False, []  # matches no rule, and moves no partition's clock
        detector = self.detectors[partition_of(request.customer_id, len(self.detectors))]
        with self._lock:
            late_before = detector.late_events
            detections = detector.process(event)
            late = detector.late_events > late_before
        return late, self._actions(detections, {request.event_id: request.page})

    @property
    def sweeps(self) -> bool:
        """Whether :meth:`sweep` has anything to do (the detector state is shared in Redis)."""
        return hasattr(self.detectors[0], "sweep_due")

    def sweep(self) -> list[TriggeredAction]:
        """Fire the pending timeouts no event of their customer has fired yet (the shared
        detector's sweeper, see ``src.serving.detection_state``); their flags are set."""
        sweep_due = getattr(self.detectors[0], "sweep_due", None)
        if sweep_due is None:
            return []  # in process, a partition's next event fires them
        now = self.clock().astimezone(self.tz).replace(tzinfo=None)
        return self._actions(sweep_due(_ns(now)), {})

    def _actions(
        self, detections: list[Detection], pages: dict[int, str | None]
    ) -> list[TriggeredAction]:
        """Set the flags of ``detections`` and describe them for the response."""
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
        return out

    def state_size(self) -> int:
        with self._lock:
            return sum(d.state_size() for d in self.detectors)


def _plain(action: Any) -> dict[str, Any] | None:
    if action is None:
        return None
    return {k: v for k, v in dict(action).items() if v is not None}
