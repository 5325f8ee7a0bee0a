"""Propensity and CVR models on a simulated bank: training time, AUC gaps to the oracle and to the
Bayes-at-as_of ceiling, and the CVR model against the oracle's true conversion probabilities.

The bank. A 90-day bank leaves room for one training as_of after the embargo (and that date has
only a month of history, while the test date has two: the 90-day features mean different things
on both sides). So the benchmark simulates the same bank (customers, seed) over ``MODEL_DAYS``
days once and caches it next to the 90-day one: three training dates, every as_of with the full
90-day look-back. The simulator's parameters are untouched — only the period is longer.

The references on the test date (``src.evaluation.propensity``): ``oracle`` (true window probability),
``oracle_organic`` (without the offers shown in the window), ``bayes_as_of`` (Monte Carlo over
the simulator's dynamics from the full true state the day before as_of: the ceiling of any model
scoring on as_of), ``need_frozen`` and ``static_only``. gap_to_oracle = gap_to_ceiling +
drift_gap + offers_gap. ``auc_view_v1`` retrains on the 154 view columns the view had before
issue 4's additions (no long reads, no per-product signups, no derived rates) on the same rows:
the before/after of the feature work in one run. MLflow is off: the figures are the result.

Run alone: ``python -m benchmarks.bench_models benchmarks/.data/100000x90-seed7``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Report, bank_params, trusted_catalog
from src.data.schemas import PRODUCTS
from src.models.evaluate import GAP_SCORERS

MODEL_DAYS = 180
CEILING_PATHS = 32
CVR_WEEKS = 4


def long_bank(raw_dir: Path, days: int = MODEL_DAYS) -> tuple[Path, dict[str, Any]]:
    """The ``days``-long twin of the bank under ``raw_dir`` (same config but the period),
    simulated once and cached beside it; returns its data dir and what it cost."""
    from src.data.synthetic import SimConfig, simulate

    meta = json.loads((raw_dir.parent / "truth" / "meta.json").read_text())
    config = SimConfig(**{**meta["config"], "days": max(days, int(meta["days"]))})
    if config.days == int(meta["days"]):
        return raw_dir.parent, {"simulated_s": None}
    out = raw_dir.parent.parent / f"{config.customers}x{config.days}-seed{config.seed}"
    cached = out / "truth" / "meta.json"
    if cached.exists() and json.loads(cached.read_text())["config"] == config.model_dump(
        mode="json"
    ):
        return out, {"simulated_s": None}  # cached from an earlier run
    started = time.perf_counter()
    rows = simulate(config, out / "raw", out / "truth", progress=True)
    return out, {
        "simulated_s": round(time.perf_counter() - started, 1),
        "events": rows["clickstream"] + rows["transactions"],
    }


def _auc_table(gaps, cols: list[str]) -> dict[str, dict[str, float]]:
    return gaps[[c for c in cols if c in gaps]].round(4).to_dict(orient="index")


def _view_v1_auc(table, plan, config) -> dict[str, float]:
    """Held-out AUC of the same learner on the pre-issue-4 feature set (same rows)."""
    from sklearn.metrics import roc_auc_score

    from src.features.feature_table import label_column, model_matrix, view_feature_columns
    from src.models.propensity import fit_product, split_rows

    cols = [c for c in view_feature_columns() if not c.startswith(("long_views_", "signups_"))]
    parts = split_rows(table, plan, config.val_customer_share)
    X = {k: model_matrix(v, cols, derived=False) for k, v in parts.items()}
    out = {}
    for p in PRODUCTS:
        y = {k: v[label_column(p)].to_numpy(int) for k, v in parts.items()}
        m = fit_product(p, X["train"], y["train"], X["val"], y["val"], config)
        out[p] = round(float(roc_auc_score(y["test"], m.predict(X["test"]))), 4)
    return out


def run_cvr(settings, weeks: int = CVR_WEEKS) -> dict[str, Any]:
    """CVR per offer on the last ``weeks`` weekly snapshots vs the oracle, and how well the
    segment x offer ROAS ranking matches the oracle's."""
    from src.evaluation.cvr import oracle_comparison
    from src.models.train import run_cvr_training

    started = time.perf_counter()
    run = run_cvr_training(settings, track=False, progress=True, max_weeks=weeks)
    comparison = oracle_comparison(settings, run, figures=False)
    total = time.perf_counter() - started
    m, po = comparison.metrics, comparison.per_offer.astype(float)
    return {
        "weeks": run.weeks,
        "seconds": round(total, 1),
        "timings": {k: round(v, 1) for k, v in run.timings.items()},
        "best_iteration": run.model.best_iteration,
        "test_exposures": int(m.loc["model", "n"]),
        "auc": {
            s: round(float(m.loc[s, "auc"]), 4)
            for s in ("model", "oracle", "offer_rate_in_sample")
            if s in m.index
        },
        "log_loss": {
            s: round(float(m.loc[s, "log_loss"]), 5) for s in ("model", "oracle") if s in m.index
        },
        "ece": {s: round(float(m.loc[s, "ece"]), 5) for s in ("model", "oracle") if s in m.index},
        "per_offer": {
            "mean_abs_error_model_vs_oracle": round(
                float((po["model_mean"] - po["oracle_mean"]).abs().mean()), 5
            ),
            "mean_oracle_rate": round(float(po["oracle_mean"].mean()), 5),
            "corr_model_oracle_mean": round(
                float(np.corrcoef(po["model_mean"], po["oracle_mean"])[0, 1]), 4
            ),
            "median_auc_model": round(float(po["model_auc"].median()), 4),
            "median_auc_oracle": round(float(po["oracle_auc"].median()), 4),
        },
        "segment_ranking": {k: round(v, 4) for k, v in comparison.ranking.items()},
    }


def run(
    raw_dir: Path,
    truth_dir: Path,
    embargo: bool = True,
    days: int = MODEL_DAYS,
    ceiling_paths: int = CEILING_PATHS,
    cvr: bool = True,
    cvr_weeks: int = CVR_WEEKS,
) -> Report:
    """Feature table, training (all products), references, gaps, the v1 ablation and CVR."""
    from src.evaluation.propensity import oracle_gaps
    from src.features.feature_table import build_feature_table
    from src.models.propensity import PropensityConfig
    from src.models.train import plan_for, run_propensity_training
    from src.settings import Settings

    raw_dir, truth_dir = Path(raw_dir), Path(truth_dir)
    if truth_dir != raw_dir.parent / "truth":
        raise ValueError("expects <data>/raw and <data>/truth side by side")
    data_dir, simulation = long_bank(raw_dir, days)
    settings = Settings(data_dir=data_dir)
    catalog = trusted_catalog(data_dir)
    plan = plan_for(catalog, None, embargo=embargo)
    started = time.perf_counter()
    table = build_feature_table(catalog, plan.dates, plan.window_days, PRODUCTS, progress=True)
    feature_s = time.perf_counter() - started
    config = PropensityConfig()
    result = run_propensity_training(
        settings,
        products=PRODUCTS,
        config=config,
        table=table,
        plan=plan,
        track=False,
        register=False,
        progress=True,
    )
    comparison = oracle_gaps(settings, result, ceiling_paths=ceiling_paths, figures=False)
    gaps = comparison.gaps.reindex(list(PRODUCTS))
    started = time.perf_counter()
    v1 = _view_v1_auc(table, plan, config)
    v1_s = time.perf_counter() - started
    gap_cols = [
        c
        for c in (
            "gap_to_oracle",
            "gap_to_ceiling",
            "drift_gap",
            "offers_gap",
            "learnable_gap",
            "irreducible_gap",
        )
        if c in gaps
    ]
    params: dict[str, Any] = {
        "bank": bank_params(data_dir),
        "extended_from": bank_params(raw_dir.parent) if data_dir != raw_dir.parent else None,
        "products": list(PRODUCTS),
        "embargo": embargo,
        "ceiling_paths": ceiling_paths,
        "cvr_weeks": cvr_weeks if cvr else None,
        "propensity": config.model_dump(),
    }
    out: dict[str, Any] = {
        "long_bank": simulation,
        "customers_rows_per_date": int(len(table) / len(plan.dates)),
        "plan": plan.as_dict(),
        "n_features": {
            "raw": len(result.model.raw_columns),
            "matrix": len(result.model.matrix_columns),
        },
        "feature_table_s": round(feature_s, 1),
        "train_all_products_s": round(result.timings["train_s"], 1),
        "train_rows": int(table["as_of"].isin(plan.train).sum()),
        "ceiling_s": round(comparison.timings.get("ceiling_s", float("nan")), 1),
        "best_iterations": {p: m.best_iteration for p, m in result.model.products.items()},
        "auc": _auc_table(gaps, list(GAP_SCORERS)),
        "auc_view_v1": v1,
        "auc_gain_over_view_v1": {
            p: round(float(gaps.loc[p, "model"] - v1[p]), 4) for p in PRODUCTS
        },
        "view_v1_train_s": round(v1_s, 1),
        **{f"{c}_auc": gaps[c].round(4).to_dict() for c in gap_cols},
        "max_gap_to_oracle_auc": round(float(gaps["gap_to_oracle"].max()), 4),
        "products_under_0_02": int((gaps["gap_to_oracle"] < 0.02).sum()),
        "ece": comparison.metrics["ece"]
        .unstack("scorer")[["model", "lgbm_raw", "logreg", "oracle"]]
        .reindex(list(PRODUCTS))
        .round(4)
        .to_dict(orient="index"),
    }
    if "gap_to_ceiling" in gaps:
        out["max_gap_to_ceiling_auc"] = round(float(gaps["gap_to_ceiling"].max()), 4)
        out["products_gap_to_oracle_unreachable"] = [
            p for p in PRODUCTS if gaps.loc[p, "oracle"] - gaps.loc[p, "bayes_as_of"] >= 0.02
        ]
    if cvr:
        out["cvr"] = run_cvr(settings, cvr_weeks)
    return Report(params, out, notes(out))


def _span(values: dict[str, float], digits: int = 3) -> str:
    low, high = min(values.values()), max(values.values())
    return f"{low:.{digits}f}–{high:.{digits}f}"


def notes(r: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    model = {p: a["model"] for p, a in r["auc"].items()}
    logreg_gap = {p: a["model"] - a["logreg"] for p, a in r["auc"].items() if "logreg" in a}
    out = [
        f"held-out AUC {_span(model)} over {len(model)} products; gap to the oracle "
        f"{_span(r['gap_to_oracle_auc'])} ({r['products_under_0_02']} under 0.02)"
        + (
            f", to the Bayes-at-as_of ceiling {_span(r['gap_to_ceiling_auc'])}"
            if "gap_to_ceiling_auc" in r
            else ""
        ),
        f"feature table {r['feature_table_s']:.0f} s, training {r['train_all_products_s']:.0f} s "
        f"({r['train_rows']:,} rows x {len(model)} products)",
    ]
    if logreg_gap:
        out.append(f"LightGBM minus logistic regression: AUC {_span(logreg_gap)}")
    if "cvr" in r:
        c = r["cvr"]
        out.append(
            f"CVR on {c['test_exposures']:,} test exposures: AUC {c['auc']['model']:.3f} "
            f"(oracle {c['auc']['oracle']:.3f}), per-offer rate error "
            f"{c['per_offer']['mean_abs_error_model_vs_oracle']:.4f}, ROAS ranking Spearman "
            f"{c['segment_ranking']['spearman_roas']:.2f}"
        )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path, help="directory with raw/ and truth/")
    parser.add_argument("--no-embargo", dest="embargo", action="store_false", help="show the leak")
    parser.add_argument(
        "--days", type=int, default=MODEL_DAYS, help="simulate the bank this long (cached)"
    )
    parser.add_argument("--ceiling-paths", type=int, default=CEILING_PATHS)
    parser.add_argument("--no-cvr", dest="cvr", action="store_false")
    parser.add_argument("--cvr-weeks", type=int, default=CVR_WEEKS)
    args = parser.parse_args()
    report = run(
        args.data / "raw",
        args.data / "truth",
        args.embargo,
        args.days,
        args.ceiling_paths,
        args.cvr,
        args.cvr_weeks,
    )
    print(json.dumps(asdict(report), indent=2, default=str))
