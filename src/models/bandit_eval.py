"""Scoring a bandit on the bank's own logged decisions: the doubly robust value that decides
whether a newly trained bandit replaces the champion (``nextoffer train-bandit``).

Only the log is used (the context, the offer shown, the probability the logging policy showed
it with, the reward): no oracle, no simulator, so it runs the same on a real bank's exposures.
The simulated checks of these estimates against the true values are in
:mod:`src.evaluation.policies`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from src.data.catalog import Catalog
from src.models import ope
from src.models.bandit import BanditConfig, logged_decisions, policy_probs
from src.models.bandit_features import CustomerViews, slot_candidates


def bandit_view(log: pd.DataFrame, history: bool) -> pd.DataFrame:
    """The log as the bandit sees it: the reward model uses the customer's past responses, a
    bandit trained without ``|history`` must not be handed them."""
    if history:
        return log
    return log.assign(
        context=[{k: v for k, v in c.items() if k != "responses"} for c in log["context"]]
    )


def reward_model(
    log: pd.DataFrame, offers: pd.DataFrame, candidates: list[list[str]], seed: int = 0
) -> np.ndarray:
    """The direct method's cross-fitted q(x, a) on a logged-decision frame (:func:`logged_decisions`):
    context, the offer, its recent exposures and the customer's evidence about its product."""
    contexts = log["context"].tolist()
    product = offers.set_index("offer_id")["product"].astype(str).to_dict()
    return ope.fit_reward_model(
        ope.context_frame(contexts),
        candidates,
        log["action"].to_numpy(int),
        log["reward"].to_numpy(float),
        seen=[c.get("seen", {}) for c in contexts],
        seed=seed,
        offer_features=ope.product_features(contexts, product),
        segment=[c.get("life_stage") for c in contexts],
    )


def held_out_scorer(
    catalog: Catalog,
    views: CustomerViews,
    config: BanditConfig,
    start: pd.Timestamp,
    end: pd.Timestamp | None = None,
    seed: int = 0,
    history: bool = False,
) -> Callable[[Any], float]:
    """DR value of a bandit (object or MLflow model URI) on the logged decisions in [start, end).

    The log and the cross-fitted reward model are built once, so a challenger and the current
    champion are scored on exactly the same held-out window (the registry's promotion rule).
    """
    offers = catalog.read("offers")
    exposures = catalog.read("exposures")
    log = logged_decisions(exposures, views, offers, config, start=start, end=end, responses=True)
    by_slot = slot_candidates(offers)
    candidates = [[str(c["offer_id"]) for c in by_slot[s]] for s in log["slot"]]
    action, prob, reward = (
        log["action"].to_numpy(int),
        log["prob"].to_numpy(float),
        log["reward"].to_numpy(float),
    )
    q = reward_model(log, offers, candidates, seed=seed)

    def score(model: Any) -> float:
        if isinstance(model, str):
            import mlflow.pyfunc

            model = mlflow.pyfunc.load_model(model).unwrap_python_model().bandit
        target = policy_probs(model, bandit_view(log, history), offers)
        table = ope.estimate(action, prob, reward, target, q).set_index("estimator")
        return float(table.loc["dr", "value"])

    return score
