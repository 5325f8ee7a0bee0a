"""Spark vs embedded: ``score`` at 100k customers, streaming detection throughput and latency.

    .venv/bin/python -m benchmarks.bench_spark_score_detect                 # defaults below
    .venv/bin/python -m benchmarks.bench_spark_score_detect --customers 20000 --stream-events 50000

1. **score**: the customer view of a simulated bank (``--bank-customers``), its rows resampled
   with new ids to ``--customers`` (scoring cost is per row, so the tiling changes no per-row
   work), a LightGBM stand-in propensity model (:class:`ViewBooster`, one booster per product)
   registered as champion; ``score`` on the embedded engine (Arrow batches) is the baseline,
   Spark (``spark_udf`` on ``--master``) is compared with it: time ratio and the largest
   relative score difference (parity).
2. **streaming detection**: ``--stream-events`` synthetic stitched events
   (:mod:`benchmarks.harness.detection_synthetic`) replayed as ``--files`` files through
   ``detect-stream`` (one file per micro-batch); events/s against the embedded online
   evaluator (one process, one core) and the batch evaluator on Spark, all on the same events;
   the stream's detections must equal the batch ones.
3. **latency**: a running query (trigger as soon as possible) on an empty directory; a file
   holding one FX-remittance pattern is dropped in and the wall time until the detection is
   visible in the sink is measured, ``--latency-runs`` times (a *match*; a timeout is
   reported its rule's window plus the watermark delay later in event time).

The machine is shared (2 cores, other jobs running): the envelope records the load average.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Report, timed, write_report
from src.data.schemas import PRODUCTS

DEFAULTS = {
    "customers": 100_000,
    "bank_customers": 1_000,
    "bank_days": 35,
    "stream_events": 200_000,
    "files": 20,
    "latency_runs": 5,
    "master": "local[2]",
    "trees": 200,
}


class ViewBooster:
    """A stand-in propensity model with the production contract (raw view rows in, one
    probability column per product out): one LightGBM booster per product on the view's
    numeric columns and one category (coded here), trained on labels derived from the rows."""

    def __init__(
        self,
        view: pd.DataFrame,
        products: tuple[str, ...] = PRODUCTS,
        trees: int = 15,
        max_numeric: int = 30,
        seed: int = 0,
    ) -> None:
        import lightgbm as lgb

        from src.models.tracking import serving_frame

        numeric = [
            c
            for c in view.columns
            if c != "customer_id"
            and pd.api.types.is_numeric_dtype(view[c])
            and not pd.api.types.is_bool_dtype(view[c])
        ][:max_numeric]
        strings = [
            c
            for c in view.columns
            if c != "customer_id"
            and (view[c].dtype == object or pd.api.types.is_string_dtype(view[c]))
        ]
        self.category = strings[0] if strings else None
        self.raw_columns = numeric + ([self.category] if self.category else [])
        rows = serving_frame(view, self.raw_columns)
        self.vocab = sorted(rows[self.category].dropna().unique()) if self.category else []
        X = self._matrix(rows)
        rng = np.random.default_rng(seed)
        self.products: dict[str, Any] = {}
        for i, p in enumerate(products):
            signal = np.nan_to_num(X.iloc[:, i % X.shape[1]].to_numpy(), nan=0.0)
            noise = rng.normal(0, signal.std() + 1, len(X))
            y = (signal + noise > np.median(signal)).astype(int)
            model = lgb.LGBMClassifier(
                n_estimators=trees, num_leaves=7, min_child_samples=5, verbose=-1, random_state=i
            )
            self.products[p] = model.fit(X, y)

    def _matrix(self, rows: pd.DataFrame) -> pd.DataFrame:
        X = rows.drop(columns=[self.category]) if self.category else rows.copy()
        X = X.astype("float64")
        if self.category:
            codes = {v: float(i) for i, v in enumerate(self.vocab)}
            X["category_code"] = rows[self.category].map(codes).astype("float64")
        return X

    def predict_proba(self, rows: pd.DataFrame) -> pd.DataFrame:
        X = self._matrix(pd.DataFrame(rows)[self.raw_columns])
        return pd.DataFrame(
            {p: m.predict_proba(X)[:, 1] for p, m in self.products.items()}, index=rows.index
        )


def register_booster(model: ViewBooster, view: pd.DataFrame, tracking_uri: str, root: Path):
    """Log ``model`` as a pyfunc (pickled by value with this module) and make it champion."""
    import cloudpickle
    import mlflow

    from src.models.registry import register_and_promote
    from src.models.scoring import resolve_champion
    from src.models.tracking import configure_mlflow, log_pyfunc
    from src.settings import Settings

    settings = Settings(mlruns_dir=root / "mlruns", mlflow_tracking_uri=tracking_uri)
    experiment = configure_mlflow(settings, "bench-spark-score")
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        with mlflow.start_run(experiment_id=experiment):
            uri = log_pyfunc(model, view, model.raw_columns)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    register_and_promote(
        uri,
        "nextoffer-propensity",
        metric="fixture",
        candidate_score=1.0,
        score_champion=lambda _: 0.0,
        tracking_uri=tracking_uri,
    )
    return resolve_champion(tracking_uri=tracking_uri)


def _bank_view(root: Path, customers: int, days: int, seed: int = 5) -> tuple[pd.DataFrame, Any]:
    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of, run_simulation, run_validation
    from src.settings import Settings

    settings = Settings(
        data_dir=root / "bank", sim={"customers": customers, "days": days, "seed": seed}
    )
    run_simulation(settings, progress=False)
    run_validation(settings)
    as_of = default_as_of(settings)
    return build_customer_view(settings.catalog, as_of), as_of


def tiled_view(view: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows resampled from ``view`` with fresh customer ids."""
    rng = np.random.default_rng(seed)
    out = view.iloc[rng.integers(0, len(view), n)].reset_index(drop=True)
    out["customer_id"] = [f"S{i:07d}" for i in range(n)]
    return out


def bench_score(args: argparse.Namespace, root: Path, spark) -> dict[str, Any]:
    from src.data.catalog import Catalog
    from src.models.scoring import score_embedded, score_spark

    started = time.perf_counter()
    view, as_of = _bank_view(root, args.bank_customers, args.bank_days)
    model = ViewBooster(view, trees=args.trees)
    champion = register_booster(model, view, f"sqlite:///{root / 'mlflow.db'}", root)
    catalog = Catalog.at(root / "scored")
    big = tiled_view(view, args.customers)
    path = catalog.path("customer_view", as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    big.to_parquet(path, index=False)
    setup_s = time.perf_counter() - started

    t = time.perf_counter()
    embedded = pd.read_parquet(score_embedded(catalog, as_of, champion, chunk_rows=50_000))
    embedded_s = time.perf_counter() - t
    t = time.perf_counter()
    on_spark = pd.read_parquet(score_spark(spark, catalog, as_of, champion))
    spark_s = time.perf_counter() - t
    key = ["customer_id", "product"]
    a = embedded.sort_values(key).reset_index(drop=True)
    b = on_spark.sort_values(key).reset_index(drop=True)
    same_keys = bool(len(a) == len(b) and (a[key].to_numpy() == b[key].to_numpy()).all())
    rel = np.abs(b["score"].to_numpy() - a["score"].to_numpy()) / np.maximum(
        np.abs(a["score"].to_numpy()), 1e-300
    )
    return {
        "customers": args.customers,
        "products": len(champion.products),
        "rows": len(a),
        "model_inputs": len(champion.inputs),
        "booster_trees_per_product": args.trees,
        "setup_s": round(setup_s, 1),
        "embedded_s": round(embedded_s, 2),
        "spark_s": round(spark_s, 2),
        "spark_over_embedded": round(spark_s / embedded_s, 2),
        "embedded_customers_per_s": round(args.customers / embedded_s),
        "spark_customers_per_s": round(args.customers / spark_s),
        "parity_same_keys": same_keys,
        "parity_max_rel_diff": float(rel.max()) if len(rel) else 0.0,
    }


def bench_stream(args: argparse.Namespace, root: Path, spark) -> dict[str, Any]:
    from benchmarks.harness.detection_synthetic import synthetic_events
    from src.features.detection import detect, load_rules
    from src.features.detection.events import detection_keys, events_from_frame
    from src.features.detection.online import OnlineDetector
    from src.features.detection.spark_batch import detect_spark, sorted_detections
    from src.features.detection.spark_stream import (
        detect_stream,
        read_event_files,
        start_detection_query,
        write_replay,
    )

    rules = load_rules()
    events = synthetic_events(args.stream_events, seed=1)
    expected = detect(events, rules)

    t = time.perf_counter()
    det = OnlineDetector(rules)
    det.process_many(events_from_frame(events, order="time"))
    det.tick(events["ts"].max())
    online_s = time.perf_counter() - t

    source = root / "stream-in"
    write_replay(events, source, files=args.files, watermark_seconds=60)
    t = time.perf_counter()
    query = start_detection_query(
        detect_stream(read_event_files(spark, source, max_files_per_trigger=1), rules, 60),
        root / "stream-out",
        root / "stream-ck",
        available_now=True,
    )
    query.awaitTermination()
    stream_s = time.perf_counter() - t
    batches = [p for p in query.recentProgress if p["numInputRows"] > 0]
    per_batch = [p["durationMs"].get("triggerExecution", 0) / 1000 for p in batches]
    got = sorted_detections(spark.read.parquet(str(root / "stream-out")))

    events_path = root / "stream-events.parquet"
    events.assign(ts=events["ts"].astype("datetime64[us]")).to_parquet(events_path, index=False)
    t = time.perf_counter()
    batch_spark = sorted_detections(detect_spark(spark.read.parquet(str(events_path)), rules))
    batch_spark_s = time.perf_counter() - t
    n = len(events)
    return {
        "events": n,
        "customers": int(events["customer_id"].nunique()),
        "files": args.files,
        "micro_batches": len(batches),
        "detections": len(expected),
        "stream_equals_batch": detection_keys(got) == detection_keys(expected)
        and len(got) == len(expected),
        "batch_spark_equals_batch": detection_keys(batch_spark) == detection_keys(expected),
        "stream_s": round(stream_s, 2),
        "stream_events_per_s": round(n / stream_s),
        "stream_median_batch_s": round(statistics.median(per_batch), 2) if per_batch else None,
        "online_embedded_s": round(online_s, 2),
        "online_embedded_events_per_s": round(n / online_s),
        "batch_spark_s": round(batch_spark_s, 2),
        "batch_spark_events_per_s": round(n / batch_spark_s),
        "stream_over_online_time": round(stream_s / online_s, 2),
    }


def _pattern_file(directory: Path, i: int, base: pd.Timestamp) -> str:
    """One customer's FX page view and a large FX remittance 5 minutes later (a match)."""
    from src.features.detection.spark_stream import EVENT_ARROW_SCHEMA, _typed

    customer = f"L{i:04d}"
    t0 = base + pd.Timedelta(hours=i)
    rows = pd.DataFrame(
        {
            "event_id": [10_000_000 + 2 * i, 10_000_001 + 2 * i],
            "ts": [t0, t0 + pd.Timedelta(minutes=5)],
            "customer_id": [customer, customer],
            "source": ["click", "txn"],
            "channel": ["app", "app"],
            "session_id": [900_000 + i, None],
            "page": ["fx_remit_input", None],
            "action": ["view", None],
            "dwell_seconds": [30.0, None],
            "referrer": [None, None],
            "code": [None, "FX_REMIT"],
            "amount": [None, 20_000.0],
            "currency": [None, "USD"],
            "product": [None, "fx"],
            "amount_krw": [None, 27_000_000.0],
        }
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    scratch = directory.parent / f".lat-{i}.parquet"
    pq.write_table(
        pa.Table.from_pandas(_typed(rows), schema=EVENT_ARROW_SCHEMA, preserve_index=False),
        scratch,
    )
    scratch.rename(directory / f"lat-{i:04d}.parquet")  # appears whole
    return customer


def bench_latency(args: argparse.Namespace, root: Path, spark) -> dict[str, Any]:
    from src.features.detection import load_rules
    from src.features.detection.spark_stream import detect_stream, read_event_files

    source = root / "latency-in"
    source.mkdir()
    query = (
        detect_stream(read_event_files(spark, source), load_rules(), 60)
        .writeStream.format("memory")
        .queryName("latency_detections")
        .option("checkpointLocation", str(root / "latency-ck"))
        .outputMode("append")
        .start()
    )
    latencies = []
    try:
        base = pd.Timestamp("2026-03-01")
        for i in range(args.latency_runs):
            t0 = time.perf_counter()
            customer = _pattern_file(source, i, base)
            while True:
                seen = spark.sql(
                    f"SELECT count(*) AS n FROM latency_detections WHERE customer_id = '{customer}'"
                ).first()
                if seen is not None and seen["n"] > 0:
                    break
                if time.perf_counter() - t0 > 120:
                    raise TimeoutError(f"no detection for {customer} within 120 s")
                time.sleep(0.05)
            latencies.append(time.perf_counter() - t0)
    finally:
        query.stop()
    return {
        "runs": len(latencies),
        "latency_median_s": round(statistics.median(latencies), 2),
        "latency_max_s": round(max(latencies), 2),
        "latency_s": [round(x, 2) for x in latencies],
    }


def run(args: argparse.Namespace) -> Report:
    from src.features.detection.spark_batch import python_workers_session

    root = Path(tempfile.mkdtemp(prefix="bench_spark_sd_"))
    spark = python_workers_session(args.master, app_name="bench-spark-score-detect")
    try:
        score = bench_score(args, root, spark)
        stream = bench_stream(args, root, spark)
        latency = bench_latency(args, root, spark)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)
    params = {k: getattr(args, k) for k in DEFAULTS}
    params["bank"] = (
        f"simulated {args.bank_customers} customers x {args.bank_days} days (seed 5), "
        f"view rows resampled to {args.customers}"
    )
    notes = [
        f"score at {score['customers']} customers x {score['products']} products: embedded "
        f"{score['embedded_s']} s, Spark ({args.master}) {score['spark_s']} s "
        f"({score['spark_over_embedded']}x the embedded time); largest relative score "
        f"difference {score['parity_max_rel_diff']:.1e}",
        f"streaming detection over {stream['events']} events in {stream['micro_batches']} "
        f"micro-batches: {stream['stream_events_per_s']} events/s "
        f"({stream['stream_over_online_time']}x the embedded online evaluator's time, "
        f"{stream['online_embedded_events_per_s']} events/s on one core); same detections as "
        f"the batch evaluator: {stream['stream_equals_batch']}",
        f"end-to-end latency of a match (file dropped -> detection in the sink): median "
        f"{latency['latency_median_s']} s, max {latency['latency_max_s']} s over "
        f"{latency['runs']} runs",
    ]
    return Report(params, {"score": score, "stream": stream, "latency": latency}, notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report, seconds, load = timed(lambda: run(args))
    write_report(args.out, "spark_score_detect", report, seconds=seconds, load_at_start=load)


if __name__ == "__main__":
    main()
