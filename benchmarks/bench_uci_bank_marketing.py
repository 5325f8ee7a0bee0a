"""Real campaign outcomes: the propensity pipeline's held-out AUC on UCI Bank Marketing (the
paper's best is about 0.80), by 5-fold CV and on a time split. No simulated bank."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import NO_BANK, Report

if TYPE_CHECKING:
    from src.models.tabular import TableSpec

CSV = Path("shared") / "data" / "bank-marketing" / "bank-additional-full.csv"


def find_csv(root: Path) -> Path:
    """``shared/data/bank-marketing/bank-additional-full.csv`` in the first parent of ``root`` that
    has it (a worktree sits a level deeper than the main checkout); else where it would be."""
    for parent in Path(root).resolve().parents:
        if (parent / CSV).exists():
            return parent / CSV
    return Path(root).resolve().parent / CSV


def uci_bank_marketing_spec() -> TableSpec:
    """The UCI file's quirks, as options of the tabular pipeline (the same as ``nextoffer
    train-table FILE --target y --drop duration --missing-value pdays=999 --time-order rows
    --drift-cols emp.var.rate,cons.price.idx,cons.conf.idx,euribor3m,nr.employed``):
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


def run(path: Path, n_folds: int = 5, seed: int = 7) -> Report:
    from src.models.tabular import evaluate_table, file_sha256, prepare, read_table

    path = Path(path)
    if not path.exists():
        skipped = f"no file at {path}"
        return Report({"bank": NO_BANK, "file": str(path)}, {"skipped": skipped}, [skipped])
    spec = uci_bank_marketing_spec()
    frame = read_table(path)
    params: dict[str, Any] = {
        "bank": NO_BANK,
        "file": path.name,
        "sha256": file_sha256(path)[:16],
        "rows": len(frame),
        "n_folds": n_folds,
        "seed": seed,
        "options": spec.as_params(),
    }
    started = time.perf_counter()
    out = evaluate_table(prepare(frame, spec, str(path)), n_folds, seed=seed, final_model=False)

    def auc(table) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in table["auc"].items()}

    results = {
        "seconds": round(time.perf_counter() - started, 1),
        "cv_auc": auc(out.cv_mean),
        "time_split_auc": auc(out.time),
        "time_split_auc_by_features": {
            f"{f}/{s}": round(float(v), 4) for (f, s), v in out.time_by_features["auc"].items()
        },
        "time_split_positive_rate": {
            k: round(float(v), 4) for k, v in out.time_rates["positive_rate"].items()
        },
    }
    return Report(params, results, notes(results, params))


def notes(r: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    cv, t, by = r["cv_auc"], r["time_split_auc"], r["time_split_auc_by_features"]
    return [
        f"{params['n_folds']}-fold CV AUC {cv['lightgbm']:.3f} (logistic regression "
        f"{cv['logreg']:.3f}) on {params['rows']:,} contacts",
        f"time split: AUC {t['lightgbm']:.2f} with the macro columns, "
        f"{by['without_drift_cols/lightgbm']:.2f} without them; positive rate "
        + ", ".join(f"{k} {v:.1%}" for k, v in r["time_split_positive_rate"].items()),
    ]
