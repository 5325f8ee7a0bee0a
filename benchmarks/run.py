"""``make bench``: every benchmark in one run, results as JSON under benchmarks/results/.

Each benchmark compares the project's implementation against a straightforward baseline
measured in the same run on the same data, and reports the ratio — absolute seconds on a
shared 2-core machine mean little on their own. Every JSON file has the envelope of
:mod:`benchmarks.common`: the parameters the benchmark actually ran with (read from the bank and
configs it used), its results, and notes computed from them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import Report, bank_params, timed, trusted_catalog, write_report
from src.settings import Settings, SimSettings

BENCHMARKS = (
    "simulator",
    "customer_view",
    "detection",
    "models",
    "bandit",
    "serving",
    "customer_store",
    "serving_shared",
    "uci_bank_marketing",
    "policies",
    "ope",
    "campaigns",
    "retrain",
    "spark_score_detect",
    "scale",
)
NEEDS_BANK = ("customer_view", "detection", "models", "bandit")


def simulated_events(raw_dir: Path, at_least: int) -> tuple[Any, dict[str, Any]]:
    """Stitched events of the first customers (by id) whose events add up to ``at_least``, and
    where they came from (for the report's params).

    Whole customers, so every rule sees complete histories; the full 100k bank (46M events) would
    not fit in memory as a pandas frame next to the detections.
    """
    from src.features.identity import IDENTITY_STAGES, register_stages

    con = trusted_catalog(Path(raw_dir).parent).connect()
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
    source = {
        "bank": bank_params(Path(raw_dir).parent),
        "events_requested": at_least,
        "selection": "stitched events of the first customers by id, whole customers, until "
        "events_requested is reached (or the whole bank)",
        "last_customer_id": cutoff[0][0] if cutoff else None,
    }
    return events, source


def main(argv: list[str] | None = None) -> None:
    # the demo bank's size and seed (the field defaults, not this environment's NEXTOFFER_*)
    demo = SimSettings().model_dump(include={"customers", "days", "seed"})
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=demo["seed"])
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
        help="UCI Bank Marketing CSV (default: shared/data/bank-marketing/bank-additional-full.csv "
        "in the first parent directory of the checkout that has it)",
    )
    policies = parser.add_argument_group("policies (bandit vs A/B-then-fix; its own two banks)")
    policies.add_argument("--policies-customers", type=int, default=demo["customers"])
    policies.add_argument("--policies-days", type=int, default=demo["days"])
    policies.add_argument(
        "--policies-report-seed", type=int, default=None, help="default: --seed (the demo bank)"
    )
    policies.add_argument(
        "--policies-tuning-seed", type=int, default=None, help="default: the report seed + 1"
    )
    policies.add_argument("--policies-learning-rates", type=float, nargs="+", default=None)
    policies.add_argument("--policies-epsilons", type=float, nargs="+", default=None)
    policies.add_argument(
        "--policies-no-diagnostics",
        dest="policies_diagnostics",
        action="store_false",
        help="skip notebook 20's diagnostic policies on the report bank",
    )
    parser.add_argument(
        "--ope-rows", type=int, default=1_000_000, help="decisions in the generated OPE log"
    )
    parser.add_argument(
        "--ope-actions", type=int, default=80, help="candidates per decision in the OPE log"
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=600.0,
        help="serving_shared: the fixed-rate soak over 2 replicas (0: none)",
    )
    parser.add_argument(
        "--serving-store-rows",
        type=int,
        default=1_000_000,
        help="serving_shared: customers' rows in the store (a small bank's view tiled)",
    )
    parser.add_argument(
        "--serving-duration",
        type=float,
        default=15.0,
        help="serving_shared: seconds of load per configuration and concurrency",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, choices=BENCHMARKS, help="run only these benchmarks"
    )
    args = parser.parse_args(argv)

    settings = Settings(sim={"seed": args.seed, "customers": args.customers, "days": args.days})
    out_dir = settings.resolve(args.out) if args.out else settings.resolve(settings.benchmarks_dir)
    data_root = settings.root / "benchmarks" / ".data"
    work = data_root / f"{args.customers}x{args.days}-seed{args.seed}"
    raw_dir, truth_dir = work / "raw", work / "truth"

    def wanted(name: str) -> bool:
        return args.only is None or name in args.only

    def bench_simulator() -> Report:
        from benchmarks import bench_simulator

        return bench_simulator.run(args.customers, args.days, work, seed=args.seed)

    def bench_customer_view() -> Report:
        from benchmarks import bench_customer_view

        bank = bank_params(work)
        start = datetime.fromisoformat(bank["start_date"])
        return bench_customer_view.run(raw_dir, start + timedelta(days=bank["days"]))

    def bench_detection() -> Report:
        from benchmarks import bench_detection

        events, source = simulated_events(raw_dir, args.detection_events)
        return bench_detection.run(events, source)

    def bench_bandit() -> Report:
        from benchmarks import bench_bandit

        return bench_bandit.run(raw_dir, truth_dir)

    def bench_models() -> Report:
        from benchmarks import bench_models

        return bench_models.run(raw_dir, truth_dir)

    def bench_serving() -> Report:
        from benchmarks import bench_serving

        return bench_serving.run(work / "serving")

    def bench_customer_store() -> Report:
        from benchmarks import bench_customer_store

        return bench_customer_store.run(work / "customer_store")

    def bench_serving_shared() -> Report:
        from benchmarks import bench_serving_shared

        return bench_serving_shared.run(
            work / "serving_shared",
            soak_s=args.soak_seconds,
            store_rows=args.serving_store_rows,
            duration_s=args.serving_duration,
        )

    def bench_uci_bank_marketing() -> Report:
        from benchmarks import bench_uci_bank_marketing

        return bench_uci_bank_marketing.run(
            args.bank_marketing or bench_uci_bank_marketing.find_csv(settings.root)
        )

    def bench_policies() -> Report:
        from benchmarks import bench_policies

        report_seed = args.seed if args.policies_report_seed is None else args.policies_report_seed
        tuning_seed = (
            report_seed + 1 if args.policies_tuning_seed is None else args.policies_tuning_seed
        )
        return bench_policies.run(
            data_root / "policies",
            args.policies_customers,
            args.policies_days,
            report_seed=report_seed,
            tuning_seed=tuning_seed,
            learning_rates=tuple(args.policies_learning_rates or bench_policies.LEARNING_RATES),
            epsilons=tuple(args.policies_epsilons or bench_policies.EPSILONS),
            diagnostics=args.policies_diagnostics,
        )

    def bench_ope() -> Report:
        from benchmarks import bench_ope

        return bench_ope.run(rows=args.ope_rows, actions=args.ope_actions, seed=args.seed)

    def bench_campaigns() -> Report:
        from benchmarks import bench_campaigns

        return bench_campaigns.run(data_root / "campaigns")

    def bench_retrain() -> Report:
        from benchmarks import bench_retrain

        return bench_retrain.run(
            data_root / f"retrain-{args.customers}x{args.days}-seed{args.seed}",
            args.customers,
            args.days,
            args.seed,
            notebooks=args.customers <= 5_000,  # notebooks: the demo bank's budget
        )

    def bench_spark_score_detect() -> Report:
        from benchmarks import bench_spark_score_detect as bench

        return bench.run(bench.parse_args([]))

    def bench_scale() -> Report:
        from benchmarks import bench_scale

        report = bench_scale.run(data_root, seed=args.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        bench_scale.plot(report.results, out_dir / "scale.png")
        return report

    steps: dict[str, Callable[[], Report]] = {
        "simulator": bench_simulator,
        "customer_view": bench_customer_view,
        "detection": bench_detection,
        "models": bench_models,
        "bandit": bench_bandit,
        "serving": bench_serving,
        "customer_store": bench_customer_store,
        "serving_shared": bench_serving_shared,
        "uci_bank_marketing": bench_uci_bank_marketing,
        "policies": bench_policies,
        "ope": bench_ope,
        "campaigns": bench_campaigns,
        "retrain": bench_retrain,
        "spark_score_detect": bench_spark_score_detect,
        "scale": bench_scale,
    }
    needs_bank = any(wanted(name) for name in NEEDS_BANK)
    if needs_bank and not (raw_dir / "clickstream.parquet").exists() and not wanted("simulator"):
        raise SystemExit(f"no simulated data under {raw_dir}: run the simulator benchmark first")
    for name in BENCHMARKS:
        if wanted(name):
            report, seconds, load = timed(steps[name])
            write_report(out_dir, name, report, seconds=seconds, load_at_start=load)


if __name__ == "__main__":
    main()
