"""The durable decision and reward log: SQLite in WAL mode with group commits.

A decision is acknowledged only after the transaction holding it has committed, so whatever a
client received is in the log even if the process is killed the next instant. One writer thread
owns the connection and commits whatever requests queued while the previous commit ran: under
load one fsync covers hundreds of decisions, at low load a decision waits for its own commit
only. Request handlers ``await`` a future the writer resolves.

Cheap on the event loop's GIL: requests of one loop are handed to the writer as one batch (one
queue put, and one ``call_soon_threadsafe`` back when it has committed, however many requests
it held), and a batch of decisions goes in as one multi-row INSERT in autocommit mode (its own
atomic, durable transaction), so the writer needs the GIL back only a few times per commit
(every SQLite step releases it, and each time the writer waits for the event loop to let go).

:class:`DecisionLog` is the interface; a PostgreSQL backend implements the same four methods
(``append_decision``, ``append_reward``, ``recent_contacts``, ``close``) with the same meaning,
and :class:`LogHealth` (``/readyz``).

Faults of the embedded file (the service must never acknowledge a row that is not in the file a
restart will read): the file's identity (device, inode) is checked by the writer before every
commit and again after it, before the writes are acknowledged.

- Deleted or replaced *between* commits: the writer closes its connection and opens the file now
  at the path (a new one, created 0600 with the schema, if it is missing; the replacement if an
  operator put one there, e.g. a restored copy), then writes. The service recovers by itself;
  no restart.
- Deleted or replaced *during* a commit: the batch reached the unlinked inode only, so it fails
  (decisions show nothing, rewards get a 503) and the next commit reopens as above.
- Rows acknowledged before the deletion were durable in the file that was deleted: removing it
  was the operator's act, and the service cannot bring them back. It says so once, as a warning in
  the log and in ``/readyz``'s detail (:attr:`SqliteDecisionLog.notice`); a reward for a decision
  that was only in the deleted file is then ``unknown_decision`` (404).

:meth:`SqliteDecisionLog.health` (``/readyz``) says not ready, and why, when the file cannot be
reopened, is not writable by its owner, the disk is (nearly) full, the last write failed, or a
heartbeat commit fails (the heartbeat goes through the writer, so a probe after a deletion is what
reopens an idle log). New log files are created 0600 (SQLite gives its ``-wal`` and ``-shm`` files
the database file's mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd
from pydantic_core import to_json

RewardOutcome = Literal["stored", "duplicate", "conflict", "no_offer", "unknown_decision"]
"""What :meth:`DecisionLog.append_reward` did (the HTTP answer in brackets):

- ``stored``: the first reward of its (decision, kind), now durable (200, stored true);
- ``duplicate``: the same (decision, kind) was stored before with the same ``value_krw``
  (None equals None; values compare as stored doubles): an idempotent retry, nothing written
  (200, stored false);
- ``conflict``: the same (decision, kind) was stored before with a different ``value_krw``; the
  first value stands, nothing written (409);
- ``no_offer``: the decision showed nothing (``offer_id`` is NULL): nothing could be clicked or
  bought, nothing written (422 naming ``decision_id``);
- ``unknown_decision``: no such decision in the log (404).
"""
LOG_FILE_MODE = 0o600
MIN_FREE_BYTES = 4 * 1024 * 1024  # less free space on the log's file system: not ready
log = logging.getLogger("nextoffer.serving")
FAILURE_MEMORY_SECONDS = 10.0  # a failed write keeps the log not ready this long without traffic


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision as logged. ``candidates``/``pmf``: the eligible offers the policy chose among,
    in the order it saw them, and its probability for each (what off-policy evaluation needs)."""

    decision_id: str
    created_at: str  # ISO, local time of the service
    day: int  # local day ordinal (contact caps)
    customer_id: str
    slot: str
    channel: str
    device: str | None
    page: str | None
    request_time: str | None
    offer_id: str | None
    product: str | None
    prob: float | None
    candidates: tuple[str, ...]
    pmf: tuple[float, ...]
    scores: dict[str, float | None]
    excluded: dict[str, str]
    policy: str
    model_versions: dict[str, str]
    cold_start: bool
    fallback: bool
    fallback_reason: str | None
    view_as_of: str | None
    flags: tuple[str, ...] = ()
    # a campaign's in-app text shown instead of the offer's creative (not logged: the inbox
    # keeps it under the message id in ``model_versions``)
    content: str | None = None


@dataclass(frozen=True, slots=True)
class RewardRecord:
    decision_id: str
    kind: str  # click | conversion
    value_krw: float | None
    received_at: str


class DecisionLog(Protocol):
    """What the service needs from a log backend (SQLite here, PostgreSQL in ``log_postgres``).

    Every backend keeps the same semantics:

    - a decision is acknowledged (``append_decision`` returns) only once it is durable;
    - rewards are keyed by (decision_id, kind): at most one click and one conversion per decision,
      the first value stands. ``append_reward`` checks, in this order and atomically with the
      write (one transaction): the decision exists (else ``unknown_decision``), it showed an offer
      (else ``no_offer``), no reward of that kind is stored (else ``duplicate`` if the stored
      ``value_krw`` equals the new one, ``conflict`` if not); only then is it stored
      (``stored``). See :data:`RewardOutcome` for the HTTP answers;
    - a write that cannot be made durable raises (the service then shows nothing, or answers a
      reward with 503); it never returns as if written.
    """

    async def append_decision(self, record: DecisionRecord) -> None:
        """Return once the decision is durable; raise if it could not be written."""

    async def append_reward(self, record: RewardRecord) -> RewardOutcome:
        """Store a reward once per (decision, kind); say what happened (:data:`RewardOutcome`)."""

    def recent_contacts(self, since_day: int) -> Iterable[tuple[str, str, str, int]]:
        """(customer_id, channel, offer_id, day) of every decision that showed an offer since a day."""

    def close(self) -> None:
        """Flush what is queued and release the backend."""


@runtime_checkable
class LogHealth(Protocol):
    """A log backend that can say whether it can take writes now (``/readyz``)."""

    async def health(self) -> str | None:
        """None when writes can be made durable now; else why not (one line, for operators)."""


SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
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
    prob REAL,
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
CREATE INDEX IF NOT EXISTS decisions_day ON decisions (day);
CREATE TABLE IF NOT EXISTS rewards (
    decision_id TEXT NOT NULL REFERENCES decisions (decision_id),
    kind TEXT NOT NULL,
    value_krw REAL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (decision_id, kind)
);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

_DECISION_COLUMNS = 23
_INSERT_DECISION = f"INSERT INTO decisions VALUES ({', '.join(['?'] * _DECISION_COLUMNS)})"
ROWS_PER_STATEMENT = 512  # x 23 parameters: well under SQLite's 32,766


@functools.lru_cache(maxsize=ROWS_PER_STATEMENT)
def _insert_decisions(n: int) -> str:
    """``INSERT INTO decisions VALUES (...), (...)`` for ``n`` rows (one statement, one step)."""
    row = f"({', '.join(['?'] * _DECISION_COLUMNS)})"
    return "INSERT INTO decisions VALUES " + ", ".join([row] * n)


def _json(value: Any) -> str:
    return to_json(value).decode()


def _decision_row(r: DecisionRecord) -> tuple[Any, ...]:
    return (
        r.decision_id,
        r.created_at,
        r.day,
        r.customer_id,
        r.slot,
        r.channel,
        r.device,
        r.page,
        r.request_time,
        r.offer_id,
        r.product,
        r.prob,
        ",".join(r.candidates),
        _json([round(p, 6) for p in r.pmf]),
        _json(r.scores),
        _json(r.excluded),
        r.policy,
        _json(r.model_versions),
        int(r.cold_start),
        int(r.fallback),
        r.fallback_reason,
        r.view_as_of,
        _json(list(r.flags)),
    )


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place (autocommit; transactions explicit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # created 0600: decisions name customers
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, LOG_FILE_MODE))
    con = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=30,
        cached_statements=ROWS_PER_STATEMENT + 16,
    )  # every batch size's INSERT
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.executescript(SCHEMA)
    return con


@dataclass
class _Job:
    kind: str  # decision | reward
    record: Any
    done: Callable[[Any, BaseException | None], None]


@dataclass
class _Batch:
    """Writes of one event loop handed over together; ``done(results, error)`` is called once."""

    jobs: list[tuple[str, Any]]
    done: Callable[[list[Any] | None, BaseException | None], None]


@dataclass
class CommitStats:
    """Group-commit counters (the service exports them as metrics)."""

    commits: int = 0
    writes: int = 0
    failures: int = 0
    last_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class _LoopBatcher:
    """The requests of one event loop waiting for the writer: at most one batch in flight; what
    arrives meanwhile goes with the next commit (group commit without a wake-up per request)."""

    def __init__(self, log: SqliteDecisionLog, loop: asyncio.AbstractEventLoop) -> None:
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
            self.loop.call_soon(self._send)  # requests of this loop iteration join the batch
        return future

    def _send(self) -> None:
        self.scheduled = False
        if self.busy or not self.pending:
            return
        batch = self.pending[: self.log._max_batch]
        del self.pending[: len(batch)]
        futures = [f for _, _, f in batch]
        if self.log._closed:
            self._resolve(futures, None, RuntimeError("the decision log is closed"))
            return
        self.busy = True
        loop = self.loop

        def done(results: list[Any] | None, error: BaseException | None) -> None:
            # a closed loop raises RuntimeError: nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve, futures, results, error)

        self.log._queue.put(_Batch([(k, r) for k, r, _ in batch], done))

    def _resolve(
        self,
        futures: list[asyncio.Future[Any]],
        results: list[Any] | None,
        error: BaseException | None,
    ) -> None:
        self.busy = False
        for i, future in enumerate(futures):
            _resolve(future, None if results is None else results[i], error)
        if self.pending:
            self._send()


class SqliteDecisionLog:
    """The default :class:`DecisionLog`: one writer thread, one transaction per batch."""

    def __init__(
        self,
        path: Path,
        synchronous: str = "FULL",
        max_batch: int = 512,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._synchronous = synchronous
        self._con: sqlite3.Connection | None = connect(self.path, synchronous)
        self._identity = _identity(self.path)
        self._journal = _journal_identity(self.path)
        self._set_aside: list[str] = []  # the old journal's files renamed, for the notice
        self.reopened = 0  # times the file was found deleted or replaced and opened anew
        self.notice: str | None = None  # what the last reopening means for acknowledged rows
        self._last_error: tuple[float, str] | None = None  # (monotonic time, error) of a failure
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | _Batch | None] = queue.SimpleQueue()
        self._batchers: dict[asyncio.AbstractEventLoop, _LoopBatcher] = {}
        self.stats = CommitStats()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._thread.start()

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
        return await batcher.add(kind, record)

    def submit_blocking(self, kind: str, record: Any) -> Any:
        """The same write from a thread without an event loop (tools, tests)."""
        event, box = threading.Event(), dict[str, Any]()

        def done(result: Any, error: BaseException | None) -> None:
            box.update(result=result, error=error)
            event.set()

        self._queue.put(_Job(kind, record, done))
        event.wait()
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    async def health(self) -> str | None:
        """Why the log cannot take writes now, or None (see the module docstring)."""
        if self._closed:
            return "decision log closed"
        problem = self._file_problem()
        if problem is not None:
            return problem
        last = self._last_error
        if last is not None and time.monotonic() - last[0] < FAILURE_MEMORY_SECONDS:
            return f"decision log: the last write failed: {last[1]}"
        try:
            await asyncio.wait_for(self._submit("heartbeat", time.time()), 5.0)
        except TimeoutError:
            return "decision log: the writer did not commit a heartbeat within 5 s"
        except Exception as error:  # noqa: BLE001 - the reason is the answer
            return f"decision log: a heartbeat commit failed: {_one_line(error)}"
        return None

    def _file_problem(self) -> str | None:
        """A problem of the file at ``path``; a missing or replaced file is none (the writer
        reopens it at its next commit, the heartbeat's included)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"decision log file {self.path} is not accessible: {_one_line(error)}"
        if not st.st_mode & stat.S_IWUSR:
            return f"decision log file {self.path} is read-only (mode {stat.S_IMODE(st.st_mode):o})"
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return None
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            return f"disk of the decision log {self.path.parent} is full ({free} bytes free)"
        return None

    def _same_file(self) -> bool:
        try:
            return self._con is not None and _identity(self.path) == self._identity
        except OSError:
            return False

    def _reopen(self) -> sqlite3.Connection:
        """(Writer thread) the connection to the file now at ``path``, opened anew if the file was
        deleted or replaced since the last commit (see the module docstring)."""
        if self._same_file():
            assert self._con is not None
            return self._con
        old, self._con = self._con, None
        if old is not None:  # closed first: its -wal is the old file's, never the new one's
            with contextlib.suppress(sqlite3.Error):
                old.close()
        existed = self.path.exists()
        self._set_aside += self._set_aside_old_journal()
        con = connect(self.path, self._synchronous)  # raises: this batch fails, the next retries
        self._con, self._identity = con, _identity(self.path)
        self._journal = _journal_identity(self.path)
        self.reopened += 1
        self.notice = (
            f"decision log file {self.path} was {'replaced' if existed else 'deleted'} while "
            f"open; writing to the file now at that path since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')}: rows acknowledged before were in the old file"
            + (f" (its last pages kept as {', '.join(self._set_aside)})" if self._set_aside else "")
        )
        self._set_aside = []
        log.warning("%s", self.notice)
        return con

    def _set_aside_old_journal(self) -> list[str]:
        """Rename the old file's ``-wal``/``-shm`` (still at the path when only the database was
        deleted or replaced): SQLite ties a WAL to its database by name only, and would replay
        the old file's last pages into the new one. Renamed, not deleted: they hold the old
        file's latest rows. A journal that is not the old file's (an operator's) is left alone."""
        kept = []
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix, identity in zip(("-wal", "-shm"), self._journal, strict=True):
            side = Path(f"{self.path}{suffix}")
            try:
                if identity is None or _identity(side) != identity:
                    continue
                target = side.with_name(f"{side.name}.orphaned-{stamp}")
                os.replace(side, target)
                kept.append(target.name)
            except OSError:
                continue
        return kept

    def _check_identity(self) -> None:
        if not self._same_file():
            raise LogFileLost(
                f"decision log file {self.path} was deleted or replaced during a commit: "
                "the batch is not acknowledged (the next commit opens the file anew)"
            )

    # -- reads -------------------------------------------------------------------------------------
    def recent_contacts(self, since_day: int) -> list[tuple[str, str, str, int]]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            return con.execute(
                "SELECT customer_id, channel, offer_id, day FROM decisions "
                "WHERE offer_id IS NOT NULL AND day >= ?",
                (since_day,),
            ).fetchall()
        finally:
            con.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        if self._con is not None:
            self._con.close()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            items = [item]
            n = _size(item)
            stop = False
            while n < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                items.append(nxt)
                n += _size(nxt)
            self._commit(items)
            if stop:
                return

    def _commit(self, items: list[_Job | _Batch]) -> None:
        started = time.perf_counter()
        jobs = [j for item in items for j in _jobs(item)]
        results: list[Any] = []
        in_transaction = False
        try:
            con = self._reopen()
            if len(jobs) <= ROWS_PER_STATEMENT and all(kind == "decision" for kind, _ in jobs):
                # one INSERT in autocommit mode is its own atomic, durable transaction: one SQLite
                # step (one GIL release) instead of BEGIN, INSERT, COMMIT
                self._insert(con, [_decision_row(record) for _, record in jobs])
                results = [None] * len(jobs)
            else:
                con.execute("BEGIN IMMEDIATE")
                in_transaction = True
                rows: list[tuple[Any, ...]] = []
                for kind, record in jobs:
                    if kind == "decision":
                        rows.append(_decision_row(record))
                        results.append(None)
                    elif kind == "heartbeat":
                        con.execute("INSERT OR REPLACE INTO heartbeat VALUES (1, ?)", (record,))
                        results.append(None)
                    else:
                        self._insert(con, rows)  # a reward may refer to a decision of this batch
                        results.append(self._reward(con, record))
                self._insert(con, rows)
                con.execute("COMMIT")
                in_transaction = False
            self._check_identity()  # committed to the file a restart reads, or not acknowledged
        except BaseException as error:  # noqa: BLE001 - every waiter must hear about it
            if in_transaction and self._con is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._con.execute("ROLLBACK")
            self.stats.failures += 1
            if any(kind != "heartbeat" for kind, _ in jobs):
                self._last_error = (time.monotonic(), _one_line(error))
            for item in items:
                _notify(item, None, error)
            return
        if any(kind != "heartbeat" for kind, _ in jobs):
            self._last_error = None
        self.stats.commits += 1
        self.stats.writes += len(jobs)
        self.stats.last_batch = len(jobs)
        if self._on_commit is not None:
            self._on_commit(len(jobs), time.perf_counter() - started)
        i = 0
        for item in items:
            n = _size(item)
            _notify(item, results[i : i + n], None)
            i += n

    @staticmethod
    def _insert(con: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (and empty the list), :data:`ROWS_PER_STATEMENT` per statement."""
        for i in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[i : i + ROWS_PER_STATEMENT]
            con.execute(_insert_decisions(len(chunk)), [v for row in chunk for v in row])
        rows.clear()

    @staticmethod
    def _reward(con: sqlite3.Connection, r: RewardRecord) -> RewardOutcome:
        """The checks of :class:`DecisionLog`, inside the writer's transaction."""
        decision = con.execute(
            "SELECT offer_id FROM decisions WHERE decision_id = ?", (r.decision_id,)
        ).fetchone()
        if decision is None:
            return "unknown_decision"
        if decision[0] is None:
            return "no_offer"
        stored = con.execute(
            "SELECT value_krw FROM rewards WHERE decision_id = ? AND kind = ?",
            (r.decision_id, r.kind),
        ).fetchone()
        if stored is not None:
            return "duplicate" if stored[0] == r.value_krw else "conflict"
        con.execute(
            "INSERT INTO rewards VALUES (?, ?, ?, ?)",
            (r.decision_id, r.kind, r.value_krw, r.received_at),
        )
        return "stored"


class LogFileLost(OSError):
    """The log file was deleted or replaced under the open connection."""


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _journal_identity(path: Path) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The identities of the database's ``-wal`` and ``-shm`` files (None: not there)."""
    out: list[tuple[int, int] | None] = []
    for suffix in ("-wal", "-shm"):
        try:
            out.append(_identity(Path(f"{path}{suffix}")))
        except OSError:
            out.append(None)
    return out[0], out[1]


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300]


def _size(item: _Job | _Batch) -> int:
    return len(item.jobs) if isinstance(item, _Batch) else 1


def _jobs(item: _Job | _Batch) -> list[tuple[str, Any]]:
    return item.jobs if isinstance(item, _Batch) else [(item.kind, item.record)]


def _notify(item: _Job | _Batch, results: list[Any] | None, error: BaseException | None) -> None:
    if isinstance(item, _Batch):
        item.done(results, error)
    else:
        item.done(None if results is None else results[0], error)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client went away); the write stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- export -----------------------------------------------------------------------------------


def read_log(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(decisions, rewards) as stored, read with a separate connection (safe while serving)."""
    con = sqlite3.connect(Path(path), timeout=30)
    try:
        decisions = pd.read_sql_query(
            "SELECT * FROM decisions ORDER BY created_at, decision_id", con
        )
        rewards = pd.read_sql_query("SELECT * FROM rewards ORDER BY received_at, decision_id", con)
    finally:
        con.close()
    return decisions, rewards


def decisions_for_evaluation(
    decisions: pd.DataFrame,
    rewards: pd.DataFrame,
    reward: Literal["click", "conversion", "value"] = "click",
) -> pd.DataFrame:
    """Decisions that showed an offer, with their rewards: the ``evaluate-policy`` / retraining log.

    Columns: decision_id, ts, customer_id, slot, channel, action (offer id), prob, candidates
    (comma-separated eligible offers), click, convert, value, reward (under ``reward``), policy,
    model_versions, cold_start, fallback, view_as_of. A decision with no reward yet has reward 0.
    Decisions that served a campaign's in-app message (policy ``campaign``, probability 1) are
    left out: a deterministic choice made for the campaign is no draw of the slot's policy, and
    its propensity of 1 would bias an estimate that reads it as one (the full log keeps them).
    """
    shown = decisions.loc[decisions["offer_id"].notna() & (decisions["policy"] != "campaign")]
    shown = shown.copy()
    kinds = rewards.pivot_table(
        index="decision_id", columns="kind", values="received_at", aggfunc="count"
    )
    values = rewards.loc[rewards["kind"] == "conversion"].set_index("decision_id")["value_krw"]
    click = shown["decision_id"].map(kinds["click"] if "click" in kinds else pd.Series(dtype=float))
    convert = shown["decision_id"].map(
        kinds["conversion"] if "conversion" in kinds else pd.Series(dtype=float)
    )
    out = pd.DataFrame(
        {
            "decision_id": shown["decision_id"].astype(str),
            "ts": pd.to_datetime(shown["created_at"]),
            "customer_id": shown["customer_id"].astype(str),
            "slot": shown["slot"].astype(str),
            "channel": shown["channel"].astype(str),
            "action": shown["offer_id"].astype(str),
            "prob": shown["prob"].astype(float),
            "candidates": shown["candidates"].astype(str),
            "click": click.notna().to_numpy(),
            "convert": convert.notna().to_numpy(),
            "value": shown["decision_id"].map(values).fillna(0.0).astype(float).to_numpy(),
            "policy": shown["policy"].astype(str),
            "model_versions": shown["model_versions"].astype(str),
            "cold_start": shown["cold_start"].astype(bool),
            "fallback": shown["fallback"].astype(bool),
            "view_as_of": shown["view_as_of"],
        }
    )
    out["reward"] = {
        "click": out["click"].astype(float),
        "conversion": out["convert"].astype(float),
        "value": out["value"],
    }[reward]
    return out.reset_index(drop=True)


def export_log_files(
    log_path: Path, out_dir: Path, reward: Literal["click", "conversion", "value"] = "click"
) -> dict[str, Path]:
    """Write ``decisions.parquet`` (every decision, as logged), ``rewards.parquet`` and
    ``evaluation_log.parquet`` (:func:`decisions_for_evaluation`) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    decisions, rewards = read_log(log_path)
    paths = {
        "decisions": out_dir / "decisions.parquet",
        "rewards": out_dir / "rewards.parquet",
        "evaluation_log": out_dir / "evaluation_log.parquet",
    }
    decisions.to_parquet(paths["decisions"], index=False)
    rewards.to_parquet(paths["rewards"], index=False)
    decisions_for_evaluation(decisions, rewards, reward).to_parquet(
        paths["evaluation_log"], index=False
    )
    return paths
