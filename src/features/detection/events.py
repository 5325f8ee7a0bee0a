"""The per-event form used by the online evaluator and the reference loop.

Timestamps are integer nanoseconds (what the batch evaluator compares too), nulls are ``None``
(NaN for the two float fields), so both evaluators see the same values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from src.features.detection.rules import NS, CompiledStep

EVENT_FIELDS = (
    "event_id",
    "ts",
    "customer_id",
    "source",
    "channel",
    "session_id",
    "page",
    "action",
    "dwell_seconds",
    "referrer",
    "code",
    "amount",
    "currency",
    "product",
    "amount_krw",
)
_NAN = float("nan")


@dataclass(slots=True)
class Event:
    """One stitched event; ``ts`` in ns since the epoch (naive local time)."""

    event_id: int
    ts: int
    customer_id: str | None
    source: str
    channel: str | None = None
    session_id: int | None = None
    page: str | None = None
    action: str | None = None
    dwell_seconds: float = _NAN
    referrer: str | None = None
    code: str | None = None
    amount: float = _NAN
    currency: str | None = None
    product: str | None = None
    amount_krw: float = _NAN


def to_ns(ts: Any) -> int:
    """Nanoseconds from an int (taken as ns), datetime, Timestamp or ISO string."""
    if isinstance(ts, (int, np.integer)):
        return int(ts)
    return int(pd.Timestamp(ts).as_unit("ns").value)


def _clean(v: Any) -> Any:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def as_event(e: Event | Mapping[str, Any]) -> Event:
    """Accept an :class:`Event` or a mapping with StitchedEvents column names."""
    if isinstance(e, Event):
        return e
    sid = _clean(e.get("session_id"))
    dwell, amount = _clean(e.get("dwell_seconds")), _clean(e.get("amount"))
    amount_krw = _clean(e.get("amount_krw"))
    return Event(
        event_id=int(e["event_id"]),
        ts=to_ns(e["ts"]),
        customer_id=_clean(e.get("customer_id")),
        source=e["source"],
        channel=_clean(e.get("channel")),
        session_id=None if sid is None else int(sid),
        page=_clean(e.get("page")),
        action=_clean(e.get("action")),
        dwell_seconds=_NAN if dwell is None else float(dwell),
        referrer=_clean(e.get("referrer")),
        code=_clean(e.get("code")),
        amount=_NAN if amount is None else float(amount),
        currency=_clean(e.get("currency")),
        product=_clean(e.get("product")),
        amount_krw=_NAN if amount_krw is None else float(amount_krw),
    )


def _obj_list(s: pd.Series) -> list[Any]:
    """Column as a Python list with None for nulls (fast path through numpy object arrays)."""
    arr = s.astype(object).to_numpy()
    mask = pd.isna(s).to_numpy()
    if mask.any():
        arr = arr.copy()
        arr[mask] = None
    return arr.tolist()


def events_from_frame(
    df: pd.DataFrame, order: str = "time", chunk: int = 65_536
) -> Iterator[Event]:
    """Events of a StitchedEvents frame in global time order ``(ts, event_id)`` (``order='time'``,
    what the online path sees) or as given (``order='as_is'``).

    Converted ``chunk`` rows at a time, so a 10M-row frame streams in bounded memory.
    """
    ts_all = df["ts"].to_numpy().astype("datetime64[ns]").view("int64")
    if order == "time":
        idx = np.lexsort((df["event_id"].to_numpy(), ts_all))
    elif order == "as_is":
        idx = np.arange(len(df))
    else:
        raise ValueError("order must be 'time' or 'as_is'")
    for lo in range(0, len(df), chunk):
        take = idx[lo : lo + chunk]
        part = df.iloc[take]
        cols = [
            part["event_id"].to_numpy().tolist(),
            ts_all[take].tolist(),
            _obj_list(part["customer_id"]),
            _obj_list(part["source"]),
            _obj_list(part["channel"]),
            part["session_id"].to_numpy(dtype=object, na_value=None).tolist(),
            _obj_list(part["page"]),
            _obj_list(part["action"]),
            part["dwell_seconds"].to_numpy(dtype=float, na_value=np.nan).tolist(),
            _obj_list(part["referrer"]),
            _obj_list(part["code"]),
            part["amount"].to_numpy(dtype=float, na_value=np.nan).tolist(),
            _obj_list(part["currency"]),
            _obj_list(part["product"]),
            part["amount_krw"].to_numpy(dtype=float, na_value=np.nan).tolist(),
        ]
        for row in zip(*cols, strict=True):
            yield Event(*row)


def step_matches(step: CompiledStep, e: Event) -> bool:
    """The step's ``where`` on one event (not session_start / count, which need history)."""
    if e.source != step.source:
        return False
    for field, op, value in step.preds:
        v = getattr(e, field)
        if op == "eq":
            ok = v == value
        elif op == "ne":
            ok = v != value
        elif op == "in":
            ok = v in value
        elif op == "not_in":
            ok = v not in value
        elif op == "gte":
            ok = v is not None and v >= value
        else:
            ok = v is not None and v <= value
        if not ok:
            return False
    return True


__all__ = ["EVENT_FIELDS", "NS", "Event", "as_event", "events_from_frame", "step_matches", "to_ns"]


@dataclass(slots=True, frozen=True)
class Detection:
    """A reported detection; times in ns. ``action`` is the rule's action for the online path."""

    customer_id: str
    rule: str
    kind: str
    anchor_at: int
    fired_at: int
    fired_event_id: int | None
    event_ids: tuple[int | None, ...]
    action: Any = None

    def key(self) -> tuple[Any, ...]:
        """Identity used to compare evaluators (everything but the action)."""
        return (
            self.customer_id,
            self.rule,
            self.kind,
            self.anchor_at,
            self.fired_at,
            self.fired_event_id,
            self.event_ids,
        )


DETECTION_COLUMNS = (
    "customer_id",
    "rule",
    "kind",
    "anchor_at",
    "fired_at",
    "fired_event_id",
    "event_ids",
)


def detections_frame(dets: list[Detection]) -> pd.DataFrame:
    """The detections table (the same columns and dtypes as :func:`detect` returns)."""
    df = pd.DataFrame(
        {
            "customer_id": pd.Series([d.customer_id for d in dets], dtype="str"),
            "rule": pd.Series([d.rule for d in dets], dtype="str"),
            "kind": pd.Series([d.kind for d in dets], dtype="str"),
            "anchor_at": pd.to_datetime(
                np.array([d.anchor_at for d in dets], dtype="int64"), unit="ns"
            ),
            "fired_at": pd.to_datetime(
                np.array([d.fired_at for d in dets], dtype="int64"), unit="ns"
            ),
            "fired_event_id": pd.array([d.fired_event_id for d in dets], dtype="Int64"),
            "event_ids": pd.Series([d.event_ids for d in dets], dtype=object),
        }
    )
    return sort_detections(df)


def sort_detections(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order: rule, customer, fire time, anchor time."""
    return df.sort_values(
        ["rule", "customer_id", "fired_at", "anchor_at"], kind="stable"
    ).reset_index(drop=True)


def detection_keys(df: pd.DataFrame) -> set[tuple[Any, ...]]:
    """Rows of a detections table as comparable tuples (times in ns)."""
    out = set()
    for r in df.itertuples(index=False):
        fe = None if pd.isna(r.fired_event_id) else int(r.fired_event_id)
        eids = tuple(None if v is None or pd.isna(v) else int(v) for v in r.event_ids)
        out.add(
            (
                r.customer_id,
                r.rule,
                r.kind,
                pd.Timestamp(r.anchor_at).as_unit("ns").value,
                pd.Timestamp(r.fired_at).as_unit("ns").value,
                fe,
                eids,
            )
        )
    return out
