"""Propensity models on a simulated bank: training time for all products, AUC gap to the oracle.

The gap (oracle AUC - model AUC on the test date) is split into an *irreducible* part, oracle -
need_frozen (the true need the day before as_of, frozen over the 30-day window: what moves
inside the window and the offers shown in it are invisible on as_of), and a *learnable* part,
need_frozen - model. need_frozen ignores scheduled pushes a model can see in the holdings (a
savings maturity next week), so the learnable part can be negative. The logistic baseline is
reported next to it. MLflow is off here: the figures, not the registry, are the result.

Run alone: ``python -m benchmarks.bench_models benchmarks/.data/20000x90``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from src.data.schemas import PRODUCTS


def run(raw_dir: Path, truth_dir: Path, embargo: bool = True) -> dict[str, Any]:
    """Feature table, training (all products) and the gap table; figures as plain numbers."""
    from src.features.feature_table import build_feature_table
    from src.models.train import plan_for, run_propensity_training
    from src.settings import Settings

    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    if truth_dir != raw_dir.parent / "truth":
        raise ValueError("expects <data>/raw and <data>/truth side by side")
    settings = Settings(data_dir=raw_dir.parent)
    plan = plan_for(raw_dir, None, embargo=embargo)
    started = time.perf_counter()
    table = build_feature_table(raw_dir, plan.dates, plan.window_days, PRODUCTS, progress=True)
    feature_s = time.perf_counter() - started
    result = run_propensity_training(settings, products=PRODUCTS, table=table, plan=plan, track=False,
                                     register=False, progress=True)
    gaps = result.gaps.reindex(list(PRODUCTS))
    return {
        "customers_rows_per_date": int(len(table) / len(plan.dates)),
        "plan": plan.as_dict(),
        "embargo": embargo,
        "feature_table_s": round(feature_s, 1),
        "train_all_products_s": round(result.timings["train_s"], 1),
        "best_iterations": {p: m.best_iteration for p, m in result.model.products.items()},
        "auc": gaps[["model", "logreg", "oracle", "need_frozen"]].round(4).to_dict(orient="index"),
        "gap_to_oracle_auc": gaps["gap_to_oracle"].round(4).to_dict(),
        "learnable_gap_auc": gaps["learnable_gap"].round(4).to_dict(),
        "irreducible_gap_auc": gaps["irreducible_gap"].round(4).to_dict(),
        "max_gap_to_oracle_auc": round(float(gaps["gap_to_oracle"].max()), 4),
        "products_under_0_02": int((gaps["gap_to_oracle"] < 0.02).sum()),
        "ece": result.metrics["ece"].unstack("scorer")[["model", "lgbm_raw", "logreg", "oracle"]]
        .reindex(list(PRODUCTS)).round(4).to_dict(orient="index"),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="directory with raw/ and truth/")
    parser.add_argument("--no-embargo", dest="embargo", action="store_false", help="show the leak")
    args = parser.parse_args()
    print(json.dumps(run(args.data / "raw", args.data / "truth", args.embargo), indent=2))
