"""The decision and reward log in PostgreSQL: one log shared by every replica of the service.

Same contract as :class:`~src.serving.log.SqliteDecisionLog` (the :class:`DecisionLog` protocol):
a decision is acknowledged only once the transaction holding it has committed; requests queued
while one commit runs go together in the next (group commit: one transaction, one multi-row
INSERT for the decisions, the rewards pipelined behind it, one round trip to wait for). One
writer thread per replica owns one connection; the event loop hands it a batch and gets one
``call_soon_threadsafe`` back.

Idempotent: a decision id is stored once (``ON CONFLICT DO NOTHING``), so a batch retried after
a lost connection cannot duplicate anything; a reward is stored once per (decision, kind); the
same reward again is ``duplicate``, with another value ``conflict``, for an id no replica logged
``unknown_decision``.

Failure: when PostgreSQL cannot be reached a write raises (the service answers "show nothing" for
a decision and 503 for a reward) and the next batch reconnects by itself; no request waits longer
than ``timeout_s`` (``tcp_user_timeout`` bounds a silent network). :meth:`ping` tells ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg

from src.serving.log import (
    CommitStats,
    DecisionRecord,
    RewardOutcome,
    RewardRecord,
    _decision_row,
)

_DECISION_COLUMNS = 23
ROWS_PER_STATEMENT = 1_000  # x 23 parameters: under PostgreSQL's 65,535 per statement


def schema_sql(schema: str) -> str:
    """The tables (the SQLite log's columns, PostgreSQL types; JSON kept as text so an export
    reads the same from either backend)."""
    return f"""
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.decisions (
    decision_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    day INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    slot TEXT NOT NULL,
    channel TEXT NOT NULL,
    device TEXT,
    page TEXT,
    request_time TEXT,
    offer_id TEXT,
    product TEXT,
    prob DOUBLE PRECISION,
    candidates TEXT NOT NULL,
    pmf TEXT NOT NULL,
    scores TEXT NOT NULL,
    excluded TEXT NOT NULL,
    policy TEXT NOT NULL,
    model_versions TEXT NOT NULL,
    cold_start INTEGER NOT NULL,
    fallback INTEGER NOT NULL,
    fallback_reason TEXT,
    view_as_of TEXT,
    flags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_day ON {schema}.decisions (day);
CREATE TABLE IF NOT EXISTS {schema}.rewards (
    decision_id TEXT NOT NULL REFERENCES {schema}.decisions (decision_id),
    kind TEXT NOT NULL,
    value_krw DOUBLE PRECISION,
    received_at TEXT NOT NULL,
    PRIMARY KEY (decision_id, kind)
);
"""


@functools.lru_cache(maxsize=64)
def _insert_decisions(schema: str, n: int) -> str:
    """``$1..$n`` placeholders, sent as they are (a :class:`psycopg.RawCursor`): converting
    thousands of ``%s`` costs psycopg more CPU than the insert itself."""
    rows = (
        "(" + ", ".join(f"${r * _DECISION_COLUMNS + c + 1}" for c in range(_DECISION_COLUMNS)) + ")"
        for r in range(n)
    )
    return (
        f"INSERT INTO {schema}.decisions VALUES {', '.join(rows)} "
        "ON CONFLICT (decision_id) DO NOTHING"
    )


def _reward_sql(schema: str) -> str:
    """One reward: (decision known, inserted now, the stored value if it was there already).
    Statements of one transaction see each other's rows, so a repeat inside a batch is seen."""
    return f"""
WITH d AS (SELECT 1 FROM {schema}.decisions WHERE decision_id = %(id)s),
ins AS (
    INSERT INTO {schema}.rewards
    SELECT %(id)s, %(kind)s, %(value)s, %(at)s WHERE EXISTS (SELECT 1 FROM d)
    ON CONFLICT (decision_id, kind) DO NOTHING RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM d), EXISTS (SELECT 1 FROM ins),
       (SELECT value_krw FROM {schema}.rewards WHERE decision_id = %(id)s AND kind = %(kind)s),
       EXISTS (SELECT 1 FROM {schema}.rewards WHERE decision_id = %(id)s AND kind = %(kind)s)
"""


def conninfo(url: str, timeout_s: float) -> dict[str, Any]:
    """Connection keywords: ``url`` plus bounded waits (connect, and unacknowledged writes on a
    silent network), so an unreachable server fails a request instead of hanging it."""
    return {
        "conninfo": url,
        "connect_timeout": max(2, round(timeout_s)),  # libpq: whole seconds, 2 at least
        "tcp_user_timeout": int(timeout_s * 1000),
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
        "application_name": "nextoffer-serving",
    }


def ensure_schema(url: str, schema: str, timeout_s: float = 5.0) -> None:
    """Create the schema and tables if missing (replicas starting together take turns)."""
    with psycopg.connect(**conninfo(url, timeout_s)) as con, con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"nextoffer-log:{schema}",))
        con.execute(schema_sql(schema))


class LogUnavailable(ConnectionError):
    """A write failed. ``maybe_written``: the connection broke after the transaction was sent,
    so it may have committed; a contact charged for it must then stay charged (a cap counts one
    contact too many rather than let a logged contact go uncounted)."""

    def __init__(self, message: str, maybe_written: bool) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


@dataclass
class _Batch:
    jobs: list[tuple[str, Any]]
    done: Callable[[list[Any] | None, BaseException | None], None]


class _LoopBatcher:
    """Requests of one event loop waiting for the writer: one batch in flight at a time; what
    arrives meanwhile goes with the next commit."""

    def __init__(self, log: PostgresDecisionLog, loop: asyncio.AbstractEventLoop) -> None:
        self.log = log
        self.loop = loop
        self.pending: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.busy = False
        self.scheduled = False

    def add(self, kind: str, record: Any) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        self.pending.append((kind, record, future))
        if not self.busy and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._send)
        return future

    def _send(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        batch = self.pending[: self.log.max_batch]
        del self.pending[: len(batch)]
        futures = [f for _, _, f in batch]
        self.busy = True
        loop = self.loop

        def done(results: list[Any] | None, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self._resolve, futures, results, error)

        self.log._queue.put(_Batch([(k, r) for k, r, _ in batch], done))

    def _resolve(
        self, futures: list[asyncio.Future[Any]], results: list[Any] | None, error: Any
    ) -> None:
        self.busy = False
        for i, future in enumerate(futures):
            if future.done():  # the request timed out or was cancelled; the write stands
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None if results is None else results[i])
        if self.pending:
            self._send()


class PostgresDecisionLog:
    """A :class:`~src.serving.log.DecisionLog` in PostgreSQL (``url``: ``postgresql://...``)."""

    def __init__(
        self,
        url: str,
        schema: str = "nextoffer",
        *,
        max_batch: int = 512,
        timeout_s: float = 2.0,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
            raise ValueError(f"log_schema: {schema!r} is not a plain identifier")
        self.url = url
        self.schema = schema
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._on_commit = on_commit
        self._reward = _reward_sql(schema)
        self._con: psycopg.Connection[Any] | None = None
        self._ping_con: psycopg.Connection[Any] | None = None
        self._ping_lock = threading.Lock()
        self._schema_ready = False
        with contextlib.suppress(psycopg.Error):  # not reachable now: the first write retries
            self._ensure_schema()
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._batchers: dict[asyncio.AbstractEventLoop, _LoopBatcher] = {}
        self.stats = CommitStats()
        self.last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pg-log-writer", daemon=True)
        self._thread.start()

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            ensure_schema(self.url, self.schema, self.timeout_s)
            self._schema_ready = True

    # -- the async interface ---------------------------------------------------------------------
    async def append_decision(self, record: DecisionRecord) -> None:
        await self._submit("decision", record)

    async def append_reward(self, record: RewardRecord) -> RewardOutcome:
        return await self._submit("reward", record)

    async def _submit(self, kind: str, record: Any) -> Any:
        if self._closed:
            raise RuntimeError("the decision log is closed")
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            for old in [lp for lp in self._batchers if lp.is_closed()]:
                del self._batchers[old]
            batcher = self._batchers[loop] = _LoopBatcher(self, loop)
        future = batcher.add(kind, record)
        # shield: a timeout answers the request, the write itself still resolves its future;
        # asyncio.timeout rather than wait_for: no task per request
        try:
            async with asyncio.timeout(2 * self.timeout_s + 1):
                return await asyncio.shield(future)
        except TimeoutError as error:  # still queued or in flight: it may commit later
            raise LogUnavailable("PostgreSQL log: no answer in time", True) from error

    def submit_blocking(self, kind: str, record: Any) -> Any:
        """The same write from a thread without an event loop (tools, tests)."""
        event, box = threading.Event(), dict[str, Any]()

        def done(results: list[Any] | None, error: BaseException | None) -> None:
            box.update(result=None if results is None else results[0], error=error)
            event.set()

        self._queue.put(_Batch([(kind, record)], done))
        event.wait()
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    # -- health and reads --------------------------------------------------------------------------
    def ping(self) -> None:
        """Raise unless PostgreSQL answers on this replica's check connection."""
        with self._ping_lock:
            try:
                if self._ping_con is None or self._ping_con.closed:
                    self._ping_con = psycopg.connect(
                        **conninfo(self.url, self.timeout_s), autocommit=True
                    )
                self._ping_con.execute("SELECT 1")
                self._ensure_schema()
            except psycopg.Error as error:
                if self._ping_con is not None:
                    self._ping_con.close()
                self._ping_con = None
                raise ConnectionError(f"PostgreSQL log: {_first_line(error)}") from error

    def recent_contacts(self, since_day: int) -> list[tuple[str, str, str, int]]:
        with psycopg.connect(**conninfo(self.url, self.timeout_s)) as con:
            rows = con.execute(
                f"SELECT customer_id, channel, offer_id, day FROM {self.schema}.decisions "
                "WHERE offer_id IS NOT NULL AND day >= %s",
                (since_day,),
            ).fetchall()
        return [tuple(r) for r in rows]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        for con in (self._con, self._ping_con):
            if con is not None:
                con.close()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items, n, stop = [item], len(item.jobs), False
            while n < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
                n += len(nxt.jobs)
            self._commit(items)
            if stop:
                return

    def _connection(self) -> psycopg.Connection[Any]:
        if self._con is None or self._con.closed or self._con.broken:
            if self._con is not None:
                self._con.close()
            self._con = None
            self._ensure_schema()
            self._con = psycopg.connect(**conninfo(self.url, self.timeout_s), autocommit=True)
        return self._con

    def _commit(self, items: list[_Batch]) -> None:
        started = time.perf_counter()
        jobs = [j for item in items for j in item.jobs]
        results: list[Any] = []
        error: BaseException | None = None
        maybe_written = False
        for attempt in range(2):  # a connection that died while idle gets one fresh retry
            try:
                con = self._connection()
            except psycopg.Error as e:  # nothing was sent
                error = e
                break
            try:
                results = self._write(con, jobs)
                error = None
                break
            except psycopg.OperationalError as e:
                error = e
                maybe_written = True
                if self._con is not None:
                    self._con.close()
                self._con = None
                if attempt == 0 and time.perf_counter() - started > self.timeout_s:
                    break
            except BaseException as e:  # noqa: BLE001 - every waiter must hear about it
                error = e
                if self._con is not None and not self._con.closed:
                    with contextlib.suppress(psycopg.Error):
                        self._con.rollback()
                break
        if error is not None:
            self.stats.failures += 1
            self.last_error = _first_line(error)
            message = f"PostgreSQL log: {self.last_error}"
            for item in items:
                item.done(None, LogUnavailable(message, maybe_written))
            return
        self.last_error = None
        self.stats.commits += 1
        self.stats.writes += len(jobs)
        self.stats.last_batch = len(jobs)
        if self._on_commit is not None:
            self._on_commit(len(jobs), time.perf_counter() - started)
        i = 0
        for item in items:
            item.done(results[i : i + len(item.jobs)], None)
            i += len(item.jobs)

    def _write(self, con: psycopg.Connection[Any], jobs: list[tuple[str, Any]]) -> list[Any]:
        """One transaction: every decision of the batch, then its rewards (pipelined). Only
        decisions, in one statement: that statement alone (autocommit), one round trip."""
        rows = [_decision_row(r) for kind, r in jobs if kind == "decision"]
        rewards = [(i, r) for i, (kind, r) in enumerate(jobs) if kind == "reward"]
        results: list[Any] = [None] * len(jobs)
        raw = psycopg.RawCursor(con)
        if not rewards and len(rows) <= ROWS_PER_STATEMENT:
            raw.execute(
                _insert_decisions(self.schema, len(rows)),
                [v for row in rows for v in row],
                prepare=False,
            )
            return results
        with con.pipeline(), con.transaction():
            for k in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[k : k + ROWS_PER_STATEMENT]
                raw.execute(
                    _insert_decisions(self.schema, len(chunk)),
                    [v for row in chunk for v in row],
                    prepare=False,
                )
            cursors = [
                (
                    i,
                    r,
                    con.execute(
                        self._reward,
                        {
                            "id": r.decision_id,
                            "kind": r.kind,
                            "value": r.value_krw,
                            "at": r.received_at,
                        },
                    ),
                )
                for i, r in rewards
            ]
        for i, r, cur in cursors:
            known, inserted, value, present = cur.fetchone()  # type: ignore[misc]
            results[i] = _outcome(r, known, inserted, value, present)
        for i in [i for i, _, _ in cursors if results[i] is None]:
            # another replica stored it after this statement's snapshot: look again
            r = jobs[i][1]
            row = con.execute(
                f"SELECT value_krw FROM {self.schema}.rewards WHERE decision_id = %s AND kind = %s",
                (r.decision_id, r.kind),
            ).fetchone()
            results[i] = _outcome(r, True, False, row[0] if row else None, row is not None)
        return results


def _outcome(
    r: RewardRecord, known: bool, inserted: bool, value: float | None, present: bool
) -> RewardOutcome | None:
    """stored / duplicate / conflict / unknown_decision; None: stored by someone else, unseen."""
    if not known:
        return "unknown_decision"
    if inserted:
        return "stored"
    if not present:
        return None
    return "duplicate" if value == r.value_krw else "conflict"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# --- export -----------------------------------------------------------------------------------


def read_postgres_log(
    url: str, schema: str = "nextoffer", timeout_s: float = 10.0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decisions, rewards) as stored, the same frames as :func:`src.serving.log.read_log`."""
    with psycopg.connect(**conninfo(url, timeout_s)) as con:
        frames = []
        for query in (
            f"SELECT * FROM {schema}.decisions ORDER BY created_at, decision_id",
            f"SELECT * FROM {schema}.rewards ORDER BY received_at, decision_id",
        ):
            cur = con.execute(query)
            columns = [c.name for c in cur.description or []]
            frames.append(pd.DataFrame(cur.fetchall(), columns=columns))
    return frames[0], frames[1]
