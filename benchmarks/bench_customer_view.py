"""Customer view as of T: DuckDB SQL over Parquet vs the straightforward pandas version.

Three measurements, each engine run in a fresh child process (``multiprocessing`` spawn) so
that its peak RSS (``ru_maxrss`` of that child) is its own and nothing is cached between runs:

1. DuckDB on the full bank: seconds, clickstream events/s, peak RSS.
2. DuckDB and pandas on a customer subsample pandas can hold (default: the first 20,000
   customers by id), written next to the data as its own small bank (see :func:`subsample_bank`):
   both timings, the ratio end to end and compute only, peak RSS of each, and the largest
   relative difference between the two views (a fast wrong answer cannot win). A bank no larger
   than the subsample is its own subsample.
3. pandas on a bank larger than the subsample is *not run* (on the 100k bank it was OOM-killed
   on a 24 GiB machine). Instead its peak RSS is extrapolated linearly in clickstream rows from
   the subsample's measured peak, and reported next to the machine's memory.

DuckDB's time includes reading the Parquet files (it scans them inside the query). pandas is
timed in two parts, loading the four raw tables into memory and computing the view, so the
ratio can be read both ways: end to end, and compute only (a notebook that already holds the
frames).

Run alone: ``python -m benchmarks.bench_customer_view data/raw 2026-03-31``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from benchmarks.common import Report, bank_params, trusted_catalog

RAW_TABLES = ("customers", "holdings", "clickstream", "transactions")
GIB = 1024**3


def _max_rel_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest |a - b| / max(1, |a|) over numeric columns; inf if anything else differs."""
    worst = 0.0
    for col in a.columns:
        if pd.api.types.is_numeric_dtype(a[col]) and not pd.api.types.is_bool_dtype(a[col]):
            x = a[col].astype("float64").to_numpy()
            y = b[col].astype("float64").to_numpy()
            if (np.isnan(x) != np.isnan(y)).any():
                return float("inf")
            d = np.abs(x - y) / np.maximum(1.0, np.abs(x))
            worst = max(worst, float(np.nanmax(d)) if len(d) and not np.isnan(d).all() else 0.0)
        elif not a[col].equals(b[col]):
            return float("inf")
    return worst


def _peak_rss_bytes() -> int:
    """Peak RSS of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- child processes ---------------------------------------------------------------------------


def _duckdb_child(raw_dir: str, as_of: str, out: str | None, queue: mp.Queue) -> None:
    from src.features.customer_view import build_customer_view

    catalog = trusted_catalog(Path(raw_dir).parent)
    start = time.perf_counter()
    view = build_customer_view(catalog, as_of)
    seconds = time.perf_counter() - start
    threads = duckdb.sql("SELECT current_setting('threads')").fetchall()[0][0]
    if out:
        view.to_pickle(out)
    queue.put(
        {
            "seconds": seconds,
            "rows": len(view),
            "columns": int(view.shape[1]),
            "peak_rss_bytes": _peak_rss_bytes(),
            "threads": int(threads),
        }
    )


def _pandas_child(raw_dir: str, as_of: str, out: str | None, queue: mp.Queue) -> None:
    from benchmarks.harness.customer_view_pandas import build_customer_view_pandas, load_tables

    start = time.perf_counter()
    tables = load_tables(raw_dir)
    load_s = time.perf_counter() - start
    rss_after_load = _peak_rss_bytes()
    start = time.perf_counter()
    view = build_customer_view_pandas(tables, as_of)
    compute_s = time.perf_counter() - start
    if out:
        view.to_pickle(out)
    queue.put(
        {
            "load_s": load_s,
            "compute_s": compute_s,
            "rows": len(view),
            "peak_rss_after_load_bytes": rss_after_load,
            "peak_rss_bytes": _peak_rss_bytes(),
        }
    )


def _in_child(target, *args) -> dict[str, Any]:
    """Run ``target(*args, queue)`` in a fresh spawned process; its result dict."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        result = queue.get()  # before join: a large payload would block the child's exit
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")
    return result


# -- the subsample -----------------------------------------------------------------------------


def subsample_bank(raw_dir: Path, out_dir: Path, n_customers: int) -> dict[str, int]:
    """Write a sub-bank of the first ``n_customers`` customers (by id) to ``out_dir``.

    Customer-keyed tables (customers, holdings, transactions) keep the rows of those customers.
    The clickstream keeps, whole, every session that (a) has an event logged in by one of them,
    or (b) ran on a device or cookie one of them ever logged in with (so the anonymous sessions
    that stitching attributes to them stay, and so do other customers' logins on those
    identifiers, which is what makes a shared device shared). Sessions of other customers on
    other identifiers are dropped. Both engines read the same sub-bank, so the comparison is
    exact; the sub-view can differ from the full view only for identifiers a kept session shares
    with dropped ones (stitching then sees fewer logins on them). Returns rows per table.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    src = {t: "'" + str(raw_dir / f"{t}.parquet").replace("'", "''") + "'" for t in RAW_TABLES}
    dst = {t: "'" + str(out_dir / f"{t}.parquet").replace("'", "''") + "'" for t in RAW_TABLES}
    con.execute(
        f"CREATE TEMP TABLE sample AS SELECT customer_id FROM read_parquet({src['customers']}) "
        f"ORDER BY customer_id LIMIT {int(n_customers)}"
    )
    for table in ("customers", "holdings", "transactions"):
        con.execute(
            f"COPY (SELECT * FROM read_parquet({src[table]}) "
            f"WHERE customer_id IN (SELECT customer_id FROM sample)) TO {dst[table]} (FORMAT parquet)"
        )
    con.execute(f"""
        CREATE TEMP TABLE identifiers AS
        SELECT DISTINCT device_id AS identifier FROM read_parquet({src["clickstream"]})
        WHERE customer_id IN (SELECT customer_id FROM sample)
        UNION
        SELECT DISTINCT cookie_id FROM read_parquet({src["clickstream"]})
        WHERE customer_id IN (SELECT customer_id FROM sample) AND cookie_id IS NOT NULL
    """)
    con.execute(f"""
        CREATE TEMP TABLE kept_sessions AS
        SELECT DISTINCT session_id FROM read_parquet({src["clickstream"]})
        WHERE customer_id IN (SELECT customer_id FROM sample)
           OR device_id IN (SELECT identifier FROM identifiers)
           OR cookie_id IN (SELECT identifier FROM identifiers)
    """)
    con.execute(
        f"COPY (SELECT * FROM read_parquet({src['clickstream']}) "
        f"WHERE session_id IN (SELECT session_id FROM kept_sessions)) "
        f"TO {dst['clickstream']} (FORMAT parquet)"
    )
    con.close()
    return _input_rows(out_dir)


def _input_rows(raw_dir: Path) -> dict[str, int]:
    return {t: pq.ParquetFile(raw_dir / f"{t}.parquet").metadata.num_rows for t in RAW_TABLES}


def _gb(n: float) -> float:
    return round(n / GIB, 2)


def run(
    raw_dir: Path,
    as_of: datetime | date | str,
    repeats: int = 1,
    subsample_customers: int = 20_000,
) -> Report:
    """DuckDB on the full bank; DuckDB vs pandas on a subsample (best of ``repeats`` each).

    A bank no larger than ``subsample_customers`` is its own subsample (pandas then runs on it
    whole)."""
    raw_dir = Path(raw_dir)
    as_of = str(pd.Timestamp(as_of))
    bank = bank_params(raw_dir.parent)
    full_rows = _input_rows(raw_dir)
    whole = full_rows["customers"] <= subsample_customers

    full = min(
        (_in_child(_duckdb_child, str(raw_dir), as_of, None) for _ in range(repeats)),
        key=lambda r: r["seconds"],
    )

    work = Path(tempfile.mkdtemp(prefix=f".subsample_{subsample_customers}_", dir=raw_dir.parent))
    try:
        start = time.perf_counter()
        if whole:
            sub_dir, sub_rows = raw_dir, full_rows
        else:
            sub_dir = work / "raw"
            sub_rows = subsample_bank(raw_dir, sub_dir, subsample_customers)
        subsample_s = time.perf_counter() - start
        duck_out, pandas_out = str(work / "duckdb.pkl"), str(work / "pandas.pkl")
        duck = min(
            (_in_child(_duckdb_child, str(sub_dir), as_of, duck_out) for _ in range(repeats)),
            key=lambda r: r["seconds"],
        )
        pand = min(
            (_in_child(_pandas_child, str(sub_dir), as_of, pandas_out) for _ in range(repeats)),
            key=lambda r: r["load_s"] + r["compute_s"],
        )
        sql_view, pandas_view = pd.read_pickle(duck_out), pd.read_pickle(pandas_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    same_shape = sql_view.shape == pandas_view.shape and list(sql_view.columns) == list(
        pandas_view.columns
    )
    max_diff = _max_rel_diff(sql_view, pandas_view) if same_shape else float("inf")
    pandas_total = pand["load_s"] + pand["compute_s"]
    scale = full_rows["clickstream"] / max(1, sub_rows["clickstream"])
    machine_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    params = {
        "bank": bank,
        "as_of": as_of,
        "repeats": repeats,
        "subsample": {
            "customers_requested": subsample_customers,
            "selection": "the whole bank"
            if whole
            else "first customers by id; their customer-keyed rows; whole sessions they logged "
            "into or that ran on a device/cookie they logged in with",
        },
    }
    results = {
        "full": {
            "input_rows": full_rows,
            "rows": full["rows"],
            "columns": full["columns"],
            "duckdb_threads": full["threads"],
            "duckdb_s": round(full["seconds"], 3),
            "duckdb_clickstream_events_per_s": round(full_rows["clickstream"] / full["seconds"]),
            "duckdb_peak_rss_gb": _gb(full["peak_rss_bytes"]),
            "pandas_run": whole,
            "pandas_peak_rss_gb_extrapolated": _gb(pand["peak_rss_bytes"] * scale),
            "pandas_extrapolation_scale": round(scale, 3),
            "machine_memory_gb": _gb(machine_bytes),
        },
        "subsample": {
            "customers": sub_rows["customers"],
            "whole_bank": whole,
            "input_rows": sub_rows,
            "build_s": round(subsample_s, 3),
            "rows": len(sql_view),
            "duckdb_s": round(duck["seconds"], 3),
            "duckdb_peak_rss_gb": _gb(duck["peak_rss_bytes"]),
            "pandas_load_s": round(pand["load_s"], 3),
            "pandas_compute_s": round(pand["compute_s"], 3),
            "pandas_total_s": round(pandas_total, 3),
            "pandas_peak_rss_after_load_gb": _gb(pand["peak_rss_after_load_bytes"]),
            "pandas_peak_rss_gb": _gb(pand["peak_rss_bytes"]),
            "speedup_total": round(pandas_total / duck["seconds"], 2),
            "speedup_compute_only": round(pand["compute_s"] / duck["seconds"], 2),
            "views_match": bool(same_shape and max_diff <= 1e-9),
            "max_rel_diff": max_diff,
        },
    }
    return Report(params, results, notes(results))


def notes(results: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    full, sub = results["full"], results["subsample"]
    rows = full["input_rows"]
    where = "whole bank" if sub["whole_bank"] else f"{sub['customers']:,}-customer subsample"
    out = [
        f"DuckDB builds the {full['rows']:,} x {full['columns']} view from "
        f"{rows['clickstream'] / 1e6:.2f}M clickstream rows in {full['duckdb_s']:.1f} s "
        f"({full['duckdb_clickstream_events_per_s'] / 1e6:.2f}M events/s, "
        f"peak {full['duckdb_peak_rss_gb']:.2f} GB, {full['duckdb_threads']} threads)",
        f"{where}: "
        f"DuckDB {sub['duckdb_s']:.2f} s, pandas {sub['pandas_total_s']:.2f} s "
        f"({sub['speedup_total']:.1f}x end to end, {sub['speedup_compute_only']:.1f}x compute "
        f"only); views {'match' if sub['views_match'] else 'DIFFER'} "
        f"(max relative difference {sub['max_rel_diff']:.1e})",
    ]
    if not full["pandas_run"]:
        need, have = full["pandas_peak_rss_gb_extrapolated"], full["machine_memory_gb"]
        verdict = "more than" if need > have else "within"
        out.append(
            f"pandas not run on the full bank: its peak RSS extrapolates to {need:.1f} GB "
            f"(subsample peak x {full['pandas_extrapolation_scale']:.2f}, the ratio of "
            f"clickstream rows; linear, so a lower bound), {verdict} this machine's "
            f"{have:.1f} GB"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("as_of")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--subsample-customers", type=int, default=20_000)
    args = parser.parse_args(argv)
    report = run(args.raw_dir, args.as_of, args.repeats, args.subsample_customers)
    print(json.dumps(asdict(report), indent=2, default=str))


if __name__ == "__main__":
    main()
