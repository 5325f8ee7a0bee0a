"""The shared customer store at a bank's size: 1M customers' rows published to PostgreSQL.

Measured in one run on the same rows:

* **publish**: ``publish_to_postgres`` (COPY into a new table, unique index, manifest row in the
  same transaction) of the whole view and its scores — what ``nextoffer publish-view`` does;
* **lookup**: a replica's first read of a customer (``position`` + ``row`` of every column +
  its scores: what a decision needs on a cache miss) through :class:`PgCustomerStore`, at
  random customers, with a cache too small to help — the p50/p99 a request pays;
* **baseline, in process**: the same view loaded into :class:`CustomerStore` (what one process
  does today: load time, memory, the same lookups);
* **Redis, the alternative**: the same rows as one string per customer on the real Redis
  (pipelined SET, GET per lookup) for a sample, to measure what choosing it would cost in RAM
  and gain in latency (the figures behind the module's choice of PostgreSQL).

The rows are a small simulated bank's customer view tiled to ``customers`` rows with new ids
(190 columns, the real dtypes and values), since simulating a million customers' histories is
the simulator benchmark's job, not this one's.
"""

from __future__ import annotations

import gc
import os
import random
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Report

PG_URL = os.environ.get("NEXTOFFER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NEXTOFFER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def tiled_view(work_dir: Path, customers: int, seed: int = 3) -> tuple[pd.DataFrame, str]:
    """A tiny bank's view repeated to ``customers`` rows, customer ids made unique."""
    from benchmarks.harness.serving_fixtures import tiny_bank

    settings, view_path = tiny_bank(work_dir / "bank", customers=300, days=14, seed=seed)
    as_of = view_path.stem.removeprefix("customer_view_")
    return tile_view(pd.read_parquet(view_path), customers), as_of


def tile_view(base: pd.DataFrame, customers: int) -> pd.DataFrame:
    """``base`` repeated to ``customers`` rows, ids ``C00000000``, ``C00000001``, ... (unique)."""
    reps = -(-customers // len(base))
    view = pd.concat([base] * reps, ignore_index=True).iloc[:customers].copy()
    view["customer_id"] = [f"C{i:08d}" for i in range(customers)]
    return view


def fake_scores(view: pd.DataFrame, version: str = "1") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    products = ["loan", "card", "fund", "savings", "fx", "pension"]
    ids = view["customer_id"].to_numpy()
    return pd.DataFrame(
        {
            "customer_id": np.repeat(ids, len(products)),
            "product": np.tile(products, len(ids)),
            "score": rng.uniform(0, 1, len(ids) * len(products)),
            "model_version": version,
        }
    )


def _percentiles(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1e6
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "mean_us": round(float(a.mean()), 1),
    }


def _rss_mb() -> float:
    """Resident memory now (not the peak: the tiled frame already set that)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def run(
    work_dir: Path,
    customers: int = 1_000_000,
    lookups: int = 20_000,
    redis_rows: int = 100_000,
    pg_url: str = PG_URL,
    redis_url: str = REDIS_URL,
    seed: int = 0,
) -> Report:
    from pydantic_core import to_json

    from src.serving.customer_store_shared import (
        PostgresViewSource,
        pg_connect,
        publish_to_postgres,
        view_rows,
    )
    from src.serving.customers import CustomerStore

    view, as_of = tiled_view(Path(work_dir), customers)
    scores = fake_scores(view)
    columns = list(view.columns)
    served = columns[:40]  # the columns a decision reads (eligibility + bandit context, about 40)
    rng = random.Random(seed)
    ids = view["customer_id"].tolist()
    sample = [ids[rng.randrange(len(ids))] for _ in range(lookups)]
    schema = f"bench_store_{uuid.uuid4().hex[:10]}"
    results: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        manifest = publish_to_postgres(pg_url, schema, view, as_of, scores, progress=True)
        results["publish_seconds"] = round(time.perf_counter() - started, 1)
        with pg_connect(pg_url) as conn:
            size = conn.execute(
                "SELECT pg_total_relation_size(%s)", (f"{schema}.{manifest.location}",)
            ).fetchone()
        results["publish_table_mb"] = round(size[0] / 2**20, 1)
        results["publish_rows_per_s"] = round(customers / results["publish_seconds"])

        source = PostgresViewSource(pg_url, schema, cache_size=1_000)
        started = time.perf_counter()
        store = source.open(source.manifest())  # type: ignore[arg-type]
        results["pg_open_seconds"] = round(time.perf_counter() - started, 3)
        published = store.published_scores
        for cid in sample[:500]:  # warm the connection and prepared statements
            store.position(cid)
        store._by_id.clear()
        store._by_pos.clear()
        times = []
        for cid in sample:
            t = time.perf_counter()
            pos = store.position(cid)
            store.row(pos, served)
            published.for_position(pos)
            times.append(time.perf_counter() - t)
            if len(store._by_pos) > 500:  # a cache that does not help: every lookup is a miss
                store._by_pos.clear()
                store._by_id.clear()
        results["pg_lookup"] = _percentiles(times)
        store._by_id.clear()
        store._by_pos.clear()
        times = []
        for cid in sample:  # the same customers again: PostgreSQL's cache holds their pages
            t = time.perf_counter()
            pos = store.position(cid)
            store.row(pos, served)
            published.for_position(pos)
            times.append(time.perf_counter() - t)
            if len(store._by_pos) > 500:
                store._by_pos.clear()
                store._by_id.clear()
        results["pg_lookup_cached_pages"] = _percentiles(times)
        store.close()

        gc.collect()
        rss_before = _rss_mb()
        started = time.perf_counter()
        local = CustomerStore(view, as_of)
        local.warm(served)
        results["inprocess_load_seconds"] = round(time.perf_counter() - started, 1)
        results["inprocess_rss_growth_mb"] = round(_rss_mb() - rss_before, 0)
        times = []
        for cid in sample:
            t = time.perf_counter()
            pos = local.position(cid)
            local.row(pos, served)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t)
        results["inprocess_lookup"] = _percentiles(times)
        del local
        gc.collect()

        results["redis"] = _redis(redis_url, view, columns, redis_rows, sample, to_json, view_rows)
    finally:
        with pg_connect(pg_url) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    pg, inproc = results["pg_lookup_cached_pages"], results["inprocess_lookup"]
    first = results["pg_lookup"]
    notes = [
        f"publish: {customers:,} customers x {len(columns)} columns + scores into PostgreSQL in "
        f"{results['publish_seconds']} s ({results['publish_rows_per_s']:,} rows/s), "
        f"{results['publish_table_mb']} MB on disk",
        f"a replica's uncached read of one customer (row + scores), pages in PostgreSQL's "
        f"cache: p50 {pg['p50_us']} us, p99 {pg['p99_us']} us (first touch of the freshly "
        f"published table: p50 {first['p50_us']} us, p99 {first['p99_us']} us); in process: "
        f"p50 {inproc['p50_us']} us "
        f"({pg['p50_us'] / max(inproc['p50_us'], 0.1):.0f}x), after loading the view for "
        f"{results['inprocess_load_seconds']} s and +{results['inprocess_rss_growth_mb']:.0f} MB "
        "in every process",
    ]
    redis = results["redis"]
    if "error" not in redis:
        notes.append(
            f"Redis for the same rows: p50 {redis['lookup']['p50_us']} us, p99 "
            f"{redis['lookup']['p99_us']} us, {redis['bytes_per_customer']:,} bytes of RAM per "
            f"customer -> {redis['projected_gb']} GB for {customers:,} "
            "(beside the contact caps, with noeviction); PostgreSQL keeps them on disk"
        )
    params = {
        "customers": customers,
        "columns": len(columns),
        "columns_read_per_lookup": len(served),
        "lookups": lookups,
        "redis_rows": redis_rows,
        "rows": "a 300-customer simulated bank's view (14 days, seed 3) tiled, new ids",
        "scores_products": int(scores["product"].nunique()),
        "pg_url": pg_url,
        "redis_url": redis_url,
    }
    return Report(params=params, results=results, notes=notes)


def _redis(
    url: str,
    view: pd.DataFrame,
    columns: list[str],
    n: int,
    sample: list[str],
    to_json: Any,
    view_rows: Any,
) -> dict[str, Any]:
    """The Redis alternative on the first ``n`` customers: RAM per customer and GET latency."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.ping()
    except redis.RedisError as error:
        return {"error": f"Redis not reachable: {error}"}
    prefix = f"bench_store:{uuid.uuid4().hex[:10]}:"
    head = view.iloc[:n]
    try:
        used_before = int(client.info("memory")["used_memory"])
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i, (_, cid, row, _) in enumerate(view_rows(head, columns, None, ())):
            pipe.set(prefix + cid, row)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        load_s = time.perf_counter() - started
        used = int(client.info("memory")["used_memory"]) - used_before
        in_redis = set(head["customer_id"])
        keys = [c for c in sample if c in in_redis] or list(in_redis)[:1000]
        times = []
        from pydantic_core import from_json

        for cid in keys[:20_000]:
            t = time.perf_counter()
            from_json(client.get(prefix + cid))
            times.append(time.perf_counter() - t)
        per_customer = used / max(len(head), 1)
        return {
            "customers": len(head),
            "load_seconds": round(load_s, 1),
            "bytes_per_customer": round(per_customer),
            "projected_gb": round(per_customer * len(view) / 2**30, 2),
            "lookup": _percentiles(times),
        }
    finally:
        cursor = 0
        while True:
            cursor, found = client.scan(cursor, match=prefix + "*", count=5000)
            if found:
                client.delete(*found)
            if cursor == 0:
                break


if __name__ == "__main__":
    import json
    from dataclasses import asdict

    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    report = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/bench_store"), n)
    print(json.dumps(asdict(report), indent=2, default=str))
