"""Champion / challenger promotion in the MLflow model registry, with a trail on every version.

A new model version always gets alias ``challenger``. It takes alias ``champion`` only if
there is no champion yet or it beats the champion on the same held-out window — the caller
scores the champion with ``score_champion(champion_uri)`` on the data the candidate was scored
on, so the comparison is like for like. Whatever happens, the decision is written on the new
version as ``promotion.*`` tags (metric, both scores, outcome, which version it was compared
to, when), so the registry itself answers "why is this the champion".
Used by the propensity / CVR training runs and by the bandit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

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
) -> PromotionResult:
    """Register ``model_uri`` under ``name`` as ``challenger``; promote it to ``champion`` if it
    beats the current one on ``metric`` (ties keep the champion). Tags record the decision.

    ``score_champion`` is called with ``models:/<name>@champion`` and must return the champion's
    score on the same held-out window; None means "not comparable": the challenger is then not
    promoted over an existing champion (a human decides).
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
    if previous is None:
        promoted, reason = True, "no champion yet"
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
    for key, value in tags.items():
        client.set_model_version_tag(name, version, TAG_PREFIX + key, value)
    return PromotionResult(
        name, version, promoted, float(candidate_score), champion_score, previous, reason
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
