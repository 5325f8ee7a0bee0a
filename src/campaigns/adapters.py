"""Delivery adapters: where outbox messages go. A message is marked sent only on the adapter's
acknowledgement; each send carries the message id as the provider's idempotency key, so a
resend after a crash (sent, not yet marked) is acknowledged without a second delivery."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from src.contact.inbox import InAppInbox, InAppMessage, iso

if TYPE_CHECKING:
    from src.campaigns.state import CampaignDB


@dataclass(frozen=True)
class Ack:
    """The provider's answer: ``accepted`` (it will deliver) or ``undeliverable`` on this
    channel (e.g. no messenger account: the sender falls back to SMS, same message)."""

    status: str
    provider_id: str


class DeliveryAdapter(Protocol):
    def send(self, message: Mapping[str, Any]) -> Ack: ...

    def close(self) -> None: ...


class JsonlAdapter:
    """A file provider: one JSON line per delivered message, deduplicated on the message id
    (the idempotency key). Each line is flushed and fsynced before the ack; a torn last line
    (a crash mid-write) is dropped on open and that message is sent again."""

    def __init__(self, path: Path | str, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.seen: set[str] = set()
        if self.path.exists():
            good = 0
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    self.seen.add(json.loads(line)["idempotency_key"])
                    good += len(line)
            with open(self.path, "r+b") as f:
                f.truncate(good)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def send(self, message: Mapping[str, Any]) -> Ack:
        key = str(message["message_id"])
        if key not in self.seen:
            line = json.dumps({"idempotency_key": key, **message}, default=str, ensure_ascii=False)
            self._file.write(line + "\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.seen.add(key)
        return Ack("accepted", key)

    def close(self) -> None:
        self._file.close()


class SimulatedChannel:
    """An in-memory provider that records deliveries; ``undeliverable(message)`` says which
    sends fail on their channel (a synthetic bank answers the responses separately)."""

    def __init__(self, undeliverable: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
        self.delivered: dict[str, dict[str, Any]] = {}
        self.sends = 0
        self._undeliverable = undeliverable

    def send(self, message: Mapping[str, Any]) -> Ack:
        self.sends += 1
        key = str(message["message_id"])
        if self._undeliverable is not None and self._undeliverable(message):
            return Ack("undeliverable", key)
        self.delivered.setdefault(key, dict(message))
        return Ack("accepted", key)

    def close(self) -> None:
        pass


class WebhookAdapter:
    """POSTs each message as JSON to a provider's URL with the message id in the
    ``Idempotency-Key`` header; retries connection errors, timeouts, 429 and 5xx with
    exponential backoff. 2xx = accepted; 410 = undeliverable on this channel (the sender falls
    back); any other 4xx is a permanent failure (raised: the message stays pending, nothing is
    marked)."""

    def __init__(
        self,
        url: str,
        retries: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import time

        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self._sleep = sleep or time.sleep

    def send(self, message: Mapping[str, Any]) -> Ack:
        import urllib.error
        import urllib.request

        key = str(message["message_id"])
        body = json.dumps(dict(message), default=str, ensure_ascii=False).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                    **self.headers,
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    answer = response.read()
                    provider_id = key
                    if answer:
                        with contextlib.suppress(ValueError, AttributeError):
                            provider_id = str(json.loads(answer).get("id", key))
                    return Ack("accepted", provider_id)
            except urllib.error.HTTPError as error:
                if error.code == 410:
                    return Ack("undeliverable", key)
                if error.code != 429 and error.code < 500:
                    raise RuntimeError(
                        f"webhook {self.url}: message {key} refused with HTTP {error.code}"
                    ) from error
                last = error
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last = error
            if attempt < self.retries:
                self._sleep(self.backoff_s * 2**attempt)
        raise RuntimeError(
            f"webhook {self.url}: message {key} not acknowledged after {self.retries + 1} tries: {last}"
        )

    def close(self) -> None:
        pass


class InAppAdapter:
    """The in-app channel's provider: the offer slot. A message goes to the inbox
    (:mod:`src.contact.inbox`) in the contact store's database, valid from its send time for
    ``valid_hours``; the slot serves it on the customer's next decision for that slot and marks
    it delivered there (its acknowledgement: :func:`inbox_receipts` reads it back). Accepted =
    queued, idempotent on the message id like every provider."""

    def __init__(self, inbox: InAppInbox, valid_hours: float = 168.0) -> None:
        self.inbox = inbox
        self.valid = timedelta(hours=valid_hours)

    def send(self, message: Mapping[str, Any]) -> Ack:
        key = str(message["message_id"])
        slot = message.get("slot")
        if not slot:
            raise ValueError(f"in-app message {key}: no slot (the step's slot is required)")
        start = datetime.fromisoformat(iso(str(message["send_at"])))
        self.inbox.put(
            InAppMessage(
                message_id=key,
                campaign_id=str(message["campaign_id"]),
                customer_id=str(message["customer_id"]),
                slot=str(slot),
                channel=str(message["channel"]),
                offer_id=str(message["offer_id"]),
                content=str(message.get("content") or ""),
                valid_from=iso(start),
                valid_until=iso(start + self.valid),
            )
        )
        return Ack("accepted", key)

    def close(self) -> None:
        pass


class ChannelRouter:
    """One adapter per channel (``routes``), ``default`` for the rest: in-app messages go to
    the slot's inbox, the others to the outside provider."""

    def __init__(self, default: DeliveryAdapter, routes: Mapping[str, DeliveryAdapter]) -> None:
        self.default = default
        self.routes = dict(routes)

    def send(self, message: Mapping[str, Any]) -> Ack:
        return self.routes.get(str(message["channel"]), self.default).send(message)

    def close(self) -> None:
        for adapter in {id(a): a for a in (self.default, *self.routes.values())}.values():
            adapter.close()


def inbox_receipts(
    db: CampaignDB,
    inbox: InAppInbox,
    now: datetime | None = None,
    campaign_id: str | None = None,
) -> int:
    """The slot's acknowledgements as the campaign's receipts: ``delivered`` for each in-app
    message a logged decision showed, ``failed`` for one the slot refused (no longer eligible)
    or that expired unseen by ``now``. Idempotent (one event per message and kind); returns the
    events read."""
    at = iso(now) if now is not None else None
    events = []
    for message_id, status, delivered_at, valid_until, _reason, _decision in inbox.outcomes(
        campaign_id
    ):
        if status == "delivered":
            events.append((str(message_id), "delivered", str(delivered_at)))
        elif status == "undeliverable":
            events.append((str(message_id), "failed", str(delivered_at)))
        elif at is not None and str(valid_until) <= at:
            events.append((str(message_id), "failed", str(valid_until)))
    db.record_events(events)
    return len(events)
