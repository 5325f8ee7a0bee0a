"""Held-out evaluation of propensity scores against the oracle, and the plots saved with a run.

Scorers compared on the same test rows: ``model`` (calibrated LightGBM), ``lgbm_raw``
(before calibration), ``logreg`` (baseline), ``oracle`` (the simulator's true probability
for the label window, ``Oracle.true_signup_prob``) and ``need_frozen`` — the organic signup
probability from the true need on the day *before* as_of, frozen over the window. The last is
the best any model could do from perfect knowledge of the past: the gap oracle - need_frozen
is irreducible (needs moving inside the window, offers shown in it); need_frozen - model is
what better features or models could still win.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from src.features.feature_table import label_column
from src.models.metrics import binary_metrics, lift_by_decile

SCORERS = ("model", "lgbm_raw", "logreg", "oracle", "need_frozen")


def oracle_scores(truth_dir: Path | str, raw_dir: Path | str, rows: pd.DataFrame, products: Sequence[str],
                  window_days: int) -> dict[str, pd.DataFrame]:
    """``oracle`` and ``need_frozen`` probabilities for ``rows`` (customer_id, as_of), per product."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic.response import organic_signup_prob

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    cust = oracle.customer_idx(rows["customer_id"])
    day = ((pd.to_datetime(rows["as_of"]) - oracle.start).dt.days).to_numpy()
    prev = np.clip(day - 1, 0, oracle.days - 1)
    horizon = np.clip(np.minimum(day + window_days, oracle.days) - day, 0, None)
    true, frozen = {}, {}
    for p in products:
        true[p] = np.empty(len(rows))
        for d in np.unique(day):
            at = day == d
            true[p][at] = oracle.true_signup_prob(rows.loc[at, "customer_id"], p, rows.loc[at, "as_of"].iloc[0], window_days)
        need = np.asarray(oracle.needs[prev, cust, PRODUCTS.index(p)], dtype=float)
        frozen[p] = 1.0 - (1.0 - organic_signup_prob(need)) ** horizon
    return {"oracle": pd.DataFrame(true, index=rows.index), "need_frozen": pd.DataFrame(frozen, index=rows.index)}


def score_table(model, rows: pd.DataFrame, products: Sequence[str],
                reference: dict[str, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
    """Scorer -> (rows x products) probabilities."""
    scores = {"model": model.predict_proba(rows), "lgbm_raw": model.predict_proba(rows, "raw"),
              "logreg": model.predict_proba(rows, "baseline")}
    scores.update(reference or {})
    return {k: v[list(products)] for k, v in scores.items()}


def metrics_table(rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]) -> pd.DataFrame:
    """(product, scorer) x metric on the rows' labels."""
    records = {}
    for p in products:
        y = rows[label_column(p)].to_numpy(int)
        for scorer, frame in scores.items():
            records[(p, scorer)] = binary_metrics(y, frame[p].to_numpy())
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index = out.index.set_names(["product", "scorer"])
    return out


def gap_summary(metrics: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per product: model, baseline and oracle values of ``metric``, the gap to the oracle split
    into learnable (need_frozen - model) and irreducible (oracle - need_frozen)."""
    wide = metrics[metric].unstack("scorer")
    out = pd.DataFrame({c: wide[c] for c in ("model", "logreg", "oracle", "need_frozen") if c in wide})
    if "oracle" in out:
        out["gap_to_oracle"] = out["oracle"] - out["model"]
        out["baseline_gap"] = out["oracle"] - out["logreg"]
    if "need_frozen" in out:
        out["learnable_gap"] = out["need_frozen"] - out["model"]
        out["irreducible_gap"] = out["oracle"] - out["need_frozen"]
    return out


def lift_table(rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]) -> pd.DataFrame:
    """(product, scorer) x decile lift."""
    return pd.DataFrame({(p, s): lift_by_decile(rows[label_column(p)].to_numpy(int), f[p].to_numpy())
                         for p in products for s, f in scores.items()}).T.rename_axis(["product", "scorer"])


# --- plots -----------------------------------------------------------------------------------
PLOT_SCORERS = ("model", "logreg", "oracle", "need_frozen")


def _grid(n: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(3, n)
    rows_ = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.6 * rows_), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_roc(rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products):
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


def plot_calibration(rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str],
                     bins: int = 10) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products):
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
    for ax, p in zip(axes, products):
        for s in PLOT_SCORERS:
            if (p, s) in lifts.index:
                ax.plot(lifts.columns, lifts.loc[(p, s)].to_numpy(), marker="o", ms=3, lw=1, label=s)
        ax.axhline(1, color="k", ls=":", lw=0.8)
        ax.set(title=p, xlabel="score decile (1 = top)", ylabel="lift")
    axes[0].legend(fontsize=8)
    fig.suptitle("Lift by decile")
    fig.tight_layout()
    return fig


def plot_importance(model, products: Sequence[str], top: int = 15) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products):
        imp = model.products[p].feature_importance().head(top)[::-1]
        ax.barh(imp.index, imp.to_numpy() / max(imp.sum(), 1e-12))
        ax.tick_params(axis="y", labelsize=7)
        ax.set(title=p, xlabel="share of split gain (top features)")
    fig.suptitle("LightGBM feature importance (gain)")
    fig.tight_layout()
    return fig


def propensity_figures(model, rows: pd.DataFrame, scores: dict[str, pd.DataFrame],
                       products: Sequence[str]) -> dict[str, plt.Figure]:
    """The four plots saved with every run."""
    return {
        "roc": plot_roc(rows, scores, products),
        "calibration": plot_calibration(rows, scores, products),
        "lift": plot_lift(lift_table(rows, scores, products), products),
        "feature_importance": plot_importance(model, products),
    }
