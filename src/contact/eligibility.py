"""Who may be shown what: pure functions of the customer's row, the channel and the policy.

Order of checks (the first failing one is the reason given): customer-level blocks (closed
account, accident report, marketing consent for the channel) exclude every offer; then per
offer: product already held, then the offer's targeting rules. A customer the view does not
know (cold start) has no consent on record: outbound channels that need consent are closed to
them, and targeting rules they cannot be checked against exclude the offer.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

from src.contact.policy import Offer, PolicyConfig

# customer-level blocks read from the view (besides consent per channel)
ELIGIBILITY_COLUMNS: tuple[str, ...] = ("is_closed", "is_accident_reported")

_OPS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
    "in": lambda v, ref: v in ref,
    "not_in": lambda v, ref: v not in ref,
}


def needed_columns(policy: PolicyConfig) -> tuple[str, ...]:
    """View columns the eligibility checks read."""
    cols = set(ELIGIBILITY_COLUMNS) | {c for c in policy.consent_by_channel.values() if c}
    cols |= set(policy.held_columns.values())
    for offer in policy.offers:
        cols |= set(offer.target)
    return tuple(sorted(cols))


def customer_block(row: Mapping[str, Any] | None, channel: str, policy: PolicyConfig) -> str | None:
    """The reason no offer may go to this customer on this channel, or None."""
    if channel not in policy.consent_by_channel:
        return "channel_not_allowed"
    consent = policy.consent_by_channel[channel]
    if row is None:
        return "no_consent_on_record" if consent else None
    if row.get("is_closed"):
        return "closed_account"
    if row.get("is_accident_reported"):
        return "accident_report"
    if consent and not row.get(consent):
        return f"no_consent_{channel}"
    return None


def offer_block(row: Mapping[str, Any] | None, offer: Offer, policy: PolicyConfig) -> str | None:
    """The reason this offer may not go to this customer, or None."""
    held = policy.held_columns.get(offer.product)
    if held and row is not None and (row.get(held) or 0) > 0:
        return "product_held"
    for column, ops in offer.target.items():
        value = None if row is None else row.get(column)
        if value is None:
            return f"target_unknown:{column}"
        for op, ref in ops.items():
            try:
                ok = _OPS[op](value, ref)
            except TypeError:
                ok = False
            if not ok:
                return f"target:{column}"
    return None


def exclusions(
    row: Mapping[str, Any] | None, channel: str, offers: Sequence[Offer], policy: PolicyConfig
) -> dict[str, str]:
    """offer id -> reason for every offer of ``offers`` this customer may not get here."""
    blocked = customer_block(row, channel, policy)
    if blocked:
        return {o.offer_id: blocked for o in offers}
    out = {}
    for offer in offers:
        reason = offer_block(row, offer, policy)
        if reason:
            out[offer.offer_id] = reason
    return out
