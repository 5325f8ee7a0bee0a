"""The in-app inbox: campaign messages waiting for the customer's next visit to an offer slot.

An in-app campaign step (channel ``app``, a ``slot``) has no outside provider: its provider is
the offer slot itself. The campaign's in-app adapter (``src.campaigns.adapters.InAppAdapter``)
writes each outbox message here (``put``: idempotent on the message id, so a resend after a
crash writes nothing twice); the slot (``src.serving``), on a decision for that customer and
slot, serves the oldest valid pending message instead of its own choice and *claims* it.

Why a table in the contact store's database (not Redis, not the campaign process): the slot and
the campaigns already share that database for the fatigue caps (one count per customer x
channel x day/week), and a claim is one conditional ``UPDATE ... WHERE status = 'pending'``:
of any number of replicas deciding for the customer at once exactly one claims the message.
The claim is the channel's delivery acknowledgement. If the decision holding it cannot be
logged, the slot gives the claim back (:meth:`InAppInbox.unclaim`) and the message is served
on a later visit. A process killed between the claim and the log write leaves a delivered
message no logged decision shows (at most once, never twice): :meth:`InAppInbox.orphans` lists
such claims for an operator to compare with the decision log.

The charge of the contact was taken when the outbox row was written (same transaction), so
serving a message charges nothing again. Times are naive local times of the bank's zone (the
campaign's ``send_at`` and the service's clock), compared as ISO strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from src.contact.store_sql import SQLContactStore

INBOX_DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS inapp_inbox (
        message_id TEXT PRIMARY KEY,
        campaign_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        slot TEXT NOT NULL,
        channel TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        content TEXT NOT NULL,
        valid_from TEXT NOT NULL,
        valid_until TEXT NOT NULL,
        status TEXT NOT NULL,
        decision_id TEXT,
        delivered_at TEXT,
        reason TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS inapp_inbox_customer ON inapp_inbox (customer_id, slot, status)",
    "CREATE INDEX IF NOT EXISTS inapp_inbox_campaign ON inapp_inbox (campaign_id, status)",
)
#: a message's states: waiting, shown by a logged decision, or refused by the slot's eligibility
STATUSES = ("pending", "delivered", "undeliverable")


def iso(when: datetime | str) -> str:
    """The one ISO form the inbox compares (seconds, naive local time)."""
    at = datetime.fromisoformat(when) if isinstance(when, str) else when
    return at.replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class InAppMessage:
    """One in-app campaign message for one customer and slot, valid in [valid_from, valid_until)."""

    message_id: str
    campaign_id: str
    customer_id: str
    slot: str
    channel: str
    offer_id: str
    content: str
    valid_from: str
    valid_until: str


_COLUMNS = (
    "message_id, campaign_id, customer_id, slot, channel, offer_id, content, valid_from, "
    "valid_until"
)


class InAppInbox:
    """The ``inapp_inbox`` table beside the contact charges (same database)."""

    def __init__(self, store: SQLContactStore) -> None:
        self.store = store
        store.ensure(INBOX_DDL)

    def put(self, message: InAppMessage) -> bool:
        """Queue a message (idempotent on its id): True if written now."""
        if message.valid_until <= message.valid_from:
            raise ValueError(
                f"in-app message {message.message_id}: valid_until {message.valid_until} is not "
                f"after valid_from {message.valid_from}"
            )
        with self.store.transaction() as tx:
            cur = tx.execute(
                f"INSERT INTO inapp_inbox ({_COLUMNS}, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') ON CONFLICT (message_id) DO NOTHING",
                (
                    message.message_id,
                    message.campaign_id,
                    message.customer_id,
                    message.slot,
                    message.channel,
                    message.offer_id,
                    message.content,
                    iso(message.valid_from),
                    iso(message.valid_until),
                ),
            )
            return bool(cur.rowcount)

    def next_for(
        self, customer_id: str, slot: str, channel: str, now: datetime
    ) -> InAppMessage | None:
        """The oldest pending message valid at ``now`` for the customer, slot and channel."""
        at = iso(now)
        with self.store.transaction() as tx:
            row = tx.fetchone(
                f"SELECT {_COLUMNS} FROM inapp_inbox WHERE customer_id = ? AND slot = ? "
                "AND channel = ? AND status = 'pending' AND valid_from <= ? AND valid_until > ? "
                "ORDER BY valid_from, message_id LIMIT 1",
                (customer_id, slot, channel, at, at),
            )
        return None if row is None else InAppMessage(*(str(v) for v in row))

    def claim(self, message_id: str, decision_id: str, now: datetime) -> bool:
        """Mark the message delivered by ``decision_id``: True for exactly one caller."""
        with self.store.transaction() as tx:
            cur = tx.execute(
                "UPDATE inapp_inbox SET status = 'delivered', decision_id = ?, delivered_at = ? "
                "WHERE message_id = ? AND status = 'pending'",
                (decision_id, iso(now), message_id),
            )
            return cur.rowcount == 1

    def unclaim(self, message_id: str, decision_id: str) -> None:
        """Give back a claim whose decision was not logged (the customer never saw it)."""
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE inapp_inbox SET status = 'pending', decision_id = NULL, "
                "delivered_at = NULL WHERE message_id = ? AND decision_id = ? "
                "AND status = 'delivered'",
                (message_id, decision_id),
            )

    def refuse(self, message_id: str, reason: str, now: datetime) -> None:
        """The slot may not show it (e.g. the customer now holds the product): undeliverable."""
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE inapp_inbox SET status = 'undeliverable', reason = ?, delivered_at = ? "
                "WHERE message_id = ? AND status = 'pending'",
                (reason, iso(now), message_id),
            )

    def outcomes(self, campaign_id: str | None = None) -> list[tuple[Any, ...]]:
        """(message_id, status, delivered_at, valid_until, reason, decision_id) of every message
        (of one campaign): what the campaign reconciles its in-app sends against."""
        where, params = ("WHERE campaign_id = ?", (campaign_id,)) if campaign_id else ("", ())
        with self.store.transaction() as tx:
            return tx.fetchall(
                "SELECT message_id, status, delivered_at, valid_until, reason, decision_id "
                f"FROM inapp_inbox {where} ORDER BY message_id",
                params,
            )

    def orphans(self, logged: set[str]) -> list[str]:
        """Delivered messages whose decision id is not in ``logged`` (the decision log's ids):
        claims a crash kept from being logged."""
        return [
            str(r[0]) for r in self.outcomes() if r[1] == "delivered" and str(r[5]) not in logged
        ]
