"""Champion/challenger promotion with a trail of tags on every model version."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from src.models.registry import CHALLENGER, CHAMPION, promotion_trail, register_and_promote


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
