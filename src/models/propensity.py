"""Propensity per product: P(signs up for the product within the window | features as of T).

One LightGBM classifier per product (scikit-learn API), early-stopped on the validation dates
and calibrated on them (Platt by default; isotonic on request, given enough positives), next to a
logistic-regression baseline trained on the same rows. :class:`PropensityModel` bundles the
products behind one ``predict_proba(raw rows) -> frame with a column per product``: that is
what is logged to MLflow (``src.models.tracking``) and what serving calls.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from src.features.feature_table import AsOfPlan, feature_columns, label_column, model_matrix

# the config is the settings tree's: Settings.models extends it with the time split
from src.settings import PropensityConfig


class ProbaModel(Protocol):
    """A fitted classifier on the model matrix: (rows, 2) class probabilities."""

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray: ...


def positive_proba(booster: lgb.LGBMClassifier, X: pd.DataFrame) -> np.ndarray:
    """P(class 1) of a binary booster on dense rows."""
    proba = booster.predict_proba(X)
    # LightGBM annotates the sparse outputs of ``pred_contrib`` too; plain probabilities of
    # a binary classifier on a DataFrame are always one dense (rows, 2) array.
    assert isinstance(proba, np.ndarray)
    return proba[:, 1]


@dataclass
class ProductModel:
    """One product's booster, its calibration map and the baseline on the same rows."""

    product: str
    booster: lgb.LGBMClassifier
    calibrated: CalibratedClassifierCV | None
    baseline: ProbaModel
    best_iteration: int
    calibration: str
    fit_seconds: float

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.calibrated is None:
            return positive_proba(self.booster, X)
        return self.calibrated.predict_proba(X)[:, 1]

    def predict_uncalibrated(self, X: pd.DataFrame) -> np.ndarray:
        return positive_proba(self.booster, X)

    def predict_baseline(self, X: pd.DataFrame) -> np.ndarray:
        return self.baseline.predict_proba(X)[:, 1]

    def feature_importance(self) -> pd.Series:
        """Total split gain per model-matrix column, largest first."""
        gain = self.booster.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.booster.booster_.feature_name()).sort_values(
            ascending=False
        )


@dataclass
class PropensityModel:
    """Every product's model behind one call on raw feature rows (customer-view columns)."""

    raw_columns: list[str]
    matrix_columns: list[str]
    products: dict[str, ProductModel] = field(default_factory=dict)

    def matrix(self, rows: pd.DataFrame) -> pd.DataFrame:
        X = model_matrix(rows, self.raw_columns)
        return X.reindex(columns=self.matrix_columns)

    def predict_proba(self, rows: pd.DataFrame, kind: str = "calibrated") -> pd.DataFrame:
        """One column per product: calibrated probability (``kind``: calibrated|raw|baseline)."""
        X = self.matrix(rows)
        out = {}
        for p, m in self.products.items():
            fn = {
                "calibrated": m.predict,
                "raw": m.predict_uncalibrated,
                "baseline": m.predict_baseline,
            }[kind]
            out[p] = fn(X)
        return pd.DataFrame(out, index=rows.index)


def _signed_log1p(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.log1p(np.abs(X))


def fit_logreg(X: pd.DataFrame, y: np.ndarray, c: float = 0.1, seed: int = 7):
    """The baseline: log-scaled, standardized features (NaN -> median + indicator), L2 logistic."""
    model = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        FunctionTransformer(_signed_log1p),
        StandardScaler(),
        LogisticRegression(C=c, max_iter=2000, random_state=seed),
    )
    return model.fit(X.to_numpy(float), y)


class _ArrayModel:
    """Adapter so the baseline pipeline (fit on numpy) takes the same DataFrame as the booster."""

    def __init__(self, model) -> None:
        self.model = model

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.model.predict_proba(X.to_numpy(float))


CALIBRATION_FOLDS = 5
"""Stratified folds of ``CalibratedClassifierCV`` on the validation rows (sklearn's default)."""

CALIBRATION_MIN_PER_CLASS = 2 * CALIBRATION_FOLDS
"""Fewest validation positives (and negatives) to calibrate on. Below it the product keeps the
booster's own probabilities (``calibration == "none (...)"``): with fewer rows of a class than
folds sklearn warns and fits per-fold maps on folds without a single positive, and a Platt map
on a handful of positives is noise (it can even flip the ranking, see below). The raw booster
output is already a log-loss-fitted probability, so "no map" is the honest fallback; the
reason is recorded in ``ProductModel.calibration``, logged to MLflow as the
``<product>.calibration`` param and printed in the demo's per-product line."""


def fit_product(
    product: str,
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_val: pd.DataFrame,
    y_val: np.ndarray,
    config: PropensityConfig,
) -> ProductModel:
    """Boost with early stopping on validation, then calibrate the frozen booster there
    (no calibration if validation holds fewer than ``CALIBRATION_MIN_PER_CLASS`` of a class)."""
    started = time.perf_counter()
    booster = lgb.LGBMClassifier(
        n_estimators=config.n_estimators,
        learning_rate=config.learning_rate,
        num_leaves=config.num_leaves,
        min_child_samples=config.min_child_samples,
        subsample=config.subsample,
        subsample_freq=1,
        colsample_bytree=config.colsample_bytree,
        reg_lambda=config.reg_lambda,
        force_col_wise=True,
        random_state=config.seed,
        n_jobs=config.n_jobs,
        verbose=-1,
    )
    has_val = 0 < y_val.sum() < len(y_val)
    booster.fit(
        X_train,
        y_train,
        eval_X=(X_val,) if has_val else None,
        eval_y=(y_val,) if has_val else None,
        eval_metric="binary_logloss",
        callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False)]
        if has_val
        else None,
    )
    best = int(booster.best_iteration_ or config.n_estimators) if has_val else config.n_estimators
    n_pos, n_neg = int(y_val.sum()), int(len(y_val) - y_val.sum())
    calibrated, method = None, f"none ({n_pos} validation positives, {n_neg} negatives)"
    if has_val and min(n_pos, n_neg) < CALIBRATION_MIN_PER_CLASS:
        fewer = "positives" if n_pos <= n_neg else "negatives"
        method = f"none ({min(n_pos, n_neg)} validation {fewer} < {CALIBRATION_MIN_PER_CLASS})"
    elif has_val:
        method = (
            "isotonic"
            if config.calibration == "isotonic" and y_val.sum() >= config.isotonic_min_positives
            else "sigmoid"
        )
        calibrated = CalibratedClassifierCV(
            FrozenEstimator(booster), method=method, cv=CALIBRATION_FOLDS
        ).fit(X_val, y_val)
        raw, cal = positive_proba(booster, X_val), calibrated.predict_proba(X_val)[:, 1]
        if np.corrcoef(raw, cal)[0, 1] < 0:  # Platt on a handful of positives can flip the ranking
            calibrated, method = None, "none (calibration map decreasing)"
    baseline = (
        _ArrayModel(fit_logreg(X_train, y_train, config.logreg_c, config.seed))
        if 0 < y_train.sum() < len(y_train)
        else _Constant(float(y_train.mean()))
    )
    return ProductModel(
        product, booster, calibrated, baseline, best, method, time.perf_counter() - started
    )


class _Constant:
    """A baseline for a training sample with one class only (tiny test banks)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = np.full(len(X), self.rate)
        return np.column_stack([1 - p, p])


def validation_customers(customer_ids: pd.Series, share: float) -> pd.Series:
    """A stable pseudo-random share of customers (crc32 of the id), the same on every date."""
    import zlib

    if share <= 0:
        return pd.Series(False, index=customer_ids.index)
    h = customer_ids.astype(str).map(lambda c: zlib.crc32(c.encode()) % 10_000)
    return h < share * 10_000


def split_rows(
    table: pd.DataFrame, plan: AsOfPlan, val_customer_share: float = 0.2
) -> dict[str, pd.DataFrame]:
    """The feature table cut by the plan's dates, with validation customers held out.

    Why customer-disjoint: the label windows of consecutive as_of dates overlap, so a customer's
    signup on day d is a positive in several rows. Early stopping and calibration on rows of
    customers the booster trained on reward memorising those customers (measured: the booster
    then beat the oracle on seen customers and lost 0.1 AUC on unseen ones). Train rows are the
    training dates minus the validation customers; validation rows are those customers on the
    validation dates; test rows are everyone on the test dates.
    """
    held = validation_customers(table["customer_id"], val_customer_share)

    def on(name):
        return table["as_of"].isin(getattr(plan, name))

    return {
        "train": table.loc[on("train") & ~held],
        "val": table.loc[on("val") & (held if held.any() else True)],
        "test": table.loc[on("test")],
    }


def train_propensity(
    table: pd.DataFrame,
    plan: AsOfPlan,
    products: Sequence[str],
    config: PropensityConfig | None = None,
    raw_columns: Sequence[str] | None = None,
    progress: bool = False,
) -> PropensityModel:
    """Fit every product on the plan's train dates, early stopping + calibration on val dates."""
    from tqdm.auto import tqdm

    config = config or PropensityConfig()
    raw_columns = list(raw_columns or feature_columns(table))
    parts = split_rows(table, plan, config.val_customer_share)
    X_train = model_matrix(parts["train"], raw_columns)
    X_val = model_matrix(parts["val"], raw_columns).reindex(columns=X_train.columns)
    model = PropensityModel(raw_columns, list(X_train.columns))
    for p in tqdm(products, desc="propensity", disable=not progress):
        y_tr = parts["train"][label_column(p)].to_numpy(int)
        y_va = parts["val"][label_column(p)].to_numpy(int)
        model.products[p] = fit_product(p, X_train, y_tr, X_val, y_va, config)
    return model
