"""What the service knows about a customer at request time, without scanning any history.

The batch pipeline's customer view (one Parquet row per customer) is loaded once at start and
held column-wise, keyed by customer id; ``/v1/events`` adds short-lived rule flags on top
(:class:`OnlineFlags`). A request reads one row: a dict lookup and a few list indexings.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.serving.schemas import canonical_customer_id


class CustomerStore:
    """The customer view in memory: ``position(customer_id)`` and ``row(position, columns)``."""

    def __init__(self, view: pd.DataFrame, as_of: str | None = None) -> None:
        if "customer_id" not in view.columns:
            raise ValueError("the customer view has no customer_id column")
        self.frame = view.reset_index(drop=True)
        self.as_of = as_of
        self.index: dict[str, int] = {  # the API's canonical form (schemas.canonical_customer_id)
            canonical_customer_id(c): i for i, c in enumerate(self.frame["customer_id"])
        }
        self._lists: dict[str, list[Any]] = {}
        self._lock = threading.Lock()
        # propensity published with this view (``scores_<as_of>``, aligned to its positions):
        # served instead of scoring the view with the registry's model
        self.published_scores: Any = None

    @classmethod
    def from_parquet(cls, path: Path) -> CustomerStore:
        """Load a view file; its as-of date comes from the ``customer_view_<date>`` name."""
        match = re.search(r"customer_view_(\d{4}-\d{2}-\d{2}(?:T\d{6})?)", Path(path).name)
        return cls(pd.read_parquet(path), match.group(1) if match else None)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def columns(self) -> list[str]:
        return list(self.frame.columns)

    def position(self, customer_id: str) -> int | None:
        return self.index.get(customer_id)

    def column(self, name: str) -> list[Any]:
        """A column as a Python list, nulls as None (built once, on first use)."""
        values = self._lists.get(name)
        if values is None:
            with self._lock:
                values = self._lists.get(name)
                if values is None:
                    values = _as_list(self.frame[name])
                    self._lists[name] = values
        return values

    def warm(self, columns: Iterable[str]) -> None:
        """Build the lists of these columns now (at start or model swap, not on a request)."""
        for c in columns:
            if c in self.frame.columns:
                self.column(c)

    def row(self, position: int, columns: Iterable[str]) -> dict[str, Any]:
        """The customer's values for ``columns`` (columns the view lacks are left out)."""
        lists = self._lists
        out = {}
        for c in columns:
            values = lists.get(c)
            if values is None:
                if c not in self.frame.columns:
                    continue
                values = self.column(c)
            out[c] = values[position]
        return out


def _as_list(s: pd.Series) -> list[Any]:
    if pd.api.types.is_bool_dtype(s):
        return [bool(v) for v in s.to_numpy()]
    if pd.api.types.is_numeric_dtype(s):
        arr = s.to_numpy(dtype=float, na_value=np.nan)
        return [None if math.isnan(v) else v for v in arr.tolist()]
    return [
        None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
        for v in s.astype(object).tolist()
    ]


class OnlineFlags:
    """Rule flags set by ``/v1/events`` detections: customer -> flag -> expiry (ns, event time).

    Flags: ``rule_<rule name>`` for every detection and ``mark_<product>`` for a
    ``mark_offer`` action. Bounded: expired flags are dropped when read and by :meth:`prune`.
    """

    def __init__(self) -> None:
        self._flags: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def set(self, customer_id: str, flags: Iterable[str], expires_ns: int) -> None:
        with self._lock:
            mine = self._flags.setdefault(customer_id, {})
            for f in flags:
                mine[f] = max(mine.get(f, 0), expires_ns)

    def active(self, customer_id: str, now_ns: int) -> tuple[str, ...]:
        mine = self._flags.get(customer_id)
        if not mine:
            return ()
        return tuple(sorted(f for f, exp in list(mine.items()) if exp > now_ns))

    def prune(self, now_ns: int) -> None:
        with self._lock:
            for customer_id in list(self._flags):
                kept = {f: e for f, e in self._flags[customer_id].items() if e > now_ns}
                if kept:
                    self._flags[customer_id] = kept
                else:
                    del self._flags[customer_id]

    def __len__(self) -> int:
        return len(self._flags)
