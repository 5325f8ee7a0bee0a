"""Bandit vs A/B-then-fix on simulated banks: hyper-parameters tuned on one bank, reported on another.

Notebook 20's comparison (:func:`src.evaluation.policies.run_comparison`): the bandit is trained
offline on the bank's logged decisions of the first ``train_days``, then random, A/B-then-fix,
the bandit (learning online) and the oracle serve the same request stream for the rest of the
period; figures are on expected reward (the true click probability of each choice).

1. **Tuning bank** (simulation seed ``tuning_seed``): the bandit alone, once per point of a grid
   over VW's learning rate and the exploration epsilon; the oracle once, for the share. The
   point with the most expected reward is chosen.
2. **Report bank** (seed ``report_seed``, same size, different customers and needs): every
   policy once with the chosen hyper-parameters (and, with ``diagnostics``, notebook 20's
   measuring sticks: the bandit without online learning, a greedy policy on the true need and a
   bandit given the true affinity x need). These are the figures to quote; the tuning bank's
   are optimistic by construction.

Cost: a comparison is dominated by the policies' simulation loops, per decision: formatting VW
examples, the environment's true probabilities of every candidate, VW's predict and learn (the
bandit's loop is the slowest, about four times the oracle's); building the views and offline
training take seconds. A grid point is one bandit-only run; ``results.tuning.grid[].seconds``
and ``results.report.seconds`` say what each took.

Run alone: ``python -m benchmarks.run --only policies`` (sizes: ``--policies-customers``,
``--policies-days``; grid: ``--policies-learning-rates``, ``--policies-epsilons``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Report, bank_params
from src.data.catalog import Catalog
from src.evaluation.policies import (
    DIAGNOSTIC_POLICIES,
    ComparisonConfig,
    gap_report,
    run_comparison,
)

LEARNING_RATES = (0.5, 1.0, 2.0, 4.0)
EPSILONS = (0.01, 0.02, 0.05)
POLICIES = ("random", "ab_then_fix", "bandit", "oracle")


def ensure_bank(work_dir: Path, customers: int, days: int, seed: int) -> Path:
    """A simulated bank under ``work_dir`` (cached while its config is unchanged); its data dir."""
    from src.data.loaders import validate_raw
    from src.data.synthetic import SimConfig, simulate

    config = SimConfig(customers=customers, days=days, seed=seed)
    data = Path(work_dir) / f"{customers}x{days}-seed{seed}"
    meta = data / "truth" / "meta.json"
    if not (
        meta.exists() and json.loads(meta.read_text())["config"] == config.model_dump(mode="json")
    ):
        simulate(config, data / "raw", data / "truth", progress=False)
        validate_raw(Catalog(data))  # small enough to go through the contract as production does
    elif not Catalog(data).validated_dir.exists():
        validate_raw(Catalog(data))
    return data


def _compare(data: Path, config: ComparisonConfig, progress: bool = False):
    started = time.perf_counter()
    result = run_comparison(Catalog(data), data / "truth", config, progress=progress)
    return result, time.perf_counter() - started


def tune(
    data: Path,
    base: ComparisonConfig,
    learning_rates: tuple[float, ...],
    epsilons: tuple[float, ...],
    progress: bool = True,
) -> dict[str, Any]:
    """The bandit alone at every (learning rate, epsilon); the oracle once for the share."""
    from tqdm.auto import tqdm

    oracle, oracle_s = _compare(data, base.model_copy(update={"policies": ("oracle",)}))
    oracle_total = float(oracle.steps["expected"].sum())
    grid = [(lr, eps) for lr in learning_rates for eps in epsilons]
    rows = []
    bar = tqdm(grid, desc="policies: tuning grid", disable=not progress)
    for lr, eps in bar:
        bandit = base.bandit.model_copy(update={"learning_rate": lr, "epsilon": eps})
        config = base.model_copy(update={"bandit": bandit, "policies": ("bandit",)})
        result, seconds = _compare(data, config)
        steps = result.steps
        rows.append(
            {
                "learning_rate": lr,
                "epsilon": eps,
                "decisions": len(steps),
                "expected_reward": round(float(steps["expected"].sum()), 2),
                "pct_of_oracle": round(100 * float(steps["expected"].sum()) / oracle_total, 2),
                "greedy_pct_of_oracle": round(
                    100 * float(steps["expected_greedy"].sum()) / oracle_total, 2
                ),
                "seconds": round(seconds, 1),
            }
        )
        best = max(rows, key=lambda r: r["expected_reward"])
        bar.set_postfix(
            last=f"{rows[-1]['pct_of_oracle']:.1f}%",
            best=f"lr {best['learning_rate']:g} eps {best['epsilon']:g}",
        )
    best = max(rows, key=lambda r: r["expected_reward"])
    return {
        "oracle_expected_reward": round(oracle_total, 2),
        "oracle_seconds": round(oracle_s, 1),
        "grid": rows,
        "chosen": {"learning_rate": best["learning_rate"], "epsilon": best["epsilon"]},
        "chosen_pct_of_oracle": best["pct_of_oracle"],
        "seconds": round(oracle_s + sum(r["seconds"] for r in rows), 1),
    }


def run(
    work_dir: Path,
    customers: int,
    days: int,
    report_seed: int,
    tuning_seed: int,
    learning_rates: tuple[float, ...] = LEARNING_RATES,
    epsilons: tuple[float, ...] = EPSILONS,
    comparison: ComparisonConfig | None = None,
    diagnostics: bool = True,
    progress: bool = True,
) -> Report:
    """Tune on the ``tuning_seed`` bank, report on the ``report_seed`` bank (same size)."""
    if report_seed == tuning_seed:
        raise ValueError("the report bank must not be the tuning bank: give two different seeds")
    base = comparison or ComparisonConfig()
    work_dir = Path(work_dir)
    tuning_bank = ensure_bank(work_dir, customers, days, tuning_seed)
    report_bank = ensure_bank(work_dir, customers, days, report_seed)

    tuning = tune(tuning_bank, base, tuple(learning_rates), tuple(epsilons), progress)
    best = tuning.pop("chosen")
    chosen = base.bandit.model_copy(update=best)
    policies = POLICIES + (DIAGNOSTIC_POLICIES if diagnostics else ())
    config = base.model_copy(update={"bandit": chosen, "policies": policies})
    result, seconds = _compare(report_bank, config, progress=progress)

    summary, gaps = result.summary, gap_report(result.steps)["overall"]
    per_policy = {
        name: {
            "decisions": int(row["decisions"]),
            "expected_reward": round(float(row["expected_reward"]), 2),
            "realized_reward": round(float(row["reward"]), 2),
            "pct_of_oracle": round(float(row["pct_of_oracle"]), 2),
            "lift_vs_ab_pct": round(float(row["lift_vs_ab_pct"]), 2),
            "greedy_pct_of_oracle": round(float(gaps.loc[name, "greedy_pct"]), 2),
            "exploration_cost_pts": round(float(gaps.loc[name, "exploration_cost_pts"]), 2),
        }
        for name, row in summary.iterrows()
    }
    bank = bank_params(report_bank)
    params = {
        "customers": bank["customers"],
        "days": bank["days"],
        "tuning_bank": bank_params(tuning_bank),
        "report_bank": bank,
        "train_days": config.train_days,
        "run_days": config.sim_days or bank["days"] - config.train_days,
        "ab_test_days": config.ab_test_days,
        "request_stream_seed": config.seed,
        "reward": config.bandit.reward,
        "grid": {"learning_rate": list(learning_rates), "epsilon": list(epsilons)},
        "selection": "the grid point with the most expected reward on the tuning bank",
        "comparison": config.model_dump(mode="json"),
    }
    results = {
        "chosen": best,
        "tuning": tuning,
        "report": {
            "policies": per_policy,
            "bandit_pct_of_oracle": per_policy["bandit"]["pct_of_oracle"],
            "bandit_lift_vs_ab_pct": per_policy["bandit"]["lift_vs_ab_pct"],
            "ab_decisions": [
                {k: row[k] for k in ("slot", "winner", "significant", "decision")}
                for row in result.ab.to_dict(orient="records")
            ],
            "seconds": round(seconds, 1),
        },
    }
    return Report(params, results, notes(results, params))


def notes(r: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    tuning, report = r["tuning"], r["report"]
    pol = report["policies"]
    grid_pct = [g["pct_of_oracle"] for g in tuning["grid"]]
    what = "clicks" if params["reward"] == "click" else params["reward"]
    out = [
        f"tuned on bank seed {params['tuning_bank']['seed']}: learning rate "
        f"{r['chosen']['learning_rate']:g}, epsilon {r['chosen']['epsilon']:g}, best of "
        f"{len(grid_pct)} grid points ({tuning['chosen_pct_of_oracle']:.1f} % of the oracle "
        f"there; the grid spans {min(grid_pct):.1f}–{max(grid_pct):.1f} %)",
        f"reported on bank seed {params['report_bank']['seed']} ({params['customers']:,} "
        f"customers, {params['run_days']} days after a {params['train_days']}-day log, "
        f"{pol['bandit']['decisions']:,} decisions per policy): the bandit earns "
        f"{pol['bandit']['pct_of_oracle']:.1f} % of the oracle's expected {what} (random "
        f"{pol['random']['pct_of_oracle']:.1f} %, A/B-then-fix "
        f"{pol['ab_then_fix']['pct_of_oracle']:.1f} %): "
        f"{pol['bandit']['lift_vs_ab_pct']:+.1f} % over A/B-then-fix",
    ]
    if {"bandit_frozen", "greedy_true_need", "bandit_true_need"} <= set(pol):
        b = pol["bandit"]
        out.append(
            f"greedy on the true need {pol['greedy_true_need']['pct_of_oracle']:.1f} %, the "
            f"bandit given the true affinity x need {pol['bandit_true_need']['pct_of_oracle']:.1f}"
            f" %; exploration costs the bandit {b['exploration_cost_pts']:.1f} points, online "
            f"learning is worth {b['pct_of_oracle'] - pol['bandit_frozen']['pct_of_oracle']:.1f}"
            f" ({pol['bandit_frozen']['pct_of_oracle']:.1f} % frozen after offline training)"
        )
    return out
