"""Small, real inputs for the service's tests and benchmark: a simulated bank, its view,
a bandit trained from its exposures, a propensity pyfunc, all registered in an MLflow registry.

:class:`ViewLogistic` is a stand-in propensity model with the production contract (raw
customer-view rows in, one calibrated-probability column per product out) that needs no
training run; the real one comes from ``src.models.train`` and is served the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.data.schemas import PRODUCTS
from src.settings import Settings

PROPENSITY_NAME = "nextoffer-propensity"
BANDIT_NAME = "nextoffer-bandit"


def tiny_bank(
    data_dir: Path, customers: int = 300, days: int = 14, seed: int = 3
) -> tuple[Settings, Path]:
    """Simulate a bank under ``data_dir`` and write its customer view as of the last day."""
    from src.data.loaders import validate_raw
    from src.data.synthetic import SimConfig, simulate
    from src.features.customer_view import write_customer_view

    settings = Settings(
        data_dir=Path(data_dir),
        sim={"customers": customers, "days": days, "seed": seed},
        mlflow_tracking_uri=f"sqlite:///{Path(data_dir) / 'mlflow.db'}",
    )
    config = SimConfig(customers=customers, days=days, seed=seed)
    simulate(config, settings.raw_dir, settings.truth_dir, progress=False)
    validate_raw(settings.catalog)
    as_of = pd.Timestamp(config.start_date) + pd.Timedelta(days=days)
    view = write_customer_view(settings.catalog, as_of)
    return settings, view


class ViewLogistic:
    """P(product) = sigmoid(b + w * log1p(recent page views of the product) - 2 * holds it)."""

    def __init__(
        self, products: tuple[str, ...] = PRODUCTS, base: float = -3.0, weight: float = 0.8
    ) -> None:
        self.products = products
        self.base = base
        self.weight = weight

    @property
    def columns(self) -> list[str]:
        held = [
            f"n_{p}" for p in self.products if p in ("loan", "savings", "fund", "card", "pension")
        ]
        return [f"pv_{p}_30d" for p in self.products] + held

    def predict_proba(self, rows: pd.DataFrame) -> pd.DataFrame:
        out = {}
        for p in self.products:
            pv = pd.to_numeric(rows.get(f"pv_{p}_30d", 0), errors="coerce")
            held = pd.to_numeric(rows.get(f"n_{p}", 0), errors="coerce")
            z = (
                self.base
                + self.weight * np.log1p(np.asarray(pv, float).clip(0))
                - 2.0 * (np.asarray(held, float) > 0)
            )
            out[p] = 1.0 / (1.0 + np.exp(-np.nan_to_num(z, nan=self.base)))
        return pd.DataFrame(out, index=rows.index)


def _pyfunc_class():
    import mlflow.pyfunc

    class ViewLogisticPyfunc(mlflow.pyfunc.PythonModel):
        def __init__(self, model: ViewLogistic) -> None:
            self.model = model

        def predict(
            self, context, model_input: pd.DataFrame, params: dict | None = None
        ) -> pd.DataFrame:
            return self.model.predict_proba(pd.DataFrame(model_input)).reset_index(drop=True)

    return ViewLogisticPyfunc


def log_propensity(
    settings: Settings,
    view: pd.DataFrame,
    model: Any | None = None,
    experiment: str = "serving-fixtures",
) -> str:
    """Log a propensity pyfunc (with signature) in a new run; its model URI.

    The stand-in is pickled with its code (this module is not on ``sys.path`` everywhere: a
    notebook kernel, or the endpoint started from elsewhere, loads it like a production model).
    """
    import cloudpickle
    import mlflow

    from src.models.tracking import configure_mlflow, log_pyfunc

    model = model or ViewLogistic()
    columns = getattr(model, "raw_columns", None) or model.columns
    experiment_id = configure_mlflow(settings, experiment)
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        with mlflow.start_run(experiment_id=experiment_id):
            return log_pyfunc(model, view, list(columns), wrapper=_pyfunc_class())
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def train_bandit(settings: Settings, view_every_days: int = 7, seed: int = 0):
    """A VW bandit trained offline on the bank's exposures (views every ``view_every_days``)."""
    from src.models.bandit import BanditConfig, ContextualBandit, logged_decisions, train_offline
    from src.models.bandit_features import build_views, default_feature_spec, view_schedule

    exposures = settings.catalog.read("exposures")
    offers = settings.catalog.read("offers")
    spec = default_feature_spec()
    start, end = exposures["ts"].min(), exposures["ts"].max()
    views = build_views(settings.catalog, view_schedule(start, end, view_every_days), spec)
    config = BanditConfig(seed=seed)
    log = logged_decisions(exposures, views, offers, config)
    bandit = ContextualBandit(config, spec)
    train_offline(bandit, log, offers)
    return bandit, offers


def register(settings: Settings, model_uri: str, name: str, score: float = 0.5) -> str:
    """Register as challenger and promote to champion if it is the first; the version."""
    from src.models.registry import register_and_promote

    return register_and_promote(
        model_uri,
        name,
        metric="fixture",
        candidate_score=score,
        score_champion=lambda uri: score - 1.0,
        tracking_uri=settings.tracking_uri,
    ).version


def register_models(
    settings: Settings, view_path: Path, bandit: bool = True, propensity: bool = True
) -> dict[str, str]:
    """Champion propensity and bandit models for the bank; name -> version."""
    from src.models.bandit import log_bandit

    out = {}
    if propensity:
        uri = log_propensity(settings, pd.read_parquet(view_path))
        out[PROPENSITY_NAME] = register(settings, uri, PROPENSITY_NAME)
    if bandit:
        model, offers = train_bandit(settings)
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        uri = log_bandit(
            model,
            offers,
            tracking_uri=settings.tracking_uri,
            artifact_location=settings.artifact_root.as_uri(),
            experiment="serving-fixtures-bandit",
        )
        out[BANDIT_NAME] = register(settings, uri, BANDIT_NAME)
    return out
