"""When campaigns fire: ``tick`` runs every approved campaign whose ``when`` is due.

A one-off (``at``) has one occurrence, its time; a recurring campaign (``cron``, five fields:
minute hour day-of-month month day-of-week, with ``*``, lists, ranges and ``*/n``) has one per
match. An occurrence runs exactly once: its id (the campaign and the occurrence time) is part
of every message id, and a tick records it after its run; a crash between the two reruns the
occurrence, which the idempotent run turns into the messages still missing. Which missed
occurrences a tick catches up is the spec's ``when.catch_up`` (default: only the latest; see
:class:`~src.campaigns.spec.When` for why).

A trigger campaign (``when.trigger``) has no occurrences: a tick reads the detections recorded
since its cursor (:func:`src.campaigns.engine.run_triggered`).

For a recurring campaign the approval signs the spec: the segment is evaluated afresh at each
occurrence (its version is recorded with the run), so the latest approved bundle's spec is what
runs, and a spec changed since is not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from src.campaigns.spec import CampaignSpec, SpecError
from src.campaigns.state import CampaignDB

#: how far back a tick looks for a cron occurrence
LOOKBACK = timedelta(days=31)


def _field(expr: str, low: int, high: int, name: str) -> set[int]:
    values: set[int] = set()
    for part in expr.split(","):
        step = 1
        if "/" in part:
            part, s = part.split("/", 1)
            step = int(s)
        if part == "*":
            lo, hi = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            lo, hi = int(a), int(b)
        else:
            lo = hi = int(part)
        if lo < low or hi > high or step < 1:
            raise SpecError(f"when.cron: {name} {expr!r} is outside {low}-{high}")
        values.update(range(lo, hi + 1, step))
    return values


@dataclass(frozen=True)
class Cron:
    minutes: set[int]
    hours: set[int]
    days: set[int]
    months: set[int]
    weekdays: set[int]  # 0 = Sunday (cron), 7 also Sunday

    @classmethod
    def parse(cls, expr: str) -> Cron:
        try:
            m, h, dom, mon, dow = expr.split()
            wd = _field(dow, 0, 7, "day of week")
            return cls(
                _field(m, 0, 59, "minute"),
                _field(h, 0, 23, "hour"),
                _field(dom, 1, 31, "day of month"),
                _field(mon, 1, 12, "month"),
                {d % 7 for d in wd},
            )
        except ValueError as error:
            if isinstance(error, SpecError):
                raise
            raise SpecError(f"when.cron: {expr!r}: {error}") from None

    def matches(self, t: datetime) -> bool:
        return (
            t.minute in self.minutes
            and t.hour in self.hours
            and t.day in self.days
            and t.month in self.months
            and (t.isoweekday() % 7) in self.weekdays
        )

    def latest(self, at: datetime, lookback: timedelta = LOOKBACK) -> datetime | None:
        """The latest matching minute at or before ``at`` (within ``lookback``)."""
        t = at.replace(second=0, microsecond=0)
        stop = at - lookback
        while t >= stop:
            if t.month in self.months and t.day in self.days:
                if t.hour in self.hours and self.matches(t):
                    return t
                t -= timedelta(minutes=1)
            else:  # skip to the end of the previous day
                t = t.replace(hour=0, minute=0) - timedelta(minutes=1)
        return None

    def between(self, start: datetime, end: datetime) -> list[datetime]:
        """Every matching minute in (start, end], oldest first."""
        out = []
        t = end.replace(second=0, microsecond=0)
        while True:
            found = self.latest(t, t - start)
            if found is None or found <= start:
                break
            out.append(found)
            t = found - timedelta(minutes=1)
        return out[::-1]


def due_occurrences(spec: CampaignSpec, at: datetime) -> list[str]:
    """The occurrences (ISO times) of ``spec`` a tick at ``at`` should run (the ones already
    run included: the caller skips them), oldest first; none for a trigger campaign."""
    when = spec.when
    if when.at is not None:
        return [when.at.isoformat()] if when.at.replace(tzinfo=None) <= at else []
    if when.cron is None:
        return []
    cron = Cron.parse(when.cron)
    lookback = timedelta(hours=when.catch_up_hours)
    if when.catch_up == "all":
        return [t.isoformat() for t in cron.between(at - lookback, at)]
    if when.catch_up == "none":
        lookback = min(lookback, timedelta(minutes=when.grace_minutes))
    t = cron.latest(at, lookback)
    return [t.isoformat()] if t is not None else []


def due_occurrence(spec: CampaignSpec, at: datetime) -> str | None:
    """The latest occurrence of ``spec`` due at ``at`` (per its ``catch_up``), or None."""
    due = due_occurrences(spec, at)
    return due[-1] if due else None


def approved_specs(db: CampaignDB) -> list[CampaignSpec]:
    """Each campaign's spec from its latest history entry, if that entry is an approval."""
    rows = db.frame(
        "SELECT a.campaign_id, a.action, a.bundle FROM campaign_approvals a "
        "WHERE a.seq = (SELECT MAX(b.seq) FROM campaign_approvals b "
        "WHERE b.campaign_id = a.campaign_id) ORDER BY a.campaign_id",
        (),
        ["campaign_id", "action", "bundle"],
    )
    rows = rows[rows["action"] == "approved"]
    return [CampaignSpec.model_validate(json.loads(b)["spec"]) for b in rows["bundle"]]


def done(db: CampaignDB, campaign_id: str, occurrence: str) -> bool:
    return not db.frame(
        "SELECT 1 FROM campaign_ticks WHERE campaign_id = ? AND occurrence = ?",
        (campaign_id, occurrence),
        ["x"],
    ).empty


def mark_done(db: CampaignDB, campaign_id: str, occurrence: str, now: datetime) -> None:
    with db.store.transaction() as tx:
        tx.execute(
            "INSERT INTO campaign_ticks (campaign_id, occurrence, ran_at) VALUES (?, ?, ?) "
            "ON CONFLICT (campaign_id, occurrence) DO NOTHING",
            (campaign_id, occurrence, now.isoformat()),
        )
