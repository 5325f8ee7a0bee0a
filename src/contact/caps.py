"""Contact-frequency caps, counted atomically in memory and rebuilt from the decision log.

Per customer the service keeps the contacts of the last 7 local days: (day, channel, offer), and
their counts for the current day (rebuilt from the contacts when the day changes or a contact is
released, incremented on a reservation), so reading them does not grow with the contacts.
Checking the caps, choosing among the offers still allowed and reserving the contact happen
under one lock, so two concurrent requests can never both take the last allowed contact. The
reservation is released if the decision cannot be logged; after a restart the counts are
rebuilt from the log, which holds exactly the acknowledged decisions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from src.contact.policy import PolicyConfig

WEEK_DAYS = 7
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    """A customer's contacts: on this channel today / in the week, per offer today / in the week."""

    channel_day: int
    channel_week: int
    offer_day: dict[str, int]
    offer_week: dict[str, int]
    week_total: int  # every channel: the bandit's ``exposures_7d``


class _Counts:
    """A customer's contacts counted as of one day (dicts are replaced, never changed in place:
    a :class:`Usage` handed out keeps its values)."""

    __slots__ = ("channel_day", "channel_week", "day", "offer_day", "offer_week", "total")

    def __init__(self, contacts: list[tuple[int, str, str]], day: int) -> None:
        self.day = day
        self.channel_day: dict[str, int] = {}
        self.channel_week: dict[str, int] = {}
        self.offer_day: dict[str, int] = {}
        self.offer_week: dict[str, int] = {}
        self.total = 0
        for d, channel, offer in contacts:
            if d <= day:
                self._add(d == day, channel, offer)

    def _add(self, today: bool, channel: str, offer: str) -> None:
        self.total += 1
        self.channel_week[channel] = self.channel_week.get(channel, 0) + 1
        self.offer_week[offer] = self.offer_week.get(offer, 0) + 1
        if today:
            self.channel_day[channel] = self.channel_day.get(channel, 0) + 1
            self.offer_day[offer] = self.offer_day.get(offer, 0) + 1

    def add(self, channel: str, offer: str) -> None:
        """One more contact today."""
        self.channel_day, self.channel_week = dict(self.channel_day), dict(self.channel_week)
        self.offer_day, self.offer_week = dict(self.offer_day), dict(self.offer_week)
        self._add(True, channel, offer)

    def usage(self, channel: str) -> Usage:
        return Usage(
            self.channel_day.get(channel, 0),
            self.channel_week.get(channel, 0),
            self.offer_day,
            self.offer_week,
            self.total,
        )


class ContactCaps:
    """Lock-protected contact counts of the last :data:`WEEK_DAYS` days per customer."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._contacts: dict[str, list[tuple[int, str, str]]] = {}
        self._counts: dict[str, _Counts] = {}

    def usage(self, customer_id: str, channel: str, day: int) -> Usage:
        """The counts as they stand (no reservation)."""
        with self._lock:
            return self._usage(customer_id, channel, day)

    def _usage(self, customer_id: str, channel: str, day: int) -> Usage:
        contacts = self._contacts.get(customer_id)
        if not contacts:
            return Usage(0, 0, {}, {}, 0)
        counts = self._counts.get(customer_id)
        if counts is None or counts.day != day:
            first = day - WEEK_DAYS + 1
            if contacts[0][0] < first:
                contacts[:] = [c for c in contacts if c[0] >= first]
            counts = self._counts[customer_id] = _Counts(contacts, day)
        return counts.usage(channel)

    def blocked(self, usage: Usage, channel: str, offer_ids: Sequence[str]) -> dict[str, str]:
        """offer id -> cap reason for the offers a contact now would exceed a cap on."""
        cap = self.policy.cap_for(channel)
        if cap.per_day is not None and usage.channel_day >= cap.per_day:
            return dict.fromkeys(offer_ids, "cap_channel_day")
        if cap.per_week is not None and usage.channel_week >= cap.per_week:
            return dict.fromkeys(offer_ids, "cap_channel_week")
        oc = self.policy.offer_cap
        out = {}
        for o in offer_ids:
            if oc.per_day is not None and usage.offer_day.get(o, 0) >= oc.per_day:
                out[o] = "cap_offer_day"
            elif oc.per_week is not None and usage.offer_week.get(o, 0) >= oc.per_week:
                out[o] = "cap_offer_week"
        return out

    def reserve_with(
        self,
        customer_id: str,
        channel: str,
        day: int,
        offer_ids: Sequence[str],
        choose: Callable[[Usage, dict[str, str]], tuple[str | None, T]],
    ) -> T:
        """Atomically: count, let ``choose(usage, blocked)`` pick an offer (or None) among the
        offers not blocked, and reserve the contact for it. Returns what ``choose`` returned."""
        with self._lock:
            usage = self._usage(customer_id, channel, day)
            offer, result = choose(usage, self.blocked(usage, channel, offer_ids))
            if offer is not None:
                self._contacts.setdefault(customer_id, []).append((day, channel, offer))
                counts = self._counts.get(customer_id)
                if counts is not None and counts.day == day:
                    counts.add(channel, offer)
                else:
                    self._counts.pop(customer_id, None)
            return result

    def release(self, customer_id: str, channel: str, day: int, offer_id: str) -> None:
        """Undo a reservation whose decision was not logged."""
        with self._lock:
            contacts = self._contacts.get(customer_id)
            if contacts and (day, channel, offer_id) in contacts:
                contacts.remove((day, channel, offer_id))
                self._counts.pop(customer_id, None)

    def load(self, contacts: Iterable[tuple[str, str, str, int]], today: int) -> int:
        """Rebuild from logged decisions (customer, channel, offer, day); returns how many."""
        n = 0
        with self._lock:
            self._contacts.clear()
            self._counts.clear()
            for customer_id, channel, offer_id, day in sorted(contacts, key=lambda c: c[3]):
                if day > today - WEEK_DAYS:
                    self._contacts.setdefault(customer_id, []).append((day, channel, offer_id))
                    n += 1
        return n

    def prune(self, today: int) -> None:
        """Forget customers with no contact inside the window (bounded memory)."""
        first = today - WEEK_DAYS + 1
        with self._lock:
            for customer_id in list(self._contacts):
                contacts = self._contacts[customer_id]
                kept = [c for c in contacts if c[0] >= first]
                if len(kept) != len(contacts):
                    self._counts.pop(customer_id, None)
                if kept:
                    self._contacts[customer_id] = kept
                else:
                    del self._contacts[customer_id]
