"""A CVR run next to the simulator's truth: true conversion probabilities of the same exposures.

``oracle`` in the metrics and per-offer tables is the oracle's P(click) x P(convert | click) of
each test exposure (fatigue as logged); the segment report gets ``oracle_conversions`` and
``oracle_roas`` from the true P(convert | shown in the app) of every customer x offer on the
report's date, and :func:`ranking_quality` says how well the model's ROAS ranking matches.
Training (:func:`src.models.train.run_cvr_training`) never reads the truth; this module adds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.models import cvr
from src.models.train import CvrRun, plot_roas
from src.settings import Settings


def oracle_convert(truth_dir: Path | str, raw_dir: Path | str, rows: pd.DataFrame) -> np.ndarray:
    """True P(click) x P(convert | click) of each logged exposure (fatigue as logged)."""
    from src.data.synthetic import Oracle

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    return oracle.expected(
        rows["customer_id"], rows["offer_id"], rows["ts"], rows["channel"], metric="convert"
    )


def oracle_conversion_matrix(
    truth_dir: Path | str,
    raw_dir: Path | str,
    customer_ids: pd.Series,
    offer_ids: Sequence[str],
    at: pd.Timestamp,
) -> pd.DataFrame:
    """(customers x offers) true P(convert | shown in the app) at time ``at`` (no fatigue)."""
    from src.data.synthetic import Oracle
    from src.data.synthetic.oracle import ExposureHistory

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    out = {}
    for o in offer_ids:
        out[o] = oracle.expected(
            customer_ids.to_numpy(), o, at, "app", metric="convert", history=ExposureHistory.empty()
        )
    return pd.DataFrame(out, index=customer_ids.index)


def ranking_quality(report: pd.DataFrame, top: int = 10) -> dict[str, float]:
    """How well the model's segment x offer ROAS ranking matches the oracle's (report rows with
    ``oracle_roas``): Spearman correlation, overlap of the top ``top`` cells, and the oracle ROAS
    of the model's top cells over the oracle's own top cells (1 = nothing lost)."""
    from scipy.stats import spearmanr

    r = report.dropna(subset=["roas", "oracle_roas"])
    model_top = r.nlargest(top, "roas")
    oracle_top = r.nlargest(top, "oracle_roas")
    overlap = len(
        set(zip(model_top["segment"], model_top["offer_id"], strict=False))
        & set(zip(oracle_top["segment"], oracle_top["offer_id"], strict=False))
    )
    return {
        "spearman_roas": float(spearmanr(r["roas"], r["oracle_roas"]).statistic),
        f"top{top}_overlap": overlap / top,
        f"top{top}_oracle_roas_captured": float(
            model_top["oracle_roas"].mean() / oracle_top["oracle_roas"].mean()
        ),
        "conversions_ratio_model_to_oracle": float(
            r["expected_conversions"].sum() / r["oracle_conversions"].sum()
        ),
        "cells": float(len(r)),
    }


@dataclass
class CvrComparison:
    """The run's tables with the oracle added (``oracle`` rows and columns) and the ranking."""

    metrics: pd.DataFrame
    per_offer: pd.DataFrame
    report: pd.DataFrame
    summary: pd.DataFrame
    ranking: dict[str, float]
    figures: dict[str, Any] = field(default_factory=dict)


def oracle_comparison(settings: Settings, run: CvrRun, figures: bool = True) -> CvrComparison:
    """Score the run's test exposures and segment report with the oracle next to the model."""
    if run.test_rows is None or run.view is None or run.offers is None or run.snapshot is None:
        raise ValueError("the CVR run carries no test rows / view / offers to compare")
    model: Any = run.model
    test = run.test_rows
    oracle_p = oracle_convert(settings.truth_dir, settings.raw_dir, test)
    metrics = cvr.evaluate_cvr(model, test, oracle_p)
    per_offer = cvr.per_offer_table(test, model.predict(test), oracle_p)
    matrix = oracle_conversion_matrix(
        settings.truth_dir,
        settings.raw_dir,
        run.view["customer_id"],
        run.offers["offer_id"].tolist(),
        run.snapshot + pd.Timedelta(hours=12),
    )
    report = cvr.segment_report(run.view, run.offers, model, matrix)
    summary = cvr.segment_product_summary(report)
    plots = {
        "segment_roas": plot_roas(summary),  # with the oracle's ROAS marked
        "segment_conversions_vs_oracle": plot_vs_oracle(report),
    }
    return CvrComparison(
        metrics, per_offer, report, summary, ranking_quality(report), plots if figures else {}
    )


def plot_vs_oracle(report: pd.DataFrame):
    """Expected conversions per segment x offer: the model's against the oracle's."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(report["oracle_conversions"], report["expected_conversions"], s=8, alpha=0.6)
    top = float(max(report["oracle_conversions"].max(), report["expected_conversions"].max()))
    ax.plot([0, top], [0, top], "k:", lw=0.8)
    ax.set(
        xlabel="oracle expected conversions",
        ylabel="model expected conversions",
        title="Segment x offer: model vs oracle",
    )
    fig.tight_layout()
    return fig
