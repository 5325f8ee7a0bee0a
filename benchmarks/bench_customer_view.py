"""Customer view as of T: DuckDB SQL over Parquet vs the straightforward pandas version.

DuckDB's time includes reading the Parquet files (it scans them inside the query). pandas is
timed in two parts, loading the four raw tables into memory and computing the view, so the
ratio can be read both ways: end to end, and compute only (a notebook that already holds the
frames). Both views are compared on the way, so a fast wrong answer cannot win.

Run alone: ``python -m benchmarks.bench_customer_view data/raw 2026-03-31``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from src.features.customer_view import build_customer_view
from src.features.customer_view_pandas import build_customer_view_pandas, load_tables


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


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


def run(raw_dir: Path, as_of: datetime | date | str, repeats: int = 1) -> dict[str, Any]:
    """Time both implementations on ``raw_dir`` as of ``as_of`` (best of ``repeats``)."""
    raw_dir = Path(raw_dir)
    duck_s, load_s, pandas_s = [], [], []
    for _ in range(repeats):
        sql_view, t = _timed(build_customer_view, raw_dir, as_of)
        duck_s.append(t)
        tables, t = _timed(load_tables, raw_dir)
        load_s.append(t)
        pandas_view, t = _timed(build_customer_view_pandas, tables, as_of)
        pandas_s.append(t)
        del tables
    duck, load, compute = min(duck_s), min(load_s), min(pandas_s)
    same_shape = sql_view.shape == pandas_view.shape and list(sql_view.columns) == list(
        pandas_view.columns
    )
    max_diff = _max_rel_diff(sql_view, pandas_view) if same_shape else float("inf")
    input_rows = {
        name: pq.ParquetFile(raw_dir / f"{name}.parquet").metadata.num_rows
        for name in ("customers", "holdings", "clickstream", "transactions")
    }
    return {
        "as_of": str(pd.Timestamp(as_of)),
        "input_rows": input_rows,
        "rows": len(sql_view),
        "columns": int(sql_view.shape[1]),
        "duckdb_s": round(duck, 3),
        "pandas_load_s": round(load, 3),
        "pandas_compute_s": round(compute, 3),
        "pandas_total_s": round(load + compute, 3),
        "speedup_total": round((load + compute) / duck, 2),
        "speedup_compute_only": round(compute / duck, 2),
        "views_match": bool(same_shape and max_diff <= 1e-9),
        "max_rel_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path)
    parser.add_argument("as_of")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.raw_dir, args.as_of, args.repeats), indent=2))


if __name__ == "__main__":
    main()
