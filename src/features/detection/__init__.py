"""Rule-based behaviour detection over the stitched event stream.

YAML rules (``src/features/rules/*.yaml``) describe a pattern over one customer's events. Two
evaluators implement the *same* semantics, defined here; a hypothesis test feeds random
streams to both (and to a naive reference loop) and requires identical detections.

- :func:`detect` (``batch``): vectorized numpy over the whole history → detections table.
- :class:`OnlineDetector` (``online``): one event at a time for the serving path.
- :func:`funnel_report`, :func:`rule_features` (``reports``): step funnels and point-in-time
  rule features for the feature table.

Matching semantics (normative)
------------------------------
Events. Rows with a null ``customer_id`` never match a step (they still move the clock, see
timeouts). A customer's events are ordered by ``(ts, event_id)``; "after e" means later in that
order, so ties on ``ts`` are broken by ``event_id``. Windows are inclusive: "within T of t" is
``ts <= t + T``.

Step predicates. A step matches an event of its ``source`` (click|txn) whose fields satisfy all
``where`` predicates (eq / ne / in / not_in on categories, eq / gte / lte on amount and
dwell_seconds; ``dwell_gte: T`` is ``dwell_seconds >= T``). A null field satisfies ne/not_in
and nothing else. Two event-level conditions are part of a step's predicate:

- ``session_start: true``: a click with a non-null session_id whose customer's previous click
  (any session) is missing, in another session, or more than ``SESSION_GAP`` (30 min) earlier.
- ``count: {n, within: W, same: F}``: the event is at least the n-th event matching the step's
  ``where`` among the customer's events in ``[ts - W, ts]`` (up to and including itself, in
  stream order), counting only events with the same value of field F when F is given. It is
  a property of the event, computed over all the customer's history, not only after the
  previous step.

Candidates. Every event matching step 1 anchors a candidate. From the candidate's cursor
(the previous step's event, initially the anchor; reference time = its ts):

- a positive step takes the *earliest* matching event after the cursor. The candidate fails if
  there is none, if it is later than ``within`` of the reference time, or later than the rule's
  ``within`` of the anchor. Otherwise it becomes the cursor.
- an absent step with ``within: T`` has deadline ``D = ref + T``. The candidate fails if a
  matching event after the cursor has ``ts <= D``, or if ``D`` is later than the rule's
  ``within`` of the anchor. Otherwise the step passes *at D*: the reference time becomes D and
  later steps only look at events with ``ts > D``.

A candidate whose last step is positive completes as a **match** at that step's event. One
whose last step is absent completes as a **timeout** at D, but only once the clock has passed
D: in batch iff ``D < until`` (default: the largest ts in the input, any customer); online when
an event of any customer, or a ``tick(now)``, with time ``> D`` arrives. Every rule needs a time
bound (rule ``within`` or ``within`` on every step after the first) so partial matches expire.

De-duplication. Failed candidates have no effect. Of the completed candidates of one (customer,
rule), taken in anchor order, a candidate is **suppressed** if its anchor is at or before the
block point of the last reported one: the fire event for a match (position order), D for a
timeout (every event with ``ts <= D``), or fire time + ``cooldown`` if the rule has one. So
repeated anchors while a detection is pending (three loan-limit inquiries, one application-free
week) yield one detection, and a failed earlier attempt never hides a later success. Because
steps take earliest events, completion order equals anchor order, so the online evaluator can
decide suppression at completion time with no look-ahead.

Output. One row per reported detection: customer_id, rule, kind (match|timeout), anchor_at,
fired_at (the fire event's ts, or D), fired_event_id (null for timeouts), event_ids (one per
step; null for absent steps).
"""

from __future__ import annotations

from src.features.detection.batch import detect
from src.features.detection.online import Detection, Event, OnlineDetector, events_from_frame
from src.features.detection.reports import funnel_report, rule_features
from src.features.detection.rules import (
    CompiledRule,
    RuleError,
    load_rules,
    parse_rule,
)

__all__ = [
    "CompiledRule",
    "Detection",
    "Event",
    "OnlineDetector",
    "RuleError",
    "detect",
    "events_from_frame",
    "funnel_report",
    "load_rules",
    "parse_rule",
    "rule_features",
]
