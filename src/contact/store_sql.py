"""The SQL contact store: caps counted in SQLite (embedded default) or PostgreSQL (shared).

Why SQL: an outbound message and its cap charge must commit together, or a crash between the
two either loses a charge (a customer over-contacted) or keeps a charge for a message never
written (a customer silently under-contacted). :meth:`SQLContactStore.transaction` hands out
one transaction in which the campaign outbox writes its row and :meth:`charge_in` records the
contact; both commit or neither does.

Concurrency: SQLite takes the database write lock at ``BEGIN IMMEDIATE``; PostgreSQL takes a
transaction-scoped advisory lock per customer, so two senders can never both take a customer's
last allowed contact. Charges are idempotent on ``contact_id`` (a retried send never charges
twice). URLs: a path or ``sqlite:///path`` for SQLite, ``postgresql://...`` for PostgreSQL
(``schema=`` isolates one deployment or test run).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from src.contact.caps import WEEK_DAYS, ContactCaps, Usage
from src.contact.policy import PolicyConfig
from src.contact.store import Charge, StoreUnavailable

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

CHARGES_DDL = (
    """CREATE TABLE IF NOT EXISTS contact_charges (
        contact_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        day INTEGER NOT NULL,
        source TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS contact_charges_customer_day ON contact_charges (customer_id, day)",
)


class Tx:
    """One open transaction: ``execute`` takes ``?`` placeholders on both engines."""

    def __init__(self, cursor: Any, postgres: bool) -> None:
        self._cursor = cursor
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            sql = sql.replace("?", "%s")
        return self._cursor.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            sql = sql.replace("?", "%s")
        self._cursor.executemany(sql, [tuple(r) for r in rows])

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return [tuple(r) for r in self._cursor.fetchall()]

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self.execute(sql, params)
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)


class SQLContactStore:
    """A :class:`~src.contact.store.ContactStore` on SQLite or PostgreSQL."""

    def __init__(self, url: str | Path, schema: str | None = None, timeout: float = 30.0) -> None:
        self.url = str(url)
        self.postgres = self.url.startswith(("postgresql://", "postgres://"))
        self.schema = schema
        self._lock = threading.RLock()
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema: {schema!r} is not a plain SQL identifier")
        try:
            if self.postgres:
                import psycopg

                self._conn: Any = psycopg.connect(
                    self.url, connect_timeout=int(timeout), autocommit=True
                )
                if schema:
                    self._conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    self._conn.execute(f'SET search_path TO "{schema}"')
            else:
                path = self.url.removeprefix("sqlite:///") if "://" in self.url else self.url
                if path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(
                    path, timeout=timeout, isolation_level=None, check_same_thread=False
                )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
        except Exception as error:  # the driver's own errors vary; callers fail closed
            raise StoreUnavailable(f"contact store {self._redacted()}: {error}") from error
        self.ensure(CHARGES_DDL)

    def _redacted(self) -> str:
        return re.sub(r"//[^@/]*@", "//***@", self.url)

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One write transaction: everything executed in it commits together or not at all."""
        with self._lock:
            try:
                if self.postgres:
                    with self._conn.transaction(), self._conn.cursor() as cur:
                        yield Tx(cur, True)
                else:
                    cur = self._conn.cursor()
                    cur.execute("BEGIN IMMEDIATE")
                    try:
                        yield Tx(cur, False)
                    except BaseException:
                        cur.execute("ROLLBACK")
                        raise
                    cur.execute("COMMIT")
            except (sqlite3.OperationalError, sqlite3.InterfaceError) as error:
                raise StoreUnavailable(f"contact store {self._redacted()}: {error}") from error
            except Exception as error:
                if self.postgres and _is_connection_error(error):
                    raise StoreUnavailable(f"contact store {self._redacted()}: {error}") from error
                raise

    def ensure(self, ddl: Sequence[str]) -> None:
        """Create tables/indexes (idempotent); other modules add theirs (the outbox)."""
        with self.transaction() as tx:
            for statement in ddl:
                tx.execute(statement)

    # -- the ContactStore protocol -------------------------------------------------------
    def usage(self, customer_id: str, channel: str, day: int) -> Usage:
        with self.transaction() as tx:
            return self.usage_in(tx, customer_id, channel, day)

    def usage_in(self, tx: Tx, customer_id: str, channel: str, day: int) -> Usage:
        rows = tx.fetchall(
            "SELECT day, channel, offer_id FROM contact_charges "
            "WHERE customer_id = ? AND day > ? AND day <= ?",
            (customer_id, day - WEEK_DAYS, day),
        )
        return usage_of(rows, channel, day)

    def try_charge(self, charge: Charge, policy: PolicyConfig) -> str | None:
        with self.transaction() as tx:
            return self.charge_in(tx, charge, policy)

    def charge_in(self, tx: Tx, charge: Charge, policy: PolicyConfig) -> str | None:
        """Check the caps and record ``charge`` inside ``tx``: None if charged (or charged
        before under this contact id), else the cap reason."""
        if tx.postgres:
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(?, 16))", (charge.customer_id,)
            )
        if tx.fetchone("SELECT 1 FROM contact_charges WHERE contact_id = ?", (charge.contact_id,)):
            return None
        usage = self.usage_in(tx, charge.customer_id, charge.channel, charge.day)
        blocked = ContactCaps(policy).blocked(usage, charge.channel, [charge.offer_id])
        if blocked:
            return blocked[charge.offer_id]
        tx.execute(
            "INSERT INTO contact_charges (contact_id, customer_id, channel, offer_id, day, source) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                charge.contact_id,
                charge.customer_id,
                charge.channel,
                charge.offer_id,
                charge.day,
                charge.source,
            ),
        )
        return None

    def charges(self, first_day: int, last_day: int) -> list[tuple[Any, ...]]:
        """(customer_id, channel, offer_id, day) of every charge in the days (bulk reads, e.g. a
        campaign's dry run over a whole audience)."""
        with self.transaction() as tx:
            return tx.fetchall(
                "SELECT customer_id, channel, offer_id, day FROM contact_charges "
                "WHERE day >= ? AND day <= ?",
                (first_day, last_day),
            )

    def charge_many_in(
        self, tx: Tx, charges: Sequence[Charge], policy: PolicyConfig
    ) -> list[str | None]:
        """:meth:`charge_in` for a batch, in order, with a few statements instead of a few per
        charge: the batch's customers are locked (PostgreSQL: advisory locks in sorted order,
        so two batches cannot deadlock), their week read once, the caps applied in order (a
        charge counts against the ones after it), the accepted ones inserted together."""
        if not charges:
            return []
        customers = sorted({c.customer_id for c in charges})
        if tx.postgres:
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(c, 16)) "
                "FROM (SELECT DISTINCT c FROM unnest(?::text[]) AS c ORDER BY c) AS s",
                (customers,),
            )
        ids = [c.contact_id for c in charges]
        done: set[str] = set()
        history: dict[str, list[tuple[Any, ...]]] = {}
        first = min(c.day for c in charges) - WEEK_DAYS + 1
        last = max(c.day for c in charges)
        for i in range(0, len(customers), 500):
            chunk = customers[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for cid, day, channel, offer in tx.fetchall(
                "SELECT customer_id, day, channel, offer_id FROM contact_charges "
                f"WHERE customer_id IN ({marks}) AND day >= ? AND day <= ?",
                (*chunk, first, last),
            ):
                history.setdefault(cid, []).append((day, channel, offer))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            done |= {
                r[0]
                for r in tx.fetchall(
                    f"SELECT contact_id FROM contact_charges WHERE contact_id IN ({marks})", chunk
                )
            }
        caps = ContactCaps(policy)
        out: list[str | None] = []
        accepted = []
        for charge in charges:
            if charge.contact_id in done:
                out.append(None)
                continue
            rows = [
                r
                for r in history.get(charge.customer_id, ())
                if charge.day - WEEK_DAYS < r[0] <= charge.day
            ]
            usage = usage_of(rows, charge.channel, charge.day)
            blocked = caps.blocked(usage, charge.channel, [charge.offer_id])
            if blocked:
                out.append(blocked[charge.offer_id])
                continue
            history.setdefault(charge.customer_id, []).append(
                (charge.day, charge.channel, charge.offer_id)
            )
            done.add(charge.contact_id)
            accepted.append(
                (
                    charge.contact_id,
                    charge.customer_id,
                    charge.channel,
                    charge.offer_id,
                    charge.day,
                    charge.source,
                )
            )
            out.append(None)
        if accepted:
            tx.executemany(
                "INSERT INTO contact_charges (contact_id, customer_id, channel, offer_id, day, "
                "source) VALUES (?, ?, ?, ?, ?, ?)",
                accepted,
            )
        return out

    def release(self, contact_id: str) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM contact_charges WHERE contact_id = ?", (contact_id,))

    def ping(self) -> None:
        with self.transaction() as tx:
            tx.fetchone("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def drop_schema(self) -> None:
        """PostgreSQL: drop this store's schema (tests clean up their isolated schema)."""
        if self.postgres and self.schema:
            with self._lock, self._conn.transaction():
                self._conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def usage_of(rows: Sequence[tuple[Any, ...]], channel: str, day: int) -> Usage:
    """A :class:`Usage` from (day, channel, offer_id) rows of the last week."""
    channel_day = channel_week = total = 0
    offer_day: dict[str, int] = {}
    offer_week: dict[str, int] = {}
    for d, ch, offer in rows:
        total += 1
        offer_week[offer] = offer_week.get(offer, 0) + 1
        if d == day:
            offer_day[offer] = offer_day.get(offer, 0) + 1
        if ch == channel:
            channel_week += 1
            channel_day += d == day
    return Usage(channel_day, channel_week, offer_day, offer_week, total)


def _is_connection_error(error: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
