"""``build-view --engine spark`` before and after the speed-ups, on the same bank in one run.

What ``nextoffer build-view --engine spark`` does (identity tables and customer view, as of the
day after the last simulated day), on ``local[2]``, each variant in a fresh process and JVM
(so JIT warm-up is paid alike), one after the other:

- ``before``: the code on main before this benchmark: the identity tables written, then the
  view's stages bound again (which uncaches and recomputes ``session_keys``, ``identity_map``,
  ``session_map``).
- ``after``: :func:`src.features.spark_view.run_customer_view_spark` as it is now (every stage
  bound once, the cached stages computed once).

Each process builds ``--repeats`` times: the first build is what one ``build-view`` costs (a
cold JVM: Catalyst, Janino compiling the generated code of ~200-column aggregations, HotSpot
warming up), the later ones show the same work with the JVM warm. Both variants' four outputs
are compared table by table (same schema, rows, values). The load average is recorded per
variant: the box is shared, so compare the variants of one run, not runs of different days.

    python -m benchmarks.bench_spark_view_speed --customers 2000 --days 30
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Report, load_average

VARIANTS = ("before", "after")


def _variant(
    name: str, data_dir: str, out_dir: str, as_of: str, repeats: int, queue: mp.Queue
) -> None:
    """One build in this (fresh) process: the session start and the build timed apart."""
    import shutil

    from src.data.catalog import Catalog
    from src.features.spark_session import spark_session
    from src.features.spark_view import (
        release_stages,
        run_customer_view_spark,
        write_customer_view_spark,
        write_identity_spark,
    )

    out = Path(out_dir) / name
    shutil.rmtree(out, ignore_errors=True)
    (out / "validated").parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(Path(data_dir) / "validated", out / "validated")
    catalog = Catalog.at(out)
    conf: dict[str, str] = {"spark.driver.memory": "3g", "spark.local.dir": str(out / "tmp")}
    load = load_average()
    started = time.perf_counter()
    spark = spark_session("local[2]", app_name=f"bench-view-{name}", extra_conf=conf)
    session_s = time.perf_counter() - started
    builds = []
    for _ in range(repeats):
        started = time.perf_counter()
        if name == "before":  # main's run_customer_view_spark before this change
            paths = write_identity_spark(spark, catalog, as_of)
            paths["customer_view"] = write_customer_view_spark(spark, catalog, as_of)
            release_stages(spark)
        else:
            paths = run_customer_view_spark(spark, catalog, as_of)
        builds.append(round(time.perf_counter() - started, 1))
    result = {
        "session_start_s": round(session_s, 1),
        "build_s": builds[0],
        "warm_build_s": builds[1:],
        "shuffle_partitions": int(spark.conf.get("spark.sql.shuffle.partitions")),
        "load_average_1m_start": load,
        "load_average_1m_end": load_average(),
        "paths": {k: str(v) for k, v in paths.items()},
    }
    spark.stop()
    queue.put(result)


def _run_variant(name: str, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_variant, args=(name, *args, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


def _same_outputs(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    """Per table: rows and whether the two variants wrote the same table (1e-9 relative)."""
    import numpy as np
    import pyarrow.parquet as pq

    out: dict[str, Any] = {}
    for name in a:
        x, y = pq.read_table(a[name]), pq.read_table(b[name])
        same = [(f.name, f.type) for f in x.schema] == [(f.name, f.type) for f in y.schema]
        same = same and x.num_rows == y.num_rows
        if same:
            px, py = x.to_pandas(), y.to_pandas()
            for col in px.columns:
                if px[col].dtype.kind == "f":
                    same &= bool(np.allclose(px[col], py[col], rtol=1e-9, atol=0, equal_nan=True))
                else:
                    same &= bool(px[col].equals(py[col]))
        out[name] = {"rows": x.num_rows, "equal": bool(same)}
    return out


def run(
    customers: int, days: int, seed: int, data_root: Path, work: Path, repeats: int = 3
) -> Report:
    import pandas as pd

    from benchmarks.bench_scale import ensure_bank
    from benchmarks.common import bank_params

    bank = ensure_bank(data_root, customers, days, seed)
    meta = bank_params(bank)
    as_of = str(pd.Timestamp(meta.get("start_date", "2026-01-01")) + pd.Timedelta(days=days))
    events = sum(
        pq_rows(bank / "validated" / f"{t}.parquet") for t in ("clickstream", "transactions")
    )
    results: dict[str, Any] = {}
    for name in VARIANTS:
        results[name] = _run_variant(name, str(bank), str(work), as_of, repeats)
        print(f"[bench] {name}: {results[name]}", flush=True)
    results["outputs"] = _same_outputs(results["before"]["paths"], results["after"]["paths"])
    results["speedup"] = round(results["before"]["build_s"] / results["after"]["build_s"], 2)
    params = {
        "customers": customers,
        "days": days,
        "seed": seed,
        "as_of": as_of,
        "events": events,
        "master": "local[2]",
        "driver_memory": "3g",
        "repeats": repeats,
        "what": "build-view --engine spark: identity_map, session_map, stitched_events, "
        "customer_view (one Parquet file each); build_s excludes the JVM start",
    }
    equal = all(v["equal"] for v in results["outputs"].values())
    notes = [
        f"{customers} customers x {days} days ({events} events), first build in a fresh JVM: "
        f"before {results['before']['build_s']} s, after {results['after']['build_s']} s "
        f"({results['speedup']}x); outputs equal: {equal}",
        f"the same build with the JVM warm: before {results['before']['warm_build_s']} s, "
        f"after {results['after']['warm_build_s']} s",
    ]
    return Report(params=params, results=results, notes=notes)


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import timed, write_report

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="builds per process (1st cold)")
    parser.add_argument("--data-root", type=Path, default=ROOT / "benchmarks" / ".data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/nextoffer-bench-spark-view"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="spark_view_speed")
    args = parser.parse_args(argv)

    def step() -> Report:
        return run(args.customers, args.days, args.seed, args.data_root, args.work, args.repeats)

    report, seconds, load = timed(step)
    write_report(args.out, args.name, report, seconds=seconds, load_at_start=load)


if __name__ == "__main__":
    main()
