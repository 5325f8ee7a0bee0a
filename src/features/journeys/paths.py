"""Page paths: around a target page, leading to it, and whole sessions from entry to exit.

All paths are built on collapsed page visits (:func:`page_visits`), never cross a session
boundary (a window near the start or end of a session is simply shorter), and are written
oldest page first as ``' > '``-joined strings so they can be counted, sorted and stored.
Unattributed events are left out unless ``include_unattributed=True``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from src.features.journeys.sessions import _require, page_visits, session_table

SEP = " > "
SESSION_START = "(session start)"


def _session_lengths(step: np.ndarray) -> np.ndarray:
    """Number of visits in each visit's session, from the 1-based ``step`` column."""
    first = np.flatnonzero(step == 1)
    sizes = np.diff(np.r_[first, len(step)])
    return np.repeat(sizes, sizes)


def _pages_at(
    code: np.ndarray, names: pd.Index, at: np.ndarray
) -> pd.api.extensions.ExtensionArray:
    """Page names at visit positions ``at`` (-1 = none), decoded from codes: no object arrays."""
    c = np.where(at >= 0, code[np.clip(at, 0, None)] if len(code) else -1, -1)
    return pd.array(names.take(c, allow_fill=True, fill_value=None), dtype="str")


def _cat(left: pd.Series, right: pd.Series) -> pd.Series:
    """``left > right`` where both exist, else whichever exists (vectorized, NA-aware)."""
    both = left.notna() & right.notna()
    joined = left.str.cat(right, sep=SEP)
    return joined.where(both, left.where(left.notna(), right))


def _join_columns(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """Join the non-missing values of ``columns`` left to right; '' when all are missing."""
    acc = pd.Series(pd.NA, index=frame.index, dtype="str")
    for c in columns:
        acc = _cat(acc, frame[c].astype("str"))
    return acc.fillna("")


def paths_around(
    events: pd.DataFrame,
    target_page: str,
    before: int = 3,
    after: int = 3,
    include_unattributed: bool = False,
) -> pd.DataFrame:
    """The ``before`` pages before and ``after`` pages after each visit to ``target_page``.

    One row per visit to the target (a run of consecutive events on it counts once). Wide
    columns ``before_N .. before_1, target, after_1 .. after_N`` (missing past the session's
    start or end) feed :func:`sankey_figure`; ``before_path``, ``after_path`` and ``path``
    (before + target + after) feed :func:`top_paths`.
    """
    if before < 0 or after < 0:
        raise ValueError("before and after must be >= 0")
    v = page_visits(events, include_unattributed=include_unattributed)
    step = v["step"].to_numpy(dtype=np.int64)
    length = _session_lengths(step)
    page_code, page_names = pd.factorize(v["page"])
    page_names = pd.Index(page_names)
    found = np.flatnonzero(page_names == target_page)
    hit = np.flatnonzero(page_code == found[0]) if len(found) else np.array([], dtype=np.int64)

    out = v.iloc[hit][["customer_id", "journey_session", "session_key", "step", "ts"]]
    out = out.reset_index(drop=True)
    s, n = step[hit], length[hit]
    before_cols = [f"before_{k}" for k in range(before, 0, -1)]
    after_cols = [f"after_{k}" for k in range(1, after + 1)]
    for k in range(before, 0, -1):
        ok = s > k
        out[f"before_{k}"] = _pages_at(page_code, page_names, np.where(ok, hit - k, -1))
    out["target"] = pd.array([target_page] * len(hit), dtype="str")
    for k in range(1, after + 1):
        ok = s + k <= n
        out[f"after_{k}"] = _pages_at(page_code, page_names, np.where(ok, hit + k, -1))
    out["before_path"] = _join_columns(out, before_cols)
    out["after_path"] = _join_columns(out, after_cols)
    out["path"] = _join_columns(out, [*before_cols, "target", *after_cols])
    return out


def top_paths(
    paths: pd.DataFrame | pd.Series, k: int | None = 10, column: str = "path"
) -> pd.DataFrame:
    """The ``k`` most frequent values of a path column, with count, share and cumulative share.

    ``share`` is over all non-missing rows (not only the top ``k``); ties are broken by the
    path text so the ranking is reproducible.
    """
    series = paths if isinstance(paths, pd.Series) else paths[column]
    series = series.dropna().astype("str")
    counts = series.value_counts()
    table = pd.DataFrame({"path": counts.index.astype("str"), "count": counts.to_numpy()})
    table = table.sort_values(["count", "path"], ascending=[False, True], kind="stable")
    total = table["count"].sum()
    table["share"] = table["count"] / total if total else np.nan
    table["cum_share"] = table["share"].cumsum()
    table = table.head(k) if k is not None else table
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def start_to_end_paths(
    sessions: pd.DataFrame,
    k: int | None = 10,
    by: Literal["path", "entry_exit"] = "path",
) -> pd.DataFrame:
    """The most frequent whole-session paths, entry page to exit page (the last page).

    ``sessions`` is a :func:`session_table` (or events, which are summarised first).
    ``by="entry_exit"`` counts (entry, exit) pairs regardless of what lies between. Sessions
    without page views (branch/ATM visits) are left out.
    """
    if "path" not in sessions.columns:
        sessions = session_table(sessions)
    _require(sessions, ["path", "entry_page", "exit_page"])
    s = sessions.loc[sessions["path"].fillna("").ne("").to_numpy(dtype=bool)]
    if by == "entry_exit":
        keys = s["entry_page"].astype("str") + " ... " + s["exit_page"].astype("str")
        keys = keys.where(s["entry_page"] != s["exit_page"], s["entry_page"])
        table = top_paths(keys, k=k)
        pairs = pd.DataFrame(
            {
                "path": keys.to_numpy(),
                "entry_page": s["entry_page"].to_numpy(),
                "exit_page": s["exit_page"].to_numpy(),
            }
        ).drop_duplicates("path")
        table = table.merge(pairs, on="path", how="left")
        table["n_steps"] = pd.NA
    elif by == "path":
        table = top_paths(s["path"], k=k)
        parts = table["path"].str.split(SEP)
        table["entry_page"] = parts.str[0].astype("str")
        table["exit_page"] = parts.str[-1].astype("str")
        table["n_steps"] = parts.str.len().astype("int64")
    else:
        raise ValueError("by must be 'path' or 'entry_exit'")
    return table[
        ["rank", "path", "entry_page", "exit_page", "n_steps", "count", "share", "cum_share"]
    ]


def paths_to(
    events: pd.DataFrame,
    target_page: str = "error",
    before: int = 3,
    k: int | None = None,
    include_unattributed: bool = False,
) -> pd.DataFrame:
    """Which paths lead to ``target_page``: the ``before`` pages seen just before each visit.

    ``count`` is how many visits to the target followed the path and ``share`` their part of
    all visits to it. ``occurrences`` is how often the same path occurred anywhere (followed by
    anything, or by the end of the session) and ``rate = count / occurrences`` the chance that
    it leads to the target next: a frequent path with a low rate is just busy, a rare one with
    a high rate is where customers get stuck. A target visit within ``before`` steps of the
    session start has a shorter path; one that opens the session has ``(session start)``.
    """
    if before < 1:
        raise ValueError("before must be >= 1")
    v = page_visits(events, include_unattributed=include_unattributed)
    step = v["step"].to_numpy(dtype=np.int64)
    length = _session_lengths(step)
    code, names = pd.factorize(v["page"], sort=True)
    names = np.asarray(names, dtype=object)
    cols = [f"w{j}" for j in range(before - 1, -1, -1)]  # w0 = the page just before the target
    empty = pd.DataFrame(
        {"path": [], "count": [], "share": [], "occurrences": [], "rate": [], "customers": []}
    )
    if target_page not in set(names):
        return empty.assign(rank=[])[["rank", *empty.columns]]
    target = int(np.flatnonzero(names == target_page)[0])
    idx = np.arange(len(code))

    # Every visit p ends a window of up to ``before`` pages; what comes next is p + 1 or the end.
    windows = {}
    for j in range(before):
        ok = step > j
        windows[f"w{j}"] = np.where(ok, code[np.where(ok, idx - j, 0)], -1).astype(np.int16)
    nxt_in = step < length
    leads = np.zeros(len(code), dtype=bool)
    leads[:-1] = nxt_in[:-1] & (code[1:] == target)
    frame = pd.DataFrame(
        {**{c: windows[c] for c in cols}, "hit": leads, "customer_id": v["customer_id"].to_numpy()}
    )
    # The empty window before each session's first page.
    starts = step == 1
    opening = pd.DataFrame(
        {
            **{c: np.full(int(starts.sum()), -1, np.int16) for c in cols},
            "hit": code[starts] == target,
            "customer_id": v["customer_id"].to_numpy()[starts],
        }
    )
    frame = pd.concat([frame, opening], ignore_index=True)

    stats = frame.groupby(cols, sort=False).agg(occurrences=("hit", "size"), count=("hit", "sum"))
    stats = stats.loc[stats["count"] > 0]
    hits = frame.loc[frame["hit"].to_numpy()]
    customers = hits.groupby(cols, sort=False)["customer_id"].nunique()
    stats = stats.join(customers.rename("customers")).reset_index()

    wide = pd.DataFrame(
        {
            c: pd.array(np.where(stats[c] >= 0, names[stats[c].clip(lower=0)], None), dtype="str")
            for c in cols
        }
    )
    stats["path"] = _join_columns(wide, cols).replace("", SESSION_START).to_numpy()
    total = stats["count"].sum()
    stats["share"] = stats["count"] / total
    stats["rate"] = stats["count"] / stats["occurrences"]
    stats = stats.sort_values(["count", "path"], ascending=[False, True], kind="stable")
    stats = stats.head(k) if k is not None else stats
    stats.insert(0, "rank", np.arange(1, len(stats) + 1))
    return stats[
        ["rank", "path", "count", "share", "occurrences", "rate", "customers"]
    ].reset_index(drop=True)
