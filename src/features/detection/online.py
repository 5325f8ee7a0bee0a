"""Online evaluator: one event at a time, bounded state, timeouts on event time.

Implements the semantics in the package docstring incrementally:

- each (customer, rule) keeps its open candidates (anchor, current step, cursor time) and the
  block point of its last detection; a candidate at a positive step expires at
  ``min(ref + step.within, anchor + rule.within)``, one at an absent step sits in a global
  deadline heap and passes (or fires its timeout) when the clock moves past the deadline;
- ``count`` steps keep the last n timestamps per (customer, rule, step, same-value) and
  ``session_start`` the customer's last click, both dropped once older than their window;
- a periodic sweep drops everything expired, so state is bounded by the activity inside the
  longest window, not by the length of the stream.

Events must arrive in ``(ts, event_id)`` order per customer and non-decreasing ``ts`` overall
(the order of :func:`events_from_frame`). An event older than the clock cannot be evaluated with
the batch meaning; it is counted in ``late_events`` and ignored.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from src.data.schemas import PAGES, TXN_CODES
from src.features.detection.events import (
    Detection,
    Event,
    as_event,
    events_from_frame,
    to_ns,
)
from src.features.detection.rules import SESSION_GAP_NS, CompiledRule, CompiledStep

_INF = float("inf")


class _Cand:
    """A partial match; ``eids`` grows by one per passed step."""

    __slots__ = ("alive", "anchor_eid", "anchor_ts", "eids", "expiry", "ref", "step")

    def __init__(self, ts: int, eid: int) -> None:
        self.anchor_ts = ts
        self.anchor_eid = eid
        self.step = 1
        self.ref = ts
        self.expiry: float = _INF
        self.eids: list[int | None] = [eid]
        self.alive = True


class _RuleState:
    """Open candidates of one (customer, rule) and the block point of its last detection."""

    __slots__ = ("block", "cands")

    def __init__(self) -> None:
        self.cands: list[_Cand] = []
        self.block: tuple[float, float] | None = None


def _compile_where(step: CompiledStep) -> Callable[[Event], bool]:
    """A lambda over the event for the step's plain predicates (generated once, per rule)."""
    env: dict[str, Any] = {}
    parts = []
    ops = {"eq": "==", "ne": "!=", "in": "in", "not_in": "not in", "gte": ">=", "lte": "<="}
    for i, (field, op, value) in enumerate(step.preds):
        env[f"v{i}"] = value
        parts.append(f"e.{field} {ops[op]} v{i}")
    return eval("lambda e: " + (" and ".join(parts) or "True"), env)


def _discriminator(step: CompiledStep) -> tuple[str, frozenset[str]] | None:
    field = "page" if step.source == "click" else "code"
    for f, op, value in step.preds:
        if f == field and op == "eq":
            return field, frozenset([value])
        if f == field and op == "in":
            return field, frozenset(value)
    return None


class OnlineDetector:
    """Incremental detector; feed events with :meth:`process`, advance time with :meth:`tick`.

    ``sweep_every``: events between sweeps of expired state (amortised O(1) per event).
    """

    def __init__(self, rules: Iterable[CompiledRule], sweep_every: int = 50_000) -> None:
        self.rules: list[CompiledRule] = list(rules)
        self.clock: int = -(2**62)
        self.late_events = 0
        self.sweep_every = sweep_every
        self._since_sweep = 0
        self._seq = 0
        self._states: dict[tuple[str, int], _RuleState] = {}
        self._counts: dict[tuple[Any, ...], deque[int]] = {}  # key[4]: the window in ns
        self._sessions: dict[str, tuple[int, int | None]] = {}
        self._heap: list[tuple[Any, ...]] = []
        self._needs_sessions = any(s.session_start is not None for r in self.rules for s in r.steps)
        # Dispatch: (source, page|code) -> checks, so most events touch no rule at all.
        checks: dict[str, list[tuple[Any, ...]]] = {"click": [], "txn": []}
        keyed: dict[str, dict[str, list[tuple[Any, ...]]]] = {"click": {}, "txn": {}}
        for r, rule in enumerate(self.rules):
            for s, step in enumerate(rule.steps):
                check = (r, s, _compile_where(step), step.session_start, step.count)
                disc = _discriminator(step)
                if disc is None:
                    checks[step.source].append(check)
                else:
                    for v in disc[1]:
                        keyed[step.source].setdefault(v, []).append(check)
        self._generic = {src: tuple(sorted(c, key=lambda c: c[:2])) for src, c in checks.items()}
        self._index: dict[str, dict[str | None, tuple[Any, ...]]] = {}
        for src, vocab in (("click", PAGES), ("txn", TXN_CODES)):
            idx: dict[str | None, tuple[Any, ...]] = {}
            for v in set(vocab) | set(keyed[src]):
                idx[v] = tuple(sorted(keyed[src].get(v, []) + checks[src], key=lambda c: c[:2]))
            self._index[src] = idx

    # -- public API -------------------------------------------------------------------------
    def process(self, event: Event | Mapping[str, Any]) -> list[Detection]:
        """Evaluate one event; returns the detections it completes (timeouts it makes due
        first, then matches)."""
        e = event if type(event) is Event else as_event(event)
        ts = e.ts
        out: list[Detection] = []
        if ts > self.clock:
            if self._heap and self._heap[0][0] < ts:
                self._fire_due(ts, out)
            self.clock = ts
        elif ts < self.clock:
            self.late_events += 1
            return out
        self._since_sweep += 1
        if self._since_sweep >= self.sweep_every:
            self.sweep()
        cust = e.customer_id
        if cust is None:
            return out
        ss = False
        if self._needs_sessions and e.source == "click":
            prev = self._sessions.get(cust)
            sid = e.session_id
            ss = sid is not None and (
                prev is None or prev[1] != sid or ts - prev[0] > SESSION_GAP_NS
            )
            self._sessions[cust] = (ts, sid)
        src = e.source
        checks = self._index[src].get(e.page if src == "click" else e.code, self._generic[src])
        if not checks:
            return out
        cur_rule = -1
        matched: list[int] = []
        for r, s, where, ss_req, count in checks:
            if not where(e) or (ss_req is not None and ss_req != ss):
                continue
            if count is not None and not self._count(cust, r, s, count, e):
                continue
            if r != cur_rule:
                if matched:
                    self._advance(cur_rule, cust, e, matched, out)
                cur_rule, matched = r, []
            matched.append(s)
        if matched:
            self._advance(cur_rule, cust, e, matched, out)
        return out

    def process_many(self, events: Iterable[Event | Mapping[str, Any]]) -> list[Detection]:
        """All detections of a stream of events (in order)."""
        out: list[Detection] = []
        proc = self.process
        for e in events:
            out.extend(proc(e))
        return out

    def tick(self, now: Any) -> list[Detection]:
        """Advance the clock to ``now`` without an event: fires timeouts with deadline < now."""
        now_ns = to_ns(now)
        out: list[Detection] = []
        if now_ns > self.clock:
            self._fire_due(now_ns, out)
            self.clock = now_ns
        return out

    def state_stats(self) -> dict[str, int]:
        """Sizes of each part of the state (after dropping what has expired)."""
        self.sweep()
        return {
            "rule_states": len(self._states),
            "candidates": sum(len(st.cands) for st in self._states.values()),
            "count_timestamps": sum(len(d) for d in self._counts.values()),
            "sessions": len(self._sessions),
            "heap": len(self._heap),
        }

    def state_size(self) -> int:
        """Total number of state entries (the memory report's unit)."""
        return sum(self.state_stats().values())

    def sweep(self) -> None:
        """Drop expired candidates, counters, session trackers and idle rule states."""
        self._since_sweep = 0
        now = self.clock
        for key in list(self._states):
            st = self._states[key]
            steps = self.rules[key[1]].steps
            st.cands = [
                c for c in st.cands if c.alive and (steps[c.step].absent or c.expiry >= now)
            ]
            if not st.cands and (st.block is None or st.block[0] < now):
                del self._states[key]
        for count_key in list(self._counts):
            if self._counts[count_key][-1] < now - count_key[4]:
                del self._counts[count_key]
        for cust in list(self._sessions):
            if now - self._sessions[cust][0] > SESSION_GAP_NS:
                del self._sessions[cust]
        if len(self._heap) > 64 and len(self._heap) > 2 * sum(
            1 for h in self._heap if h[6].alive and h[6].step == h[7]
        ):
            self._heap = [h for h in self._heap if h[6].alive and h[6].step == h[7]]
            heapq.heapify(self._heap)

    # -- internals --------------------------------------------------------------------------
    def _count(
        self, cust: str, r: int, s: int, count: tuple[int, int, str | None], e: Event
    ) -> bool:
        n, w, same = count
        key = (cust, r, s, None if same is None else getattr(e, same), w)
        dq = self._counts.get(key)
        if dq is None:
            dq = self._counts[key] = deque(maxlen=n)
        dq.append(e.ts)
        return len(dq) == n and dq[0] >= e.ts - w

    def _push(self, deadline: int, cand: _Cand, r: int, cust: str) -> None:
        self._seq += 1
        heapq.heappush(
            self._heap,
            (deadline, cand.anchor_ts, cand.anchor_eid, self._seq, r, cust, cand, cand.step),
        )

    def _enter_step(self, rule: CompiledRule, r: int, cust: str, cand: _Cand) -> bool:
        """Set up the candidate's new current step; False if it can no longer complete."""
        step = rule.steps[cand.step]
        limit = _INF if rule.within_ns is None else cand.anchor_ts + rule.within_ns
        if step.absent:
            assert step.within_ns is not None  # rules.py refuses an absence without a window
            deadline = cand.ref + step.within_ns
            if deadline > limit:
                return False
            self._push(deadline, cand, r, cust)
        else:
            cand.expiry = min(limit, _INF if step.within_ns is None else cand.ref + step.within_ns)
        return True

    def _emit(
        self,
        rule: CompiledRule,
        st: _RuleState,
        cust: str,
        cand: _Cand,
        fire_ts: int,
        fire_eid: int | None,
        out: list[Detection],
    ) -> None:
        if st.block is not None and (cand.anchor_ts, cand.anchor_eid) <= st.block:
            return
        if rule.cooldown_ns:
            st.block = (fire_ts + rule.cooldown_ns, _INF)
        else:
            st.block = (fire_ts, _INF if fire_eid is None else fire_eid)
        out.append(
            Detection(
                cust,
                rule.name,
                rule.kind,
                cand.anchor_ts,
                fire_ts,
                fire_eid,
                tuple(cand.eids),
                rule.action,
            )
        )

    def _advance(
        self, r: int, cust: str, e: Event, matched: list[int], out: list[Detection]
    ) -> None:
        rule = self.rules[r]
        steps = rule.steps
        n_steps = len(steps)
        key = (cust, r)
        st = self._states.get(key)
        ts, eid = e.ts, e.event_id
        done: list[_Cand] = []
        if st is not None and st.cands:
            keep = []
            for c in st.cands:
                if not c.alive:
                    continue
                k = c.step
                if steps[k].absent:
                    if k in matched:  # an unwanted event before the deadline
                        c.alive = False
                        continue
                elif ts > c.expiry:
                    c.alive = False
                    continue
                elif k in matched:
                    c.eids.append(eid)
                    c.ref = ts
                    c.step = k + 1
                    if c.step == n_steps:
                        done.append(c)
                        continue
                    if not self._enter_step(rule, r, cust, c):
                        c.alive = False
                        continue
                keep.append(c)
            st.cands = keep
        if matched[0] == 0:
            if st is None:
                st = self._states[key] = _RuleState()
            if st.block is None or (ts, eid) > st.block:
                c = _Cand(ts, eid)
                if n_steps == 1:
                    done.append(c)
                elif self._enter_step(rule, r, cust, c):
                    st.cands.append(c)
        if done:
            assert st is not None  # a completed candidate lives in its rule state
            for c in done:
                c.alive = False
                self._emit(rule, st, cust, c, ts, eid, out)
        if st is not None and not st.cands and st.block is None:
            del self._states[key]

    def _fire_due(self, now: int, out: list[Detection]) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            deadline, _, _, _, r, cust, cand, step_at = heapq.heappop(heap)
            if not cand.alive or cand.step != step_at:
                continue
            rule = self.rules[r]
            st = self._states[(cust, r)]
            cand.eids.append(None)
            cand.ref = deadline
            cand.step = step_at + 1
            if cand.step == len(rule.steps):
                cand.alive = False
                st.cands.remove(cand)
                self._emit(rule, st, cust, cand, deadline, None, out)
            elif not self._enter_step(rule, r, cust, cand):
                cand.alive = False
                st.cands.remove(cand)


def detect_online(events: Any, rules: list[CompiledRule], until: Any = None) -> list[Detection]:
    """Run a whole StitchedEvents frame through an :class:`OnlineDetector` (tests, benchmarks):
    events up to ``until`` in time order, then ``tick(until)`` if given."""
    det = OnlineDetector(rules)
    evs = events_from_frame(events, order="time")
    if until is not None:
        u = to_ns(until)
        evs = (e for e in evs if e.ts <= u)
    out = det.process_many(evs)
    if until is not None:
        out.extend(det.tick(until))
    return out
