"""Rewards through a double-entry ledger: one payout per eligible customer, never missed or doubled.

A reward is a transfer with a deterministic id (campaign x customer). Two phases: *pending* on
send (budget -> reserved), *posted* on the qualifying event within the expiry (reserved ->
customer payable), *voided* when it expires unclaimed (reserved -> budget); a late receipt of an
event that happened inside the window re-posts a voided transfer. Every state change writes its
entries under deterministic ids in the same transaction, so a retried step is a no-op, and the
entries always sum to zero. The payout is handed to a provider with the transfer id as its
idempotency key and marked paid only on its acknowledgement: a crash between the two pays again
under the same key, which the provider ignores. :func:`reconcile` reports eligible vs pending vs
posted vs voided vs paid, with amounts, and any broken invariant.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from src.contact.store_sql import SQLContactStore, Tx

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS reward_transfers (
        transfer_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        amount DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        sent_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        event_id TEXT,
        paid INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE IF NOT EXISTS ledger_entries (
        entry_id TEXT PRIMARY KEY,
        transfer_id TEXT NOT NULL,
        account TEXT NOT NULL,
        amount DOUBLE PRECISION NOT NULL
    )""",
)


def transfer_id(campaign_id: str, customer_id: str) -> str:
    return hashlib.sha256(f"reward\x1f{campaign_id}\x1f{customer_id}".encode()).hexdigest()[:32]


class PayoutProvider(Protocol):
    def pay(self, idempotency_key: str, customer_id: str, amount: float) -> bool:
        """True once the provider has (now or before, under this key) paid."""
        ...


@dataclass(frozen=True)
class Reconciliation:
    counts: dict[str, int]
    amounts: dict[str, float]
    unpaid_posted: int
    entries_sum: float
    problems: tuple[str, ...]


class JsonlPayouts:
    """A payout provider that appends each payout to a JSONL file and honours the idempotency
    key (a key it has seen is acknowledged again, not paid twice): the default for the CLI."""

    def __init__(self, path: Path | str) -> None:
        import json

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip():
                    self.keys.add(json.loads(line)["idempotency_key"])

    def pay(self, idempotency_key: str, customer_id: str, amount: float) -> bool:
        import json
        import os

        if idempotency_key in self.keys:
            return True
        record = {"idempotency_key": idempotency_key, "customer_id": customer_id, "amount": amount}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.keys.add(idempotency_key)
        return True


class RewardLedger:
    """Rewards of campaigns in the contact store's database."""

    def __init__(self, store: SQLContactStore, budget_krw: dict[str, float] | None = None) -> None:
        self.store = store
        self.budget = budget_krw or {}
        store.ensure(DDL)

    @staticmethod
    def _entries(tx: Tx, tid: str, phase: str, moves: dict[str, float]) -> None:
        for account, amount in moves.items():
            tx.execute(
                "INSERT INTO ledger_entries (entry_id, transfer_id, account, amount) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (entry_id) DO NOTHING",
                (f"{tid}:{phase}:{account}", tid, account, amount),
            )

    def pend(
        self,
        campaign_id: str,
        customer_id: str,
        message_id: str,
        amount: float,
        sent_at: datetime,
        expires_days: int,
    ) -> str | None:
        """Reserve the reward at send; None if reserved (now or before), else the reason."""
        tid = transfer_id(campaign_id, customer_id)
        with self.store.transaction() as tx:
            if tx.postgres:
                tx.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 17))", (campaign_id,))
            if tx.fetchone("SELECT 1 FROM reward_transfers WHERE transfer_id = ?", (tid,)):
                return None
            budget = self.budget.get(campaign_id)
            if budget is not None:
                row = tx.fetchone(
                    "SELECT COALESCE(SUM(amount), 0) FROM reward_transfers "
                    "WHERE campaign_id = ? AND state IN ('pending', 'posted')",
                    (campaign_id,),
                )
                if float(row[0] if row else 0) + amount > budget:
                    return "reward_budget_exhausted"
            expires = sent_at + timedelta(days=expires_days)
            tx.execute(
                "INSERT INTO reward_transfers (transfer_id, campaign_id, customer_id, message_id, "
                "amount, state, sent_at, expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                (
                    tid,
                    campaign_id,
                    customer_id,
                    message_id,
                    amount,
                    sent_at.isoformat(),
                    expires.isoformat(),
                ),
            )
            self._entries(
                tx,
                tid,
                "pend",
                {f"{campaign_id}:budget": -amount, f"{campaign_id}:reserved": amount},
            )
        return None

    def post(self, campaign_id: str, customer_id: str, event_id: str, at: datetime) -> bool:
        """The qualifying event: post the reward if it happened within the window. Idempotent."""
        tid = transfer_id(campaign_id, customer_id)
        with self.store.transaction() as tx:
            row = tx.fetchone(
                "SELECT state, amount, sent_at, expires_at FROM reward_transfers WHERE transfer_id = ?",
                (tid,),
            )
            if row is None:
                return False
            state, amount, sent_at, expires_at = row
            if state == "posted":
                return True
            if not (datetime.fromisoformat(sent_at) <= at <= datetime.fromisoformat(expires_at)):
                return False
            if state == "voided":  # a late receipt of an in-window event
                self._entries(
                    tx,
                    tid,
                    "repend",
                    {f"{campaign_id}:budget": -amount, f"{campaign_id}:reserved": amount},
                )
            self._entries(
                tx,
                tid,
                "post",
                {f"{campaign_id}:reserved": -amount, f"customer:{customer_id}:payable": amount},
            )
            tx.execute(
                "UPDATE reward_transfers SET state = 'posted', event_id = ? WHERE transfer_id = ?",
                (event_id, tid),
            )
        return True

    def expire(self, now: datetime) -> int:
        """Void pending rewards whose window has closed; returns how many."""
        with self.store.transaction() as tx:
            rows = tx.fetchall(
                "SELECT transfer_id, campaign_id, amount FROM reward_transfers "
                "WHERE state = 'pending' AND expires_at < ?",
                (now.isoformat(),),
            )
            for tid, campaign_id, amount in rows:
                self._entries(
                    tx,
                    tid,
                    "void",
                    {f"{campaign_id}:reserved": -amount, f"{campaign_id}:budget": amount},
                )
                tx.execute(
                    "UPDATE reward_transfers SET state = 'voided' WHERE transfer_id = ?", (tid,)
                )
        return len(rows)

    def pay(self, provider: PayoutProvider, after_each: Callable[[str], None] | None = None) -> int:
        """Pay every posted, unpaid reward (the transfer id is the provider's idempotency key);
        marked paid only on the provider's ack. Returns how many were marked paid."""
        with self.store.transaction() as tx:
            rows = tx.fetchall(
                "SELECT transfer_id, customer_id, amount FROM reward_transfers "
                "WHERE state = 'posted' AND paid = 0 ORDER BY transfer_id"
            )
        done = 0
        for tid, customer_id, amount in rows:
            if not provider.pay(tid, customer_id, float(amount)):
                continue
            if after_each is not None:
                after_each(tid)  # tests crash here: paid at the provider, not yet marked
            with self.store.transaction() as tx:
                self._entries(
                    tx, tid, "payout", {f"customer:{customer_id}:payable": -amount, "cash": amount}
                )
                tx.execute("UPDATE reward_transfers SET paid = 1 WHERE transfer_id = ?", (tid,))
            done += 1
        return done

    def reconcile(self, campaign_id: str | None = None) -> Reconciliation:
        """Counts and amounts per state, posted-but-unpaid, and the ledger's balance (of one
        campaign, or of all)."""
        where, params = ("WHERE campaign_id = ?", (campaign_id,)) if campaign_id else ("", ())
        also = "AND campaign_id = ?" if campaign_id else ""
        with self.store.transaction() as tx:
            states = tx.fetchall(
                "SELECT state, COUNT(*), COALESCE(SUM(amount), 0), SUM(paid) "
                f"FROM reward_transfers {where} GROUP BY state",
                params,
            )
            total = tx.fetchone(
                "SELECT COALESCE(SUM(e.amount), 0) FROM ledger_entries e JOIN reward_transfers t "
                f"ON t.transfer_id = e.transfer_id {where.replace('campaign_id', 't.campaign_id')}",
                params,
            )
            unpaid = tx.fetchone(
                "SELECT COUNT(*) FROM reward_transfers WHERE state = 'posted' AND paid = 0 " + also,
                params,
            )
            paid_not_posted = tx.fetchone(
                "SELECT COUNT(*) FROM reward_transfers WHERE state <> 'posted' AND paid = 1 "
                + also,
                params,
            )
        counts = {s: int(n) for s, n, _, _ in states}
        amounts = {s: float(a) for s, _, a, _ in states}
        counts["paid"] = sum(int(p or 0) for *_, p in states)
        entries_sum = float(total[0]) if total else 0.0
        problems = []
        if abs(entries_sum) > 1e-6:
            problems.append(f"ledger entries sum to {entries_sum}, not 0")
        if paid_not_posted and paid_not_posted[0]:
            problems.append(f"{paid_not_posted[0]} paid reward(s) not posted")
        return Reconciliation(
            counts, amounts, int(unpaid[0]) if unpaid else 0, entries_sum, tuple(problems)
        )

    def transfers(self) -> list[tuple[Any, ...]]:
        with self.store.transaction() as tx:
            return tx.fetchall(
                "SELECT transfer_id, customer_id, state, paid FROM reward_transfers ORDER BY transfer_id"
            )
