"""``score`` on both engines: the champion from the registry over the whole view, in chunks
(embedded) and through ``mlflow.pyfunc.spark_udf`` (Spark), the same scores within 1e-9."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_spark_score_detect import ViewBooster
from src.data.catalog import Catalog
from src.models.scoring import (
    SCORE_COLUMNS,
    Champion,
    NoChampion,
    long_scores,
    model_rows,
    resolve_champion,
    score_embedded,
)
from src.settings import Settings

PRODUCTS = ("loan", "fx", "card")


@pytest.fixture(scope="module")
def bank(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small bank's view in a private catalog, a registered champion in a private registry."""
    from benchmarks.bench_spark_score_detect import register_booster
    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    work = tmp_path_factory.mktemp("scoring")
    as_of = default_as_of(small_bank)
    catalog = Catalog.at(work / "data")
    view = build_customer_view(small_bank.catalog, as_of)
    path = catalog.path("customer_view", as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    view.to_parquet(path, index=False)
    settings = small_bank.model_copy(
        update={
            "mlruns_dir": work / "mlruns",
            "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        }
    )
    model = ViewBooster(view, products=PRODUCTS)
    champion = register_booster(model, view, settings.tracking_uri, work)
    return {
        "catalog": catalog,
        "as_of": as_of,
        "view": view,
        "model": model,
        "champion": champion,
        "settings": settings,
    }


def test_champion_is_resolved_with_its_signature(bank: dict) -> None:
    champion: Champion = bank["champion"]
    assert champion.version == "1" and champion.products == PRODUCTS
    assert champion.input_columns == bank["model"].raw_columns
    assert dict(champion.inputs)[bank["model"].raw_columns[0]] == "double"


def test_no_champion_is_a_clear_error(bank: dict) -> None:
    with pytest.raises(NoChampion, match="no-such-model"):
        resolve_champion("no-such-model", tracking_uri=bank["settings"].tracking_uri)


def test_embedded_scores_in_chunks_equal_one_call(bank: dict, tmp_path: Path) -> None:
    """Chunks of 97 rows give the scores of the model over the whole view at once."""
    catalog, champion = bank["catalog"], bank["champion"]
    seen: list[int] = []
    path = score_embedded(catalog, bank["as_of"], champion, chunk_rows=97, progress=seen.append)
    assert path == catalog.path("scores", bank["as_of"])
    got = pd.read_parquet(path)
    view = bank["view"]
    assert list(got.columns) == list(SCORE_COLUMNS)
    assert len(got) == len(view) * len(PRODUCTS) and sum(seen) == len(view) and len(seen) > 3
    assert all(t == PRODUCTS for t in got.groupby("customer_id")["product"].apply(tuple))
    direct = bank["model"].predict_proba(model_rows(view, champion))
    wide = got.pivot(index="customer_id", columns="product", values="score")
    wide = wide.loc[view["customer_id"], list(PRODUCTS)]
    np.testing.assert_array_equal(wide.to_numpy(), direct.to_numpy())
    assert set(got["model_version"]) == {"nextoffer-propensity/1"}
    assert (got["as_of"] == pd.Timestamp(bank["as_of"])).all()


def test_a_score_outside_zero_one_names_the_customer(bank: dict) -> None:
    champion = bank["champion"]
    predictions = pd.DataFrame({p: [0.1, 0.2] for p in PRODUCTS})
    predictions.loc[1, "fx"] = float("nan")
    with pytest.raises(ValueError, match=r"customer 'C2' product 'fx'"):
        long_scores(pd.Series(["C1", "C2"]), predictions, champion, bank["as_of"])


def test_missing_view_is_a_clear_error(bank: dict, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="build-view"):
        score_embedded(Catalog.at(tmp_path), bank["as_of"], bank["champion"])


@pytest.mark.slow
def test_spark_scores_equal_embedded(bank: dict, spark) -> None:
    from src.models.scoring import score_spark

    catalog, champion, as_of = bank["catalog"], bank["champion"], bank["as_of"]
    embedded = pd.read_parquet(score_embedded(catalog, as_of, champion, chunk_rows=128))
    path = score_spark(spark, catalog, as_of, champion)
    on_spark = pd.read_parquet(path)
    assert list(on_spark.columns) == list(SCORE_COLUMNS)
    key = ["customer_id", "product"]
    a = embedded.sort_values(key).reset_index(drop=True)
    b = on_spark.sort_values(key).reset_index(drop=True)
    assert len(b) == len(a)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_allclose(b["score"], a["score"], rtol=1e-9, atol=0)
    assert (b["model_version"] == a["model_version"]).all()
    assert (b["as_of"].astype("datetime64[us]") == a["as_of"].astype("datetime64[us]")).all()


def test_score_command_without_a_view_says_what_to_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from src.cli import app

    result = CliRunner().invoke(
        app, ["score", "--as-of", "2026-02-05", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "build-view" in result.output and "Traceback" not in result.output
