"""Conversion rate per offer from the exposure log, and the segment ROAS report.

Each logged exposure is a row: the customer view as of the start of its week (a snapshot
strictly before the exposure, so point-in-time), the offer, slot and channel; label
``convert`` (clicked and converted). One LightGBM classifier over all offers (offer id as a
one-hot feature) is early-stopped on a later week and tested on the last one. On a simulated
bank :mod:`src.evaluation.cvr` sets it next to the oracle's true P(click) x P(convert | click)
of the same exposures (the optional ``oracle_p`` arguments here take those references).

The logging policy mixes a uniform choice with a fixed prior that does not look at the
customer, so plain exposure rows are an unbiased sample for every offer; ``logged_prob`` is
kept for the bandit's off-policy work.

The segment report scores every customer x offer on a date: per segment (life stage x income
band) and offer, expected conversions if every customer of the segment saw it once, value
(``value_krw`` x conversions), cost (``cost_krw`` x exposures) and ROAS = value / cost, ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd

from src.data.catalog import Catalog
from src.features.customer_view import build_customer_view
from src.features.feature_table import model_matrix, view_feature_columns
from src.models.metrics import binary_metrics
from src.models.propensity import positive_proba

SEGMENT: tuple[str, ...] = ("life_stage", "income_band")


def weekly_snapshots(
    start: pd.Timestamp, end: pd.Timestamp, step_days: int = 7
) -> list[pd.Timestamp]:
    return list(
        pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end), freq=f"{step_days}D")
    )


def exposure_rows(
    catalog: Catalog, snapshots: Sequence[pd.Timestamp], progress: bool = False
) -> pd.DataFrame:
    """Exposures from the first snapshot on, each joined to the view as of its latest snapshot
    at or before the exposure's date; plus the offer's product, value and cost."""
    from tqdm.auto import tqdm

    snaps = sorted(pd.Timestamp(s) for s in snapshots)
    exp = catalog.read("exposures")
    exp = exp.loc[exp["ts"] >= snaps[0]].copy()
    offers = catalog.read("offers", columns=["offer_id", "product", "value_krw", "cost_krw"])
    exp = exp.merge(offers, on="offer_id", how="left")
    exp["snapshot"] = pd.Series(np.asarray(snaps, dtype="datetime64[us]"))[
        np.searchsorted(
            np.asarray(snaps, dtype="datetime64[us]"),
            exp["ts"].to_numpy("datetime64[us]"),
            side="right",
        )
        - 1
    ].to_numpy()
    parts = []
    for snap in tqdm(snaps, desc="cvr views", disable=not progress):
        sub = exp.loc[exp["snapshot"] == snap]
        if len(sub):
            view = build_customer_view(catalog, snap)
            parts.append(sub.merge(view, on="customer_id", how="inner"))
    return pd.concat(parts, ignore_index=True)


def cvr_matrix(rows: pd.DataFrame, offer_ids: Sequence[str]) -> pd.DataFrame:
    """View features + offer one-hot + app channel."""
    X = model_matrix(rows, view_feature_columns())
    for o in offer_ids:
        X[f"offer={o}"] = (rows["offer_id"] == o).to_numpy(float)
    X["channel=app"] = (rows["channel"] == "app").to_numpy(float)
    return X


CVR_INPUTS: tuple[str, ...] = ("offer_id", "channel")
"""Columns of an exposure row beside the customer view: which offer, shown on which channel."""


@dataclass
class CvrModel:
    """P(convert | shown) for any customer-view rows x offer."""

    booster: lgb.LGBMClassifier
    offer_ids: list[str]
    best_iteration: int

    @property
    def raw_columns(self) -> list[str]:
        """The input a logged CVR model takes: the view's feature columns, offer and channel."""
        return [*view_feature_columns(), *CVR_INPUTS]

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        return positive_proba(self.booster, cvr_matrix(rows, self.offer_ids))

    def predict_proba(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One column ``convert``: the interface the logged pyfunc calls (as the propensity
        model's one column per product)."""
        return pd.DataFrame({"convert": self.predict(rows)}, index=rows.index)


def train_cvr(
    train: pd.DataFrame,
    val: pd.DataFrame,
    offer_ids: Sequence[str],
    seed: int = 7,
    n_estimators: int = 1000,
    learning_rate: float = 0.05,
) -> CvrModel:
    """LightGBM early-stopped on the validation exposures."""
    offer_ids = list(offer_ids)
    booster = lgb.LGBMClassifier(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        num_leaves=15,
        min_child_samples=100,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.5,
        reg_lambda=5.0,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
        force_col_wise=True,
    )
    y_val = val["convert"].to_numpy(int)
    has_val = 0 < y_val.sum() < len(y_val)
    booster.fit(
        cvr_matrix(train, offer_ids),
        train["convert"].to_numpy(int),
        eval_X=(cvr_matrix(val, offer_ids),) if has_val else None,
        eval_y=(y_val,) if has_val else None,
        callbacks=[lgb.early_stopping(50, verbose=False)] if has_val else None,
    )
    return CvrModel(booster, offer_ids, int(booster.best_iteration_ or n_estimators))


def evaluate_cvr(
    model: CvrModel, test: pd.DataFrame, oracle_p: np.ndarray | None = None
) -> pd.DataFrame:
    """Metrics of the model (and the oracle, per-offer mean rate) on test exposures."""
    y = test["convert"].to_numpy(int)
    rate = (
        test.groupby("offer_id")["convert"].transform("mean").to_numpy()
    )  # in-sample: an upper bound
    scores = {"model": model.predict(test), "offer_rate_in_sample": rate}
    if oracle_p is not None:
        scores["oracle"] = oracle_p
    return pd.DataFrame({k: binary_metrics(y, v) for k, v in scores.items()}).T


def segment_report(
    view: pd.DataFrame,
    offers: pd.DataFrame,
    model: CvrModel,
    oracle_p: pd.DataFrame | None = None,
    segment: Sequence[str] = SEGMENT,
) -> pd.DataFrame:
    """Per segment x offer on one date, ranked by ROAS (then expected value).

    ``oracle_p``: optional (customers x offers) true conversion probabilities, aligned with
    ``view`` rows, for an ``oracle_conversions`` column next to the model's.
    """
    rows = []
    seg_key = view[list(segment)].astype(str).agg(" / ".join, axis=1)
    for _, offer in offers.iterrows():
        scored = view.assign(offer_id=offer["offer_id"], channel="app")
        p = model.predict(scored)
        frame = pd.DataFrame({"segment": seg_key.to_numpy(), "p": p})
        if oracle_p is not None:
            frame["p_oracle"] = oracle_p[offer["offer_id"]].to_numpy()
        agg = frame.groupby("segment").agg(
            customers=("p", "size"),
            expected_conversions=("p", "sum"),
            **({"oracle_conversions": ("p_oracle", "sum")} if oracle_p is not None else {}),
        )
        agg["offer_id"], agg["product"], agg["slot"] = (
            offer["offer_id"],
            offer["product"],
            offer["slot"],
        )
        agg["value_krw"] = agg["expected_conversions"] * offer["value_krw"]
        agg["cost_krw"] = agg["customers"] * offer["cost_krw"]
        agg["roas"] = agg["value_krw"] / agg["cost_krw"].replace(0, np.nan)
        if oracle_p is not None:
            agg["oracle_roas"] = (
                agg["oracle_conversions"] * offer["value_krw"] / agg["cost_krw"].replace(0, np.nan)
            )
        rows.append(agg.reset_index())
    out = pd.concat(rows, ignore_index=True)
    out = out.sort_values(["roas", "value_krw"], ascending=False, ignore_index=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def segment_product_summary(report: pd.DataFrame) -> pd.DataFrame:
    """Per segment x product: the best offer of that product (by ROAS) — what to push where."""
    best = (
        report.sort_values("roas", ascending=False)
        .groupby(["segment", "product"], as_index=False)
        .first()
    )
    return best.sort_values("roas", ascending=False, ignore_index=True)


def per_offer_table(
    test: pd.DataFrame, model_p: np.ndarray, oracle_p: np.ndarray | None = None
) -> pd.DataFrame:
    """Per offer on test exposures: observed conversion rate, the model's and the oracle's mean
    probability and AUC — whether the CVR is right offer by offer, not only on average."""
    from sklearn.metrics import roc_auc_score

    frame = pd.DataFrame(
        {
            "offer_id": test["offer_id"].to_numpy(),
            "y": test["convert"].to_numpy(int),
            "model": np.asarray(model_p, float),
        }
    )
    if oracle_p is not None:
        frame["oracle"] = np.asarray(oracle_p, float)

    def auc(g, c):
        return roc_auc_score(g["y"], g[c]) if 0 < g["y"].sum() < len(g) else np.nan

    rows = {}
    for offer, g in frame.groupby("offer_id"):
        row = {
            "n": len(g),
            "conversions": int(g["y"].sum()),
            "observed_rate": g["y"].mean(),
            "model_mean": g["model"].mean(),
            "model_auc": auc(g, "model"),
        }
        if oracle_p is not None:
            row.update(oracle_mean=g["oracle"].mean(), oracle_auc=auc(g, "oracle"))
        rows[offer] = row
    return pd.DataFrame(rows).T.rename_axis("offer_id")
