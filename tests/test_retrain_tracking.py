"""What a reviewer finds in MLflow after training: the CVR model registered like the propensity
model (run name, as_of and window params, lineage digest, AUC interval), a description on every
registered version and a model card logged with the run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from src.models.model_card import CARD_ARTIFACT
from src.models.registry import TAG_PREFIX
from src.models.train import CVR_MODEL_NAME, run_cvr_training
from src.settings import Settings


@pytest.mark.slow
def test_cvr_runs_are_registered_with_lineage_description_and_card(
    small_bank: Settings, tmp_path: Path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = Settings(data_dir=small_bank.data_dir, mlflow_tracking_uri=uri)
    as_of = "2026-02-04"
    first = run_cvr_training(settings, as_of, progress=False)
    second = run_cvr_training(settings, as_of, progress=False)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    assert first.promotion is not None and first.promotion.promoted
    run = client.get_run(first.run_id)
    assert run.info.run_name == f"cvr {as_of}"
    params = run.data.params
    assert params["as_of"] == as_of and params["data_window_end"] == as_of
    assert params["step_days"] == "7" and params["weeks_test"] == first.weeks["test"][0]
    assert len(params["train_rows_sha256"]) == 16 and int(params["train_rows"]) > 0
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["cvr_train"]
    metrics = run.data.metrics
    assert metrics["auc_ci_low"] <= metrics["model.auc"] <= metrics["auc_ci_high"]

    version = client.get_model_version(CVR_MODEL_NAME, first.promotion.version)
    assert version.run_id == first.run_id
    assert f"as_of {as_of}" in version.description
    assert f"runs:/{first.run_id}/{CARD_ARTIFACT}" in version.description
    assert "Promotion: promoted to champion (no champion yet)" in version.description
    card = mlflow.artifacts.load_text(f"runs:/{first.run_id}/{CARD_ARTIFACT}")
    assert card.startswith(f"# Model card — {CVR_MODEL_NAME} v{first.promotion.version}")
    assert "## Known limits" in card and params["train_rows_sha256"] in card

    # the same rows again: same digest; compared with the champion on the same test exposures
    assert second.promotion is not None and not second.promotion.promoted
    params2 = client.get_run(second.run_id).data.params
    assert params2["train_rows_sha256"] == params["train_rows_sha256"]
    tags = client.get_model_version(CVR_MODEL_NAME, second.promotion.version).tags
    assert tags[TAG_PREFIX + "test"] == "paired_bootstrap"
    assert float(tags[TAG_PREFIX + "effect"]) == pytest.approx(0.0, abs=1e-12)  # same model
    assert tags[TAG_PREFIX + "outcome"] == "kept_champion"
    assert str(client.get_model_version_by_alias(CVR_MODEL_NAME, "champion").version) == "1"


def test_rows_digest_is_the_rows_content_not_their_order_or_last_bits():
    """Lineage: the same rows in another order, or with last-bit float noise from a parallel
    sum, give the same digest; one changed value or one row fewer does not."""
    import numpy as np
    import pandas as pd

    from src.models.train import rows_digest

    rng = np.random.default_rng(3)
    rows = pd.DataFrame(
        {"x": rng.normal(size=200), "n": rng.integers(0, 9, 200), "c": ["a", "b"] * 100}
    )
    shuffled = rows.sample(frac=1.0, random_state=1)
    noisy = rows.assign(x=rows["x"] * (1 + 1e-15))
    changed = rows.copy()
    changed.loc[7, "n"] += 1
    assert rows_digest(shuffled) == rows_digest(rows) == rows_digest(noisy)
    assert rows_digest(changed) != rows_digest(rows)
    assert rows_digest(rows.iloc[1:]) != rows_digest(rows)
