"""Delivery adapters: where outbox messages go. A message is marked sent only on the adapter's
acknowledgement; each send carries the message id as the provider's idempotency key, so a
resend after a crash (sent, not yet marked) is acknowledged without a second delivery."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


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
