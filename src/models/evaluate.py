"""Held-out metrics of propensity scores, side by side, and the plots saved with a run.

Scorers compared on the same test rows: ``model`` (calibrated LightGBM), ``lgbm_raw``
(before calibration) and ``logreg`` (baseline). Nothing here reads the truth: references from
the simulator (``oracle``, ``oracle_organic``, ``bayes_as_of``, ``need_frozen``,
``static_only``) come from :mod:`src.evaluation.propensity` and go through the same tables,
gaps and plots when they are passed in as ``reference`` scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from src.features.feature_table import label_column
from src.models.metrics import binary_metrics, lift_by_decile

SCORERS = ("model", "lgbm_raw", "logreg", "oracle", "oracle_organic", "bayes_as_of", "need_frozen")


def score_table(
    model,
    rows: pd.DataFrame,
    products: Sequence[str],
    reference: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Scorer -> (rows x products) probabilities."""
    scores = {
        "model": model.predict_proba(rows),
        "lgbm_raw": model.predict_proba(rows, "raw"),
        "logreg": model.predict_proba(rows, "baseline"),
    }
    scores.update(reference or {})
    return {k: v[list(products)] for k, v in scores.items()}


def metrics_table(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> pd.DataFrame:
    """(product, scorer) x metric on the rows' labels."""
    records = {}
    for p in products:
        y = rows[label_column(p)].to_numpy(int)
        for scorer, frame in scores.items():
            records[(p, scorer)] = binary_metrics(y, frame[p].to_numpy())
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index = out.index.set_names(["product", "scorer"])
    return out


GAP_SCORERS: tuple[str, ...] = (
    "model",
    "logreg",
    "oracle",
    "oracle_organic",
    "bayes_as_of",
    "need_frozen",
    "static_only",
)
"""The model, its baseline and the references (present on a simulated bank), in report order."""


def gap_summary(metrics: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per product: model, baseline and reference values of ``metric`` and the gaps.

    ``gap_to_oracle`` = oracle - model. With ``bayes_as_of`` it splits exactly into
    ``gap_to_ceiling`` (bayes_as_of - model: what better features or models could still win),
    ``drift_gap`` (oracle_organic - bayes_as_of: the need moving inside the window) and
    ``offers_gap`` (oracle - oracle_organic: offers shown inside the window). The older split
    by ``need_frozen`` (learnable / irreducible) is kept for comparison with earlier runs.
    """
    wide = metrics[metric].unstack("scorer")
    out = pd.DataFrame({c: wide[c] for c in GAP_SCORERS if c in wide})
    if "oracle" in out:
        out["gap_to_oracle"] = out["oracle"] - out["model"]
        out["baseline_gap"] = out["oracle"] - out["logreg"]
    if "bayes_as_of" in out:
        out["gap_to_ceiling"] = out["bayes_as_of"] - out["model"]
        if "oracle_organic" in out:
            out["drift_gap"] = out["oracle_organic"] - out["bayes_as_of"]
            out["offers_gap"] = out["oracle"] - out["oracle_organic"]
    if "need_frozen" in out:
        out["learnable_gap"] = out["need_frozen"] - out["model"]
        out["irreducible_gap"] = out["oracle"] - out["need_frozen"]
    return out


def lift_table(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> pd.DataFrame:
    """(product, scorer) x decile lift."""
    return pd.DataFrame(
        {
            (p, s): lift_by_decile(rows[label_column(p)].to_numpy(int), f[p].to_numpy())
            for p in products
            for s, f in scores.items()
        }
    ).T.rename_axis(["product", "scorer"])


# --- plots -----------------------------------------------------------------------------------
PLOT_SCORERS = ("model", "logreg", "oracle", "need_frozen")


def _grid(n: int) -> tuple[plt.Figure, np.flatiter[np.ndarray]]:
    """A figure with at least ``n`` panels and its axes in reading order (unused ones hidden)."""
    cols = min(3, n)
    rows_ = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.6 * rows_), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_roc(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        y = rows[label_column(p)].to_numpy(int)
        if 0 < y.sum() < len(y):
            for s in PLOT_SCORERS:
                if s in scores:
                    fpr, tpr, _ = roc_curve(y, scores[s][p])
                    ax.plot(fpr, tpr, label=s, lw=1.2)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=p, xlabel="false positive rate", ylabel="true positive rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("ROC on the test date")
    fig.tight_layout()
    return fig


def plot_calibration(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str], bins: int = 10
) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        y = rows[label_column(p)].to_numpy(float)
        top = 0.0
        for s in ("model", "lgbm_raw", "logreg", "oracle"):
            if s not in scores:
                continue
            pr = scores[s][p].to_numpy()
            order = np.argsort(pr)
            chunks = [c for c in np.array_split(order, bins) if len(c)]
            xs, ys = [pr[c].mean() for c in chunks], [y[c].mean() for c in chunks]
            ax.plot(xs, ys, marker="o", ms=3, lw=1, label=s)
            top = max(top, max(xs + ys))
        ax.plot([0, top], [0, top], "k:", lw=0.8)
        ax.set(title=p, xlabel="mean predicted", ylabel="observed rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("Calibration (equal-count bins)")
    fig.tight_layout()
    return fig


def plot_lift(lifts: pd.DataFrame, products: Sequence[str]) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        for s in PLOT_SCORERS:
            if (p, s) in lifts.index:
                ax.plot(
                    lifts.columns, lifts.loc[(p, s)].to_numpy(), marker="o", ms=3, lw=1, label=s
                )
        ax.axhline(1, color="k", ls=":", lw=0.8)
        ax.set(title=p, xlabel="score decile (1 = top)", ylabel="lift")
    axes[0].legend(fontsize=8)
    fig.suptitle("Lift by decile")
    fig.tight_layout()
    return fig


def plot_importance(model, products: Sequence[str], top: int = 15) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        imp = model.products[p].feature_importance().head(top)[::-1]
        ax.barh(imp.index, imp.to_numpy() / max(imp.sum(), 1e-12))
        ax.tick_params(axis="y", labelsize=7)
        ax.set(title=p, xlabel="share of split gain (top features)")
    fig.suptitle("LightGBM feature importance (gain)")
    fig.tight_layout()
    return fig


def propensity_figures(
    model, rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> dict[str, plt.Figure]:
    """The four plots saved with every run."""
    return {
        "roc": plot_roc(rows, scores, products),
        "calibration": plot_calibration(rows, scores, products),
        "lift": plot_lift(lift_table(rows, scores, products), products),
        "feature_importance": plot_importance(model, products),
    }
