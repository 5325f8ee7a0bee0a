"""Detection throughput: batch (vectorized) and online (one event at a time) vs a per-customer
Python loop baseline, in the same run, plus online state size and memory.

    .venv/bin/python -m benchmarks.bench_detection --events 10000000      # synthetic stream
    .venv/bin/python -m benchmarks.bench_detection --parquet data/features/stitched_events.parquet

The baseline (``reference_detect``: for each customer and anchor, walk forward) is too slow
for 10M events; it runs on a random subsample of customers and its events/s is extrapolated
(labelled ``*_extrapolated``). Times are wall clock and CPU (process) time; the machine is
shared, so CPU time is the steadier number. Online runs on one core by construction.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import NO_BANK, Report, write_report
from benchmarks.harness.detection_reference import reference_detect
from benchmarks.harness.detection_synthetic import synthetic_events as _synthetic
from src.features.detection import OnlineDetector, detect, load_rules
from src.features.detection.events import detection_keys, events_from_frame
from src.features.detection.rules import CompiledRule

_MASK = (1 << 64) - 1


def synthetic_events(n: int, customers: int | None = None, seed: int = 0) -> pd.DataFrame:
    """A StitchedEvents frame of ``n`` events (no simulator needed); ~100 events/customer."""
    return _synthetic(n, customers=customers, seed=seed)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _subsample(events: pd.DataFrame, target: int, seed: int) -> pd.DataFrame:
    """Whole customers (so their patterns are intact) totalling about ``target`` events."""
    if len(events) <= target:
        return events
    ids = events["customer_id"].dropna().unique()
    rng = np.random.default_rng(seed)
    frac = target / len(events)
    pick = rng.choice(ids, size=max(1, int(len(ids) * frac)), replace=False)
    return events[events["customer_id"].isin(pick)]


def run(
    events: pd.DataFrame,
    source: dict[str, Any],
    rules: list[CompiledRule] | None = None,
    baseline_events: int = 100_000,
    check_parity: bool = True,
    state_every: int = 100_000,
    seed: int = 0,
) -> Report:
    """Benchmark all ``rules`` (default: shipped) on ``events``; ``source`` says where the events
    came from (a bank's :func:`~benchmarks.common.bank_params` and how they were selected, or
    the synthetic stream's parameters) and goes into the report's params as given."""
    rules = rules or load_rules()
    params = {
        "source": source,
        "rules": [r.name for r in rules],
        "baseline_events_requested": baseline_events,
        "baseline_seed": seed,
        "check_parity": check_parity,
        "state_every": state_every,
    }
    n = len(events)
    rep: dict[str, Any] = {
        "events": n,
        "customers": int(events["customer_id"].nunique()),
    }
    # Batch, vectorized.
    batch, wall, cpu = _timed(lambda: detect(events, rules))
    rep.update(
        batch_wall_s=wall,
        batch_cpu_s=cpu,
        batch_events_per_s=n / wall,
        batch_events_per_cpu_s=n / cpu,
        detections=len(batch),
        detections_by_rule=batch.groupby("rule").size().to_dict(),
    )
    rep["rss_after_batch_mb"] = _rss_mb()
    # Baseline: per-customer Python loop on a subsample, extrapolated.
    sub = _subsample(events, baseline_events, seed)
    ref, wall, cpu = _timed(lambda: reference_detect(sub, rules))
    rep.update(
        baseline_sample_events=len(sub),
        baseline_wall_s=wall,
        baseline_events_per_s_extrapolated=len(sub) / wall,
        baseline_events_per_cpu_s_extrapolated=len(sub) / cpu,
    )
    sub_batch = detect(sub, rules)
    rep["baseline_agrees_with_batch_on_sample"] = detection_keys(ref) == detection_keys(sub_batch)
    # Online: one event at a time, streamed from the frame (not materialised).
    det = OnlineDetector(rules)
    _, conv_wall, conv_cpu = _timed(lambda: sum(1 for _ in events_from_frame(events)))
    # Detections are not kept (a server hands them on); parity uses a count and an
    # order-independent hash of their keys, so retained objects do not slow the loop via GC.
    peak_state, n_online, h_online = 0, 0, 0
    rss0 = _rss_mb()

    def loop() -> None:
        nonlocal peak_state, n_online, h_online
        proc = det.process
        for i, e in enumerate(events_from_frame(events)):
            got = proc(e)
            if got:
                n_online += len(got)
                for d in got:
                    h_online = (h_online + hash(d.key())) & _MASK
            if i % state_every == 0:
                peak_state = max(peak_state, det.state_size())

    _, wall, cpu = _timed(loop)
    peak_state = max(peak_state, det.state_size())
    proc_wall, proc_cpu = max(wall - conv_wall, 1e-9), max(cpu - conv_cpu, 1e-9)
    rep.update(
        online_conversion_cpu_s=conv_cpu,
        online_total_cpu_s=cpu,
        online_events_per_s=n / proc_wall,
        online_events_per_cpu_s=n / proc_cpu,
        online_events_per_cpu_s_incl_conversion=n / cpu,
        online_peak_state_entries=peak_state,
        online_final_state=det.state_stats(),
        online_rss_growth_mb=_rss_mb() - rss0,
        peak_rss_mb=_rss_mb(),
        online_detections=n_online,
    )
    if check_parity:
        keys = detection_keys(batch)
        h_batch = sum(hash(k) for k in keys) & _MASK
        rep["online_agrees_with_batch"] = (
            n_online == len(keys) == len(batch) and h_online == h_batch
        )
    rep["baseline_speedup_batch"] = (
        rep["batch_events_per_cpu_s"] / rep["baseline_events_per_cpu_s_extrapolated"]
    )
    rep["baseline_speedup_online"] = (
        rep["online_events_per_cpu_s"] / rep["baseline_events_per_cpu_s_extrapolated"]
    )
    results = {k: _rounded(v) for k, v in rep.items()}
    return Report(params, results, notes(results, len(rules)))


def _rounded(value: Any) -> Any:
    """Rates to whole events, seconds and ratios to three decimals."""
    if isinstance(value, float):
        return round(value) if abs(value) >= 1_000 else round(value, 3)
    return value


def notes(r: dict[str, Any], n_rules: int) -> list[str]:
    """Sentences over the measured numbers."""
    parity = {True: "agree", False: "DISAGREE", None: "not compared"}
    return [
        f"batch: {r['events'] / 1e6:.2f}M events of {r['customers']:,} customers, {n_rules} rules, "
        f"{r['batch_events_per_s'] / 1e6:.2f}M events/s wall "
        f"({r['batch_events_per_cpu_s'] / 1e6:.2f}M per CPU second), "
        f"{r['baseline_speedup_batch']:.1f}x the per-customer loop "
        f"({r['baseline_events_per_cpu_s_extrapolated'] / 1e3:.0f}k events per CPU second, "
        f"measured on {r['baseline_sample_events']:,} events and extrapolated); loop and batch "
        f"{parity[r['baseline_agrees_with_batch_on_sample']]} on that sample",
        f"online, one event at a time: {r['online_events_per_cpu_s'] / 1e3:.0f}k events per CPU "
        f"second ({r['baseline_speedup_online']:.1f}x the loop), state at most "
        f"{r['online_peak_state_entries']:,} entries; online and batch "
        f"{parity[r.get('online_agrees_with_batch')]} ({r['online_detections']:,} detections)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--customers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--parquet", type=Path, default=None, help="a StitchedEvents parquet file")
    ap.add_argument("--baseline-events", type=int, default=100_000)
    ap.add_argument("--no-parity", action="store_true", help="skip the batch/online comparison")
    ap.add_argument("--out", type=Path, default=None, help="write detection.json to this directory")
    args = ap.parse_args()
    if args.parquet:
        events = pd.read_parquet(args.parquet)
        source: dict[str, Any] = {"bank": NO_BANK, "parquet": str(args.parquet)}
    else:
        t = time.perf_counter()
        events = synthetic_events(args.events, args.customers, args.seed)
        print(f"generated {len(events):,} events in {time.perf_counter() - t:.1f}s", flush=True)
        source = {
            "bank": NO_BANK,
            "synthetic_stream": {
                "events_requested": args.events,
                "customers_requested": args.customers,
                "seed": args.seed,
            },
        }
    report = run(
        events, source, baseline_events=args.baseline_events, check_parity=not args.no_parity
    )
    if args.out:
        write_report(args.out, "detection", report)
    else:
        print(json.dumps(asdict(report), indent=2, default=str))


if __name__ == "__main__":
    main()
