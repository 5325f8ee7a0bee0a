"""Delivery adapters: where outbox messages go. A message is marked sent only on the adapter's
acknowledgement; each send carries the message id as the provider's idempotency key, so a
resend after a crash (sent, not yet marked) is acknowledged without a second delivery."""

from __future__ import annotations

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
