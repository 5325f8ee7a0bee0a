"""Everything a campaign run writes, in the contact store's database (one transaction each).

Tables: the outbox (one row per campaign x step x customer, deterministic id), the decisions
(every segment member's arm and, when not contacted, the reason: ``campaign why``), the segment
snapshots and holdout records (versioned), the responses (receipts, opens, clicks,
conversions), approvals (history kept) and the rewards ledger (:mod:`src.campaigns.ledger`).

Schema versions: the tables are created and upgraded by :data:`MIGRATIONS`, applied in order on
open and recorded in ``campaign_schema``, so a database written by an older release (which had
no version table: version 0) opens and is upgraded in place, in one transaction, under a lock
(two processes opening it at once apply each migration once).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from src.contact.store_sql import SQLContactStore, Tx

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS campaign_outbox (
        message_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        fallback TEXT,
        offer_id TEXT NOT NULL,
        content TEXT NOT NULL,
        send_at TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        provider_id TEXT,
        sent_channel TEXT,
        sent_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS campaign_outbox_status ON campaign_outbox (campaign_id, status)",
    """CREATE TABLE IF NOT EXISTS campaign_decisions (
        campaign_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        arm TEXT NOT NULL,
        reason TEXT,
        channel TEXT,
        message_id TEXT,
        run_id TEXT NOT NULL,
        winner TEXT,
        PRIMARY KEY (campaign_id, step_id, customer_id)
    )""",
    """CREATE TABLE IF NOT EXISTS campaign_segments (
        campaign_id TEXT NOT NULL,
        version TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        arm TEXT NOT NULL,
        PRIMARY KEY (campaign_id, version, customer_id)
    )""",
    """CREATE TABLE IF NOT EXISTS campaign_runs (
        run_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        segment_version TEXT NOT NULL,
        holdout_version TEXT NOT NULL,
        bundle_hash TEXT NOT NULL,
        started_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS campaign_events (
        message_id TEXT NOT NULL,
        event TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (message_id, event)
    )""",
    """CREATE TABLE IF NOT EXISTS campaign_ticks (
        campaign_id TEXT NOT NULL,
        occurrence TEXT NOT NULL,
        ran_at TEXT NOT NULL,
        PRIMARY KEY (campaign_id, occurrence)
    )""",
    """CREATE TABLE IF NOT EXISTS campaign_approvals (
        seq INTEGER NOT NULL,
        campaign_id TEXT NOT NULL,
        bundle_hash TEXT NOT NULL,
        action TEXT NOT NULL,
        user_name TEXT NOT NULL,
        at TEXT NOT NULL,
        bundle TEXT NOT NULL,
        PRIMARY KEY (campaign_id, seq)
    )""",
)


#: the tables a trigger campaign and receipts add (version 2): where a triggered message came
#: from, the receipt file an event was read from, and each trigger campaign's read position
DDL_V2: tuple[str, ...] = (
    "ALTER TABLE campaign_outbox ADD COLUMN detection_id TEXT",
    "ALTER TABLE campaign_events ADD COLUMN source TEXT",
    """CREATE TABLE IF NOT EXISTS campaign_trigger_cursors (
        campaign_id TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
)
#: version 3: each refusal of a repeat entry (``when.re_entry``), one row per customer and
#: refused send time (a step's decision row is the customer's first verdict, so a later
#: occurrence's refusal needs its own record for ``campaign why``)
DDL_V3: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS campaign_reentries (
        campaign_id TEXT NOT NULL,
        step_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        at TEXT NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (campaign_id, step_id, customer_id, at)
    )""",
)
#: (version, what it does, statements), in order; never edit a released entry, append one
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "outbox, decisions, segments, runs, events, ticks, approvals", DDL),
    (2, "triggered messages, receipt sources, trigger cursors", DDL_V2),
    (3, "re-entry refusals", DDL_V3),
)
SCHEMA_DDL = """CREATE TABLE IF NOT EXISTS campaign_schema (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


class SchemaError(RuntimeError):
    """The database was written by a newer release than this code."""


def migrate(store: SQLContactStore) -> list[int]:
    """Apply the migrations the database lacks, in order, in one transaction; returns the
    versions applied. Version 1 only creates what is missing, so a database of the release
    before versioning (its tables, no ``campaign_schema``) counts as version 0 and upgrades."""
    from datetime import datetime

    applied: list[int] = []
    latest = MIGRATIONS[-1][0]
    with store.transaction() as tx:
        if tx.postgres:  # one migrator at a time; SQLite's BEGIN IMMEDIATE already is
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('nextoffer.campaign_schema'))")
        tx.execute(SCHEMA_DDL)
        row = tx.fetchone("SELECT MAX(version) FROM campaign_schema")
        current = int(row[0]) if row and row[0] is not None else 0
        if current > latest:
            raise SchemaError(
                f"campaign store schema version {current} is newer than this code's ({latest}): "
                "upgrade nextoffer"
            )
        for version, description, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                tx.execute(statement)
            tx.execute(
                "INSERT INTO campaign_schema (version, description, applied_at) VALUES (?, ?, ?)",
                (version, description, datetime.now().isoformat()),
            )
            applied.append(version)
    return applied


def schema_version(store: SQLContactStore) -> int:
    with store.transaction() as tx:
        row = tx.fetchone("SELECT MAX(version) FROM campaign_schema")
    return int(row[0]) if row and row[0] is not None else 0


def message_id(campaign_id: str, step_id: str, customer_id: str, occurrence: str = "") -> str:
    """Deterministic: a rerun computes the same id, so nothing is written or charged twice;
    each occurrence of a recurring campaign has its own ids."""
    key = f"{campaign_id}\x1f{step_id}\x1f{customer_id}".encode()
    if occurrence:
        key += f"\x1f{occurrence}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


class CampaignDB:
    """The campaign tables beside the contact charges (same database, same transactions)."""

    def __init__(self, store: SQLContactStore) -> None:
        self.store = store
        self.migrated = migrate(store)

    def frame(
        self, sql: str, params: Sequence[Any] = (), columns: Sequence[str] = ()
    ) -> pd.DataFrame:
        with self.store.transaction() as tx:
            rows = tx.fetchall(sql, params)
        return pd.DataFrame(rows, columns=list(columns))

    def existing_messages(self, tx: Tx, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = list(ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            found |= {
                r[0]
                for r in tx.fetchall(
                    f"SELECT message_id FROM campaign_outbox WHERE message_id IN ({marks})", chunk
                )
            }
        return found

    def save_segment(self, campaign_id: str, version: str, arms: pd.Series) -> None:
        """The segment snapshot with each member's arm (the versioned holdout record)."""
        with self.store.transaction() as tx:
            if tx.fetchone(
                "SELECT 1 FROM campaign_segments WHERE campaign_id = ? AND version = ? LIMIT 1",
                (campaign_id, version),
            ):
                return
            tx.executemany(
                "INSERT INTO campaign_segments (campaign_id, version, customer_id, arm) "
                "VALUES (?, ?, ?, ?)",
                [(campaign_id, version, c, a) for c, a in arms.items()],
            )

    def segment(self, campaign_id: str, version: str | None = None) -> pd.DataFrame:
        """A saved snapshot (default: the latest run's)."""
        if version is None:
            runs = self.frame(
                "SELECT segment_version FROM campaign_runs WHERE campaign_id = ? "
                "ORDER BY started_at DESC",
                (campaign_id,),
                ["v"],
            )
            if runs.empty:
                return pd.DataFrame(columns=["customer_id", "arm"])
            version = str(runs["v"].iloc[0])
        return self.frame(
            "SELECT customer_id, arm FROM campaign_segments WHERE campaign_id = ? AND version = ?",
            (campaign_id, version),
            ["customer_id", "arm"],
        )

    def record_events(self, events: Iterable[tuple[str, str, str]]) -> None:
        """Receipts and responses: (message_id, event, at ISO); idempotent."""
        rows = list(events)
        if not rows:
            return
        sql = (
            "INSERT INTO campaign_events (message_id, event, at) VALUES (?, ?, ?) "
            "ON CONFLICT (message_id, event) DO NOTHING"
        )
        with self.store.transaction() as tx:
            tx.executemany(sql, rows)

    def outbox(self, campaign_id: str) -> pd.DataFrame:
        cols = [
            "message_id",
            "step_id",
            "customer_id",
            "channel",
            "offer_id",
            "status",
            "attempts",
            "sent_channel",
            "send_at",
        ]
        return self.frame(
            f"SELECT {', '.join(cols)} FROM campaign_outbox WHERE campaign_id = ?",
            (campaign_id,),
            cols,
        )

    def decisions(self, campaign_id: str) -> pd.DataFrame:
        cols = ["step_id", "customer_id", "arm", "reason", "channel", "message_id"]
        return self.frame(
            f"SELECT {', '.join(cols)} FROM campaign_decisions WHERE campaign_id = ?",
            (campaign_id,),
            cols,
        )

    def events(self, campaign_id: str) -> pd.DataFrame:
        return self.frame(
            "SELECT e.message_id, o.step_id, o.customer_id, e.event, e.at FROM campaign_events e "
            "JOIN campaign_outbox o ON o.message_id = e.message_id WHERE o.campaign_id = ?",
            (campaign_id,),
            ["message_id", "step_id", "customer_id", "event", "at"],
        )

    def why(self, campaign_id: str, customer_id: str) -> pd.DataFrame:
        """Per step: the customer's arm and why they were (not) contacted, the message, and
        (reason ``arbitration_lost``) the campaign that won the contact; then each later
        occurrence ``when.re_entry`` refused (reason ``re_entry``, ``at`` its send time)."""
        cols = ["step_id", "arm", "reason", "channel", "status", "winner", "at"]
        first = self.frame(
            "SELECT d.step_id, d.arm, COALESCE(d.reason, 'contacted'), d.channel, o.status, "
            "COALESCE(d.winner, ''), COALESCE(o.send_at, '') FROM campaign_decisions d "
            "LEFT JOIN campaign_outbox o ON o.message_id = d.message_id "
            "WHERE d.campaign_id = ? AND d.customer_id = ? ORDER BY d.step_id",
            (campaign_id, customer_id),
            cols,
        )
        again = self.frame(
            "SELECT r.step_id, COALESCE(d.arm, ''), 're_entry', NULL, NULL, '', r.at "
            "FROM campaign_reentries r LEFT JOIN campaign_decisions d ON "
            "d.campaign_id = r.campaign_id AND d.step_id = r.step_id "
            "AND d.customer_id = r.customer_id "
            "WHERE r.campaign_id = ? AND r.customer_id = ? ORDER BY r.step_id, r.at",
            (campaign_id, customer_id),
            cols,
        )
        return first if again.empty else pd.concat([first, again], ignore_index=True)

    def mark_arbitration_lost(self, loser: str, winners: Sequence[str]) -> int:
        """A capped member of ``loser`` whom an earlier-arbitrated campaign (``winners``, in
        order) reached gets reason ``arbitration_lost`` and that campaign's id. Idempotent."""
        marked = 0
        with self.store.transaction() as tx:
            for winner in winners:
                rows = tx.fetchall(
                    "SELECT d.step_id, d.customer_id FROM campaign_decisions d "
                    "WHERE d.campaign_id = ? AND substr(d.reason, 1, 4) = 'cap_' AND EXISTS ("
                    "SELECT 1 FROM campaign_outbox o WHERE o.campaign_id = ? "
                    "AND o.customer_id = d.customer_id AND o.status IN ('pending', 'sent'))",
                    (loser, winner),
                )
                tx.executemany(
                    "UPDATE campaign_decisions SET reason = 'arbitration_lost', winner = ? "
                    "WHERE campaign_id = ? AND step_id = ? AND customer_id = ?",
                    [(winner, loser, step, cust) for step, cust in rows],
                )
                marked += len(rows)
        return marked
