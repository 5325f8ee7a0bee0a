"""Real campaign outcomes: the propensity pipeline's held-out AUC on UCI Bank Marketing (the
paper's best is about 0.80), by 5-fold CV and on a time split. No simulated bank."""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path
from typing import Any

from benchmarks.common import NO_BANK, Report

CSV = Path("shared") / "data" / "bank-marketing" / "bank-additional-full.csv"


def find_csv(root: Path) -> Path:
    """``shared/data/bank-marketing/bank-additional-full.csv`` in the first parent of ``root`` that
    has it (a worktree sits a level deeper than the main checkout); else where it would be."""
    for parent in Path(root).resolve().parents:
        if (parent / CSV).exists():
            return parent / CSV
    return Path(root).resolve().parent / CSV


def run(path: Path) -> Report:
    from src.models.bank_marketing import evaluate_bank_marketing, load_bank_marketing

    path = Path(path)
    if not path.exists():
        skipped = f"no file at {path}"
        return Report({"bank": NO_BANK, "file": str(path)}, {"skipped": skipped}, [skipped])
    # the arguments the call below binds (evaluate_bank_marketing's own defaults)
    bound = inspect.signature(evaluate_bank_marketing).bind(path)
    bound.apply_defaults()
    used = {k: v for k, v in bound.arguments.items() if k != "path"}
    params: dict[str, Any] = {
        "bank": NO_BANK,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16],
        "rows": len(load_bank_marketing(path)),
        **used,
        "config": used["config"] or "evaluate_bank_marketing's default",
    }
    started = time.perf_counter()
    out = evaluate_bank_marketing(path)

    def auc(frame) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in frame["auc"].items()}

    results = {
        "seconds": round(time.perf_counter() - started, 1),
        "cv_auc": auc(out["cv_mean"]),
        "time_split_auc": auc(out["time"]),
        "time_split_auc_by_features": {
            f"{f}/{s}": round(float(v), 4) for (f, s), v in out["time_by_features"]["auc"].items()
        },
        "time_split_positive_rate": {
            k: round(float(v), 4) for k, v in out["time_rates"]["positive_rate"].items()
        },
    }
    return Report(params, results, notes(results, params))


def notes(r: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    cv, t, by = r["cv_auc"], r["time_split_auc"], r["time_split_auc_by_features"]
    return [
        f"{params['n_folds']}-fold CV AUC {cv['model']:.3f} (logistic regression "
        f"{cv['logreg']:.3f}) on {params['rows']:,} contacts",
        f"time split: AUC {t['model']:.2f} with the macro columns, "
        f"{by['without_macro/model']:.2f} without them; positive rate "
        + ", ".join(f"{k} {v:.1%}" for k, v in r["time_split_positive_rate"].items()),
    ]
