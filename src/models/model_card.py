"""A model card per registered version: one Markdown page a reviewer reads instead of a run.

What a reviewer asks before trusting a version: what it predicts and for what use, which data
window it saw (dates, rows, the digest of the training rows), how good it is on held-out time
*with intervals* (a point AUC on a few hundred rows says little), whether its probabilities are
calibrated (and which products fell back to none), what drives it (split-gain importance), and
what it must not be used for. :func:`propensity_card` and :func:`cvr_card` render that from the
values a training run already has; the run logs the page as ``model_card.md`` and the
registered version's description points to it (:func:`version_description`).

Pure functions of plain values and frames: no MLflow, no files, so a test reads the text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

CARD_ARTIFACT = "model_card.md"

MIN_TEST_POSITIVES = 30
"""Fewer held-out positives than this: the AUC's interval is wide; the card says so."""

GENERIC_LIMITS: tuple[str, ...] = (
    "Scores rank customers by association with past behaviour; they are not causal effects of "
    "showing an offer (use the bandit's off-policy estimates for that).",
    "Quality is measured on one held-out period right after training; it decays as behaviour "
    "drifts. `nextoffer monitor --as-of DATE` compares the current customer view and scores "
    "with this training window (PSI) and exits non-zero past the alert threshold.",
    "Customers unlike the training population (new segments, products, channels) get "
    "extrapolated scores; the input schema is closed (unknown categories map to 'other').",
    "Not for credit decisions or any use with legal effect on a customer: it is a marketing "
    "relevance score.",
)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A frame as a GitHub Markdown table (no ``tabulate`` dependency); index as first column."""
    frame = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = [
        "| " + " | ".join(_fmt(v, digits) for v in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def _interval(value: float, low: float | None, high: float | None) -> str:
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"


def importance_table(importances: Mapping[str, pd.Series], top: int = 10) -> pd.DataFrame:
    """Top features by share of split gain, averaged over the given models (products)."""
    shares = pd.DataFrame(
        {k: v / v.sum() if v.sum() > 0 else v for k, v in importances.items()}
    ).fillna(0.0)
    mean = shares.mean(axis=1).sort_values(ascending=False).head(top)
    out = pd.DataFrame({"mean_gain_share": mean})
    for name in shares.columns if len(shares.columns) > 1 else []:
        out[name] = shares.loc[mean.index, name]
    return out.rename_axis("feature")


def _header(title: str, model_name: str, version: str | None, run_id: str | None) -> list[str]:
    ref = f"{model_name} v{version}" if version else f"{model_name} (not registered)"
    return [f"# Model card — {ref}", "", f"*{title}* · MLflow run `{run_id or '–'}`", ""]


def _section(title: str, *lines: str) -> list[str]:
    return [f"## {title}", "", *lines, ""]


def propensity_card(
    *,
    model_name: str,
    version: str | None,
    run_id: str | None,
    as_of: str,
    window: Mapping[str, Any],
    data_window: tuple[str, str],
    train_rows: int,
    train_digest: str,
    metrics: pd.DataFrame,
    intervals: Mapping[str, float],
    calibration: Mapping[str, str],
    importances: Mapping[str, pd.Series],
    promotion: str | None = None,
    code: Mapping[str, str] | None = None,
) -> str:
    """The propensity model's card. ``metrics``: (product, scorer) x metric on the test rows
    (as :func:`src.models.evaluate.metrics_table`); ``intervals``: the run's AUC CIs
    (``<product>.auc_ci_low/high``, ``mean_auc_ci_low/high``); ``calibration``: the method per
    product (a fallback says why); ``importances``: gain per matrix column per product."""
    products = list(calibration)
    model = (
        metrics.xs("model", level="scorer")
        if "model" in metrics.index.get_level_values(1)
        else metrics
    )
    rows = {}
    for p in products:
        m = model.loc[p]
        base = metrics.loc[(p, "logreg"), "auc"] if (p, "logreg") in metrics.index else float("nan")
        rows[p] = {
            "AUC [95% CI]": _interval(
                m["auc"], intervals.get(f"{p}.auc_ci_low"), intervals.get(f"{p}.auc_ci_high")
            ),
            "baseline AUC": _fmt(base),
            "PR-AUC": _fmt(m["pr_auc"]),
            "log loss": _fmt(m["log_loss"]),
            "ECE": _fmt(m["ece"]),
            "base rate": _fmt(m["base_rate"]),
            "test rows": _fmt(int(m["n"])),
            "test positives": _fmt(round(m["base_rate"] * m["n"])),
        }
    table = pd.DataFrame(rows).T.rename_axis("product")
    aucs = [model.loc[p, "auc"] for p in products if not math.isnan(model.loc[p, "auc"])]
    mean_auc = float(sum(aucs) / len(aucs)) if aucs else float("nan")

    cal_rows = {}
    for p in products:
        raw = metrics.loc[(p, "lgbm_raw"), "ece"] if (p, "lgbm_raw") in metrics.index else math.nan
        cal_rows[p] = {
            "method": calibration[p],
            "ECE before": _fmt(raw),
            "ECE after": _fmt(model.loc[p, "ece"]),
        }

    limits = list(GENERIC_LIMITS)
    few = [
        p for p in products if model.loc[p, "base_rate"] * model.loc[p, "n"] < MIN_TEST_POSITIVES
    ]
    if few:
        limits.insert(
            0,
            f"Fewer than {MIN_TEST_POSITIVES} test positives for {', '.join(few)}: their AUC "
            "intervals are wide; treat their rankings as rough.",
        )
    uncal = [p for p in products if calibration[p].startswith("none")]
    if uncal:
        limits.insert(
            0,
            f"No calibration map for {', '.join(uncal)} (too few validation rows of a class): "
            "their probabilities are the booster's own; rank with them, do not sum them.",
        )

    lines = _header("Propensity per product", model_name, version, run_id)
    lines += _section(
        "Intended use",
        f"P(customer signs up for the product within {window.get('window_days', '?')} days of "
        f"the scoring date), one calibrated probability per product ({', '.join(products)}), "
        "from the customer view as of that date. Used to rank offers per customer and "
        "customers per campaign.",
    )
    lines += _section(
        "Data window",
        f"- as_of (retraining date): {as_of}",
        f"- events used: {data_window[0]} to {data_window[1]}",
        *(
            f"- {k} dates: {', '.join(v) if isinstance(v, list) else v}"
            for k, v in window.items()
            if k in ("train", "val", "test")
        ),
        f"- training rows: {train_rows:,} (sha256 of the rows: `{train_digest}`)",
        *(f"- {k}: {v}" for k, v in (code or {}).items()),
    )
    lines += _section(
        "Held-out metrics (test date, 95% bootstrap intervals)",
        f"Mean AUC over products: {_interval(mean_auc, intervals.get('mean_auc_ci_low'), intervals.get('mean_auc_ci_high'))}",
        "",
        markdown_table(table),
    )
    lines += _section(
        "Calibration",
        "Platt/isotonic map fitted on the validation customers; ECE = expected calibration "
        "error on the test date (equal-count bins).",
        "",
        markdown_table(pd.DataFrame(cal_rows).T.rename_axis("product")),
    )
    lines += _section(
        "What drives the scores (share of LightGBM split gain)",
        markdown_table(importance_table(importances), digits=3),
        "",
        "Per-customer reasons: `src.models.explain.explain_rows` (SHAP values from LightGBM).",
    )
    if promotion:
        lines += _section("Promotion", promotion)
    lines += _section("Known limits", *(f"- {x}" for x in limits))
    return "\n".join(lines)


def cvr_card(
    *,
    model_name: str,
    version: str | None,
    run_id: str | None,
    as_of: str,
    weeks: Mapping[str, Sequence[str]],
    rows: Mapping[str, int],
    train_digest: str,
    metrics: pd.DataFrame,
    intervals: Mapping[str, float],
    per_offer: pd.DataFrame | None,
    importance: pd.Series,
    promotion: str | None = None,
    code: Mapping[str, str] | None = None,
) -> str:
    """The CVR model's card. ``metrics``: scorer x metric on the test exposures;
    ``intervals``: ``auc_ci_low/high``; ``rows``: exposures per split."""
    m = metrics.loc["model"]
    lines = _header("Conversion rate per offer", model_name, version, run_id)
    lines += _section(
        "Intended use",
        "P(convert | the offer is shown) for a customer (customer view as of the start of the "
        "week), an offer and a channel; ranks offers by expected value and feeds the segment "
        "ROAS report.",
    )
    lines += _section(
        "Data window",
        f"- as_of (retraining date): {as_of}",
        *(f"- {k} snapshots: {', '.join(v)}" for k, v in weeks.items() if k != "end"),
        *(f"- {k} exposures: {n:,}" for k, n in rows.items()),
        f"- sha256 of the training rows: `{train_digest}`",
        *(f"- {k}: {v}" for k, v in (code or {}).items()),
    )
    lines += _section(
        "Held-out metrics (last week's exposures, 95% bootstrap interval)",
        f"AUC: {_interval(m['auc'], intervals.get('auc_ci_low'), intervals.get('auc_ci_high'))}",
        "",
        markdown_table(metrics.rename_axis("scorer")),
    )
    lines += _section(
        "Calibration",
        "No calibration map: the booster's log-loss-fitted probability. Mean prediction vs "
        "observed rate per offer below (ECE overall: " + _fmt(m["ece"]) + ").",
        "",
        markdown_table(_per_offer(per_offer)) if per_offer is not None else "–",
    )
    lines += _section(
        "What drives the scores (share of LightGBM split gain)",
        markdown_table(importance_table({"cvr": importance}), digits=3),
    )
    if promotion:
        lines += _section("Promotion", promotion)
    limits = list(GENERIC_LIMITS)
    positives = m["base_rate"] * m["n"]
    if positives < MIN_TEST_POSITIVES:
        limits.insert(
            0,
            f"{positives:.0f} conversions in the test week: the AUC interval is wide.",
        )
    limits.insert(
        0,
        "Trained on exposures chosen by the logging policy; offers it rarely showed have "
        "few rows and noisier rates.",
    )
    lines += _section("Known limits", *(f"- {x}" for x in limits))
    return "\n".join(lines)


def _per_offer(per_offer: pd.DataFrame) -> pd.DataFrame:
    out = per_offer.astype(float)
    for c in ("n", "conversions"):
        if c in out:
            out[c] = out[c].astype(int)
    return out


def version_description(summary: str, run_id: str | None, headline: Mapping[str, str]) -> str:
    """The registered version's description: one line of what it is, the headline numbers and
    where the full card is."""
    parts = [summary, ""]
    parts += [f"- {k}: {v}" for k, v in headline.items()]
    if run_id:
        parts += ["", f"Model card: `runs:/{run_id}/{CARD_ARTIFACT}`"]
    return "\n".join(parts)
