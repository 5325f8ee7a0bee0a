"""A straightforward per-customer Python loop implementing the package semantics literally.

It is the baseline of the benchmark and a third, independent opinion in the property test:
no indexes, no vectorization, no incremental state — for each anchor, walk the customer's
events forward. Slow (quadratic in the worst case); use it on small streams or subsamples.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from src.features.detection.events import (
    Detection,
    Event,
    detections_frame,
    events_from_frame,
    step_matches,
    to_ns,
)
from src.features.detection.rules import SESSION_GAP_NS, CompiledRule, CompiledStep

_INF = float("inf")


def _session_starts(evs: list[Event]) -> list[bool]:
    out, prev = [], None
    for e in evs:
        if e.source != "click":
            out.append(False)
            continue
        out.append(
            e.session_id is not None
            and (prev is None or prev.session_id != e.session_id or e.ts - prev.ts > SESSION_GAP_NS)
        )
        prev = e
    return out


def _qualifies(step: CompiledStep, evs: list[Event], i: int, starts: list[bool]) -> bool:
    e = evs[i]
    if not step_matches(step, e):
        return False
    if step.session_start is not None and starts[i] != step.session_start:
        return False
    if step.count is not None:
        n, w, same = step.count
        k = 0
        for j in range(i, -1, -1):
            o = evs[j]
            if o.ts < e.ts - w:
                break
            if (
                step_matches(step, o)
                and (same is None or getattr(o, same) == getattr(e, same))
                and (step.session_start is None or starts[j] == step.session_start)
            ):
                k += 1
        return k >= n
    return True


def _run_candidate(
    rule: CompiledRule, evs: list[Event], a: int, starts: list[bool], until: int
) -> tuple[Any, ...] | None:
    """(fire_ts, fire_index or None, event_ids) if the candidate anchored at ``a`` completes."""
    anchor_ts = evs[a].ts
    limit = anchor_ts + rule.within_ns if rule.within_ns is not None else _INF
    cur, ref = a, anchor_ts
    eids: list[int | None] = [evs[a].event_id]
    for step in rule.steps[1:]:
        if step.absent:
            deadline = ref + step.within_ns
            if deadline > limit:
                return None
            j = cur + 1
            while j < len(evs) and evs[j].ts <= deadline:
                if _qualifies(step, evs, j, starts):
                    return None
                j += 1
            cur, ref = j - 1, deadline  # the last event at or before the deadline
            eids.append(None)
        else:
            bound = min(limit, ref + step.within_ns if step.within_ns is not None else _INF)
            j = cur + 1
            while j < len(evs) and not _qualifies(step, evs, j, starts):
                j += 1
            if j == len(evs) or evs[j].ts > bound:
                return None
            cur, ref = j, evs[j].ts
            eids.append(evs[j].event_id)
    if rule.steps[-1].absent:
        return (ref, None, tuple(eids)) if ref < until else None
    return (ref, cur, tuple(eids))


def reference_detect(
    events: pd.DataFrame, rules: list[CompiledRule], until: Any = None
) -> pd.DataFrame:
    """Detections by brute force, same table as :func:`~src.features.detection.batch.detect`."""
    evs_all = list(events_from_frame(events, order="time"))
    if until is None:
        until_ns = max((e.ts for e in evs_all), default=0)
    else:
        until_ns = to_ns(until)
        evs_all = [e for e in evs_all if e.ts <= until_ns]
    by_cust: dict[str, list[Event]] = defaultdict(list)
    for e in evs_all:
        if e.customer_id is not None:
            by_cust[e.customer_id].append(e)
    out: list[Detection] = []
    for cust, evs in by_cust.items():
        starts = _session_starts(evs)
        for rule in rules:
            block: tuple[int, float] | None = None
            for a in range(len(evs)):
                if not _qualifies(rule.steps[0], evs, a, starts):
                    continue
                res = _run_candidate(rule, evs, a, starts, until_ns)
                if res is None:
                    continue
                fire_ts, fire_idx, eids = res
                if block is not None and (evs[a].ts, evs[a].event_id) <= block:
                    continue
                if rule.cooldown_ns:
                    block = (fire_ts + rule.cooldown_ns, _INF)
                elif fire_idx is None:
                    block = (fire_ts, _INF)
                else:
                    block = (fire_ts, evs[fire_idx].event_id)
                out.append(
                    Detection(
                        cust,
                        rule.name,
                        rule.kind,
                        evs[a].ts,
                        fire_ts,
                        None if fire_idx is None else evs[fire_idx].event_id,
                        eids,
                    )
                )
    return detections_frame(out)


def evaluate_all(
    events: pd.DataFrame, rules: list[CompiledRule], until: Any = None
) -> dict[str, pd.DataFrame]:
    """Detections by all three evaluators (batch, online, reference) — for parity checks."""
    from src.features.detection.batch import detect
    from src.features.detection.online import detect_online

    return {
        "batch": detect(events, rules, until=until),
        "online": detections_frame(detect_online(events, rules, until=until)),
        "reference": reference_detect(events, rules, until=until),
    }
