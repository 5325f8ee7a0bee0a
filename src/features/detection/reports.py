"""Reports built on the batch evaluator: step funnels and point-in-time rule features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from src.features.detection.batch import prepare, run_rule
from src.features.detection.rules import CompiledRule

DAY = pd.Timedelta(days=1)


def funnel_report(
    events: pd.DataFrame,
    rule: CompiledRule,
    customers: pd.DataFrame | None = None,
    by: str | None = None,
    freq: str = "D",
    until: Any = None,
    today: Any = None,
) -> pd.DataFrame:
    """Step funnel of one rule: customers reaching each step per period (and segment).

    The unit is a customer-period (period of the anchor event, ``freq`` e.g. 'D', 'W'), as in
    web-analytics funnels: a customer reached step k in a period if any candidate anchored in
    that period reached it (windows respected; an absence step is reached once its deadline
    passed without the event, before ``until``). The time between steps is taken from the
    customer-period's furthest candidate (earliest anchor among ties); the median is reported in
    seconds. ``conversion`` is customers at step k / customers at step k-1. This counts
    customers, not de-duplicated detections, so the last step need not equal ``detect``'s rows.
    ``by`` names a column of ``customers`` (segment); ``today`` restricts to that one period.
    """
    stream = prepare(events, until)
    run = run_rule(stream, rule)
    k_steps = len(rule.steps)
    names = [s.name for s in rule.steps]
    cols = [
        "period",
        *([by] if by else []),
        "step",
        "step_name",
        "customers",
        "conversion",
        "median_seconds_from_prev",
    ]
    if len(run.anchor) == 0:
        return pd.DataFrame(columns=cols)
    period = (
        pd.to_datetime(run.step_ts[0], unit="ns").floor(freq)
        if freq == "D"
        else pd.to_datetime(run.step_ts[0], unit="ns").to_period(freq).start_time
    )
    cand = pd.DataFrame(
        {
            "cust": stream.cust[run.anchor],
            "period": np.asarray(period),
            "reached": run.reached,
            "anchor": run.anchor,
            "i": np.arange(len(run.anchor)),
        }
    )
    if today is not None:
        t = pd.Timestamp(today)
        t0 = t.floor(freq) if freq == "D" else t.to_period(freq).start_time
        cand = cand[cand["period"] == t0]
    # Furthest candidate per customer-period, earliest anchor among ties.
    cand = cand.sort_values(
        ["cust", "period", "reached", "anchor"], ascending=[True, True, False, True], kind="stable"
    )
    best = cand.drop_duplicates(["cust", "period"], keep="first")
    if by:
        if customers is None:
            raise ValueError("funnel_report: 'by' needs the customers frame")
        seg = customers.set_index("customer_id")[by]
        best = best.assign(
            **{by: seg.reindex(stream.customer_ids(best["anchor"].to_numpy())).to_numpy()}
        )
    keys = ["period", *([by] if by else [])]
    rows = []
    for key, grp in best.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        prev_n = None
        idx = grp["i"].to_numpy()
        reached = grp["reached"].to_numpy()
        for k in range(k_steps):
            at = reached >= k + 1
            n_k = int(at.sum())
            med = np.nan
            if k > 0 and n_k:
                dt = run.step_ts[k, idx[at]] - run.step_ts[k - 1, idx[at]]
                med = float(np.median(dt)) / 1e9
            rows.append(
                (
                    *key,
                    k + 1,
                    names[k],
                    n_k,
                    np.nan if prev_n is None else (n_k / prev_n if prev_n else np.nan),
                    med,
                )
            )
            prev_n = n_k
    return pd.DataFrame(rows, columns=cols)


def rule_features(
    detections: pd.DataFrame,
    as_of: Any,
    customers: pd.DataFrame | Sequence[str],
    rules: Sequence[str | CompiledRule] | None = None,
    wide: bool = False,
) -> pd.DataFrame:
    """Per customer × rule, as of a date, from detections fired strictly before ``as_of``:
    ``count_7d``, ``count_30d`` (fired in [as_of - N days, as_of)), ``days_since_last`` (NaN if
    never) and ``flag_7d``. Later detections are ignored, so the features are point-in-time.

    ``wide=True`` gives one row per customer with ``<rule>__<feature>`` columns.
    """
    as_of = pd.Timestamp(as_of)
    ids = customers["customer_id"] if isinstance(customers, pd.DataFrame) else customers
    ids = pd.Index(pd.unique(pd.Series(list(ids), dtype="str")), name="customer_id")
    if rules is None:
        rule_names = sorted(detections["rule"].unique().tolist())
    else:
        rule_names = [r.name if isinstance(r, CompiledRule) else r for r in rules]
    d = detections.loc[detections["fired_at"] < as_of, ["customer_id", "rule", "fired_at"]]
    age = as_of - d["fired_at"]
    agg = (
        d.assign(in7=age <= 7 * DAY, in30=age <= 30 * DAY)
        .groupby(["customer_id", "rule"])
        .agg(count_7d=("in7", "sum"), count_30d=("in30", "sum"), last=("fired_at", "max"))
    )
    grid = pd.MultiIndex.from_product([ids, pd.Index(rule_names, name="rule")])
    out = agg.reindex(grid)
    out["count_7d"] = out["count_7d"].fillna(0).astype("int64")
    out["count_30d"] = out["count_30d"].fillna(0).astype("int64")
    out["days_since_last"] = (as_of - out["last"]) / DAY
    out["flag_7d"] = out["count_7d"] > 0
    out = out.drop(columns="last").reset_index()
    if wide:
        w = out.pivot(index="customer_id", columns="rule")
        w.columns = [f"{r}__{f}" for f, r in w.columns]
        return w.reset_index()
    return out
