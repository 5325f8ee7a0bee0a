"""What a campaign did: the funnel per step and channel, and its lift against the holdout.

Lift is intention-to-treat: every segment member counts in the arm the salted hash gave them,
whether or not they were capped, suppressed or delivered, so the comparison stays randomised.
It is measured on the goal (conversions), never on opens (the control cannot open). A sample
ratio check flags an assignment that does not match the configured holdout share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from src.campaigns.spec import CampaignSpec
from src.campaigns.state import CampaignDB

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Lift:
    """Treatment minus control conversion rate (ITT) with a 95 % normal interval."""

    n_treatment: int
    n_control: int
    rate_treatment: float
    rate_control: float
    lift: float
    ci_low: float
    ci_high: float
    incremental_conversions: float
    srm_p_value: float


def itt_lift(arms: pd.Series, converted: pd.Series, control_share: float) -> Lift:
    """``arms``: customer -> treatment/control (global control excluded); ``converted``:
    customer -> bool (missing = did not convert)."""
    arms = arms[arms.isin(["treatment", "control"])]
    y = converted.reindex(arms.index).fillna(False).astype(float)
    t, c = y[arms == "treatment"], y[arms == "control"]
    nt, nc = len(t), len(c)
    pt = float(t.mean()) if nt else float("nan")
    pc = float(c.mean()) if nc else float("nan")
    se = math.sqrt(pt * (1 - pt) / max(nt, 1) + pc * (1 - pc) / max(nc, 1))
    lift = pt - pc
    return Lift(
        nt,
        nc,
        pt,
        pc,
        lift,
        lift - Z95 * se,
        lift + Z95 * se,
        lift * nt,
        srm_p_value(nt, nc, control_share),
    )


def srm_p_value(n_treatment: int, n_control: int, control_share: float) -> float:
    """Chi-square (1 df) p-value of the observed split against the configured share."""
    n = n_treatment + n_control
    if n == 0 or not 0 < control_share < 1:
        return float("nan")
    exp_c, exp_t = n * control_share, n * (1 - control_share)
    chi2 = (n_control - exp_c) ** 2 / exp_c + (n_treatment - exp_t) ** 2 / exp_t
    return math.erfc(math.sqrt(chi2 / 2))


def attributed(events: pd.DataFrame, window_days: int) -> pd.DataFrame:
    """The events a campaign may claim: receipts, and responses (opened, clicked, converted)
    from the delivery of their message up to ``window_days`` after it. A response without a
    receipt, before it, or after the window is not attributed (it is kept in the store)."""
    if events.empty:
        return events
    at = pd.to_datetime(events["at"], format="ISO8601")
    delivered = (
        events.assign(_at=at)
        .loc[events["event"] == "delivered"]
        .drop_duplicates("message_id")
        .set_index("message_id")["_at"]
    )
    start = events["message_id"].map(delivered)
    window = pd.Timedelta(days=window_days)
    keep = (events["event"] == "delivered") | (
        start.notna() & (at >= start) & (at <= start + window)
    )
    return events[keep.to_numpy()]


def step_table(spec: CampaignSpec, db: CampaignDB) -> pd.DataFrame:
    """Per step and channel: eligible, suppressed by reason, capped, sent and responses
    (attributed within the spec's ``why.window_days`` of delivery)."""
    dec = db.decisions(spec.campaign_id)
    out = db.outbox(spec.campaign_id)
    all_events = db.events(spec.campaign_id)
    ev = attributed(all_events, spec.why.window_days)
    rows: list[dict[str, Any]] = []
    for (step_id, channel), d in dec.groupby(["step_id", "channel"], dropna=False):
        reasons = d["reason"].fillna("contacted")
        # a contact lost to another campaign's arbitration is a cap (the winner used it)
        capped = reasons.str.startswith("cap_") | (reasons == "arbitration_lost")
        o = out[(out["step_id"] == step_id) & (out["channel"] == channel)]
        e = ev[ev["message_id"].isin(o["message_id"])]
        row: dict[str, Any] = {
            "step_id": step_id,
            "channel": channel,
            "members": len(d),
            "control": int((d["arm"] != "treatment").sum()),
            "capped": int(capped.sum()),
            "suppressed": int((~reasons.isin(["contacted"]) & ~capped).sum()),
            "sent": int((o["status"] == "sent").sum()),
        }
        for event in ("delivered", "opened", "clicked", "converted"):
            row[event] = int((e["event"] == event).sum())
        # sends reconciled against receipts: failed on delivery, acknowledged by the provider
        # but never receipted, and receipted though the outbox never marked them sent (a crash
        # between the acknowledgement and the mark; the next dispatch marks them)
        raw = all_events[all_events["message_id"].isin(o["message_id"])]
        failed = set(raw.loc[raw["event"] == "failed", "message_id"])
        receipted = set(e.loc[e["event"] == "delivered", "message_id"]) | failed
        row["failed"] = len(failed)
        row["sent_without_receipt"] = int(
            ((o["status"] == "sent") & ~o["message_id"].isin(receipted)).sum()
        )
        row["receipt_not_sent"] = int(
            (o["message_id"].isin(set(raw["message_id"])) & (o["status"] != "sent")).sum()
        )
        step = next(s for s in spec.steps if s.step_id == step_id)
        row["cost_krw"] = row["sent"] * step.cost
        rows.append(row)
    return pd.DataFrame(rows)


PRIMARY_METRIC = (
    "primary metric: conversions, intention-to-treat against the holdout; no winner is ever "
    "picked on opens or clicks (the control cannot open)"
)


def lift_table(
    spec: CampaignSpec,
    db: CampaignDB,
    converted: pd.Series,
    segments: pd.Series | None = None,
) -> pd.DataFrame:
    """ITT conversion lift with its 95 % interval overall, per step, per channel and (given
    ``segments``: customer -> label, e.g. an age band) per segment. Each slice compares the
    treatment and control members of that slice, whatever happened to them after assignment."""
    seg = db.segment(spec.campaign_id).set_index("customer_id")["arm"]
    dec = db.decisions(spec.campaign_id)
    share = spec.holdout.share
    rows: list[dict[str, Any]] = []

    def add(level: str, key: str, arms: pd.Series) -> None:
        lift = itt_lift(arms, converted, share)
        rows.append({"level": level, "key": key, **lift.__dict__})

    add("overall", "all", seg)
    for (step_id, channel), d in dec.groupby(["step_id", "channel"], dropna=False):
        add(
            "step",
            f"{step_id}/{channel}",
            d.drop_duplicates("customer_id").set_index("customer_id")["arm"],
        )
    for channel, d in dec.groupby("channel", dropna=False):
        add(
            "channel",
            str(channel),
            d.drop_duplicates("customer_id").set_index("customer_id")["arm"],
        )
    if segments is not None:
        labels = segments.reindex(seg.index)
        for label, arms in seg.groupby(labels, dropna=False):
            add("segment", str(label), arms)
    return pd.DataFrame(rows)


def reasons_table(spec: CampaignSpec, db: CampaignDB) -> pd.DataFrame:
    """How many members each reason kept from each step."""
    dec = db.decisions(spec.campaign_id)
    return (
        dec.assign(reason=dec["reason"].fillna("contacted"))
        .groupby(["step_id", "reason"])
        .size()
        .rename("customers")
        .reset_index()
    )


def report(
    spec: CampaignSpec,
    db: CampaignDB,
    converted: pd.Series | None = None,
    value_krw: float = 0.0,
    rewards_paid_krw: float = 0.0,
    segments: pd.Series | None = None,
) -> dict[str, Any]:
    """The steps table, reasons, and (given conversions of every segment member) the ITT lift
    overall and per step, channel and segment, incremental conversions, cost and ROAS. The
    primary metric is conversions (ITT); opens are reported, never used to pick a winner."""
    steps = step_table(spec, db)
    out: dict[str, Any] = {
        "campaign_id": spec.campaign_id,
        "primary_metric": PRIMARY_METRIC,
        "steps": steps,
        "reasons": reasons_table(spec, db),
    }
    if converted is not None:
        out["lifts"] = lift_table(spec, db, converted, segments)
        seg = db.segment(spec.campaign_id).set_index("customer_id")["arm"]
        lift = itt_lift(seg, converted, spec.holdout.share)
        cost = float(steps["cost_krw"].sum()) + rewards_paid_krw if len(steps) else rewards_paid_krw
        out["lift"] = lift
        out["cost_krw"] = cost
        out["incremental_value_krw"] = lift.incremental_conversions * value_krw
        out["roas"] = lift.incremental_conversions * value_krw / cost if cost > 0 else None
    return out


def plot_report(rep: dict[str, Any]) -> Any:
    """Funnel per step and the lift with its interval (titles, labelled axes)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps: pd.DataFrame = rep["steps"]
    cols = ["members", "sent", "delivered", "opened", "clicked", "converted"]
    if len(steps):
        agg = steps.groupby("step_id")[cols].sum()
        agg.T.plot.bar(ax=axes[0])
    axes[0].set_title(f"{rep['campaign_id']}: funnel per step")
    axes[0].set_xlabel("stage")
    axes[0].set_ylabel("customers")
    lift = rep.get("lift")
    lifts: pd.DataFrame | None = rep.get("lifts")
    if lifts is not None and len(lifts) > 1:  # every slice: overall, steps, channels, segments
        x = np.arange(len(lifts))
        axes[1].errorbar(
            x,
            lifts["lift"] * 100,
            yerr=[
                (lifts["lift"] - lifts["ci_low"]) * 100,
                (lifts["ci_high"] - lifts["lift"]) * 100,
            ],
            fmt="o",
            capsize=4,
        )
        axes[1].axhline(0, color="grey", lw=0.8)
        labels = [f"{lv}: {k}" for lv, k in zip(lifts["level"], lifts["key"], strict=True)]
        axes[1].set_xticks(x, labels, rotation=45, ha="right")
    elif lift is not None:
        axes[1].errorbar(
            [0],
            [lift.lift * 100],
            yerr=[[(lift.lift - lift.ci_low) * 100], [(lift.ci_high - lift.lift) * 100]],
            fmt="o",
            capsize=6,
        )
        axes[1].axhline(0, color="grey", lw=0.8)
        axes[1].set_xticks([0], ["ITT lift"])
    axes[1].set_title("conversion lift (ITT) vs holdout, 95 % CI; never on opens")
    axes[1].set_ylabel("percentage points")
    fig.tight_layout()
    return fig


def conversions_from_transactions(
    transactions: pd.DataFrame, product: str, start: pd.Timestamp, window_days: int
) -> pd.Series:
    """customer -> converted: a signup of ``product`` within the window after ``start``."""
    end = start + pd.Timedelta(days=window_days)
    t = transactions
    hit = t[
        (t["code"] == "PRODUCT_SIGNUP")
        & (t["product"] == product)
        & (t["ts"] >= start)
        & (t["ts"] < end)
    ]
    return pd.Series(True, index=pd.Index(np.unique(hit["customer_id"].astype(str))))
