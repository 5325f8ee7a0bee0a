"""The online detector's state and the rule flags per customer in Redis, shared by replicas.

In one process, ``/v1/events`` keeps every customer's partial rule matches in an
:class:`~src.features.detection.OnlineDetector` and the flags its detections set in
:class:`~src.serving.customers.OnlineFlags`. Behind a load balancer a customer's events reach
any replica, and a decision on one replica must see the flag an event set on another; so:

* :class:`RedisDetector` keeps each customer's detector state as one Redis value
  (``<prefix>:det:<customer>``, JSON, expiring after the rules' longest window when idle) and
  processes an event as a read-modify-write under ``WATCH``: two replicas processing the same
  customer's events at once retry instead of losing one update. It stands where
  ``EventProcessor.detector`` stands (``process``, ``late_events``, ``state_size``); the clock
  is the customer's own (an event older than the customer's last one is late).
* :class:`RedisFlags` keeps the flags (``<prefix>:flags:<customer>``: flag -> expiry in event
  time ns), read by every decision.

Timeouts without a next event (:meth:`RedisDetector.sweep_due`). A customer's pending absence
("did not reach X within 10 minutes") would otherwise fire only at that customer's next event,
maybe never. Every write of a customer's state also writes, in the same ``MULTI``, the earliest
pending deadline of that customer into a sorted set (``<prefix>:detdue``, score = deadline in
event-time microseconds) and the largest event time seen into ``<prefix>:detclock`` (``ZADD
GT``). A sweeper (each replica runs one, every ``detection_sweep_seconds``) takes the customers
whose deadline is before the sweep time ``T`` and advances each one's state to ``T`` (the
detector's ``tick``: exactly the timeouts with deadline < T fire), in the same optimistic
transaction as an event: ``WATCH`` the customer's state, read, tick, ``MULTI`` write state and
due entry, ``EXEC``. The ``EXEC`` is the atomic claim: of two replicas sweeping (or a sweep and
an event) the one whose ``EXEC`` fails re-reads the state, in which the timeout has already
fired and is gone, so each timeout fires once across replicas; a replica killed before its
``EXEC`` changed nothing, and the due entry stays for the next sweep.

Which clock drives the sweep: ``T = min(server now, largest event time seen) - allowed
lateness`` (event times are the service's naive local time; the server's "now" is converted to
it). Why:

* event time is what the rules mean ("10 minutes after the inquiry") and what the batch
  evaluation (:func:`src.features.detection.detect`) fires on: a timeout fires iff its deadline
  is before the evaluation time. Ticking a customer to ``T`` therefore gives the batch's
  detections with ``until = T``, as long as no event older than ``T`` arrives afterwards;
* the allowed lateness is that margin: an event may reach the service up to that long after its
  own time and still cancel an absence (an event older than its customer's clock is "late",
  counted and ignored, as in the in-process detector whose partition clock another event moved);
* capped by the server's clock, a client's clock skew (events are accepted up to
  ``event_max_skew_seconds`` ahead) cannot fire timeouts early or make punctual events late;
* capped by the largest event time seen, a replay of past events (tests, a backfill, a demo)
  is swept in its own time, not fired all at once because the server's clock is months ahead.

The state is encoded by this module from the detector's documented parts (candidates, rule
states, counters, session, deadline heap); nothing is unpickled from the shared server.
The state is encoded by this module from the detector's documented parts (candidates, rule
states, counters, session, deadline heap); nothing is unpickled from the shared server.
"""

from __future__ import annotations

import heapq
import json
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from src.features.detection import Detection, Event, OnlineDetector
from src.features.detection.online import _Cand, _RuleState
from src.features.detection.rules import SESSION_GAP_NS, CompiledRule
from src.serving.customers import OnlineFlags

_INF = float("inf")
_DAY_S = 86_400
_MAX_RETRIES = 50


class SharedStateUnavailable(RuntimeError):
    """Redis cannot be reached: an event is answered 503 (retry), a decision shows nothing."""


def _inf_out(x: float) -> float | None:
    return None if x == _INF else x


def _inf_in(x: float | None) -> float:
    return _INF if x is None else x


def longest_window_seconds(rules: Sequence[CompiledRule]) -> int:
    """The longest time any rule looks back (rule and step windows, counters, sessions, cooldowns):
    a customer idle for longer has no state worth keeping."""
    ns = SESSION_GAP_NS
    for rule in rules:
        ns = max(ns, rule.within_ns or 0, rule.cooldown_ns or 0)
        for step in rule.steps:
            ns = max(ns, step.within_ns or 0, step.count[1] if step.count else 0)
    return math.ceil(ns / 1e9)


def dump_state(det: OnlineDetector) -> str | None:
    """The detector's state (one customer's) as JSON; None when there is nothing to keep."""
    det.sweep()
    cands: list[_Cand] = []
    index: dict[int, int] = {}

    def ref(c: _Cand) -> int:
        i = index.get(id(c))
        if i is None:
            i = index[id(c)] = len(cands)
            cands.append(c)
        return i

    states = [
        [
            r,
            [ref(c) for c in st.cands if c.alive],
            None if st.block is None else [st.block[0], _inf_out(st.block[1])],
        ]
        for (_, r), st in sorted(det._states.items(), key=lambda kv: kv[0][1])
    ]  # canonical order: the same state is the same text, whoever wrote it
    heap = [
        [h[0], h[1], h[2], h[3], h[4], ref(h[6]), h[7]]
        for h in sorted(det._heap, key=lambda h: h[:4])
        if h[6].alive and h[6].step == h[7]
    ]
    counts = sorted(
        ([k[1], k[2], k[3], k[4], list(dq), dq.maxlen] for k, dq in det._counts.items()),
        key=lambda c: (c[0], c[1], str(c[2]), c[3]),
    )
    session = next(iter(det._sessions.values()), None)
    if not states and not heap and not counts and session is None:
        return None
    return json.dumps(
        {
            "clock": det.clock,
            "seq": det._seq,
            "cands": [
                [c.anchor_ts, c.anchor_eid, c.step, c.ref, _inf_out(c.expiry), c.eids]
                for c in cands
            ],
            "states": states,
            "heap": heap,
            "counts": counts,
            "session": None if session is None else list(session),
        },
        separators=(",", ":"),
    )


def load_state(det: OnlineDetector, customer_id: str, raw: str | bytes | None) -> None:
    """Put one customer's state (from :func:`dump_state`, or none) into ``det``."""
    det._states, det._counts, det._sessions, det._heap = {}, {}, {}, []
    det._since_sweep = 0
    if raw is None:
        det.clock, det._seq = -(2**62), 0
        return
    data = json.loads(raw)
    det.clock, det._seq = data["clock"], data["seq"]
    cands = []
    for anchor_ts, anchor_eid, step, ref, expiry, eids in data["cands"]:
        c = _Cand(anchor_ts, anchor_eid)
        c.step, c.ref, c.expiry, c.eids = step, ref, _inf_in(expiry), list(eids)
        cands.append(c)
    for r, members, block in data["states"]:
        st = _RuleState()
        st.cands = [cands[i] for i in members]
        st.block = None if block is None else (block[0], _inf_in(block[1]))
        det._states[(customer_id, r)] = st
    det._heap = [
        (d, a_ts, a_eid, seq, r, customer_id, cands[i], step)
        for d, a_ts, a_eid, seq, r, i, step in data["heap"]
    ]
    heapq.heapify(det._heap)  # dead entries were left out when it was stored
    for r, s, same, w, stamps, maxlen in data["counts"]:
        det._counts[(customer_id, r, s, same, w)] = deque(stamps, maxlen=maxlen)
    if data["session"] is not None:
        det._sessions[customer_id] = (data["session"][0], data["session"][1])


def next_deadline(det: OnlineDetector) -> int | None:
    """The earliest deadline of a pending absence in ``det`` (ns), or None."""
    live = [h[0] for h in det._heap if h[6].alive and h[6].step == h[7]]
    return min(live) if live else None


class RedisDetector:
    """The online detector with each customer's state in Redis (see the module docstring).

    ``process`` is not thread-safe on its own (one detector object is reused per event): callers
    serialize, as ``EventProcessor`` does with its lock. ``sweep_due`` has its own detector
    object and lock, so a sweep runs beside events. ``allowed_lateness_seconds``: see the module
    docstring."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        rules: Iterable[CompiledRule],
        allowed_lateness_seconds: float = 60.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.detector = OnlineDetector(rules)  # compiled once; state swapped in per event
        self._sweeper = OnlineDetector(self.detector.rules)
        self._sweep_lock = threading.Lock()
        self.ttl_s = longest_window_seconds(self.detector.rules) + _DAY_S
        self.lateness_ns = int(allowed_lateness_seconds * 1e9)
        self.due_key = f"{prefix}:detdue"
        self.clock_key = f"{prefix}:detclock"
        self.late_events = 0
        self.conflicts = 0  # retries because another replica changed the customer meanwhile
        self.swept = 0  # timeouts this replica's sweeps fired

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}:det:{customer_id}"

    def process(self, event: Event) -> list[Detection]:
        """Detections of one event, the customer's state read and written back atomically."""
        import redis

        cust = event.customer_id
        if cust is None:
            return []
        try:
            out, late = self._transact(
                self.detector, cust, lambda det: det.process(event), event.ts
            )
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise SharedStateUnavailable(f"Redis: {error}") from error
        self.late_events += late
        return out

    def sweep_time(self, server_now_ns: int) -> int | None:
        """``T`` of a sweep at the server's ``now`` (see the module docstring); None before any
        event was seen."""
        seen = self.client.zscore(self.clock_key, "max")
        if seen is None:
            return None
        return min(server_now_ns, int(seen) * 1000) - self.lateness_ns

    def sweep_due(self, server_now_ns: int, limit: int = 10_000) -> list[Detection]:
        """Fire the pending timeouts of every customer due before the sweep time (at most
        ``limit`` customers per call): each fires once across replicas (module docstring)."""
        import redis

        with self._sweep_lock:
            try:
                until = self.sweep_time(server_now_ns)
                if until is None:
                    return []
                # scores are floor(deadline / 1 us): a superset of deadline < until; the tick
                # decides exactly, and rewrites the entry of a customer not yet due
                due = self.client.zrangebyscore(
                    self.due_key, "-inf", (until - 1) // 1000, start=0, num=limit
                )
                out: list[Detection] = []
                for member in due:
                    cust = member.decode() if isinstance(member, bytes) else member
                    fired, _ = self._transact(
                        self._sweeper, cust, lambda det: det.tick(until), None
                    )
                    self.swept += len(fired)
                    out.extend(fired)
                return out
            except (redis.ConnectionError, redis.TimeoutError) as error:
                raise SharedStateUnavailable(f"Redis: {error}") from error

    def _transact(
        self,
        det: OnlineDetector,
        cust: str,
        step: Callable[[OnlineDetector], list[Detection]],
        event_ts: int | None,
    ) -> tuple[list[Detection], int]:
        """``step`` on the customer's state, read and written back (with the customer's due
        entry) in one optimistic transaction; retried when another writer got there first.
        Returns (detections, late events) of the attempt that committed."""
        import redis

        key = self.key(cust)
        for _ in range(_MAX_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    load_state(det, cust, pipe.get(key))
                    late_before = det.late_events
                    detections = step(det)
                    late = det.late_events - late_before
                    raw = dump_state(det)
                    deadline = None if raw is None else next_deadline(det)
                    pipe.multi()
                    if raw is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, raw, ex=self.ttl_s)
                    if deadline is None:
                        pipe.zrem(self.due_key, cust)
                    else:
                        pipe.zadd(self.due_key, {cust: deadline // 1000})
                    if event_ts is not None:
                        pipe.zadd(self.clock_key, {"max": event_ts // 1000}, gt=True)
                    pipe.execute()
                except redis.WatchError:
                    self.conflicts += 1
                    continue
            return detections, late
        raise RuntimeError(f"customer {cust!r}: detector state kept changing, event not applied")

    def state_size(self) -> int:
        """Customers with state (a count over the shared keys)."""
        return sum(1 for _ in self.client.scan_iter(match=f"{self.prefix}:det:*", count=1000))


_SET_MAX = """
for i = 1, #ARGV - 1, 2 do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[#ARGV])
return 1
"""


class RedisFlags(OnlineFlags):
    """Rule flags per customer in a Redis hash (flag -> expiry, event time ns), every replica's.

    ``ttl_s``: how long a customer's flags are kept after the last one was set (a bound on
    memory; a flag's own expiry decides whether it is active)."""

    def __init__(self, client: Any, prefix: str, ttl_s: int) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix
        self.ttl_s = max(int(ttl_s), 1)
        self._set_max = client.register_script(_SET_MAX)

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}:flags:{customer_id}"

    def set(self, customer_id: str, flags: Iterable[str], expires_ns: int) -> None:
        args: list[Any] = []
        for f in flags:
            args += [f, int(expires_ns)]
        if args:
            import redis

            try:
                self._set_max(keys=[self.key(customer_id)], args=[*args, self.ttl_s])
            except (redis.ConnectionError, redis.TimeoutError) as error:
                raise SharedStateUnavailable(f"Redis: {error}") from error

    def active(self, customer_id: str, now_ns: int) -> tuple[str, ...]:
        import redis

        try:
            found = self.client.hgetall(self.key(customer_id))
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise SharedStateUnavailable(f"Redis: {error}") from error
        return tuple(
            sorted(
                (f.decode() if isinstance(f, bytes) else f)
                for f, exp in found.items()
                if int(exp) > now_ns
            )
        )

    def prune(self, now_ns: int) -> None:
        """Nothing to do: Redis expires idle customers' flags."""

    def __len__(self) -> int:
        """Unknown without a scan; 1 so that a decision always asks (``engine`` skips the lookup
        when this is 0)."""
        return 1
