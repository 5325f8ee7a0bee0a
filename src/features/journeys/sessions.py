"""Journey sessions: cut the stitched event stream into per-customer sessions.

The raw ``session_id`` belongs to a device (one phone, one browser), so it cannot tell that a
customer who left the app for an hour came back for a second journey, nor join a visit that
moved from web to app. A *journey session* is defined here instead, from the customer's own
timeline:

* **Clicks** of one customer, in time order, start a new session when the time since the
  previous click exceeds ``gap`` (inactivity), or - with ``split_on_channel_switch`` - when the
  channel differs from the previous click's (web <-> app).
* **Web/app transactions** join the customer's latest session that started at or before them
  (on the same channel when sessions are split on channel switches), provided they happen no
  later than ``gap`` after its last click: a transfer confirmed a few minutes after the last page
  view still belongs to that visit. The raw ``session_id`` is not used for this.
* **Other transactions** (branch, ATM, automatic, or web/app ones outside every session) are
  *standalone*. With ``standalone_txn="own"`` (default) they are sessionized among themselves
  with the same rules, so a branch visit with a deposit and a transfer is one session with an
  empty page path; with ``"none"`` they get no session.
* **Unattributed events** (null ``customer_id``) never get a ``journey_session``: they are kept
  out of per-customer analyses. Their clicks still get a ``session_key``, sessionized the same
  way within their raw (device) ``session_id``, so path analyses can include them on request
  (``include_unattributed=True``) and :func:`attribution_summary` can count them.

``journey_session`` numbers a customer's sessions 1, 2, ... by start time; ``session_key`` is a
single integer id over all sessions (ordered by customer, then start; unattributed sessions
last), handy for fast group-bys. Both are nullable ``Int64``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from src.data.schemas import CLICK_CHANNELS

SESSION_COLUMNS: tuple[str, ...] = ("journey_session", "session_key")
_REQUIRED: tuple[str, ...] = ("event_id", "ts", "customer_id", "source", "channel", "session_id")
_NO_SESSION = -1


def _require(df: pd.DataFrame, columns: tuple[str, ...] | list[str]) -> None:
    """Fail early with the names of missing columns, not deep inside a group-by."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"missing column(s): {missing}")


def _ts_ns(ts: pd.Series) -> np.ndarray:
    """Timestamps as int64 nanoseconds, whatever the datetime unit, so gaps are integer math."""
    values = pd.to_datetime(ts)
    if values.isna().any():
        raise ValueError("ts must not be null")
    return values.to_numpy().astype("datetime64[ns]").view(np.int64)


def _eq(series: pd.Series, value: str) -> np.ndarray:
    """``series == value`` as a plain bool array (missing -> False) for any string dtype."""
    return np.asarray(series.eq(value).fillna(False), dtype=bool)


def _split_runs(
    group: np.ndarray,
    ts: np.ndarray,
    event_id: np.ndarray,
    channel: np.ndarray,
    mask: np.ndarray,
    gap_ns: int,
    split_on_channel_switch: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of ``mask`` in (group, ts, event_id) order and the run each belongs to.

    A run breaks on a new group, a gap longer than ``gap_ns`` or (optionally) a channel change.
    """
    idx = np.flatnonzero(mask)
    idx = idx[np.lexsort((event_id[idx], ts[idx], group[idx]))]
    g, t, c = group[idx], ts[idx], channel[idx]
    new = np.ones(len(idx), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (t[1:] - t[:-1] > gap_ns)
    if split_on_channel_switch:
        new[1:] |= c[1:] != c[:-1]
    return idx, np.cumsum(new) - 1


def _run_bounds(run: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First position of each run, and the first and last ``values`` in it (runs are contiguous)."""
    first = np.flatnonzero(np.r_[True, run[1:] != run[:-1]]) if len(run) else np.array([], int)
    last = np.r_[first[1:] - 1, len(run) - 1] if len(run) else np.array([], int)
    return first, values[first], values[last]


def sessionize(
    events: pd.DataFrame,
    gap: timedelta | pd.Timedelta = timedelta(minutes=30),
    split_on_channel_switch: bool = True,
    standalone_txn: Literal["own", "none"] = "own",
) -> pd.DataFrame:
    """Add ``journey_session`` and ``session_key`` to a stitched event stream.

    See the module docstring for the rules. Returns a new frame with the input's columns and
    index, rows ordered by ``session_key`` then time (rows without a session last), which is
    the order every other function of this package expects. Reordering a large frame costs
    more than sessionizing it; input sorted by customer and time needs little of it.
    """
    _require(events, _REQUIRED)
    if standalone_txn not in ("own", "none"):
        raise ValueError("standalone_txn must be 'own' or 'none'")
    gap_ns = int(pd.Timedelta(gap).value)
    if gap_ns <= 0:
        raise ValueError("gap must be positive")

    n = len(events)
    ts = _ts_ns(events["ts"])
    event_id = events["event_id"].to_numpy(dtype=np.int64)
    is_click = _eq(events["source"], "click")
    channel, channel_names = pd.factorize(events["channel"])
    cust, _ = pd.factorize(events["customer_id"], sort=True)
    n_cust = int(cust.max()) + 1 if n and cust.max() >= 0 else 0
    raw_sid, _ = pd.factorize(events["session_id"])
    attributed = cust >= 0

    # Attributed clicks are grouped by customer; unattributed ones by their device session,
    # in a separate range of group ids so they can never merge with a customer's sessions.
    group = np.where(attributed, cust, np.where(raw_sid >= 0, n_cust + raw_sid, _NO_SESSION))
    key = np.full(n, _NO_SESSION, dtype=np.int64)

    click_rows, click_run = _split_runs(
        group, ts, event_id, channel, is_click & (group >= 0), gap_ns, split_on_channel_switch
    )
    key[click_rows] = click_run
    first, start, end = _run_bounds(click_run, ts[click_rows])
    sess_group = group[click_rows][first]
    sess_start = start
    n_sessions = len(first)

    # Web/app transactions join the session they fall in (or just after, within the gap).
    digital = np.isin(channel, [i for i, c in enumerate(channel_names) if c in CLICK_CHANNELS])
    txn = ~is_click & attributed
    cand = np.flatnonzero(txn & digital)
    if len(cand) and n_sessions:
        on_customer = sess_group < n_cust
        by = ["grp", "ch"] if split_on_channel_switch else ["grp"]
        sess = pd.DataFrame(
            {
                "grp": sess_group[on_customer],
                "ch": channel[click_rows][first][on_customer],
                "t": start[on_customer],
                "end": end[on_customer],
                "key": np.arange(n_sessions)[on_customer],
            }
        ).sort_values("t", kind="stable")
        tx = pd.DataFrame({"grp": group[cand], "ch": channel[cand], "t": ts[cand], "row": cand})
        hit = pd.merge_asof(
            tx.sort_values("t", kind="stable"), sess, on="t", by=by, direction="backward"
        )
        ok = hit["key"].notna().to_numpy() & (
            hit["t"].to_numpy() <= hit["end"].fillna(-1).to_numpy(dtype=np.int64) + gap_ns
        )
        key[hit["row"].to_numpy()[ok]] = hit["key"].to_numpy()[ok].astype(np.int64)

    if standalone_txn == "own":
        rows, run = _split_runs(
            group,
            ts,
            event_id,
            channel,
            txn & (key == _NO_SESSION),
            gap_ns,
            split_on_channel_switch,
        )
        key[rows] = n_sessions + run
        first, start, _ = _run_bounds(run, ts[rows])
        sess_group = np.r_[sess_group, group[rows][first]]
        sess_start = np.r_[sess_start, start]
        n_sessions += len(first)

    # Renumber: by customer, then start time (unattributed groups sort after every customer).
    order = np.lexsort((np.arange(n_sessions), sess_start, sess_group))
    new_key = np.empty(n_sessions, dtype=np.int64)
    new_key[order] = np.arange(n_sessions)
    grp_sorted = sess_group[order]
    group_first = np.r_[True, grp_sorted[1:] != grp_sorted[:-1]] if n_sessions else np.array([])
    first_pos = np.maximum.accumulate(np.where(group_first, np.arange(n_sessions), 0))
    journey = np.empty(n_sessions, dtype=np.int64)
    journey[order] = np.arange(n_sessions) - first_pos + 1

    has = key != _NO_SESSION
    if n_sessions:
        safe = np.where(has, key, 0)
        row_key, row_journey = new_key[safe], journey[safe]
    else:
        row_key = row_journey = np.zeros(n, dtype=np.int64)
    out = events.copy()
    out["journey_session"] = pd.arrays.IntegerArray(row_journey, ~(has & attributed))
    out["session_key"] = pd.arrays.IntegerArray(row_key, ~has)
    sort_key = np.where(has, row_key, np.iinfo(np.int64).max)
    order = np.lexsort((event_id, ts, sort_key))
    if (order == np.arange(n)).all():  # input already in session order: skip the copy
        return out
    return out.iloc[order]


def _is_sorted(df: pd.DataFrame) -> bool:
    """Whether rows are in (session_key, ts) order with sessionless rows last."""
    key = df["session_key"].to_numpy(dtype=np.float64, na_value=np.inf)
    if len(key) < 2:
        return True
    dk = np.diff(key)
    if (dk < 0).any():
        return False
    dt = np.diff(_ts_ns(df["ts"]))
    same = (dk == 0) & np.isfinite(key[1:])
    return not (same & (dt < 0)).any()


def ensure_sessionized(events: pd.DataFrame) -> pd.DataFrame:
    """Events with session columns in session order; sessionizes with defaults if needed.

    Call :func:`sessionize` yourself to choose the gap or the channel rule, then pass its
    output to any function of this package: it will not be sessionized again.
    """
    if all(c in events.columns for c in SESSION_COLUMNS):
        if _is_sorted(events):
            return events
        key = events["session_key"].to_numpy(dtype=np.float64, na_value=np.inf)
        order = np.lexsort((events["event_id"].to_numpy(dtype=np.int64), _ts_ns(events["ts"]), key))
        return events.iloc[order]
    return sessionize(events)


def page_visits(events: pd.DataFrame, include_unattributed: bool = False) -> pd.DataFrame:
    """One row per page visit: consecutive clicks on the same page of a session collapse.

    A view, a click and a submit on ``transfer_input`` are one step of the journey; paths and
    funnels are built on these steps. ``step`` numbers visits within a session from 1.
    """
    s = ensure_sessionized(events)
    _require(s, ["page"])
    mask = (
        _eq(s["source"], "click")
        & s["session_key"].notna().to_numpy()
        & (s["page"].notna().to_numpy())
    )
    if not include_unattributed:
        mask = mask & s["customer_id"].notna().to_numpy()
    v = s.loc[mask, ["customer_id", "journey_session", "session_key", "channel", "page", "ts"]]
    key = v["session_key"].to_numpy(dtype=np.int64)
    page, _ = pd.factorize(v["page"])
    new_session = np.r_[True, key[1:] != key[:-1]] if len(v) else np.array([], dtype=bool)
    new = new_session.copy()
    if len(v):
        new[1:] |= page[1:] != page[:-1]
    starts = np.flatnonzero(new)
    out = v.iloc[starts].reset_index(drop=True)
    ends = np.r_[starts[1:], len(v)]
    out["ts_end"] = v["ts"].to_numpy()[ends - 1] if len(v) else v["ts"].to_numpy()
    out["n_events"] = ends - starts
    first_visit = new_session[starts]
    pos = np.arange(len(starts))
    out["step"] = pos - np.maximum.accumulate(np.where(first_visit, pos, 0)) + 1
    return out[
        [
            "customer_id",
            "journey_session",
            "session_key",
            "step",
            "page",
            "channel",
            "ts",
            "ts_end",
            "n_events",
        ]
    ]


def _arrow(values: pd.Series, arrow_type: pa.DataType) -> pa.Array:
    """A single contiguous Arrow array of ``values`` (pandas may hand over chunked ones)."""
    arr = pa.array(values, from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], type=arrow_type)
    return arr.cast(arrow_type)


def _join_runs(values: pd.Series, starts: np.ndarray, sep: str) -> pd.api.extensions.ExtensionArray:
    """Join contiguous runs of (non-null) strings with ``sep`` in Arrow, not per group in Python."""
    arr = _arrow(values.astype("str"), pa.large_string())
    offsets = pa.array(np.r_[starts, len(values)].astype(np.int64))
    joined = pc.binary_join(
        pa.LargeListArray.from_arrays(offsets, arr), pa.scalar(sep, pa.large_string())
    )
    return pd.array(joined, dtype="str")


def _tuples_by_run(values: pd.Series, starts: np.ndarray, arrow_type: pa.DataType) -> np.ndarray:
    """A 1-D object array with one tuple per contiguous run of ``values``."""
    offsets = pa.array(np.r_[starts, len(values)].astype(np.int64))
    lists = pa.LargeListArray.from_arrays(offsets, _arrow(values, arrow_type)).to_pylist()
    return np.fromiter(map(tuple, lists), dtype=object, count=len(lists))


def session_table(events: pd.DataFrame, include_unattributed: bool = False) -> pd.DataFrame:
    """One row per session: when, where, which pages in which order, which transactions.

    ``path`` joins the collapsed page visits with ``' > '`` (empty for a transaction-only
    session); ``txn_codes``/``txn_amounts`` are tuples in time order (amounts stay in their own
    currency, so they are not summed). ``channels`` lists the channels seen, e.g. ``app+web``.
    """
    s = ensure_sessionized(events)
    has = s["session_key"].notna().to_numpy()
    if not include_unattributed:
        has = has & s["customer_id"].notna().to_numpy()
    cols = [
        "customer_id",
        "journey_session",
        "session_key",
        "ts",
        "source",
        "channel",
        "code",
        "amount",
    ]
    e = s.loc[has, cols]  # only the columns needed: copying wide string columns is the cost
    key = e["session_key"].to_numpy(dtype=np.int64)
    is_click = _eq(e["source"], "click")
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(e) else np.array([], int)
    ts = e["ts"].to_numpy()

    out = e.iloc[first][["customer_id", "journey_session", "session_key"]].reset_index(drop=True)
    out["start"] = np.minimum.reduceat(ts, first) if len(e) else ts
    out["end"] = np.maximum.reduceat(ts, first) if len(e) else ts
    out["duration"] = out["end"] - out["start"]

    ch_code, ch_names = pd.factorize(e["channel"], sort=True)
    pairs = pd.DataFrame({"k": key, "ch": ch_code})
    pairs = pairs.loc[pairs["ch"] >= 0].drop_duplicates().sort_values(["k", "ch"])
    pk = pairs["k"].to_numpy()
    pfirst = np.flatnonzero(np.r_[True, pk[1:] != pk[:-1]]) if len(pk) else np.array([], int)
    names = pd.Series(pd.Index(ch_names).take(pairs["ch"].to_numpy()), dtype="str")
    channels = pd.Series(_join_runs(names, pfirst, "+"), index=pk[pfirst])
    out["channels"] = channels.reindex(out["session_key"].to_numpy()).to_numpy()
    out["n_events"] = np.diff(np.r_[first, len(e)])
    out["n_clicks"] = np.add.reduceat(is_click.astype(np.int64), first) if len(e) else 0

    v = page_visits(s, include_unattributed=include_unattributed)
    vk = v["session_key"].to_numpy(dtype=np.int64)
    vfirst = np.flatnonzero(v["step"].to_numpy() == 1)
    vlast = (np.r_[vfirst[1:], len(v)] - 1)[: len(vfirst)]
    per_session = pd.DataFrame(
        {
            "n_pages": np.diff(np.r_[vfirst, len(v)]),
            "entry_page": v["page"].take(vfirst).to_numpy(),
            "exit_page": v["page"].take(vlast).to_numpy(),
            "path": _join_runs(v["page"], vfirst, " > "),
        },
        index=vk[vfirst],
    ).reindex(out["session_key"].to_numpy())
    out["n_pages"] = per_session["n_pages"].fillna(0).to_numpy(dtype=np.int64)
    out["entry_page"] = pd.array(per_session["entry_page"].to_numpy(), dtype="str")
    out["exit_page"] = pd.array(per_session["exit_page"].to_numpy(), dtype="str")
    out["path"] = pd.array(per_session["path"].fillna("").to_numpy(), dtype="str")

    # Transactions: rows are already in session and time order, so split at session changes.
    t = e.loc[~is_click, ["session_key", "code", "amount"]]
    tk = t["session_key"].to_numpy(dtype=np.int64)
    tfirst = np.flatnonzero(np.r_[True, tk[1:] != tk[:-1]]) if len(t) else np.array([], int)
    pos = pd.Series(np.arange(len(tfirst)), index=tk[tfirst]).reindex(out["session_key"].to_numpy())
    found = pos.notna().to_numpy()
    at = pos.to_numpy()[found].astype(np.int64)
    n_txn = np.zeros(len(out), dtype=np.int64)
    n_txn[found] = np.diff(np.r_[tfirst, len(t)])[at]
    out["n_txn"] = n_txn
    for col, name, typ in (
        ("txn_codes", "code", pa.large_string()),
        ("txn_amounts", "amount", pa.float64()),
    ):
        cells = np.empty(len(out), dtype=object)
        cells.fill(())
        if len(t):
            cells[found] = _tuples_by_run(t[name], tfirst, typ)[at]
        out[col] = cells
    return out


def customer_journey(events: pd.DataFrame, customer_id: str) -> pd.DataFrame:
    """One customer's sessions in order, with their page paths and transactions.

    Sessions are per customer, so filtering first gives the same sessions as sessionizing the
    whole stream, in a fraction of the time. Raw events are sessionized with the defaults.
    """
    _require(events, ["customer_id"])
    mine = events.loc[events["customer_id"].eq(customer_id).fillna(False).to_numpy(dtype=bool)]
    return session_table(mine).sort_values("journey_session").reset_index(drop=True)


def attribution_summary(events: pd.DataFrame) -> pd.DataFrame:
    """How many events could not be attributed to a customer, by source.

    Per-customer analyses leave these out, so report their volume next to any result; also
    counts the raw (device) sessions that are entirely anonymous.
    """
    _require(events, ["source", "customer_id", "session_id"])
    anon = events["customer_id"].isna().to_numpy()
    source = events["source"].astype("str").fillna("(null)")
    frame = pd.DataFrame({"source": source.to_numpy(), "unattributed": anon})
    out = frame.groupby("source").agg(
        events=("unattributed", "size"), unattributed=("unattributed", "sum")
    )
    out.loc["all"] = out.sum()
    out["attributed"] = out["events"] - out["unattributed"]
    out["unattributed_share"] = out["unattributed"] / out["events"].where(out["events"] > 0)
    sid = events["session_id"]
    all_anon = (
        pd.DataFrame({"sid": sid, "anon": anon}).dropna(subset=["sid"]).groupby("sid")["anon"].all()
    )
    out["anonymous_raw_sessions"] = 0
    out.loc["all", "anonymous_raw_sessions"] = int(all_anon.sum())
    return out.reset_index()[
        [
            "source",
            "events",
            "attributed",
            "unattributed",
            "unattributed_share",
            "anonymous_raw_sessions",
        ]
    ]
