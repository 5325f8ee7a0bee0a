"""The contact gate over a whole audience: one reason code per customer not contacted.

The same checks as the offer slot (``src.contact.eligibility``), vectorised over a segment and
in a fixed order (the first failing one is the reason): re-entry (``when.re_entry``: a repeat
occurrence or detection for someone who already entered), global control, closed account,
accident report, product held, the offer's targeting rules (the slot's own ``offer_block``, so
both read a rule alike: ``target:<column>``, ``target_unknown:<column>``), campaign exclusions,
consent for the channel (none for a channel the policy does not list; messenger falls back to SMS
when only SMS is consented), quiet hours (advertising push/SMS at night without night-time
consent: requeued to the morning or dropped), then the campaign holdout. Fatigue caps are
charged later, per message, against the shared contact store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from src.campaigns.spec import CONSENT_CHANNEL, CampaignSpec, ReEntryAfter, Step
from src.contact.eligibility import offer_block
from src.contact.policy import Offer, PolicyConfig

NIGHT_CHANNELS = ("push", "sms", "lms")
#: the funnel's steps in gate order (reasons); "contact" rows remain
GATE_ORDER: tuple[str, ...] = (
    "re_entry",
    "global_control",
    "closed_account",
    "accident_report",
    "product_held",
    "offer_target",
    "campaign_exclusion",
    "no_consent",
    "quiet_hours_dropped",
    "holdout",
)


def hash_unit(ids: pd.Series | pd.Index, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per id from a salted sha256: stable across runs and machines."""
    out = np.empty(len(ids), dtype=np.float64)
    prefix = salt.encode() + b":"
    for i, cid in enumerate(ids):
        digest = hashlib.sha256(prefix + str(cid).encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def assign_arms(ids: pd.Index, spec: CampaignSpec) -> pd.Series:
    """``global_control`` / ``control`` / ``treatment`` for every segment member (ITT arms)."""
    arm = np.full(len(ids), "treatment", dtype=object)
    if spec.holdout.share > 0:
        arm[hash_unit(ids, spec.salt) < spec.holdout.share] = "control"
    if spec.holdout.global_share > 0:
        arm[hash_unit(ids, spec.holdout.global_salt) < spec.holdout.global_share] = "global_control"
    return pd.Series(arm, index=ids, name="arm")


@dataclass(frozen=True)
class GateResult:
    """Per customer: arm, reason (None = to contact), channel and when to send (local)."""

    frame: pd.DataFrame  # index customer_id: arm, reason, channel, send_at


def in_quiet_hours(hour: np.ndarray | int, start: int, end: int) -> np.ndarray:
    """Local hour inside [start, end) wrapping midnight (21-8: 21..23 and 0..7)."""
    h = np.asarray(hour)
    if start > end:
        return np.asarray((h >= start) | (h < end))
    return np.asarray((h >= start) & (h < end))


def next_morning(local: datetime, end_hour: int) -> datetime:
    """The first ``end_hour``:00 after a night-time ``local`` time."""
    morning = local.replace(hour=end_hour, minute=0, second=0, microsecond=0)
    return morning if morning > local else morning + timedelta(days=1)


def re_entries(spec: CampaignSpec, entries: pd.Series, send_at: pd.Series) -> pd.Index:
    """Who ``when.re_entry`` keeps from entering again. ``entries``: every earlier entry into
    the campaign (customer id -> planned send time of a first-step message, pending or sent;
    repeated per customer); only those before a customer's ``send_at`` count, so a rerun of
    the same occurrence is not its own re-entry. ``once`` refuses anyone with one,
    ``after_days`` anyone whose latest is less than that many days before, ``always`` nobody."""
    rule = spec.when.re_entry
    if rule == "always" or entries.empty or send_at.empty:
        return pd.Index([], dtype=object)
    at = pd.to_datetime(send_at)
    prior = pd.DataFrame(
        {"customer_id": entries.index.astype(str), "entry": pd.to_datetime(entries.to_numpy())}
    )
    prior = prior[prior["customer_id"].isin(at.index)]
    prior = prior[prior["entry"] < prior["customer_id"].map(at)]
    last = prior.groupby("customer_id")["entry"].max()
    if isinstance(rule, ReEntryAfter):
        last = last[at.reindex(last.index) - last < pd.Timedelta(days=rule.after_days)]
    return pd.Index(last.index, dtype=object)


def gate(
    spec: CampaignSpec,
    step: Step,
    members: pd.DataFrame,
    arms: pd.Series,
    policy: PolicyConfig,
    send_at: pd.Series,
    excluded: pd.Index | None = None,
    reentered: pd.Index | None = None,
) -> GateResult:
    """Apply the gate to ``members`` (view rows indexed by customer_id, ``consent_night`` and
    optionally ``timezone`` columns); ``send_at`` is each member's planned local send time in
    the campaign's time zone; ``reentered`` (:func:`re_entries`) are refused first."""
    n = len(members)
    reason = pd.Series([None] * n, index=members.index, dtype=object)

    def mark(mask: np.ndarray | pd.Series, code: str) -> None:
        m = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        reason[m] = code

    if reentered is not None and len(reentered):
        mark(members.index.isin(reentered), "re_entry")
    arm = arms.reindex(members.index).fillna("treatment")
    mark(arm == "global_control", "global_control")
    mark(members.get("is_closed", False), "closed_account")
    mark(members.get("is_accident_reported", False), "accident_report")
    offer = next((o for o in policy.offers if o.offer_id == step.offer_id), None)
    if offer is not None:
        held = policy.held_columns.get(offer.product)
        if held and held in members:
            mark(members[held].fillna(0) > 0, "product_held")
        if offer.target:
            _mark_targeting(reason, members, offer, policy)
    if excluded is not None and len(excluded):
        mark(members.index.isin(excluded), "campaign_exclusion")

    channel = pd.Series(step.channel, index=members.index, dtype=object)
    consented = _consent(members, step.channel, policy)
    if step.fallback is not None:
        fallback_ok = _consent(members, step.fallback, policy)
        use_fallback = ~consented & fallback_ok
        channel[use_fallback] = step.fallback
        consented = consented | fallback_ok
    mark(~consented, f"no_consent_{step.channel}")

    # quiet hours, in the customer's zone (campaign zone when the view has none)
    q = spec.quiet_hours
    local = pd.to_datetime(send_at.reindex(members.index))
    hours, shift_to_morning = _local_hours(local, members, spec.when.timezone, q.end_hour)
    night = (
        in_quiet_hours(hours, q.start_hour, q.end_hour)
        & channel.isin(NIGHT_CHANNELS).to_numpy()
        & (step.kind == "advertising")
        & ~members.get("consent_night", pd.Series(False, index=members.index))
        .fillna(False)
        .astype(bool)
        .to_numpy()
    )
    if q.action == "drop":
        mark(night, "quiet_hours_dropped")
        send_local = local
    else:
        send_local = local.where(~night, local + shift_to_morning)
    mark(arm == "control", "holdout")
    frame = pd.DataFrame(
        {
            "arm": arm,
            "reason": reason,
            "channel": channel,
            "send_at": send_local.astype("datetime64[us]"),
            "requeued": night if q.action == "requeue" else np.zeros(n, dtype=bool),
        },
        index=members.index,
    )
    return GateResult(frame)


def _mark_targeting(
    reason: pd.Series, members: pd.DataFrame, offer: Offer, policy: PolicyConfig
) -> None:
    """The offer's targeting rules for members with no reason yet, row by row through the
    slot's :func:`offer_block` (missing values as None: ``target_unknown``, as in the slot)."""
    open_rows = reason.isna().to_numpy()
    if not open_rows.any():
        return
    columns = [c for c in offer.target if c in members]
    rows = members.loc[open_rows, columns].astype(object)
    rows = rows.where(rows.notna(), None)
    verdicts = [
        offer_block(dict(zip(columns, values, strict=True)), offer, policy)
        for values in rows.itertuples(index=False, name=None)
    ]
    reason[open_rows] = verdicts


def _local_hours(
    local: pd.Series, members: pd.DataFrame, campaign_zone: str, end_hour: int
) -> tuple[np.ndarray, pd.Series]:
    """The customer's local hour of each send (campaign-zone times), and the shift that moves a
    night send to the next ``end_hour``:00 in the customer's zone (vectorised per zone)."""
    zones = (
        members["timezone"].fillna(campaign_zone)
        if "timezone" in members
        else pd.Series(campaign_zone, index=members.index)
    )
    hours = np.zeros(len(local), dtype=np.int64)
    shift = pd.Series(pd.Timedelta(0), index=local.index)
    for zone, rows in zones.groupby(zones).groups.items():
        at = local.loc[rows]
        there = at.dt.tz_localize(ZoneInfo(campaign_zone)).dt.tz_convert(_zone(str(zone), rows))
        pos = local.index.get_indexer(rows)
        hours[pos] = there.dt.hour.to_numpy()
        morning = there.dt.normalize() + pd.Timedelta(hours=end_hour)
        morning = morning.where(morning > there, morning + pd.Timedelta(days=1))
        shift.loc[rows] = (morning - there).to_numpy()
    return hours, shift


def _zone(name: str, customers: pd.Index) -> ZoneInfo:
    """The customers' zone; an unknown name is an error naming them (validated customers
    tables never carry one: ``schemas.Customers``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        shown = ", ".join(map(str, customers[:5])) + (" ..." if len(customers) > 5 else "")
        raise ValueError(
            f"customers.timezone: {name!r} is not an IANA time zone name (customer {shown})"
        ) from None


def _consent(members: pd.DataFrame, channel: str, policy: PolicyConfig) -> pd.Series:
    base = CONSENT_CHANNEL.get(channel, channel)
    if base not in policy.consent_by_channel:  # the slot: channel_not_allowed; fail closed
        return pd.Series(False, index=members.index)
    column = policy.consent_by_channel[base]
    if column is None:  # in-app: shown inside a session the customer opened
        return pd.Series(True, index=members.index)
    if column not in members:
        return pd.Series(False, index=members.index)  # fail closed: no consent on record
    return members[column].fillna(False).astype(bool)
