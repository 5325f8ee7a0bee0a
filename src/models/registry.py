"""Champion / challenger promotion in the MLflow model registry, with a trail on every version.

A new model version always gets alias ``challenger``. It takes alias ``champion`` only if
there is no champion yet or it beats the champion on the same held-out window — the caller
scores the champion with ``score_champion(champion_uri)`` on the data the candidate was scored
on, so the comparison is like for like. Whatever happens, the decision is written on the new
version as ``promotion.*`` tags (metric, both scores, outcome, which version it was compared
to, when), so the registry itself answers "why is this the champion".
Used by the propensity / CVR training runs and by the bandit.

A higher score alone is not enough where the caller can compare row by row: with
``compare_champion`` the candidate is promoted only if it beats the champion by at least
``min_gain`` *and* the gain is significant on the same rows (one-sided ``p < alpha``, see
:func:`paired_bootstrap_auc`); effect, its 95% CI and the p-value join the ``promotion.*`` tags.
(The propensity model uses this: +0.000035 mean AUC once promoted a new champion.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "promotion."


@dataclass(frozen=True)
class PromotionResult:
    """What happened to one registered version."""

    name: str
    version: str
    promoted: bool
    candidate_score: float
    champion_score: float | None
    previous_champion_version: str | None
    reason: str
    comparison: PairedComparison | None = None


@dataclass(frozen=True)
class PairedComparison:
    """Candidate vs champion on the same rows: ``effect`` = candidate - champion (in the
    direction where positive is better), its percentile CI and the one-sided p-value of
    "no gain" (``effect <= 0``)."""

    candidate_score: float
    champion_score: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    n_rows: int
    n_resamples: int
    method: str = "paired_bootstrap"


def _grouped_order(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Sort order of ``scores`` and, in that order, the id of each tied group of scores."""
    order = np.argsort(scores, kind="mergesort")
    _, groups = np.unique(scores[order], return_inverse=True)
    return order, groups, int(groups.max()) + 1 if len(groups) else 0


def _weighted_auc(y: np.ndarray, weights: np.ndarray, order, groups, n_groups: int) -> float:
    """AUC (ties count one half) with rows repeated ``weights`` times: O(n) given the order."""
    w = weights[order]
    pos = np.bincount(groups, weights=w * y[order], minlength=n_groups)
    neg = np.bincount(groups, weights=w * (1 - y[order]), minlength=n_groups)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg))


def paired_bootstrap_auc(
    labels: Mapping[str, np.ndarray],
    candidate: Mapping[str, np.ndarray],
    champion: Mapping[str, np.ndarray],
    n_resamples: int = 1000,
    seed: int = 0,
) -> PairedComparison:
    """Mean AUC over the keys (products) of ``candidate`` vs ``champion`` on the same rows.

    Paired bootstrap: each resample draws the rows (customers) with replacement once and scores
    both models and every product on that same draw, so the correlation between the two models'
    errors and between products is kept. Chosen over DeLong because the promotion metric is a
    *mean* of several products' AUCs on the same customers (DeLong tests one AUC pair; its
    covariance across products would have to be derived), it needs no normality, and with a
    seed it is reproducible. Products with one class only (in the data or in a resample) are
    left out of that mean. One-sided p = (1 + #resamples with effect <= 0) / (1 + n_resamples);
    CI: 2.5 / 97.5 percentiles of the resampled effects.
    """
    keys = [k for k in labels if k in candidate and k in champion]
    ys = {k: np.asarray(labels[k], float) for k in keys}
    keys = [k for k in keys if 0 < ys[k].sum() < len(ys[k])]
    if not keys:
        nan = float("nan")
        return PairedComparison(nan, nan, nan, nan, nan, nan, 0, 0)
    n = len(ys[keys[0]])
    prepared = {
        k: (
            _grouped_order(np.asarray(candidate[k], float)),
            _grouped_order(np.asarray(champion[k], float)),
        )
        for k in keys
    }

    def scores(weights: np.ndarray) -> tuple[float, float]:
        cand, champ = [], []
        for k in keys:
            a = _weighted_auc(ys[k], weights, *prepared[k][0])
            b = _weighted_auc(ys[k], weights, *prepared[k][1])
            if not (math.isnan(a) or math.isnan(b)):
                cand.append(a)
                champ.append(b)
        if not cand:
            return float("nan"), float("nan")
        return float(np.mean(cand)), float(np.mean(champ))

    cand_score, champ_score = scores(np.ones(n))
    rng = np.random.default_rng(seed)
    effects = np.empty(n_resamples)
    for i in range(n_resamples):
        a, b = scores(np.bincount(rng.integers(0, n, n), minlength=n).astype(float))
        effects[i] = a - b
    effects = effects[~np.isnan(effects)]
    p = float((1 + (effects <= 0).sum()) / (1 + len(effects)))
    low, high = (float(x) for x in np.percentile(effects, [2.5, 97.5]))
    return PairedComparison(
        cand_score, champ_score, cand_score - champ_score, low, high, p, n, len(effects)
    )


def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def current_champion(name: str, tracking_uri: str | None = None) -> str | None:
    """Version number holding alias ``champion``, or None (no model or no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(_client(tracking_uri).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def register_and_promote(
    model_uri: str,
    name: str,
    *,
    metric: str,
    candidate_score: float,
    score_champion: Callable[[str], float] | None,
    higher_is_better: bool = True,
    tracking_uri: str | None = None,
    compare_champion: Callable[[str], PairedComparison] | None = None,
    min_gain: float = 0.0,
    alpha: float = 0.05,
    description: str | None = None,
) -> PromotionResult:
    """Register ``model_uri`` under ``name`` as ``challenger``; promote it to ``champion`` if it
    beats the current one on ``metric`` (ties keep the champion). Tags record the decision.

    ``score_champion`` is called with ``models:/<name>@champion`` and must return the champion's
    score on the same held-out window; None means "not comparable": the challenger is then not
    promoted over an existing champion (a human decides).

    ``compare_champion`` (called with the same URI, used instead of ``score_champion`` when
    given) returns a :class:`PairedComparison` on the same rows: the candidate is promoted only
    if its ``effect >= min_gain`` and ``p_value < alpha``. Effect, CI, p, ``min_gain`` and
    ``alpha`` are tagged too. Without it (the bandit), a higher score promotes, as before.

    ``description`` (Markdown: what the model is, its data window, its metric with interval)
    goes on the new version, so the registry UI says what a version is without opening its run;
    the promotion's reason is appended to it.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    client = _client(tracking_uri)
    previous = current_champion(name, tracking_uri)
    version = str(mlflow.register_model(model_uri, name).version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    champion_score: float | None = None
    comparison: PairedComparison | None = None
    if previous is None:
        promoted, reason = True, "no champion yet"
    elif compare_champion is not None:
        comparison = compare_champion(f"models:/{name}@{CHAMPION}")
        champion_score = float(comparison.champion_score)
        big_enough = comparison.effect >= min_gain
        significant = comparison.p_value < alpha
        promoted = bool(big_enough and significant)
        why = (
            "promoted"
            if promoted
            else "kept champion: "
            + " and ".join(
                w
                for w, bad in (
                    (f"gain below {min_gain:g}", not big_enough),
                    (f"not significant (p >= {alpha:g})", not significant),
                )
                if bad
            )
        )
        reason = (
            f"{metric} {candidate_score:.6g} vs champion v{previous} {champion_score:.6g}: "
            f"effect {comparison.effect:+.6f} (95% CI {comparison.ci_low:+.6f} to "
            f"{comparison.ci_high:+.6f}), p={comparison.p_value:.4f} "
            f"({comparison.method}, {comparison.n_resamples} resamples of "
            f"{comparison.n_rows} rows; needs >= {min_gain:g} and p < {alpha:g}): {why}"
        )
    elif score_champion is None:
        promoted, reason = False, "no way to score the champion on the same window: kept it"
    else:
        champion_score = float(score_champion(f"models:/{name}@{CHAMPION}"))
        if math.isnan(candidate_score):
            promoted = False
        elif math.isnan(champion_score):
            promoted = True
        else:
            promoted = (
                candidate_score > champion_score
                if higher_is_better
                else candidate_score < champion_score
            )
        direction = "higher" if higher_is_better else "lower"
        reason = (
            f"{metric} {candidate_score:.6g} vs champion v{previous} {champion_score:.6g} "
            f"({direction} is better): {'promoted' if promoted else 'kept champion'}"
        )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)

    tags = {
        "metric": metric,
        "candidate_score": repr(float(candidate_score)),
        "champion_score": "" if champion_score is None else repr(champion_score),
        "outcome": "promoted" if promoted else "kept_champion",
        "compared_to_version": previous or "",
        "higher_is_better": str(higher_is_better).lower(),
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason,
    }
    if comparison is not None:
        tags.update(
            {
                "effect": repr(float(comparison.effect)),
                "ci_low": repr(float(comparison.ci_low)),
                "ci_high": repr(float(comparison.ci_high)),
                "p_value": repr(float(comparison.p_value)),
                "min_gain": repr(float(min_gain)),
                "alpha": repr(float(alpha)),
                "test": comparison.method,
                "n_resamples": str(comparison.n_resamples),
                "n_rows": str(comparison.n_rows),
            }
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, TAG_PREFIX + key, value)
    if description:
        outcome = "promoted to champion" if promoted else "kept as challenger"
        client.update_model_version(
            name, version, description=f"{description.rstrip()}\n\nPromotion: {outcome} ({reason})."
        )
    return PromotionResult(
        name,
        version,
        promoted,
        float(candidate_score),
        champion_score,
        previous,
        reason,
        comparison,
    )


def promotion_trail(name: str, tracking_uri: str | None = None) -> list[dict[str, str]]:
    """Every version of ``name`` with its ``promotion.*`` tags and current aliases, oldest first."""
    client = _client(tracking_uri)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        full = client.get_model_version(name, mv.version)
        row = {"version": str(full.version), "aliases": ",".join(full.aliases or [])}
        row.update(
            {
                k[len(TAG_PREFIX) :]: v
                for k, v in (full.tags or {}).items()
                if k.startswith(TAG_PREFIX)
            }
        )
        rows.append(row)
    return sorted(rows, key=lambda r: int(r["version"]))
