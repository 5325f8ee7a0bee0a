"""The durable decision and reward log: SQLite in WAL mode with group commits.

A decision is acknowledged only after the transaction holding it has committed, so whatever a
client received is in the log even if the process is killed the next instant. One writer thread
owns the connection and commits whatever requests queued while the previous commit ran: under
load one fsync covers hundreds of decisions, at low load a decision waits for its own commit
only. Request handlers ``await`` a future the writer resolves.

:class:`DecisionLog` is the interface; a PostgreSQL backend implements the same four methods
(``append_decision``, ``append_reward``, ``recent_contacts``, ``close``) with the same meaning.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd

RewardOutcome = Literal["stored", "duplicate", "unknown_decision"]


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


@dataclass(frozen=True, slots=True)
class RewardRecord:
    decision_id: str
    kind: str  # click | conversion
    value_krw: float | None
    received_at: str


class DecisionLog(Protocol):
    """What the service needs from a log backend (SQLite here, PostgreSQL later)."""

    async def append_decision(self, record: DecisionRecord) -> None:
        """Return once the decision is durable; raise if it could not be written."""

    async def append_reward(self, record: RewardRecord) -> RewardOutcome:
        """Store a reward once per (decision, kind); say whether it was new."""

    def recent_contacts(self, since_day: int) -> Iterable[tuple[str, str, str, int]]:
        """(customer_id, channel, offer_id, day) of every decision that showed an offer since a day."""

    def close(self) -> None:
        """Flush what is queued and release the backend."""


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
"""

_INSERT_DECISION = f"INSERT INTO decisions VALUES ({', '.join(['?'] * 23)})"


def _decision_row(r: DecisionRecord) -> tuple[Any, ...]:
    return (r.decision_id, r.created_at, r.day, r.customer_id, r.slot, r.channel, r.device, r.page,
            r.request_time, r.offer_id, r.product, r.prob, ",".join(r.candidates),
            json.dumps([round(p, 6) for p in r.pmf]), json.dumps(r.scores), json.dumps(r.excluded),
            r.policy, json.dumps(r.model_versions), int(r.cold_start), int(r.fallback),
            r.fallback_reason, r.view_as_of, json.dumps(list(r.flags)))


def connect(path: Path, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place (autocommit; transactions explicit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
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
class CommitStats:
    """Group-commit counters (the service exports them as metrics)."""

    commits: int = 0
    writes: int = 0
    failures: int = 0
    last_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class SqliteDecisionLog:
    """The default :class:`DecisionLog`: one writer thread, one transaction per batch."""

    def __init__(self, path: Path, synchronous: str = "FULL", max_batch: int = 512,
                 on_commit: Callable[[int, float], None] | None = None) -> None:
        self.path = Path(path)
        self._con = connect(self.path, synchronous)
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
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
        future: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_resolve, future, result, error)

        self._queue.put(_Job(kind, record, done))
        return await future

    def submit_blocking(self, kind: str, record: Any) -> Any:
        """The same write from a thread without an event loop (tools, tests)."""
        event, box = threading.Event(), {}

        def done(result: Any, error: BaseException | None) -> None:
            box.update(result=result, error=error)
            event.set()

        self._queue.put(_Job(kind, record, done))
        event.wait()
        if box["error"] is not None:
            raise box["error"]
        return box["result"]

    # -- reads -------------------------------------------------------------------------------------
    def recent_contacts(self, since_day: int) -> list[tuple[str, str, str, int]]:
        con = sqlite3.connect(self.path, timeout=30)
        try:
            return con.execute(
                "SELECT customer_id, channel, offer_id, day FROM decisions "
                "WHERE offer_id IS NOT NULL AND day >= ?", (since_day,)).fetchall()
        finally:
            con.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._con.close()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        results: list[Any] = []
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
            for job in batch:
                if job.kind == "decision":
                    con.execute(_INSERT_DECISION, _decision_row(job.record))
                    results.append(None)
                else:
                    results.append(self._reward(con, job.record))
            con.execute("COMMIT")
        except BaseException as error:  # noqa: BLE001 - every waiter must hear about it
            try:
                con.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.stats.failures += 1
            for job in batch:
                job.done(None, error)
            return
        self.stats.commits += 1
        self.stats.writes += len(batch)
        self.stats.last_batch = len(batch)
        if self._on_commit is not None:
            self._on_commit(len(batch), time.perf_counter() - started)
        for job, result in zip(batch, results, strict=True):
            job.done(result, None)

    @staticmethod
    def _reward(con: sqlite3.Connection, r: RewardRecord) -> RewardOutcome:
        if con.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (r.decision_id,)).fetchone() is None:
            return "unknown_decision"
        cur = con.execute("INSERT OR IGNORE INTO rewards VALUES (?, ?, ?, ?)",
                          (r.decision_id, r.kind, r.value_krw, r.received_at))
        return "stored" if cur.rowcount == 1 else "duplicate"


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
        decisions = pd.read_sql_query("SELECT * FROM decisions ORDER BY created_at, decision_id", con)
        rewards = pd.read_sql_query("SELECT * FROM rewards ORDER BY received_at, decision_id", con)
    finally:
        con.close()
    return decisions, rewards


def decisions_for_evaluation(decisions: pd.DataFrame, rewards: pd.DataFrame,
                             reward: Literal["click", "conversion", "value"] = "click") -> pd.DataFrame:
    """Decisions that showed an offer, with their rewards: the ``evaluate-policy`` / retraining log.

    Columns: decision_id, ts, customer_id, slot, channel, action (offer id), prob, candidates
    (comma-separated eligible offers), click, convert, value, reward (under ``reward``), policy,
    model_versions, cold_start, fallback, view_as_of. A decision with no reward yet has reward 0.
    """
    shown = decisions.loc[decisions["offer_id"].notna()].copy()
    kinds = rewards.pivot_table(index="decision_id", columns="kind", values="received_at", aggfunc="count")
    values = rewards.loc[rewards["kind"] == "conversion"].set_index("decision_id")["value_krw"]
    click = shown["decision_id"].map(kinds["click"] if "click" in kinds else pd.Series(dtype=float))
    convert = shown["decision_id"].map(kinds["conversion"] if "conversion" in kinds else pd.Series(dtype=float))
    out = pd.DataFrame({
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
    })
    out["reward"] = {"click": out["click"].astype(float), "conversion": out["convert"].astype(float),
                     "value": out["value"]}[reward]
    return out.reset_index(drop=True)


def export_log_files(log_path: Path, out_dir: Path,
                     reward: Literal["click", "conversion", "value"] = "click") -> dict[str, Path]:
    """Write ``decisions.parquet`` (every decision, as logged), ``rewards.parquet`` and
    ``evaluation_log.parquet`` (:func:`decisions_for_evaluation`) under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    decisions, rewards = read_log(log_path)
    paths = {"decisions": out_dir / "decisions.parquet", "rewards": out_dir / "rewards.parquet",
             "evaluation_log": out_dir / "evaluation_log.parquet"}
    decisions.to_parquet(paths["decisions"], index=False)
    rewards.to_parquet(paths["rewards"], index=False)
    decisions_for_evaluation(decisions, rewards, reward).to_parquet(paths["evaluation_log"], index=False)
    return paths
