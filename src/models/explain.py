"""Per-customer reasons for a score: SHAP values from LightGBM's ``pred_contrib``.

For one row, TreeSHAP splits the booster's raw score (log-odds) exactly into one contribution
per model-matrix column plus a bias (the average score): ``bias + sum(contributions) = raw
score``. LightGBM computes them itself (``pred_contrib=True``), so there is no extra dependency
and no sampling noise. The reasons are those of the *raw* booster: the calibration map on top
is monotone, so it never changes which features pushed a customer up or down, only how many
percentage points a log-odd is worth at that score.

:func:`explain_rows` gives, per customer and product, the top features by absolute
contribution with the customer's value of that feature — what an agent or a reviewer reads
("loan 4.1 %: page views of loans in 30 days = 6 (+0.9), age = 34 (+0.3), ...").
:func:`plot_reasons` draws one customer's reasons; :func:`plot_global` the mean |SHAP| per
feature over many customers (importance that, unlike split gain, is in log-odds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

BIAS = "(bias)"


def contributions(model: Any, rows: pd.DataFrame, product: str) -> pd.DataFrame:
    """(rows x matrix columns + ``(bias)``) SHAP values in log-odds of ``product``'s booster.

    ``model`` is a :class:`src.models.propensity.PropensityModel` (its ``matrix`` turns raw
    view rows into the booster's columns). Rows keep their index.
    """
    if product not in model.products:
        raise KeyError(f"product {product!r}: the model has {sorted(model.products)}")
    X = model.matrix(rows)
    values = model.products[product].booster.predict(X, pred_contrib=True)
    return pd.DataFrame(np.asarray(values), index=rows.index, columns=[*X.columns, BIAS])


def explain_rows(
    model: Any,
    rows: pd.DataFrame,
    products: Sequence[str] | None = None,
    top: int = 5,
    id_column: str = "customer_id",
) -> pd.DataFrame:
    """Long table: per row and product its score and ``top`` reasons, largest |SHAP| first.

    Columns: ``<id_column>`` (or the row index), ``product``, ``score`` (calibrated
    probability), ``rank``, ``feature``, ``value`` (the model-matrix value the booster saw; NaN
    = missing), ``contribution`` (log-odds), ``direction`` (``up``/``down``).
    """
    products = list(products or model.products)
    X = model.matrix(rows)
    scores = model.predict_proba(rows)
    ids = rows[id_column].to_numpy() if id_column in rows else rows.index.to_numpy()
    parts = []
    for p in products:
        contrib = contributions(model, rows, p).drop(columns=BIAS).to_numpy()
        order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
        n, k = order.shape
        row_idx = np.repeat(np.arange(n), k)
        col_idx = order.ravel()
        values = X.to_numpy(float)[row_idx, col_idx]
        c = contrib[row_idx, col_idx]
        parts.append(
            pd.DataFrame(
                {
                    id_column: ids[row_idx],
                    "product": p,
                    "score": scores[p].to_numpy()[row_idx],
                    "rank": np.tile(np.arange(1, k + 1), n),
                    "feature": np.asarray(X.columns)[col_idx],
                    "value": values,
                    "contribution": c,
                    "direction": np.where(c >= 0, "up", "down"),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def reasons_text(explanation: pd.DataFrame, digits: int = 3) -> list[str]:
    """One line per (row, product): ``product 4.1%: feature = value (+0.91), ...``."""
    lines = []
    id_col = explanation.columns[0]
    for (row_id, product), g in explanation.groupby([id_col, "product"], sort=False):
        reasons = ", ".join(
            f"{r.feature} = {_value(r.value)} ({r.contribution:+.{digits}f})"
            for r in g.itertuples()
        )
        lines.append(f"{row_id} {product} {g['score'].iloc[0]:.1%}: {reasons}")
    return lines


def _value(value: float) -> str:
    if np.isnan(value):
        return "missing"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def plot_reasons(explanation: pd.DataFrame, title: str | None = None):
    """Horizontal bars of one row's reasons for one product (log-odds, red up, blue down)."""
    import matplotlib.pyplot as plt

    g = explanation.sort_values("rank", ascending=False)
    labels = [f"{f} = {_value(v)}" for f, v in zip(g["feature"], g["value"], strict=True)]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(g) + 1.4))
    colors = ["tab:red" if c >= 0 else "tab:blue" for c in g["contribution"]]
    ax.barh(labels, g["contribution"], color=colors)
    ax.axvline(0, color="k", lw=0.8)
    ax.tick_params(axis="y", labelsize=8)
    first = explanation.iloc[0]
    ax.set(
        xlabel="contribution to the score (log-odds, SHAP)",
        ylabel="feature = this customer's value",
        title=title or f"Why {first.iloc[0]} scores {first['score']:.1%} for {first['product']}",
    )
    fig.tight_layout()
    return fig


def global_importance(model: Any, rows: pd.DataFrame, products: Sequence[str] | None = None):
    """(features x products) mean |SHAP| over ``rows``, sorted by the mean over products."""
    products = list(products or model.products)
    out = pd.DataFrame(
        {p: contributions(model, rows, p).drop(columns=BIAS).abs().mean() for p in products}
    )
    return out.loc[out.mean(axis=1).sort_values(ascending=False).index]


def plot_global(importance: pd.DataFrame, top: int = 15):
    """The ``top`` features by mean |SHAP|, one bar per product stacked."""
    import matplotlib.pyplot as plt

    head = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(head) + 1.6))
    left = np.zeros(len(head))
    for p in head.columns:
        ax.barh(head.index, head[p], left=left, label=p)
        left += head[p].to_numpy()
    ax.tick_params(axis="y", labelsize=8)
    ax.set(
        xlabel="mean |SHAP| (log-odds), summed over products",
        ylabel="feature",
        title="What moves the scores, customer by customer",
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
