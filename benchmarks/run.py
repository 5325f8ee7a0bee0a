"""``make bench``: every benchmark in one run, results as JSON under benchmarks/results/.

Each benchmark compares the project's implementation against a straightforward baseline
measured in the same run on the same data, and reports the ratio — absolute seconds on a
shared 2-core machine mean little on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.settings import Settings

if TYPE_CHECKING:
    from src.models.tabular import TableSpec


def python_speed_probe(iterations: int = 5_000_000) -> float:
    """Seconds for a plain Python loop, best of three: the same VM has run 2.3x slower on one
    day than another, so every result carries this yardstick of the machine it ran on."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


def uci_bank_marketing_spec() -> TableSpec:
    """The UCI Bank Marketing file's quirks, as options of the tabular pipeline (the same as
    ``nextoffer train-table FILE --target y --drop duration --missing-value pdays=999
    --time-order rows --drift-cols emp.var.rate,cons.price.idx,cons.conf.idx,euribor3m,nr.employed``):
    ``duration`` is known only after the call (leaks the outcome), ``pdays`` 999 means "never
    contacted", the rows are in date order without a date column, and the five national
    economic columns are one value per period for everyone — a clock under a time split."""
    from src.models.tabular import TableSpec

    return TableSpec(
        target="y",
        drop=("duration",),
        missing=(("pdays", "999"),),
        time_order="rows",
        drift_cols=("emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed"),
    )


def machine_info() -> dict[str, Any]:
    """Where the figures come from, so results from different machines are not compared blindly."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "commit": commit,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python_loop_5m_s": python_speed_probe(),
    }


def write_result(out_dir: Path, name: str, params: dict[str, Any], result: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "params": params, "machine": machine_info(), "result": result}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"[bench] {name}: {json.dumps(result, default=str)[:400]}")
    print(f"[bench] wrote {path}")
    return path


def simulated_events(raw_dir: Path, at_least: int):
    """Stitched events of the first customers (by id) whose events add up to ``at_least``.

    Whole customers, so every rule sees complete histories; the full 100k bank (46M events) would
    not fit in memory as a pandas frame next to the detections.
    """
    from src.features.identity import IDENTITY_STAGES, connect_tables, register_stages

    con = connect_tables(raw_dir)
    register_stages(con, IDENTITY_STAGES, None)
    con.execute(
        "CREATE TEMP TABLE per_customer AS SELECT customer_id, count(*) AS n FROM stitched_events "
        "WHERE customer_id IS NOT NULL GROUP BY customer_id"
    )
    cutoff = con.execute(
        "SELECT customer_id FROM (SELECT customer_id, sum(n) OVER (ORDER BY customer_id) AS running "
        "FROM per_customer) WHERE running >= ? ORDER BY customer_id LIMIT 1",
        [at_least],
    ).fetchall()
    where = f"WHERE customer_id <= '{cutoff[0][0]}'" if cutoff else "WHERE customer_id IS NOT NULL"
    events = con.sql(f"SELECT * FROM stitched_events {where}").df()
    events["session_id"] = events["session_id"].astype("Int64")
    return events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--detection-events",
        type=int,
        default=10_000_000,
        help="detection runs on the stitched events of the first customers up to this many",
    )
    parser.add_argument(
        "--bank-marketing",
        type=Path,
        default=None,
        help="UCI Bank Marketing CSV (default: ../shared/data/bank-marketing/bank-additional-full.csv)",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these benchmarks (by name)"
    )
    args = parser.parse_args(argv)

    settings = Settings(seed=args.seed, customers=args.customers, days=args.days)
    out_dir = settings.resolve(args.out) if args.out else settings.resolve(settings.benchmarks_dir)
    work = settings.root / "benchmarks" / ".data" / f"{args.customers}x{args.days}"
    raw_dir, truth_dir = work / "raw", work / "truth"
    params = {"customers": args.customers, "days": args.days, "seed": args.seed}
    as_of = datetime.combine(settings.start_date, datetime.min.time()) + timedelta(days=args.days)

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []

    def bench_simulator() -> dict[str, Any]:
        from benchmarks import bench_simulator

        return bench_simulator.run(args.customers, args.days, work, seed=args.seed)

    def bench_customer_view() -> dict[str, Any]:
        from benchmarks import bench_customer_view

        return bench_customer_view.run(raw_dir, as_of)

    def bench_detection() -> dict[str, Any]:
        from benchmarks import bench_detection

        events = simulated_events(raw_dir, args.detection_events)
        return bench_detection.run(events)

    def bench_bandit() -> dict[str, Any]:
        from benchmarks import bench_bandit

        return bench_bandit.run(raw_dir, truth_dir)

    def bench_models() -> dict[str, Any]:
        from benchmarks import bench_models

        return bench_models.run(raw_dir, truth_dir)

    def bench_serving() -> dict[str, Any]:
        from benchmarks import bench_serving

        return bench_serving.run(work / "serving")

    def bench_uci_bank_marketing() -> dict[str, Any]:
        """Real campaign outcomes: the propensity pipeline's held-out AUC (paper's best ~0.80)."""
        from src.models.tabular import evaluate_table, prepare, read_table

        path = (
            args.bank_marketing
            or settings.root.parent
            / "shared"
            / "data"
            / "bank-marketing"
            / "bank-additional-full.csv"
        )
        if not path.exists():
            return {"skipped": f"no file at {path}"}
        started = time.perf_counter()
        data = prepare(read_table(path), uci_bank_marketing_spec(), str(path))
        out = evaluate_table(data, final_model=False)

        def auc(frame):
            return {k: round(float(v), 4) for k, v in frame["auc"].items()}

        return {
            "file": path.name,
            "options": uci_bank_marketing_spec().as_params(),
            "seconds": round(time.perf_counter() - started, 1),
            "cv5_auc": auc(out.cv_mean),
            "time_split_auc": auc(out.time),
            "time_split_auc_by_features": {
                f"{f}/{s}": round(float(v), 4) for (f, s), v in out.time_by_features["auc"].items()
            },
            "time_split_positive_rate": {
                k: round(float(v), 4) for k, v in out.time_rates["positive_rate"].items()
            },
        }

    steps = [
        ("simulator", bench_simulator),
        ("customer_view", bench_customer_view),
        ("detection", bench_detection),
        ("models", bench_models),
        ("bandit", bench_bandit),
        ("serving", bench_serving),
        ("uci_bank_marketing", bench_uci_bank_marketing),
    ]
    needs_bank = any(
        wanted(name)
        for name, _ in steps
        if name not in ("simulator", "serving", "uci_bank_marketing")
    )
    if needs_bank and not (raw_dir / "clickstream.parquet").exists() and not wanted("simulator"):
        raise SystemExit(f"no simulated data under {raw_dir}: run the simulator benchmark first")
    for name, step in steps:
        if wanted(name):
            write_result(out_dir, name, params, step())


if __name__ == "__main__":
    main()
