"""Plan, dry-run, approve, run and dispatch a campaign (the Python API the CLI and notebooks use).

A run is idempotent end to end: message ids are deterministic (campaign x step x customer),
each batch of outbox rows commits in the same transaction as their cap charges, and a message
is marked sent only on the adapter's acknowledgement (the message id is the provider's
idempotency key). Killed at any point and run again, it sends what is missing and nothing twice.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd

from src.campaigns.adapters import DeliveryAdapter
from src.campaigns.gate import GATE_ORDER, assign_arms, gate, re_entries
from src.campaigns.segments import SegmentBuilder, SegmentError
from src.campaigns.spec import CampaignSpec, SpecError, Step, sha256_json
from src.campaigns.state import CampaignDB, message_id
from src.contact.caps import WEEK_DAYS
from src.contact.policy import PolicyConfig, policy_from_offers
from src.contact.store import Charge
from src.data.catalog import Catalog

EPOCH = date(1970, 1, 1)


class ApprovalError(RuntimeError):
    """The run's bundle is not the approved one (or nobody approved it)."""


@dataclass
class Context:
    """What a campaign runs against: the catalog's view as of a date, the policy, the store."""

    catalog: Catalog
    as_of: pd.Timestamp
    db: CampaignDB
    policy: PolicyConfig
    _members: pd.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        catalog: Catalog,
        as_of: datetime | str,
        db: CampaignDB,
        policy: PolicyConfig | None = None,
    ) -> Context:
        if policy is None:
            policy = policy_from_offers(catalog.read("offers"))
        return cls(catalog, pd.Timestamp(as_of), db, policy)

    @property
    def members(self) -> pd.DataFrame:
        """The customer view as of the date, with ``consent_night`` (and ``timezone`` when the
        contract carries it) from the customers table; missing consent means none (fail closed)."""
        if self._members is None:
            path = self.catalog.path("customer_view", self.as_of)
            if not path.exists():
                raise SegmentError(
                    f"no customer view for {self.as_of:%Y-%m-%d} at {path}: run `nextoffer build-view`"
                )
            view = self.catalog.read("customer_view", self.as_of)
            customers = self.catalog.read("customers")
            extra = [c for c in ("consent_night", "timezone") if c in customers.columns]
            if extra:
                view = view.merge(customers[["customer_id", *extra]], on="customer_id", how="left")
            if "consent_night" not in view:
                view["consent_night"] = False
            view["customer_id"] = view["customer_id"].astype(str)
            self._members = view
        return self._members


@dataclass(frozen=True)
class Plan:
    """A step's audience: every segment member (or wave entrant) with arm, reason, channel."""

    spec: CampaignSpec
    step: Step
    frame: pd.DataFrame  # index customer_id: arm, reason, channel, send_at, requeued
    segment_version: str
    holdout_version: str
    problems: tuple[str, ...]


def validate(spec: CampaignSpec, ctx: Context | None = None) -> list[str]:
    """Problems that stop a run: unknown offers, template fields missing from the view, rule
    columns (checked by building the segment when data is given)."""
    problems = []
    policy_offers = {o.offer_id for o in ctx.policy.offers} if ctx else None
    columns = set(ctx.members.columns) if ctx else None
    for i, step in enumerate(spec.steps):
        if policy_offers is not None and step.offer_id not in policy_offers:
            problems.append(f"steps[{i}].offer_id: unknown offer {step.offer_id!r}")
        try:
            fields = step.fields()
        except ValueError as error:
            problems.append(f"steps[{i}].content: {error}")
            continue
        if columns is not None:
            for f in fields:
                if f not in columns:
                    problems.append(
                        f"steps[{i}].content: template field {{{f}}} is not in the view"
                    )
    if ctx is not None and not problems:
        try:
            SegmentBuilder(ctx.catalog, ctx.as_of, ctx.members, ctx.policy.offers).build(spec.who)
        except SegmentError as error:
            problems.append(f"who: {error}")
    return problems


def _segment_version(ids: pd.Index) -> str:
    return sha256_json(sorted(ids.tolist()))[:16]


def plan(
    spec: CampaignSpec,
    ctx: Context,
    step_id: str | None = None,
    start: datetime | None = None,
    audience: pd.Series | None = None,
) -> Plan:
    """The audience of a step and the gate's verdict for each member (no charge).
    ``audience`` (customer -> send time; a trigger's detected customers) narrows the first
    step to the segment members in it, each sent at their own time."""
    step = spec.steps[0] if step_id is None else _step(spec, step_id)
    members = ctx.members.set_index("customer_id", drop=False)
    builder = SegmentBuilder(ctx.catalog, ctx.as_of, ctx.members, ctx.policy.offers)
    built = builder.build(spec.who)
    ids = built.ids
    segment_version = _segment_version(ids)
    arms = assign_arms(ids, spec)
    holdout_version = sha256_json(
        [spec.salt, spec.holdout.share, spec.holdout.global_salt, spec.holdout.global_share]
    )[:16]
    if start is None:
        start = pd.Timestamp(spec.when.at) if spec.when.at is not None else ctx.as_of
    if step.after is None and audience is not None:
        who = ids.intersection(pd.Index(audience.index.astype(str)))
        send_at = audience.set_axis(audience.index.astype(str)).reindex(who)
        audience = who
    elif step.after is None:
        audience = ids
        send_at = pd.Series(start, index=audience)
    else:
        audience, send_at = _wave(spec, step, ctx.db)
    excluded = pd.Index([])
    if spec.exclusions.rule:
        excluded = builder.rule_ids(spec.exclusions.rule)
    for other in spec.exclusions.campaigns:
        sent = ctx.db.frame(
            "SELECT DISTINCT customer_id FROM campaign_outbox WHERE campaign_id = ? AND status = 'sent'",
            (other,),
            ["customer_id"],
        )
        excluded = excluded.union(pd.Index(sent["customer_id"]))
    rows = members.reindex(audience)
    reentered = None
    if step.after is None and spec.when.re_entry != "always":
        reentered = re_entries(spec, _last_entries(spec, step, ctx.db), send_at)
    result = gate(spec, step, rows, arms, ctx.policy, send_at, excluded, reentered)
    return Plan(spec, step, result.frame, segment_version, holdout_version, built.problems)


def _last_entries(spec: CampaignSpec, step: Step, db: CampaignDB) -> pd.Series:
    """Every entry into the campaign: customer -> planned send time of each of their
    first-step messages, pending or sent (:func:`re_entries` reads it)."""
    rows = db.frame(
        "SELECT customer_id, send_at FROM campaign_outbox WHERE campaign_id = ? AND step_id = ? "
        "AND status IN ('pending', 'sent')",
        (spec.campaign_id, step.step_id),
        ["customer_id", "send_at"],
    )
    return pd.Series(pd.to_datetime(rows["send_at"]).to_numpy(), index=rows["customer_id"])


def _step(spec: CampaignSpec, step_id: str) -> Step:
    for step in spec.steps:
        if step.step_id == step_id:
            return step
    raise SpecError(f"steps: no step {step_id!r} in campaign {spec.campaign_id!r}")


def _wave(spec: CampaignSpec, step: Step, db: CampaignDB) -> tuple[pd.Index, pd.Series]:
    """Who enters a later step: delivered at ``step.after`` and meeting the condition, minus
    (``why.exit_on_goal``) whoever met the goal after any step; they are sent ``delay_hours``
    after that delivery."""
    events = db.events(spec.campaign_id)
    prev = events[events["step_id"] == step.after]
    delivered = prev[prev["event"] == "delivered"].drop_duplicates("customer_id")
    delivered_at = pd.to_datetime(delivered.set_index("customer_id")["at"])
    did = {
        e: set(prev.loc[prev["event"] == e, "customer_id"])
        for e in ("opened", "clicked", "converted")
    }
    cond = step.condition
    ids = set(delivered_at.index)
    if cond != "delivered":
        event = cond.removeprefix("not_")
        ids = ids - did[event] if cond.startswith("not_") else ids & did[event]
    if spec.why.exit_on_goal:
        goal = {"convert": "converted", "click": "clicked"}[spec.why.goal]
        ids -= set(events.loc[events["event"] == goal, "customer_id"])
    audience = pd.Index(sorted(ids), name="customer_id")
    send_at = delivered_at.reindex(audience) + pd.Timedelta(hours=step.delay_hours)
    return audience, send_at


def _day(ts: pd.Timestamp) -> int:
    return (ts.date() - EPOCH).days


#: gate codes whose reasons carry a detail (``no_consent_push``, ``target:age``)
PREFIXED = {"no_consent": "no_consent_", "offer_target": "target"}


def funnel(p: Plan, ctx: Context, scores: pd.DataFrame | None = None) -> dict[str, Any]:
    """The audience funnel of a plan: size after the segment, each exclusion, fatigue (as the
    store stands, without charging), requeued by quiet hours; expected outcome from scores."""
    frame = p.frame
    steps: list[tuple[str, int]] = [("segment", len(frame))]
    remaining = len(frame)
    for code in GATE_ORDER:
        if code in PREFIXED:
            n = int(frame["reason"].fillna("").str.startswith(PREFIXED[code]).sum())
        else:
            n = int((frame["reason"] == code).sum())
        remaining -= n
        steps.append((f"after {code}", remaining))
    to_contact = frame[frame["reason"].isna()]
    capped = int(fatigued(to_contact, p.step.offer_id, ctx).sum())
    remaining -= capped
    steps.append(("after fatigue", remaining))
    offer = next((o for o in ctx.policy.offers if o.offer_id == p.step.offer_id), None)
    value = (
        p.spec.why.value_krw
        if p.spec.why.value_krw is not None
        else (offer.value_krw if offer else 0.0)
    )
    out: dict[str, Any] = {
        "campaign_id": p.spec.campaign_id,
        "step_id": p.step.step_id,
        "segment_version": p.segment_version,
        "funnel": dict(steps),
        "requeued_quiet_hours": int(frame.loc[frame["reason"].isna(), "requeued"].sum()),
        "arms": frame["arm"].value_counts().to_dict(),
        "problems": list(p.problems),
        "to_contact": remaining,
        "cost_krw": remaining * p.step.cost,
    }
    if scores is not None and offer is not None:
        s = scores[scores["product"] == offer.product].set_index("customer_id")["score"]
        reached = to_contact.index.astype(str)
        expected = float(s.reindex(reached).fillna(0.0).sum() * remaining / max(len(to_contact), 1))
        reward = p.spec.reward.amount_krw * expected if p.spec.reward else 0.0
        cost = remaining * p.step.cost + reward
        out |= {
            "expected_conversions": expected,
            "expected_value_krw": expected * value,
            "cost_krw": cost,
            "roas": expected * value / cost if cost > 0 else None,
        }
    return out


def fatigued(to_contact: pd.DataFrame, offer_id: str, ctx: Context) -> pd.Series:
    """Who a contact now would put over a cap, as the store stands (one bulk read, no charge):
    the same rules as :meth:`ContactCaps.blocked`, vectorised."""
    out = pd.Series(False, index=to_contact.index)
    if to_contact.empty:
        return out
    days = to_contact["send_at"].map(_day)
    rows = ctx.db.store.charges(int(days.min()) - WEEK_DAYS + 1, int(days.max()))
    if not rows:
        return out
    charges = pd.DataFrame(rows, columns=["customer_id", "channel", "offer_id", "day"])
    policy = ctx.policy
    for day, group in to_contact.groupby(days):
        week = charges[(charges["day"] > day - WEEK_DAYS) & (charges["day"] <= day)]
        today = week[week["day"] == day]
        for channel, cg in group.groupby("channel"):
            ids = cg.index
            cap = policy.cap_for(str(channel))
            oc = policy.offer_cap
            counts = {
                (cap.per_day, "ch_day"): today[today["channel"] == channel]["customer_id"],
                (cap.per_week, "ch_week"): week[week["channel"] == channel]["customer_id"],
                (oc.per_day, "of_day"): today[today["offer_id"] == offer_id]["customer_id"],
                (oc.per_week, "of_week"): week[week["offer_id"] == offer_id]["customer_id"],
            }
            hit = np.zeros(len(ids), dtype=bool)
            for (limit, _), customers in counts.items():
                if limit is not None:
                    n = customers.value_counts().reindex(ids.astype(str)).fillna(0).to_numpy()
                    hit |= n >= limit
            out.loc[ids] = hit
    return out


# -- maker-checker -------------------------------------------------------------------------
def bundle(p: Plan, ctx: Context) -> dict[str, Any]:
    """What an approval signs: the spec (content, reward budget, holdout share), the segment
    version, the model alias and the cap policy; any change gives another hash."""
    policy = ctx.policy
    return {
        "spec": p.spec.signed_dump(),
        "segment_version": p.segment_version,
        "holdout_version": p.holdout_version,
        "model_alias": p.spec.model_alias,
        "caps": {
            "channel_cap": policy.channel_cap.model_dump(),
            "channel_caps": {k: v.model_dump() for k, v in policy.channel_caps.items()},
            "offer_cap": policy.offer_cap.model_dump(),
        },
    }


def bundle_hash(p: Plan, ctx: Context) -> str:
    return sha256_json(bundle(p, ctx))


def approve(spec: CampaignSpec, ctx: Context, user: str, now: datetime | None = None) -> str:
    """Record ``user``'s approval of the current bundle (not the author: maker-checker)."""
    if user == spec.owner:
        raise ApprovalError(
            f"approve: {user!r} wrote campaign {spec.campaign_id!r}; another user must approve"
        )
    p = plan(spec, ctx)
    h = bundle_hash(p, ctx)
    _history(ctx.db, spec.campaign_id, h, "approved", user, now, bundle(p, ctx))
    return h


def _history(
    db: CampaignDB, campaign_id: str, h: str, action: str, user: str, now: datetime | None, b: Any
) -> None:
    at = (now or datetime.now()).isoformat()
    with db.store.transaction() as tx:
        row = tx.fetchone(
            "SELECT COALESCE(MAX(seq), 0) FROM campaign_approvals WHERE campaign_id = ?",
            (campaign_id,),
        )
        seq = int(row[0]) + 1 if row else 1
        tx.execute(
            "INSERT INTO campaign_approvals (seq, campaign_id, bundle_hash, action, user_name, at, bundle) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, campaign_id, h, action, user, at, json.dumps(b, sort_keys=True, default=str)),
        )


def approvals(db: CampaignDB, campaign_id: str) -> pd.DataFrame:
    """The approval history (approved, voided), oldest first."""
    return db.frame(
        "SELECT seq, bundle_hash, action, user_name, at FROM campaign_approvals "
        "WHERE campaign_id = ? ORDER BY seq",
        (campaign_id,),
        ["seq", "bundle_hash", "action", "user_name", "at"],
    )


def check_approved(p: Plan, ctx: Context, user: str = "runner") -> str:
    """The bundle hash if its latest approval stands; a changed bundle voids it (recorded)."""
    h = bundle_hash(p, ctx)
    hist = approvals(ctx.db, p.spec.campaign_id)
    approved = hist[hist["action"] == "approved"]
    if approved.empty:
        raise ApprovalError(
            f"campaign {p.spec.campaign_id!r} is not approved: run `campaign approve`"
        )
    last = hist.iloc[-1]
    if last["bundle_hash"] != h or last["action"] != "approved":
        if last["action"] == "approved":
            _history(
                ctx.db,
                p.spec.campaign_id,
                str(last["bundle_hash"]),
                "voided",
                user,
                None,
                {"new_bundle": h},
            )
        raise ApprovalError(
            f"campaign {p.spec.campaign_id!r}: the bundle changed since approval "
            f"(spec, segment, caps or holdout); approval voided, approve again"
        )
    return h


# -- run -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunResult:
    step_id: str
    enqueued: int
    capped: int
    suppressed: int
    sent: int


def _render(template: str, row: pd.Series) -> str:
    if not template:
        return ""
    return string.Formatter().vformat(template, (), {k: row[k] for k in row.index})


def enqueue(
    p: Plan,
    ctx: Context,
    run_id: str,
    batch_size: int = 500,
    progress: bool = False,
    occurrence: str | Mapping[str, str] = "",
) -> tuple[int, int]:
    """Write decisions and outbox rows; each batch's outbox rows commit with their cap charges.
    ``occurrence``: one for all, or per customer (a trigger's detection id, also stored as
    the message's ``detection_id``). Returns (messages enqueued now, capped now)."""
    from tqdm.auto import tqdm

    spec, step, frame = p.spec, p.step, p.frame
    members = ctx.members.set_index("customer_id", drop=False)
    fields = step.fields()
    enq = capped = 0
    ids = frame.index.tolist()
    for start in tqdm(range(0, len(ids), batch_size), disable=not progress, desc="enqueue"):
        chunk = frame.iloc[start : start + batch_size]
        occ = [
            occurrence.get(str(c), "") if isinstance(occurrence, Mapping) else occurrence
            for c in chunk.index
        ]
        mids = [
            message_id(spec.campaign_id, step.step_id, c, o)
            for c, o in zip(chunk.index, occ, strict=True)
        ]
        detection = dict(zip(mids, occ, strict=True)) if isinstance(occurrence, Mapping) else {}
        with ctx.db.store.transaction() as tx:
            done = ctx.db.existing_messages(tx, mids)
            decisions, outbox = [], []
            rows = list(zip(chunk.index, chunk.to_dict("records"), mids, strict=True))
            todo = [
                (cid, row, mid)
                for cid, row, mid in rows
                if _no_reason(row["reason"]) and mid not in done
            ]
            charges = [
                Charge(mid, str(cid), row["channel"], step.offer_id, _day(row["send_at"]),
                       spec.campaign_id)
                for cid, row, mid in todo
            ]  # fmt: skip
            verdict = dict(
                zip(
                    [mid for _, _, mid in todo],
                    ctx.db.store.charge_many_in(tx, charges, ctx.policy),
                    strict=True,
                )
            )
            for cid, row, mid in rows:
                reason = row["reason"]
                if _no_reason(reason):
                    if mid in done:
                        continue
                    reason = verdict[mid]
                    if reason is None:
                        content = (
                            _render(step.content, members.loc[cid, fields])
                            if fields
                            else step.content
                        )
                        fallback = step.fallback if row["channel"] == step.channel else None
                        outbox.append(
                            (mid, spec.campaign_id, step.step_id, str(cid), row["channel"],
                             fallback, step.offer_id, content, row["send_at"].isoformat(),
                             "pending", detection.get(mid) or None)
                        )  # fmt: skip
                        enq += 1
                    else:
                        capped += 1
                decisions.append(
                    (spec.campaign_id, step.step_id, str(cid), row["arm"], reason,
                     row["channel"], mid if reason is None else None, run_id)
                )  # fmt: skip
            if outbox:
                tx.executemany(
                    "INSERT INTO campaign_outbox (message_id, campaign_id, step_id, customer_id, channel, "
                    "fallback, offer_id, content, send_at, status, detection_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    outbox,
                )
            if decisions:
                tx.executemany(
                    "INSERT INTO campaign_decisions (campaign_id, step_id, customer_id, arm, reason, "
                    "channel, message_id, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (campaign_id, step_id, customer_id) DO NOTHING",
                    decisions,
                )
            refused = [
                (spec.campaign_id, step.step_id, str(cid), row["send_at"].isoformat(), run_id)
                for cid, row, _ in rows
                if row["reason"] == "re_entry"
            ]
            if refused:  # the decision row is their first verdict: keep each refusal too
                tx.executemany(
                    "INSERT INTO campaign_reentries (campaign_id, step_id, customer_id, at, "
                    "run_id) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (campaign_id, step_id, customer_id, at) DO NOTHING",
                    refused,
                )
    return enq, capped


def _no_reason(reason: Any) -> bool:
    return reason is None or (isinstance(reason, float) and np.isnan(reason))


def dispatch(
    db: CampaignDB,
    campaign_id: str,
    adapter: DeliveryAdapter,
    now: datetime,
    progress: bool = False,
    on_sent: Callable[[dict[str, Any]], None] | None = None,
    batch_size: int = 100,
    slots: Mapping[str, str] | None = None,
) -> int:
    """Hand pending messages due by ``now`` to the adapter; mark each sent on its ack. An
    undeliverable messenger message goes to its SMS fallback under the same id (one message,
    one charge). ``slots``: step id -> the in-app slot, added to those steps' messages (the
    in-app adapter needs it). Returns how many were marked sent."""
    from tqdm.auto import tqdm

    cols = [
        "message_id",
        "step_id",
        "customer_id",
        "channel",
        "fallback",
        "offer_id",
        "content",
        "send_at",
    ]
    pending = db.frame(
        f"SELECT {', '.join(cols)} FROM campaign_outbox WHERE campaign_id = ? AND status = 'pending' "
        "AND send_at <= ? ORDER BY message_id",
        (campaign_id, pd.Timestamp(now).isoformat()),
        cols,
    )
    sent = 0
    records = pending.to_dict("records")
    at = pd.Timestamp(now).isoformat()
    for start in tqdm(range(0, len(records), batch_size), disable=not progress, desc="send"):
        marks = []
        for msg in records[start : start + batch_size]:
            message = {"campaign_id": campaign_id, **msg}
            if slots and msg["step_id"] in slots:
                message["slot"] = slots[msg["step_id"]]
            ack = adapter.send(message)
            channel = msg["channel"]
            if ack.status == "undeliverable" and msg["fallback"]:
                channel = msg["fallback"]
                ack = adapter.send({**message, "channel": channel})
            status = "sent" if ack.status == "accepted" else "failed"
            marks.append((status, ack.provider_id, channel, at, msg["message_id"]))
            if status == "sent" and on_sent is not None:
                on_sent({**message, "channel": channel})
        # acknowledged sends are marked together; a crash before this commit resends them
        # under the same idempotency key, which the provider acknowledges without delivering
        with db.store.transaction() as tx:
            tx.executemany(
                "UPDATE campaign_outbox SET status = ?, provider_id = ?, sent_channel = ?, "
                "sent_at = ?, attempts = attempts + 1 WHERE message_id = ? AND status = 'pending'",
                marks,
            )
        sent += sum(m[0] == "sent" for m in marks)
    return sent


def run(
    spec: CampaignSpec,
    ctx: Context,
    adapter: DeliveryAdapter,
    step_id: str | None = None,
    now: datetime | None = None,
    require_approval: bool = True,
    batch_size: int = 500,
    progress: bool = False,
    occurrence: str = "",
) -> RunResult:
    """Plan a step, check its approval, snapshot the segment, enqueue (charging caps) and
    dispatch what is due. Safe to rerun after a crash at any point. ``occurrence`` (an ISO
    time) is one firing of a recurring campaign: it is the send time and part of the ids."""
    if spec.when.trigger is not None and (step_id is None or step_id == spec.steps[0].step_id):
        raise SpecError(
            f"campaign {spec.campaign_id!r}: when.trigger: a trigger campaign's first step is "
            "sent per detection by `campaign tick` / `campaign watch`, not run for the segment"
        )
    start = datetime.fromisoformat(occurrence) if occurrence else None
    p = plan(spec, ctx, step_id, start)
    h = check_approved(p, ctx) if require_approval else bundle_hash(p, ctx)
    if step_id is None or p.step.after is None:
        ctx.db.save_segment(spec.campaign_id, p.segment_version, assign_arms(_seg_ids(p), spec))
    run_id = sha256_json([h, p.step.step_id, *([occurrence] if occurrence else [])])[:16]
    with ctx.db.store.transaction() as tx:
        if not tx.fetchone("SELECT 1 FROM campaign_runs WHERE run_id = ?", (run_id,)):
            tx.execute(
                "INSERT INTO campaign_runs (run_id, campaign_id, step_id, segment_version, "
                "holdout_version, bundle_hash, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    spec.campaign_id,
                    p.step.step_id,
                    p.segment_version,
                    p.holdout_version,
                    h,
                    datetime.now().isoformat(),
                ),
            )
    enq, capped = enqueue(p, ctx, run_id, batch_size, progress, occurrence)
    due = now or (p.frame["send_at"].max() if len(p.frame) else ctx.as_of)
    sent = dispatch(
        ctx.db,
        spec.campaign_id,
        adapter,
        due,
        progress,
        batch_size=batch_size,
        slots=step_slots(spec),
    )
    if spec.reward is not None:
        pend_rewards(spec, ctx)
    suppressed = int(p.frame["reason"].notna().sum())
    return RunResult(p.step.step_id, enq, capped, suppressed, sent)


@dataclass(frozen=True)
class TriggerResult:
    """One read of a trigger campaign's detections: how many were read past the cursor, not
    in the segment, too old to send (stale), and what the gate and the caps made of the rest."""

    detections: int
    not_in_segment: int
    stale: int
    enqueued: int
    capped: int
    suppressed: int
    sent: int
    cursor: int


def trigger_cursor(db: CampaignDB, campaign_id: str) -> int:
    """The ``seq`` of the last detection a trigger campaign has read (0: none)."""
    rows = db.frame(
        "SELECT last_seq FROM campaign_trigger_cursors WHERE campaign_id = ?",
        (campaign_id,),
        ["seq"],
    )
    return int(rows["seq"].iloc[0]) if len(rows) else 0


def _set_cursor(db: CampaignDB, campaign_id: str, seq: int) -> None:
    with db.store.transaction() as tx:
        tx.execute(
            "INSERT INTO campaign_trigger_cursors (campaign_id, last_seq, updated_at) "
            "VALUES (?, ?, ?) ON CONFLICT (campaign_id) DO UPDATE SET "
            "last_seq = excluded.last_seq, updated_at = excluded.updated_at",
            (campaign_id, seq, datetime.now().isoformat()),
        )


def run_triggered(
    spec: CampaignSpec,
    ctx: Context,
    adapter: DeliveryAdapter,
    detections: Any,
    now: datetime,
    batch_size: int = 500,
    read_limit: int = 10_000,
) -> TriggerResult:
    """Read the detections of the campaign's rule recorded since its cursor
    (``detections``: a :class:`~src.contact.triggers.DetectionQueue`) and enqueue the first
    step for each detected segment member at fire time + ``trigger_delay_minutes``, through
    the same gate, holdout, caps and outbox as a run; then dispatch what is due by ``now``.

    Exactly once: a message id includes the detection id, so a crash before the cursor moves
    re-reads detections whose messages exist and enqueues nothing twice. A customer detected
    twice gets two messages (the caps decide), one decision row (their first). The segment
    snapshot of a trigger campaign (version ``trigger``) is every detected member with their
    arm: the population its lift is measured on."""
    rule = spec.when.trigger
    if rule is None:
        raise SpecError(f"campaign {spec.campaign_id!r}: when.trigger: not a trigger campaign")
    step = spec.steps[0]
    run_id = sha256_json([spec.content_hash(), step.step_id, "trigger"])[:16]
    delay = pd.Timedelta(minutes=spec.when.trigger_delay_minutes)
    oldest = pd.Timestamp(now) - pd.Timedelta(minutes=spec.when.trigger_max_age_minutes)
    cursor = trigger_cursor(ctx.db, spec.campaign_id)
    n = outside = stale = enq = capped = suppressed = 0
    while batch := detections.after(cursor, [rule], read_limit):
        rows = pd.DataFrame(
            [(d.detection_id, d.customer_id, pd.Timestamp(d.fired_at) + delay) for d in batch],
            columns=["detection_id", "customer_id", "send_at"],
        )
        n += len(rows)
        fresh = rows[rows["send_at"] >= oldest]
        stale += len(rows) - len(fresh)
        # one round per repeat of a customer in the batch: a plan has each customer once
        for _, r in fresh.groupby(fresh.groupby("customer_id").cumcount()):
            audience = pd.Series(r["send_at"].to_numpy(), index=r["customer_id"].astype(str))
            p = plan(spec, ctx, step.step_id, audience=audience)
            outside += len(audience) - len(p.frame)
            _record_trigger_run(ctx.db, p, run_id)
            occurrence = dict(zip(r["customer_id"].astype(str), r["detection_id"], strict=True))
            e, c = enqueue(p, ctx, run_id, batch_size, occurrence=occurrence)
            enq, capped = enq + e, capped + c
            suppressed += int(p.frame["reason"].notna().sum())
        cursor = batch[-1].seq
        _set_cursor(ctx.db, spec.campaign_id, cursor)
    sent = dispatch(
        ctx.db, spec.campaign_id, adapter, now, batch_size=batch_size, slots=step_slots(spec)
    )
    if spec.reward is not None:
        pend_rewards(spec, ctx)
    return TriggerResult(n, outside, stale, enq, capped, suppressed, sent, cursor)


def step_slots(spec: CampaignSpec) -> dict[str, str]:
    """step id -> slot of the spec's in-app steps."""
    return {s.step_id: s.slot for s in spec.steps if s.slot}


def _record_trigger_run(db: CampaignDB, p: Plan, run_id: str) -> None:
    """The trigger campaign's run row (once) and its growing segment snapshot with arms."""
    with db.store.transaction() as tx:
        tx.execute(
            "INSERT INTO campaign_runs (run_id, campaign_id, step_id, segment_version, "
            "holdout_version, bundle_hash, started_at) VALUES (?, ?, ?, 'trigger', ?, ?, ?) "
            "ON CONFLICT (run_id) DO NOTHING",
            (run_id, p.spec.campaign_id, p.step.step_id, p.holdout_version,
             p.spec.content_hash(), datetime.now().isoformat()),
        )  # fmt: skip
        tx.executemany(
            "INSERT INTO campaign_segments (campaign_id, version, customer_id, arm) "
            "VALUES (?, 'trigger', ?, ?) ON CONFLICT (campaign_id, version, customer_id) "
            "DO NOTHING",
            [(p.spec.campaign_id, str(c), a) for c, a in p.frame["arm"].items()],
        )


def pend_rewards(spec: CampaignSpec, ctx: Context) -> int:
    """Reserve the reward of every sent message (idempotent, so a crash between a send's mark
    and its reservation is repaired by the next run); returns the rewards refused by budget."""
    from src.campaigns.ledger import RewardLedger

    reward = spec.reward
    assert reward is not None
    ledger = RewardLedger(ctx.db.store, {spec.campaign_id: reward.budget_krw})
    sent = ctx.db.frame(
        "SELECT message_id, customer_id, sent_at FROM campaign_outbox "
        "WHERE campaign_id = ? AND status = 'sent' ORDER BY sent_at, message_id",
        (spec.campaign_id,),
        ["message_id", "customer_id", "sent_at"],
    )
    refused = 0
    for row in sent.itertuples():
        at = datetime.fromisoformat(str(row.sent_at))
        reason = ledger.pend(
            spec.campaign_id,
            str(row.customer_id),
            str(row.message_id),
            reward.amount_krw,
            at,
            reward.expires_days,
        )
        refused += reason is not None
    return refused


def _seg_ids(p: Plan) -> pd.Index:
    return pd.Index(p.frame.index)


def expected_value(spec: CampaignSpec, ctx: Context, scores: pd.DataFrame | None) -> float:
    """Expected value per contact of a campaign's first step, net of the channel's and the
    reward's cost: mean score of its audience x offer value - costs (0 without scores)."""
    step = spec.steps[0]
    offer = next((o for o in ctx.policy.offers if o.offer_id == step.offer_id), None)
    if scores is None or offer is None:
        return -step.cost
    p = plan(spec, ctx)
    reached = p.frame.index[p.frame["reason"].isna()]
    s = scores[scores["product"] == offer.product].set_index("customer_id")["score"]
    rate = float(s.reindex(reached.astype(str)).fillna(0.0).mean()) if len(reached) else 0.0
    value = spec.why.value_krw if spec.why.value_krw is not None else offer.value_krw
    reward = spec.reward.amount_krw if spec.reward else 0.0
    return rate * (value - reward) - step.cost


def arbitrate(
    specs: list[CampaignSpec], ctx: Context, scores: pd.DataFrame | None = None
) -> list[CampaignSpec]:
    """The order in which competing campaigns take customers' capped contacts: priority first,
    then expected value net of channel and reward cost, then id (deterministic)."""
    ev = {s.campaign_id: expected_value(s, ctx, scores) for s in specs}
    return sorted(specs, key=lambda s: (-s.priority, -ev[s.campaign_id], s.campaign_id))


def run_many(
    specs: list[CampaignSpec],
    ctx: Context,
    adapter: DeliveryAdapter,
    scores: pd.DataFrame | None = None,
    require_approval: bool = True,
) -> dict[str, RunResult]:
    """Run competing campaigns in arbitration order. A loser's customer whom a cap kept from it
    because a winner reached them first gets reason ``arbitration_lost`` with the winner's id
    (``campaign why``); other capped customers keep the cap reason (``cap_offer_day``, ...)."""
    results: dict[str, RunResult] = {}
    for s in arbitrate(specs, ctx, scores):
        results[s.campaign_id] = run(s, ctx, adapter, require_approval=require_approval)
        ctx.db.mark_arbitration_lost(s.campaign_id, [w for w in results if w != s.campaign_id])
    return results
