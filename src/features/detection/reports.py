"""Reports built on the batch evaluator: step funnels and point-in-time rule features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from src.features.detection.batch import prepare, run_rule
from src.features.detection.rules import CompiledRule

DAY = pd.Timedelta(days=1)


FUNNEL_STEP_COLUMNS = ("customer_id", "period", "step", "gap_ns")
"""One row per step a customer-period reached (:func:`funnel_steps`): the unit funnels count."""


def funnel_steps(
    events: pd.DataFrame,
    rule: CompiledRule,
    freq: str = "D",
    until: Any = None,
    today: Any = None,
) -> pd.DataFrame:
    """The steps each customer-period reached: ``customer_id``, ``period``, ``step`` (1..reached)
    and ``gap_ns`` (ns since the previous step, <NA> for step 1) of its furthest candidate.

    Split out of :func:`funnel_report` because it only ever looks at one customer's events: the
    Spark engine runs it per group of customers and only the counting (:func:`count_funnel_steps`)
    is global. Arguments as in :func:`funnel_report`.
    """
    stream = prepare(events, until)
    run = run_rule(stream, rule)
    empty = pd.DataFrame(
        {
            "customer_id": pd.Series([], dtype=object),
            "period": pd.Series([], dtype="datetime64[ns]"),
            "step": pd.Series([], dtype="int64"),
            "gap_ns": pd.Series([], dtype="Int64"),
        }
    )
    if len(run.anchor) == 0:
        return empty
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
    if best.empty:
        return empty
    reached = best["reached"].to_numpy(dtype=np.int64)
    row = np.repeat(np.arange(len(best)), reached)
    step = np.arange(len(row)) - np.repeat(np.cumsum(reached) - reached, reached) + 1
    i = best["i"].to_numpy()[row]
    gap = run.step_ts[step - 1, i] - run.step_ts[np.maximum(step - 2, 0), i]
    gap_ns = pd.array(gap, dtype="Int64")
    gap_ns[step == 1] = pd.NA
    return pd.DataFrame(
        {
            "customer_id": stream.customer_ids(best["anchor"].to_numpy())[row],
            "period": best["period"].to_numpy()[row],
            "step": step.astype(np.int64),
            "gap_ns": gap_ns,
        }
    )


def count_funnel_steps(steps: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Per ``keys`` and step: ``customers`` (rows) and ``median_ns`` (median gap, NaN for
    step 1). The embedded aggregation; on Spark it is SQL (``percentile(gap_ns, 0.5)``)."""
    gap = steps["gap_ns"].to_numpy(dtype="float64", na_value=np.nan)
    grouped = steps.assign(_gap=gap).groupby([*keys, "step"], sort=True, dropna=False)
    return grouped.agg(customers=("step", "size"), median_ns=("_gap", "median")).reset_index()


def funnel_table(counts: pd.DataFrame, rule: CompiledRule, by: str | None = None) -> pd.DataFrame:
    """The funnel report's rows from :func:`count_funnel_steps`' counts (either engine's):
    every step of every period (and segment), conversion from the step before."""
    keys = ["period", *([by] if by else [])]
    cols = [*keys, "step", "step_name", "customers", "conversion", "median_seconds_from_prev"]
    names = [s.name for s in rule.steps]
    rows = []
    for key, grp in counts.groupby(keys, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        n_at = dict(zip(grp["step"].tolist(), grp["customers"].tolist(), strict=True))
        median_at = dict(zip(grp["step"].tolist(), grp["median_ns"].tolist(), strict=True))
        prev_n = None
        for k in range(len(names)):
            n_k = int(n_at.get(k + 1, 0))
            med = float(median_at[k + 1]) / 1e9 if k > 0 and n_k else np.nan
            conversion = np.nan if prev_n is None else (n_k / prev_n if prev_n else np.nan)
            rows.append((*key, k + 1, names[k], n_k, conversion, med))
            prev_n = n_k
    return pd.DataFrame(rows, columns=cols)


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
    if by and customers is None:
        raise ValueError("funnel_report: 'by' needs the customers frame")
    steps = funnel_steps(events, rule, freq=freq, until=until, today=today)
    if steps.empty:
        cols = ["period", *([by] if by else []), "step", "step_name", "customers"]
        return pd.DataFrame(columns=[*cols, "conversion", "median_seconds_from_prev"])
    if by:
        assert customers is not None
        seg = customers.set_index("customer_id")[by]
        steps[by] = seg.reindex(steps["customer_id"].to_numpy()).to_numpy()
    keys = ["period", *([by] if by else [])]
    return funnel_table(count_funnel_steps(steps, keys), rule, by)


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
