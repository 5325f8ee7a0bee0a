"""Synthetic StitchedEvents streams for tests and benchmarks (no simulator needed).

Sessions of clicks (with the odd transaction) at random times, over-weighting the pages and
codes the shipped rules look at so that every rule fires now and then; timestamps are whole
seconds so ties on ``ts`` are common and tie-breaking by event_id is exercised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from src.data.schemas import (
    CLICK_ACTIONS,
    CLICK_CHANNELS,
    CURRENCIES,
    KRW_REFERENCE_RATES,
    PAGES,
    PRODUCTS,
    REFERRERS,
    TXN_CHANNELS,
    TXN_CODES,
)
from src.features.detection.events import EVENT_FIELDS

STITCHED_COLUMNS = EVENT_FIELDS  # the stitched stream the detectors read
_HOT_PAGES = {
    "fx_remit_input": 6.0,
    "signup_step1": 4.0,
    "signup_done": 2.0,
    "events": 3.0,
    "home": 8.0,
    "account_summary": 5.0,
    "error": 1.0,
}
_HOT_CODES = {
    "FX_REMIT": 3.0,
    "LOAN_LIMIT_INQUIRY": 2.0,
    "LOAN_APPLICATION": 1.0,
    "TRANSFER": 6.0,
    "CARD_PAYMENT": 5.0,
}


def _strings(vocab: Sequence[str], idx: np.ndarray, null: np.ndarray | None = None) -> pd.Series:
    """A ``str`` column from vocabulary indices via a dictionary array (fast for 10M rows)."""
    mask = None if null is None else np.asarray(null, dtype=bool)
    arr = pa.DictionaryArray.from_arrays(
        pa.array(idx.astype(np.int32), mask=mask), pa.array(list(vocab))
    )
    return pd.Series(arr.cast(pa.string()), dtype="str")


def _weights(vocab: Sequence[str], hot: dict[str, float]) -> np.ndarray:
    w = np.array([hot.get(v, 1.0) for v in vocab])
    return w / w.sum()


def synthetic_events(
    n: int,
    customers: int | None = None,
    seed: int = 0,
    days: int = 60,
    start: Any = "2026-01-01",
    anonymous: float = 0.02,
    session_len: float = 8.0,
) -> pd.DataFrame:
    """A StitchedEvents-shaped frame of ``n`` events sorted by (customer_id, ts, event_id)."""
    rng = np.random.default_rng(seed)
    customers = customers or max(1, n // 100)
    n_sess = int(1.2 * n / session_len) + 64  # generous; trimmed to n events below
    lens = rng.geometric(1.0 / session_len, n_sess)
    while lens.sum() < n:
        lens = np.concatenate([lens, rng.geometric(1.0 / session_len, n_sess)])
    ends = np.cumsum(lens)
    n_sess = int(np.searchsorted(ends, n)) + 1
    lens = lens[:n_sess]
    lens[-1] -= int(ends[n_sess - 1] - n)
    sess = np.repeat(np.arange(n_sess), lens)
    s_cust = rng.integers(0, customers, n_sess)
    s_start = rng.integers(0, days * 86400, n_sess)
    gaps = np.rint(rng.exponential(50.0, n)).astype(np.int64)
    csum = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(lens)[:-1]])
    offset = csum - np.repeat(csum[first] - gaps[first], lens)
    t0 = pd.Timestamp(start).as_unit("ns").value
    ts = t0 + (s_start[sess] + offset) * 1_000_000_000
    is_click = rng.random(n) < 0.85
    cust = s_cust[sess]
    anon = is_click & (rng.random(n) < anonymous)
    order = np.lexsort((ts, cust))
    ts, cust, sess, is_click, anon = (
        ts[order],
        cust[order],
        sess[order],
        is_click[order],
        anon[order],
    )
    is_txn = ~is_click
    page = rng.choice(len(PAGES), n, p=_weights(PAGES, _HOT_PAGES))
    act_w = np.array([0.8, 0.08, 0.04, 0.02, 0.02, 0.04])
    action = rng.choice(len(CLICK_ACTIONS), n, p=act_w / act_w.sum())
    # Errors cluster on one page of the session (a stuck step), so repeated_errors can fire.
    page = np.where(
        action == CLICK_ACTIONS.index("error"), rng.integers(0, len(PAGES), n_sess)[sess], page
    )
    code = rng.choice(len(TXN_CODES), n, p=_weights(TXN_CODES, _HOT_CODES))
    currency = np.where(rng.random(n) < 0.85, 0, rng.integers(0, len(CURRENCIES), n))
    amount = np.round(rng.lognormal(13.5, 1.6, n), -3)
    dwell = np.round(rng.exponential(45.0, n), 1)
    sid_null = is_txn & (rng.random(n) < 0.5)
    cust_ids = pa.array([f"C{i:07d}" for i in range(customers)])
    cid = pa.DictionaryArray.from_arrays(pa.array(cust.astype(np.int32), mask=anon), cust_ids).cast(
        pa.string()
    )
    df = pd.DataFrame(
        {
            "event_id": np.arange(1, n + 1, dtype=np.int64),
            "ts": pd.to_datetime(ts, unit="ns"),
            "customer_id": pd.Series(cid, dtype="str"),
            "source": _strings(("txn", "click"), is_click.astype(np.int32)),
            "channel": pd.Series(
                np.where(
                    is_click,
                    np.asarray(CLICK_CHANNELS, dtype=object)[rng.integers(0, 2, n)],
                    np.asarray(TXN_CHANNELS, dtype=object)[rng.integers(0, len(TXN_CHANNELS), n)],
                ),
                dtype="str",
            ),
            "session_id": pd.array(np.where(sid_null, 0, sess), dtype="Int64"),
            "page": _strings(PAGES, page, is_txn),
            "action": _strings(CLICK_ACTIONS, action, is_txn),
            "dwell_seconds": np.where(is_click, dwell, np.nan),
            "referrer": _strings(REFERRERS, rng.integers(0, len(REFERRERS), n_sess)[sess], is_txn),
            "code": _strings(TXN_CODES, code, is_click),
            "amount": np.where(is_txn, amount, np.nan),
            "currency": _strings(CURRENCIES, currency, is_click),
            "product": _strings(
                PRODUCTS, rng.integers(0, len(PRODUCTS), n), is_click | (rng.random(n) < 0.5)
            ),
        }
    )
    df.loc[sid_null, "session_id"] = pd.NA
    return with_amount_krw(df)


def with_amount_krw(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``amount_krw`` as the stitching SQL does (amount x the currency's reference rate)."""
    rates = df["currency"].map(KRW_REFERENCE_RATES).astype(float)
    return df.assign(amount_krw=df["amount"].astype(float) * rates)


def make_events(rows: Sequence[dict[str, Any]], start: Any = "2026-01-01") -> pd.DataFrame:
    """A StitchedEvents frame from short dicts (tests): ``t`` is seconds after ``start`` (or give
    ``ts``); ``event_id`` defaults to the row number + 1, ``customer_id`` to 'C1', ``source``
    to 'click' when a page is given else 'txn'. Rows are sorted by (customer_id, ts, event_id).
    """
    t0 = pd.Timestamp(start)
    recs = []
    for i, r in enumerate(rows):
        r = dict(r)
        t = r.pop("t", None)
        rec: dict[str, Any] = {c: None for c in STITCHED_COLUMNS}
        rec.update(
            event_id=i + 1,
            customer_id="C1",
            source="click" if "page" in r or "action" in r else "txn",
        )
        rec.update(r)
        if rec["ts"] is None:
            rec["ts"] = t0 + pd.Timedelta(seconds=float(t or 0))
        if rec["source"] == "click":
            rec["channel"] = rec["channel"] or "app"
            rec["page"] = rec["page"] or "home"
            rec["action"] = rec["action"] or "view"
            rec["referrer"] = rec["referrer"] or "direct"
            rec["session_id"] = 1 if rec["session_id"] is None else rec["session_id"]
            rec["dwell_seconds"] = 10.0 if rec["dwell_seconds"] is None else rec["dwell_seconds"]
        else:
            rec["channel"] = rec["channel"] or "app"
            rec["currency"] = rec["currency"] or "KRW"
            rec["amount"] = 0.0 if rec["amount"] is None else rec["amount"]
        recs.append(rec)
    df = pd.DataFrame.from_records(recs, columns=list(STITCHED_COLUMNS))
    df = df.astype(
        {
            "event_id": "int64",
            "ts": "datetime64[ns]",
            "customer_id": "str",
            "source": "str",
            "channel": "str",
            "session_id": "Int64",
            "page": "str",
            "action": "str",
            "dwell_seconds": "float64",
            "referrer": "str",
            "code": "str",
            "amount": "float64",
            "currency": "str",
            "product": "str",
        }
    )
    df = with_amount_krw(df)
    return df.sort_values(
        ["customer_id", "ts", "event_id"], kind="stable", na_position="last"
    ).reset_index(drop=True)
