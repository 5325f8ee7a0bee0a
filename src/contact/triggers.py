"""A durable queue of rule detections: the online path (``/v1/events``) appends, trigger
campaigns read after their cursor.

Why a table in the contact store's database: serving and campaigns never import each other,
and a detection the detector has consumed cannot be produced again (its rule state has moved
on), so it must be written somewhere both can reach before the event is acknowledged.

- Idempotent: a detection's id is a hash of (customer, rule, fire time); appending it again (a
  retried request, a replica replaying) is a no-op, and a campaign's message id includes it,
  so re-reading never sends twice.
- Monotonic cursor: ``seq`` grows with every append and a reader takes "after my cursor".
  Appends are serialised (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped
  advisory lock), so ``seq`` order is commit order and a reader can never pass a row that
  commits later with a smaller ``seq``.
- :class:`SpooledSink`: when the database is unreachable the detections go to a local JSONL
  spool (fsynced, under a file lock), flushed to the table before the next append. Spooling
  rather than failing the request: a producer's retry could not bring the detection back (the
  detector has consumed the event and moved its rule state on). Only when the spool cannot be
  written either does the caller fail (``/v1/events`` answers 503, and the detections are held
  in memory and retried with the next event).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from src.contact.store import StoreUnavailable
from src.contact.store_sql import SQLContactStore

_COLUMNS = "detection_id TEXT NOT NULL UNIQUE, customer_id TEXT NOT NULL, rule TEXT NOT NULL, "
_COLUMNS += "fired_at TEXT NOT NULL, recorded_at TEXT NOT NULL"
DDL_SQLITE = (
    f"CREATE TABLE IF NOT EXISTS contact_detections "
    f"(seq INTEGER PRIMARY KEY AUTOINCREMENT, {_COLUMNS})",
    "CREATE INDEX IF NOT EXISTS contact_detections_rule ON contact_detections (rule, seq)",
)
DDL_POSTGRES = (
    f"CREATE TABLE IF NOT EXISTS contact_detections (seq BIGSERIAL PRIMARY KEY, {_COLUMNS})",
    "CREATE INDEX IF NOT EXISTS contact_detections_rule ON contact_detections (rule, seq)",
)


def detection_id(customer_id: str, rule: str, fired_at: datetime) -> str:
    """Deterministic: the same detection (customer, rule, fire time) always has the same id."""
    key = f"{customer_id}\x1f{rule}\x1f{fired_at.replace(tzinfo=None).isoformat()}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class DetectionRecord:
    """One detection: fire time is naive local time, as the detector reports it."""

    customer_id: str
    rule: str
    fired_at: datetime
    seq: int = 0

    @property
    def detection_id(self) -> str:
        return detection_id(self.customer_id, self.rule, self.fired_at)


class DetectionQueue:
    """The ``contact_detections`` table of a contact store."""

    def __init__(self, store: SQLContactStore) -> None:
        self.store = store
        store.ensure(DDL_POSTGRES if store.postgres else DDL_SQLITE)

    @classmethod
    def open(cls, url: str, schema: str | None = None, timeout: float = 5.0) -> DetectionQueue:
        return cls(SQLContactStore(url, schema=schema, timeout=timeout))

    def append(self, records: Sequence[DetectionRecord], now: datetime | None = None) -> int:
        """Append the detections not yet in the table; returns how many were new."""
        if not records:
            return 0
        at = (now or datetime.now()).isoformat()
        unique = {r.detection_id: r for r in records}
        with self.store.transaction() as tx:
            if tx.postgres:  # serialise appends: seq order is commit order
                tx.execute("SELECT pg_advisory_xact_lock(hashtext('nextoffer.detections'))")
            ids = list(unique)
            marks = ",".join("?" * len(ids))
            known = {
                r[0]
                for r in tx.fetchall(
                    f"SELECT detection_id FROM contact_detections WHERE detection_id IN ({marks})",
                    ids,
                )
            }
            new = [(i, r) for i, r in unique.items() if i not in known]
            if new:
                tx.executemany(
                    "INSERT INTO contact_detections (detection_id, customer_id, rule, fired_at, "
                    "recorded_at) VALUES (?, ?, ?, ?, ?)",
                    [
                        (i, r.customer_id, r.rule, r.fired_at.replace(tzinfo=None).isoformat(), at)
                        for i, r in new
                    ],
                )
        return len(new)

    def after(
        self, seq: int, rules: Sequence[str] | None = None, limit: int = 10_000
    ) -> list[DetectionRecord]:
        """Detections with ``seq`` above the cursor (of ``rules`` if given), oldest first."""
        sql = "SELECT seq, customer_id, rule, fired_at FROM contact_detections WHERE seq > ?"
        params: list[object] = [seq]
        if rules is not None:
            if not rules:
                return []
            sql += f" AND rule IN ({','.join('?' * len(rules))})"
            params += list(rules)
        sql += f" ORDER BY seq LIMIT {int(limit)}"
        with self.store.transaction() as tx:
            rows = tx.fetchall(sql, params)
        return [
            DetectionRecord(str(c), str(r), datetime.fromisoformat(str(f)), int(s))
            for s, c, r, f in rows
        ]

    def close(self) -> None:
        self.store.close()


class SpooledSink:
    """Where ``/v1/events`` puts its detections: the queue, or, while the queue's database is
    unreachable, a local spool file flushed into it first thing on the next append (and by
    :meth:`flush`). :meth:`record` raises ``OSError`` only when neither can be written."""

    def __init__(self, connect: Callable[[], DetectionQueue], spool: Path | str) -> None:
        self.connect = connect
        self.spool = Path(spool)
        with contextlib.suppress(OSError):  # needed only in an outage; _spool then reports it
            self.spool.parent.mkdir(parents=True, exist_ok=True)
        self._queue: DetectionQueue | None = None
        self._held: list[DetectionRecord] = []  # neither queued nor spooled yet

    @property
    def queue(self) -> DetectionQueue:
        """The queue, (re)connected on demand: a connection lost in an outage is not reused."""
        if self._queue is None:
            self._queue = self.connect()
        return self._queue

    def record(self, records: Sequence[DetectionRecord]) -> str:
        """``queued`` or ``spooled`` (the database is down; kept on disk, nothing lost). When
        the spool cannot be written either, the detections are held in memory, retried with
        the next call, and ``OSError`` is raised (the caller answers 503 and logs it)."""
        batch = [*self._held, *records]
        try:
            self.flush()
            self.queue.append(batch)
            self._held = []
            return "queued"
        except StoreUnavailable:
            self._drop()
        try:
            self._spool(batch)
        except OSError:
            self._held = batch
            raise
        self._held = []
        return "spooled"

    def _drop(self) -> None:
        if self._queue is not None:
            with contextlib.suppress(Exception):  # already broken: closing may fail too
                self._queue.close()
            self._queue = None

    def _spool(self, records: Sequence[DetectionRecord]) -> None:
        with open(self.spool, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            for r in records:
                line = {"customer_id": r.customer_id, "rule": r.rule}
                line["fired_at"] = r.fired_at.replace(tzinfo=None).isoformat()
                f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def flush(self) -> int:
        """Move spooled detections into the queue (under the spool's lock, so processes sharing
        it never flush a line twice or lose one written meanwhile); returns how many were new.
        Raises :class:`StoreUnavailable` (the spool kept) while the database is down."""
        if not self.spool.exists() or self.spool.stat().st_size == 0:
            return 0
        with open(self.spool, "r+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            records = []
            for line in f:
                if not line.endswith("\n"):
                    break  # torn by a crash mid-write: the request that wrote it got no answer
                d = json.loads(line)
                records.append(
                    DetectionRecord(
                        d["customer_id"], d["rule"], datetime.fromisoformat(d["fired_at"])
                    )
                )
            n = self.queue.append(records)
            f.seek(0)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return n

    def pending(self) -> int:
        """Detections waiting in the spool."""
        if not self.spool.exists():
            return 0
        with open(self.spool, encoding="utf-8") as f:
            return sum(1 for _ in f)

    def close(self) -> None:
        self._drop()
