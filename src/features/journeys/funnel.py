"""Ordered step funnels within sessions, by customer segment.

A unit (customer or session) *reaches* step k when, inside one session, it visits steps
1..k in that order; other pages may come in between, but a unit that skips a step does not
count for the later ones even if it visits them. With ``within``, every later step must also
happen within that time of the step-1 visit it started from (each step-1 visit is tried as a
start, so a late but fast attempt still counts).

Steps are page names; transaction codes (e.g. ``LOAN_APPLICATION``) are accepted too and match
transactions that joined the session, so a funnel can end in what the customer actually did.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import pandas as pd

from src.features.journeys.sessions import _eq, _require, ensure_sessionized, page_visits

UNKNOWN_SEGMENT = "(unknown)"
ALL_SEGMENT = "all"


def _labelled_steps(s: pd.DataFrame, visits: pd.DataFrame, labels: set[str]) -> pd.DataFrame:
    """Page visits and in-session transactions whose label is a funnel step, in session order."""
    v = visits[["customer_id", "session_key", "ts", "page"]].rename(columns={"page": "label"})
    t = s.loc[
        ~_eq(s["source"], "click")
        & s["session_key"].notna().to_numpy()
        & s["customer_id"].notna().to_numpy(),
        ["customer_id", "session_key", "ts", "code"],
    ].rename(columns={"code": "label"})
    both = pd.concat([v.assign(kind=0), t.assign(kind=1)], ignore_index=True)
    both = both.loc[both["label"].isin(labels).to_numpy()]
    both = both.sort_values(["session_key", "ts", "kind"], kind="stable").reset_index(drop=True)
    both["session_key"] = both["session_key"].astype(np.int64)
    both["pos"] = np.arange(len(both), dtype=np.int64)
    both["t"] = both["ts"].to_numpy().astype("datetime64[ns]").view(np.int64)
    return both


def _session_depth(steps_frame: pd.DataFrame, steps: list[str], within_ns: int | None) -> pd.Series:
    """Deepest step (1..K) reached per session that reached step 1, indexed by session_key."""
    first = steps_frame.loc[steps_frame["label"].eq(steps[0]).to_numpy()]
    if within_ns is None:  # the earliest start is then always the best one
        first = first.drop_duplicates("session_key")
    chain = pd.DataFrame(
        {
            "anchor": np.arange(len(first)),
            "session_key": first["session_key"].to_numpy(),
            "pos": first["pos"].to_numpy(),
            "t0": first["t"].to_numpy(),
        }
    )
    depth = np.ones(len(chain), dtype=np.int64)
    anchor_session = chain["session_key"].to_numpy()
    for k, name in enumerate(steps[1:], start=2):
        if chain.empty:
            break
        cand = steps_frame.loc[
            steps_frame["label"].eq(name).to_numpy(), ["session_key", "pos", "t"]
        ]
        cand = cand.rename(columns={"pos": "next_pos"}).assign(pos=lambda d: d["next_pos"])
        nxt = pd.merge_asof(
            chain.sort_values("pos"),
            cand.sort_values("pos"),
            on="pos",
            by="session_key",
            direction="forward",
            allow_exact_matches=False,
        )
        ok = nxt["next_pos"].notna().to_numpy()
        if within_ns is not None:
            ok = ok & ((nxt["t"].fillna(0).to_numpy() - nxt["t0"].to_numpy()) <= within_ns)
        nxt = nxt.loc[ok]
        depth[nxt["anchor"].to_numpy()] = k
        chain = pd.DataFrame(
            {
                "anchor": nxt["anchor"].to_numpy(),
                "session_key": nxt["session_key"].to_numpy(),
                "pos": nxt["next_pos"].to_numpy(dtype=np.int64),
                "t0": nxt["t0"].to_numpy(),
            }
        )
    return pd.Series(depth, index=anchor_session).groupby(level=0).max()


def funnel(
    events: pd.DataFrame,
    steps: list[str],
    by: str | None = None,
    within: timedelta | pd.Timedelta | None = None,
    customers: pd.DataFrame | None = None,
    unit: Literal["customer", "session"] = "customer",
) -> pd.DataFrame:
    """Units reaching each step in order, per segment, with conversion and drop-off.

    ``by`` names a column of ``customers`` (joined on ``customer_id``, e.g. ``life_stage``);
    customers missing from it fall in ``(unknown)``, and segments with no activity still get
    rows (zero counts) so segment tables line up. Unattributed events are left out.

    One row per (segment, step): ``base`` = units with at least one web/app session in the
    segment, ``count`` = units reaching the step, ``conv_from_prev``/``conv_from_first`` =
    count over the previous/first step's count (1.0 at step 1; NaN when
    dividing by zero),
    ``drop_off`` = previous count minus this one and ``drop_off_rate`` = 1 - conv_from_prev.
    """
    if not steps:
        raise ValueError("steps must not be empty")
    if unit not in ("customer", "session"):
        raise ValueError("unit must be 'customer' or 'session'")
    within_ns = None if within is None else int(pd.Timedelta(within).value)
    s = ensure_sessionized(events)

    visits = page_visits(s)
    base_units = visits.drop_duplicates("session_key")[["session_key", "customer_id"]]
    labelled = _labelled_steps(s, visits, set(steps))
    depth = _session_depth(labelled, steps, within_ns).rename("depth")

    units = base_units.merge(depth, left_on="session_key", right_index=True, how="left")
    units["depth"] = units["depth"].fillna(0).astype(np.int64)
    if unit == "customer":
        units = units.groupby("customer_id", as_index=False)["depth"].max()

    if by is None:
        units["segment"] = ALL_SEGMENT
        segments = [ALL_SEGMENT]
    else:
        if customers is None or by not in customers.columns:
            raise ValueError(f"segment column {by!r} must be a column of `customers`")
        _require(customers, ["customer_id"])
        seg = customers.drop_duplicates("customer_id").set_index("customer_id")[by]
        units["segment"] = units["customer_id"].map(seg).astype("object").fillna(UNKNOWN_SEGMENT)
        units["segment"] = units["segment"].astype("str")
        if isinstance(seg.dtype, pd.CategoricalDtype):
            known = [str(c) for c in seg.cat.categories]
        else:
            known = sorted(str(x) for x in seg.dropna().unique())
        extra = sorted(set(units["segment"]) - set(known))
        segments = known + extra

    k_steps = len(steps)
    reached = units["depth"].to_numpy()[:, None] >= np.arange(1, k_steps + 1)[None, :]
    counts = (
        pd.DataFrame(reached, columns=range(1, k_steps + 1))
        .groupby(units["segment"].to_numpy())
        .sum()
        .reindex(segments, fill_value=0)
    )
    base = units.groupby("segment").size().reindex(segments, fill_value=0)

    out = counts.stack().rename("count").reset_index()
    out.columns = ["segment", "step_no", "count"]
    out["step"] = [steps[i - 1] for i in out["step_no"]]
    out["base"] = base.reindex(out["segment"]).to_numpy()
    by_seg = out.groupby("segment", sort=False)["count"]
    prev = by_seg.shift(1)
    first = by_seg.transform("first")
    cnt = out["count"].astype(float)
    out["conv_from_first"] = cnt / first.where(first > 0).astype(float)
    out["conv_from_prev"] = (cnt / prev.where(prev > 0)).where(
        out["step_no"] > 1, out["conv_from_first"]
    )
    out["drop_off"] = (prev.fillna(out["count"]) - out["count"]).astype(np.int64)
    out["drop_off_rate"] = 1.0 - out["conv_from_prev"]
    out["segment"] = out["segment"].astype("str")
    return out[
        [
            "segment",
            "step_no",
            "step",
            "base",
            "count",
            "conv_from_prev",
            "conv_from_first",
            "drop_off",
            "drop_off_rate",
        ]
    ]
