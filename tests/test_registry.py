"""Champion/challenger promotion with a trail of tags on every model version."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from src.models.registry import (
    CHALLENGER,
    CHAMPION,
    paired_bootstrap_auc,
    promotion_trail,
    register_and_promote,
)


class Constant(mlflow.pyfunc.PythonModel):
    def __init__(self, value: float) -> None:
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return pd.Series([self.value] * len(model_input))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module: creating MLflow's SQLite schema is most of the cost."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _log(value: float, artifact_root: Path) -> str:
    exp = mlflow.get_experiment_by_name("registry-test-art") or None
    exp_id = (
        exp.experiment_id
        if exp
        else mlflow.create_experiment("registry-test-art", artifact_root.as_uri())
    )
    with mlflow.start_run(experiment_id=exp_id):
        return mlflow.pyfunc.log_model(name="model", python_model=Constant(value)).model_uri


@pytest.mark.slow
def test_first_becomes_champion_worse_stays_challenger_better_is_promoted(
    tracking: str, tmp_path: Path
):
    name = "toy"

    def score(uri):
        return float(mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"x": [0]})).iloc[0])

    client = mlflow.MlflowClient(tracking_uri=tracking)

    first = register_and_promote(
        _log(0.7, tmp_path / "art"),
        name,
        metric="auc",
        candidate_score=0.7,
        score_champion=score,
        tracking_uri=tracking,
    )
    assert (
        first.promoted and first.champion_score is None and first.previous_champion_version is None
    )
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == first.version

    worse = register_and_promote(
        _log(0.6, tmp_path / "art"),
        name,
        metric="auc",
        candidate_score=0.6,
        score_champion=score,
        tracking_uri=tracking,
    )
    assert not worse.promoted and worse.champion_score == pytest.approx(0.7)
    assert worse.previous_champion_version == first.version
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == first.version
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == worse.version
    tags = client.get_model_version(name, worse.version).tags
    assert tags["promotion.outcome"] == "kept_champion"
    assert tags["promotion.metric"] == "auc"
    assert float(tags["promotion.candidate_score"]) == pytest.approx(0.6)
    assert float(tags["promotion.champion_score"]) == pytest.approx(0.7)
    assert tags["promotion.compared_to_version"] == first.version
    assert tags["promotion.decided_at"]

    better = register_and_promote(
        _log(0.8, tmp_path / "art"),
        name,
        metric="auc",
        candidate_score=0.8,
        score_champion=score,
        tracking_uri=tracking,
    )
    assert better.promoted and better.previous_champion_version == first.version
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == better.version
    trail = promotion_trail(name, tracking)
    assert [t["outcome"] for t in trail] == ["promoted", "kept_champion", "promoted"]


@pytest.mark.slow
def test_lower_is_better_and_unscorable_champion(tracking: str, tmp_path: Path):
    name = "toy-loss"
    register_and_promote(
        _log(0.3, tmp_path / "art"),
        name,
        metric="log_loss",
        candidate_score=0.3,
        score_champion=None,
        higher_is_better=False,
        tracking_uri=tracking,
    )
    kept = register_and_promote(
        _log(0.2, tmp_path / "art"),
        name,
        metric="log_loss",
        candidate_score=0.2,
        score_champion=None,
        higher_is_better=False,
        tracking_uri=tracking,
    )
    assert not kept.promoted  # cannot compare on the same window: a human decides
    lower = register_and_promote(
        _log(0.2, tmp_path / "art"),
        name,
        metric="log_loss",
        candidate_score=0.2,
        score_champion=lambda uri: 0.3,
        higher_is_better=False,
        tracking_uri=tracking,
    )
    assert lower.promoted


def _scores(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a score that separates them by ``signal`` (plus noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, y * signal + rng.normal(size=n)


def test_paired_bootstrap_auc_matches_sklearn_and_is_seeded():
    from sklearn.metrics import roc_auc_score

    y, a = _scores(2000, 1.0, 1)
    b = np.round(a + np.random.default_rng(2).normal(scale=0.8, size=len(a)), 1)  # with ties
    out = paired_bootstrap_auc({"p": y}, {"p": a}, {"p": b}, n_resamples=200, seed=3)
    assert out.candidate_score == pytest.approx(roc_auc_score(y, a))
    assert out.champion_score == pytest.approx(roc_auc_score(y, b))
    assert out.effect > 0 and out.ci_low <= out.effect <= out.ci_high and out.p_value < 0.05
    assert out == paired_bootstrap_auc({"p": y}, {"p": a}, {"p": b}, n_resamples=200, seed=3)


@pytest.mark.slow
def test_promotion_needs_a_real_margin_and_significance(tracking: str, tmp_path: Path):
    """A candidate better by a tiny effect is kept as challenger; a clearly better one is
    promoted; the version's tags hold effect, CI and p-value."""
    name = "toy-margin"
    y, champion = _scores(3000, 1.0, 5)
    noise = np.random.default_rng(6).normal(scale=1e-3, size=len(y))
    tiny = champion + noise  # same ranking up to a hair: effect ~ 0
    clearly = champion + y * 1.0  # twice the signal on the same rows
    client = mlflow.MlflowClient(tracking_uri=tracking)

    def compare(candidate):
        return lambda uri: paired_bootstrap_auc({"p": y}, {"p": candidate}, {"p": champion})

    register_and_promote(
        _log(0.7, tmp_path / "art"),
        name,
        metric="mean_auc",
        candidate_score=0.7,
        score_champion=None,
        tracking_uri=tracking,
    )
    kept = register_and_promote(
        _log(0.7, tmp_path / "art"),
        name,
        metric="mean_auc",
        candidate_score=0.700035,
        score_champion=None,
        compare_champion=compare(tiny),
        min_gain=0.002,
        tracking_uri=tracking,
    )
    assert not kept.promoted and kept.comparison is not None
    assert abs(kept.comparison.effect) < 0.002
    tags = client.get_model_version(name, kept.version).tags
    assert tags["promotion.outcome"] == "kept_champion"
    assert float(tags["promotion.effect"]) == pytest.approx(kept.comparison.effect)
    assert float(tags["promotion.p_value"]) == pytest.approx(kept.comparison.p_value)
    assert float(tags["promotion.min_gain"]) == 0.002
    assert "gain below 0.002" in tags["promotion.reason"]

    better = register_and_promote(
        _log(0.8, tmp_path / "art"),
        name,
        metric="mean_auc",
        candidate_score=0.8,
        score_champion=None,
        compare_champion=compare(clearly),
        min_gain=0.002,
        tracking_uri=tracking,
    )
    assert better.promoted and better.comparison is not None
    tags = client.get_model_version(name, better.version).tags
    assert tags["promotion.outcome"] == "promoted"
    effect, p = float(tags["promotion.effect"]), float(tags["promotion.p_value"])
    assert effect > 0.002 and p < 0.05
    assert float(tags["promotion.ci_low"]) > 0 < float(tags["promotion.ci_high"])
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == better.version
