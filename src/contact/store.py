"""The contact store: one durable count of contacts per customer, shared by every sender.

The offer slot (``src.serving``, every replica) and the outbound sender (``src.campaigns``) charge
the same store, so a customer's fatigue caps hold across the slot and all campaigns. A charge is
checked against the policy's caps and recorded atomically; it is idempotent on ``contact_id`` (a
retried send or decision never charges twice). Implementations: SQL (SQLite embedded, PostgreSQL
shared; a charge can commit in the same transaction as an outbox row) and Redis (one Lua script).
Optimistic use: read :meth:`usage`, choose an offer, then :meth:`try_charge`; if the charge is
refused because another replica took the last contact meanwhile, choose again.

Which store counts for both: the SQL one. A campaign's charge must commit in the same
transaction as its outbox row (a crash between the two would keep a charge for a message never
written, or write a message never charged), and Redis cannot join a SQL transaction; so the
slot charges the campaigns' table (``serving.contact_store_url`` = ``sqlite:///...`` or
``postgresql://...``, the same database as ``campaigns.store_url``), not the campaigns Redis.
Both charge under the same names: the request's or the step's channel (``app`` for the slot
and in-app steps), the customer's local day (days since 1970-01-01), the offer id. A Redis
store (one script per charge, no fsync) serves the slot's replicas alone: its counts are not
the campaigns'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from src.contact.caps import Usage
from src.contact.policy import PolicyConfig

# the reasons a charge is refused; the same codes as ContactCaps.blocked
CAP_REASONS: tuple[str, ...] = (
    "cap_channel_day",
    "cap_channel_week",
    "cap_offer_day",
    "cap_offer_week",
)


@dataclass(frozen=True, slots=True)
class Charge:
    """One contact: ``day`` is the customer's local day number (days since 1970-01-01);
    ``source`` is ``"slot"`` or the campaign id."""

    contact_id: str
    customer_id: str
    channel: str
    offer_id: str
    day: int
    source: str


class StoreUnavailable(RuntimeError):
    """The store cannot be reached: callers fail closed (no contact that needs a cap check)."""


class ContactStore(Protocol):
    """Caps counted in one place for every replica and campaign."""

    def usage(self, customer_id: str, channel: str, day: int) -> Usage:
        """The customer's counts as of ``day`` (no charge)."""
        ...

    def try_charge(self, charge: Charge, policy: PolicyConfig) -> str | None:
        """Atomically check the caps and record the contact: None if charged (or already
        charged under this ``contact_id``), else the reason code from :data:`CAP_REASONS`.
        Raises :class:`StoreUnavailable` when the store cannot be reached."""
        ...

    def release(self, contact_id: str) -> None:
        """Undo a charge whose contact was not made (a decision that could not be logged)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers (for ``/readyz``)."""
        ...

    def close(self) -> None: ...
