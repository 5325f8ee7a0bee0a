"""Simulator throughput: events (clicks + transactions) written per second, end to end."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import Report, bank_params
from src.data.synthetic import SimConfig, simulate


def run(customers: int, days: int, out_dir: Path, seed: int = 7, progress: bool = True) -> Report:
    """Simulate into ``out_dir/raw`` and ``out_dir/truth``; report events, seconds, events/s."""
    out_dir = Path(out_dir)
    config = SimConfig(customers=customers, days=days, seed=seed)
    started = time.perf_counter()
    counts = simulate(config, out_dir / "raw", out_dir / "truth", progress=progress)
    seconds = time.perf_counter() - started
    bank = bank_params(out_dir)
    events = counts["clickstream"] + counts["transactions"]
    customer_days = bank["customers"] * bank["days"]
    results = {
        "events": events,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "clicks_per_customer_day": round(counts["clickstream"] / customer_days, 2),
        "transactions_per_customer_day": round(counts["transactions"] / customer_days, 2),
        "rows": counts,
    }
    notes = [
        f"{events / 1e6:.2f}M events ({bank['customers']:,} customers x {bank['days']} days) "
        f"in {seconds:.1f} s: {events / seconds / 1e6:.2f}M events/s"
    ]
    return Report({"bank": bank}, results, notes)
