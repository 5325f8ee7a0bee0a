"""Binary-classification metrics that read the same for a model, a baseline and the oracle.

Every function takes labels and probabilities and tolerates a degenerate sample (a single
class in a small test window): rank metrics are NaN there instead of raising, so a
notebook on the tiny test bank still runs end to end.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

EPS = 1e-6


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean prediction| over equal-count bins, weighted by bin size.

    Equal-count (not equal-width) bins: signup rates are a few percent, so equal-width bins
    would put almost every row in the first one.
    """
    y, p = np.asarray(y, float), np.asarray(p, float)
    if len(y) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    err = 0.0
    for chunk in np.array_split(order, min(bins, len(y))):
        err += len(chunk) * abs(y[chunk].mean() - p[chunk].mean())
    return float(err / len(y))


def lift_by_decile(y: np.ndarray, p: np.ndarray, n: int = 10) -> pd.Series:
    """Positive rate of each score decile (1 = highest scores) over the overall rate."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    base = y.mean() if len(y) else np.nan
    order = np.argsort(-p, kind="stable")
    rates = [y[c].mean() if len(c) else np.nan for c in np.array_split(order, n)]
    return pd.Series(
        np.asarray(rates) / base if base else np.nan, index=pd.RangeIndex(1, n + 1, name="decile")
    )


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, log loss, Brier, ECE, top-decile lift and the base rate."""
    y, p = np.asarray(y, float), np.clip(np.asarray(p, float), EPS, 1 - EPS)
    both = 0 < y.sum() < len(y)
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])) if len(y) else float("nan"),
        "brier": float(brier_score_loss(y, p)) if len(y) else float("nan"),
        "ece": expected_calibration_error(y, p),
        "lift_top_decile": float(lift_by_decile(y, p).iloc[0]) if both else float("nan"),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "n": float(len(y)),
    }
