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
  is the customer's own (an event older than the customer's last one is late; a timeout of a
  customer fires at that customer's next event).
* :class:`RedisFlags` keeps the flags (``<prefix>:flags:<customer>``: flag -> expiry in event
  time ns), read by every decision.

The state is encoded by this module from the detector's documented parts (candidates, rule
states, counters, session, deadline heap); nothing is unpickled from the shared server.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from collections.abc import Iterable, Sequence
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


class RedisDetector:
    """The online detector with each customer's state in Redis (see the module docstring).

    Not thread-safe on its own (one detector object is reused per event): callers serialize,
    as ``EventProcessor`` does with its lock."""

    def __init__(self, client: Any, prefix: str, rules: Iterable[CompiledRule]) -> None:
        self.client = client
        self.prefix = prefix
        self.detector = OnlineDetector(rules)  # compiled once; state swapped in per event
        self.ttl_s = longest_window_seconds(self.detector.rules) + _DAY_S
        self.late_events = 0
        self.conflicts = 0  # retries because another replica changed the customer meanwhile

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}:det:{customer_id}"

    def process(self, event: Event) -> list[Detection]:
        """Detections of one event, the customer's state read and written back atomically."""
        import redis

        cust = event.customer_id
        if cust is None:
            return []
        try:
            return self._process(event, cust)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise SharedStateUnavailable(f"Redis: {error}") from error

    def _process(self, event: Event, cust: str) -> list[Detection]:
        import redis

        key = self.key(cust)
        det = self.detector
        for _ in range(_MAX_RETRIES):
            with self.client.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    load_state(det, cust, pipe.get(key))
                    late_before = det.late_events
                    detections = det.process(event)
                    late = det.late_events > late_before
                    raw = dump_state(det)
                    pipe.multi()
                    if raw is None:
                        pipe.delete(key)
                    else:
                        pipe.set(key, raw, ex=self.ttl_s)
                    pipe.execute()
                except redis.WatchError:
                    self.conflicts += 1
                    continue
            self.late_events += late
            return detections
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
