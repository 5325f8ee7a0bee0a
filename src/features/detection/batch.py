"""Batch evaluator: the package semantics, vectorized with numpy over the whole history.

The stream is laid out by (customer, ts, event_id), so "the customer's earliest matching event
after position q" is one ``np.searchsorted`` into the positions of the step's mask, plus a
same-customer check. Every step is one such pass over the still-alive candidates (all anchors
of the rule at once); absence steps do the same search and compare with the deadline; "last
event at or before time t" is a vectorized binary search inside each customer's segment.
De-duplication is a greedy chain over completed candidates (next unblocked anchor), resolved
with pointer doubling, so nothing loops in Python per event or per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from src.features.detection.events import DETECTION_COLUMNS, to_ns
from src.features.detection.rules import NUMERIC_FIELDS, SESSION_GAP_NS, CompiledRule, CompiledStep

_NONE = np.int64(-1)


@dataclass
class Stream:
    """Events of identified customers in (customer, ts, event_id) order, as numpy arrays.

    ``take`` maps stream positions to rows of the original frame (None: identity), so masks
    are computed on the original columns and gathered once.
    """

    frame: pd.DataFrame
    take: np.ndarray | None
    cust: np.ndarray  # int32/int64 codes, non-decreasing
    ts: np.ndarray  # int64 ns
    eid: np.ndarray  # int64
    seg_start: np.ndarray  # per customer code
    seg_end: np.ndarray
    until: int
    _masks: dict[Any, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.ts)

    def customer_ids(self, pos: np.ndarray) -> np.ndarray:
        """customer_id labels of stream positions."""
        rows = pos if self.take is None else self.take[pos]
        return self.frame["customer_id"].iloc[rows].to_numpy()

    def column(self, name: str) -> pd.Series:
        return self.frame[name]

    def gather(self, full: np.ndarray) -> np.ndarray:
        return full if self.take is None else full[self.take]


def _ts_ns(s: pd.Series) -> np.ndarray:
    return s.to_numpy().astype("datetime64[ns]").view("int64")


def prepare(events: pd.DataFrame, until: Any = None) -> Stream:
    """Lay out a StitchedEvents frame for the batch evaluator (sorting only if needed)."""
    ts_all = _ts_ns(events["ts"])
    if until is not None:
        until_ns = to_ns(until)
        keep = ts_all <= until_ns
        if not keep.all():
            events = events.loc[keep]
            ts_all = ts_all[keep]
    else:
        until_ns = int(ts_all.max()) if len(ts_all) else 0
    events = (
        events.reset_index(drop=True)
        if not isinstance(events.index, pd.RangeIndex)
        or events.index.start != 0
        or events.index.step != 1
        else events
    )
    cust_s = events["customer_id"]
    eid_all = events["event_id"].to_numpy(dtype=np.int64)
    notnull = cust_s.notna().to_numpy()
    take: np.ndarray | None = None if notnull.all() else np.flatnonzero(notnull)
    cs = cust_s if take is None else cust_s.iloc[take]
    ts = ts_all if take is None else ts_all[take]
    eid = eid_all if take is None else eid_all[take]
    n = len(ts)
    if n:
        c_arr = cs.array
        same = np.asarray(c_arr[1:] == c_arr[:-1], dtype=bool)
        ordered = bool(np.all(np.asarray(c_arr[1:] >= c_arr[:-1], dtype=bool)))
        if ordered:
            later = (ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (eid[1:] > eid[:-1]))
            ordered = bool(np.all(later | ~same))
    else:
        same, ordered = np.zeros(0, dtype=bool), True
    if ordered:
        cust = (
            np.concatenate([[0], np.cumsum(~same)]).astype(np.int64)
            if n
            else np.zeros(0, dtype=np.int64)
        )
    else:
        codes, _ = pd.factorize(cs, sort=True)
        order = np.lexsort((eid, ts, codes))
        take = order if take is None else take[order]
        cust, ts, eid = codes[order].astype(np.int64), ts[order], eid[order]
    n_cust = int(cust[-1]) + 1 if n else 0
    bounds = np.flatnonzero(np.diff(cust)) + 1 if n else np.zeros(0, dtype=np.int64)
    seg_start = np.concatenate([[0], bounds]).astype(np.int64) if n else bounds
    seg_end = np.concatenate([bounds, [n]]).astype(np.int64) if n else bounds
    assert len(seg_start) == n_cust
    return Stream(events, take, cust, ts, eid, seg_start, seg_end, until_ns)


# -- masks --------------------------------------------------------------------------------
def _pred_mask(stream: Stream, field_name: str, op: str, value: Any) -> np.ndarray:
    key = (
        "pred",
        field_name,
        op,
        value if not isinstance(value, frozenset) else tuple(sorted(value)),
    )
    got = stream._masks.get(key)
    if got is not None:
        return got
    col = stream.column(field_name)
    if op in ("gte", "lte", "eq") and field_name in NUMERIC_FIELDS:
        x = col.to_numpy(dtype=float, na_value=np.nan)
        full = x >= value if op == "gte" else x <= value if op == "lte" else x == value
    else:
        arr = _arrow(col)
        if op in ("eq", "ne"):
            res = pc.equal(arr, pa.scalar(value, arr.type))
        else:
            res = pc.is_in(arr, value_set=pa.array(sorted(value), arr.type))
        full = pc.fill_null(res, False).to_numpy(zero_copy_only=False)
        if op in ("ne", "not_in"):
            full = ~full
    m = stream.gather(full)
    stream._masks[key] = m
    return m


def _arrow(col: pd.Series) -> pa.ChunkedArray | pa.Array:
    """The column as Arrow (zero copy for pandas' Arrow-backed ``str``)."""
    try:
        return col.array.__arrow_array__()
    except (AttributeError, TypeError):
        return pa.array(col.astype(object).where(col.notna(), None), type=pa.string())


def _source_mask(stream: Stream, source: str) -> np.ndarray:
    return _pred_mask(stream, "source", "eq", source)


def session_start_mask(stream: Stream) -> np.ndarray:
    """Clicks that start a session (see the package docstring)."""
    got = stream._masks.get("session_start")
    if got is not None:
        return got
    is_click = _source_mask(stream, "click")
    sid_s = stream.column("session_id")
    sid_null = stream.gather(sid_s.isna().to_numpy())
    sid = stream.gather(sid_s.to_numpy(dtype=np.float64, na_value=np.nan))
    pos = np.flatnonzero(is_click)
    out = np.zeros(stream.n, dtype=bool)
    if len(pos):
        prev = np.concatenate([[-1], pos[:-1]])
        has_prev = prev >= 0
        has_prev[has_prev] = stream.cust[prev[has_prev]] == stream.cust[pos[has_prev]]
        pv = np.where(has_prev, prev, 0)
        differs = (
            ~has_prev
            | sid_null[pv]
            | (sid[pv] != sid[pos])
            | (stream.ts[pos] - stream.ts[pv] > SESSION_GAP_NS)
        )
        out[pos] = ~sid_null[pos] & differs
    stream._masks["session_start"] = out
    return out


def step_mask(stream: Stream, step: CompiledStep) -> np.ndarray:
    """Events matching the step, incl. the session_start and count conditions."""
    m = _source_mask(stream, step.source).copy()
    for f, op, v in step.preds:
        m &= _pred_mask(stream, f, op, v)
    if step.session_start is not None:
        ss = session_start_mask(stream)
        m &= ss if step.session_start else ~ss
    if step.count is not None:
        m = _count_mask(stream, m, step.count)
    return m


def _count_mask(stream: Stream, base: np.ndarray, count: tuple[int, int, str | None]) -> np.ndarray:
    n, w, same = count
    pos = np.flatnonzero(base)
    out = np.zeros(stream.n, dtype=bool)
    if len(pos) < n:
        return out
    g = stream.cust[pos]
    if same is not None:
        col = stream.column(same)
        codes, uniq = pd.factorize(
            col.iloc[pos if stream.take is None else stream.take[pos]], use_na_sentinel=True
        )
        g = g * (len(uniq) + 1) + (codes + 1)
        order = np.argsort(g, kind="stable")
    else:
        order = np.arange(len(pos))
    gs, p_sorted = g[order], pos[order]
    ts_sorted = stream.ts[p_sorted]
    k = n - 1
    ok = np.zeros(len(pos), dtype=bool)
    ok[k:] = (gs[k:] == gs[:-k]) & (ts_sorted[:-k] >= ts_sorted[k:] - w)
    out[p_sorted[ok]] = True
    return out


# -- searches -----------------------------------------------------------------------------
def _next_match(
    stream: Stream, idx: np.ndarray, cur: np.ndarray, cust: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(found, position) of the first position in ``idx`` after ``cur`` of the same customer."""
    if len(idx) == 0:
        return np.zeros(len(cur), dtype=bool), np.full(len(cur), _NONE)
    p = np.searchsorted(idx, cur, side="right")
    found = p < len(idx)
    j = idx[np.minimum(p, len(idx) - 1)]
    found &= stream.cust[j] == cust
    return found, np.where(found, j, _NONE)


def last_at_or_before(stream: Stream, cust: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Last position of each customer with ts <= t (segment start - 1 if none)."""
    lo = stream.seg_start[cust].copy()
    hi = stream.seg_end[cust].copy()
    ts = stream.ts
    active = lo < hi
    while active.any():
        a = np.flatnonzero(active)
        mid = (lo[a] + hi[a]) >> 1
        gt = ts[mid] > t[a]
        hi[a] = np.where(gt, mid, hi[a])
        lo[a] = np.where(gt, lo[a], mid + 1)
        active[a] = lo[a] < hi[a]
    return lo - 1


@dataclass
class RuleRun:
    """Every candidate of one rule: how far it got and when (for detections and funnels)."""

    anchor: np.ndarray  # stream positions
    reached: np.ndarray  # steps passed (1..K)
    step_ts: np.ndarray  # (K, n) event ts or deadline; -1 when not reached
    step_pos: np.ndarray  # (K, n) event position; -1 for absent / not reached
    block: np.ndarray  # for complete candidates: last position blocked by it


def run_rule(stream: Stream, rule: CompiledRule) -> RuleRun:
    """Advance all candidates of ``rule`` step by step (one vectorized pass per step)."""
    steps = rule.steps
    k_steps = len(steps)
    anchor = np.flatnonzero(step_mask(stream, steps[0]))
    n = len(anchor)
    step_ts = np.full((k_steps, n), -1, dtype=np.int64)
    step_pos = np.full((k_steps, n), -1, dtype=np.int64)
    reached = np.ones(n, dtype=np.int64)
    step_ts[0] = stream.ts[anchor]
    step_pos[0] = anchor
    alive = np.arange(n)
    cur = anchor.copy()
    ref = stream.ts[anchor].copy()
    cust = stream.cust[anchor]
    limit = ref + (rule.within_ns if rule.within_ns is not None else 2**62)
    for k in range(1, k_steps):
        if len(alive) == 0:
            break
        step = steps[k]
        idx = np.flatnonzero(step_mask(stream, step))
        c = cust[alive]
        found, j = _next_match(stream, idx, cur, c)
        if step.absent:
            deadline = ref + step.within_ns
            jt = stream.ts[np.maximum(j, 0)]
            ok = (
                ~(found & (jt <= deadline)) & (deadline <= limit[alive]) & (deadline < stream.until)
            )
            new_cur = last_at_or_before(stream, c, deadline) if k < k_steps - 1 else cur
            new_ref, new_pos = deadline, np.full(len(alive), _NONE)
        else:
            jt = stream.ts[np.maximum(j, 0)]
            bound = limit[alive]
            if step.within_ns is not None:
                bound = np.minimum(bound, ref + step.within_ns)
            ok = found & (jt <= bound)
            new_cur, new_ref, new_pos = j, jt, j
        sel = alive[ok]
        step_ts[k, sel] = new_ref[ok]
        step_pos[k, sel] = new_pos[ok]
        reached[sel] = k + 1
        alive, cur, ref = sel, new_cur[ok], new_ref[ok]
    # Block points of complete candidates (used by de-duplication).
    block = np.full(n, -1, dtype=np.int64)
    if len(alive):
        fire_ts = step_ts[k_steps - 1, alive]
        if rule.cooldown_ns:
            block[alive] = last_at_or_before(stream, cust[alive], fire_ts + rule.cooldown_ns)
        elif steps[-1].absent:
            block[alive] = last_at_or_before(stream, cust[alive], fire_ts)
        else:
            block[alive] = step_pos[k_steps - 1, alive]
    return RuleRun(anchor, reached, step_ts, step_pos, block)


def greedy_chain(anchor: np.ndarray, block: np.ndarray, cust: np.ndarray) -> np.ndarray:
    """Boolean mask of the candidates kept by de-duplication.

    Inputs are sorted by anchor position. The first candidate of each customer is kept; from a
    kept candidate the next kept one is the first with anchor > its block. That chain is
    followed for all customers at once by pointer doubling (log2 of the chain length passes).
    """
    n = len(anchor)
    if n == 0:
        return np.zeros(0, dtype=bool)
    nxt = np.searchsorted(anchor, block, side="right")  # may land on the next customer's first
    jump = np.append(nxt, n)
    kept = np.zeros(n + 1, dtype=bool)
    kept[0] = True
    kept[1:n] = cust[1:] != cust[:-1]
    while True:
        kept[jump[kept]] = True
        if jump[0] == n and (jump == n).all():
            break
        jump = jump[jump]
    return kept[:n]


def _rule_detections(stream: Stream, rule: CompiledRule) -> dict[str, Any]:
    """Columns of one rule's reported detections (numpy arrays / lists)."""
    run = run_rule(stream, rule)
    k_steps = len(rule.steps)
    done = np.flatnonzero(run.reached == k_steps)
    anchor = run.anchor[done]
    kept = done[greedy_chain(anchor, run.block[done], stream.cust[anchor])]
    fire_pos = run.step_pos[k_steps - 1, kept]
    cols = []
    for k, step in enumerate(rule.steps):
        cols.append(
            [None] * len(kept) if step.absent else stream.eid[run.step_pos[k, kept]].tolist()
        )
    return {
        "pos": run.anchor[kept],
        "rule": np.full(len(kept), rule.name, dtype=object),
        "kind": np.full(len(kept), rule.kind, dtype=object),
        "anchor_at": run.step_ts[0, kept],
        "fired_at": run.step_ts[k_steps - 1, kept],
        "fired_event_id": stream.eid[np.maximum(fire_pos, 0)],
        "fired_null": fire_pos < 0,
        "event_ids": list(zip(*cols, strict=True)),
    }


def detect(
    events: pd.DataFrame, rules: list[CompiledRule], until: Any = None, sort: bool = True
) -> pd.DataFrame:
    """Detections of ``rules`` over a StitchedEvents frame (see the package docstring).

    ``until``: the evaluation time; events after it are ignored and timeouts fire only if
    their deadline is strictly before it (default: the largest ts in ``events``).
    """
    stream = prepare(events, until)
    parts = [_rule_detections(stream, r) for r in rules]

    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]) if parts else np.zeros(0, dtype=dtype)

    pos = cat("pos", np.int64)
    anchor_at, fired_at = cat("anchor_at", np.int64), cat("fired_at", np.int64)
    rank = {name: i for i, name in enumerate(sorted({r.name for r in rules}))}
    rule_rank = (
        np.concatenate(
            [np.full(len(p["pos"]), rank[r.name]) for p, r in zip(parts, rules, strict=True)]
        )
        if parts
        else pos
    )
    # Canonical order (rule, customer, fired_at, anchor_at); customer codes follow the
    # customer_id sort order, so this is numpy work, not a string sort.
    order = (
        np.lexsort((anchor_at, fired_at, stream.cust[pos], rule_rank))
        if sort
        else np.arange(len(pos))
    )
    fired_eid = pd.array(cat("fired_event_id", np.int64)[order], dtype="Int64")
    fired_eid[cat("fired_null", bool)[order]] = pd.NA
    event_ids = np.empty(len(pos), dtype=object)
    event_ids[:] = [t for p in parts for t in p["event_ids"]]
    out = pd.DataFrame(
        {
            "customer_id": pd.Series(stream.customer_ids(pos[order]), dtype="str"),
            "rule": pd.Series(cat("rule", object)[order], dtype="str"),
            "kind": pd.Series(cat("kind", object)[order], dtype="str"),
            "anchor_at": pd.to_datetime(anchor_at[order], unit="ns"),
            "fired_at": pd.to_datetime(fired_at[order], unit="ns"),
            "fired_event_id": fired_eid,
            "event_ids": pd.Series(event_ids[order], dtype=object),
        },
        columns=list(DETECTION_COLUMNS),
    )
    return out
