"""The model card says what a reviewer needs and flags the limits the numbers show."""

from __future__ import annotations

import numpy as np
import pandas as pd

from src.models.model_card import (
    MIN_TEST_POSITIVES,
    cvr_card,
    markdown_table,
    propensity_card,
    version_description,
)


def _metrics() -> pd.DataFrame:
    rows = {}
    for product, (auc, rate) in {"loan": (0.77, 0.05), "card": (0.61, 0.005)}.items():
        for scorer, shift in (("model", 0.0), ("lgbm_raw", 0.0), ("logreg", -0.05)):
            rows[(product, scorer)] = {
                "auc": auc + shift,
                "pr_auc": 0.1,
                "log_loss": 0.12,
                "brier": 0.03,
                "ece": 0.01 if scorer == "model" else 0.03,
                "lift_top_decile": 2.0,
                "base_rate": rate,
                "n": 2000.0,
            }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = out.index.set_names(["product", "scorer"])
    return out


def test_propensity_card_has_every_section_and_the_data_driven_limits():
    card = propensity_card(
        model_name="nextoffer-propensity",
        version="3",
        run_id="abc123",
        as_of="2026-02-20",
        window={
            "train": ["2026-01-16"],
            "val": ["2026-01-23"],
            "test": ["2026-02-06"],
            "window_days": 14,
        },
        data_window=("2026-01-16", "2026-02-20"),
        train_rows=1651,
        train_digest="6ce8d9e822d47cf4",
        metrics=_metrics(),
        intervals={
            "loan.auc_ci_low": 0.70,
            "loan.auc_ci_high": 0.83,
            "mean_auc_ci_low": 0.66,
            "mean_auc_ci_high": 0.74,
        },
        calibration={"loan": "sigmoid", "card": "none (5 validation positives < 10)"},
        importances={
            "loan": pd.Series({"age": 3.0, "pv_loan_30d": 9.0}),
            "card": pd.Series({"age": 1.0, "pv_loan_30d": 0.0}),
        },
        promotion="mean_auc 0.69 vs champion v2 0.68: kept champion: gain below 0.002",
    )
    assert card.startswith("# Model card — nextoffer-propensity v3")
    for section in (
        "Intended use",
        "Data window",
        "Held-out metrics",
        "Calibration",
        "What drives the scores",
        "Promotion",
        "Known limits",
    ):
        assert f"## {section}" in card, section
    assert "0.7700 [0.7000, 0.8300]" in card  # the AUC with its interval
    assert "Mean AUC over products: 0.6900 [0.6600, 0.7400]" in card
    assert "1,651" in card and "6ce8d9e822d47cf4" in card and "2026-01-16 to 2026-02-20" in card
    # card: 0.005 x 2000 = 10 test positives < 30; and no calibration map
    assert f"Fewer than {MIN_TEST_POSITIVES} test positives for card" in card
    assert "No calibration map for card" in card
    assert "loan" not in card.split("Fewer than")[1].split("\n")[0]
    # importance: pv_loan_30d first (0.75 of loan's gain, 0 of card's: mean 0.375 < age's 0.625)
    imp = card.split("## What drives the scores")[1]
    assert imp.index("| age |") < imp.index("| pv_loan_30d |")
    assert "kept champion" in card


def test_cvr_card_and_description():
    metrics = pd.DataFrame(
        {
            "auc": [0.70, 0.95],
            "ece": [0.006, 0.001],
            "base_rate": [0.006, 0.006],
            "n": [682.0, 682.0],
        },
        index=["model", "offer_rate_in_sample"],
    )
    per_offer = pd.DataFrame(
        {"n": [35.0], "conversions": [1.0], "observed_rate": [0.03]},
        index=pd.Index(["OF01"], name="offer_id"),
    )
    card = cvr_card(
        model_name="nextoffer-cvr",
        version=None,
        run_id="r1",
        as_of="2026-02-20",
        weeks={
            "train": ["2026-01-08"],
            "val": ["2026-02-12"],
            "test": ["2026-02-19"],
            "end": ["x"],
        },
        rows={"train": 23052, "validation": 4741, "test": 682},
        train_digest="bd5f",
        metrics=metrics,
        intervals={"auc_ci_low": 0.54, "auc_ci_high": 0.96},
        per_offer=per_offer,
        importance=pd.Series({"offer=OF01": 2.0, "age": 1.0}),
    )
    assert "(not registered)" in card and "0.7000 [0.5400, 0.9600]" in card
    assert "| OF01 | 35 | 1 |" in card  # counts stay integers
    assert "conversions in the test week" in card  # 4 conversions: a wide interval
    text = version_description("CVR model.", "r1", {"AUC": "0.70"})
    assert "runs:/r1/model_card.md" in text and "- AUC: 0.70" in text


def test_markdown_table_formats_missing_values():
    table = markdown_table(pd.DataFrame({"x": [1.0, np.nan]}, index=pd.Index(["a", "b"], name="k")))
    assert table.splitlines()[0] == "| k | x |" and "| b | – |" in table
