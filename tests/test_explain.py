"""Per-customer reasons: SHAP values from LightGBM add up to the score and name the driver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.models.explain import (
    BIAS,
    contributions,
    explain_rows,
    global_importance,
    plot_global,
    plot_reasons,
    reasons_text,
)
from src.models.propensity import PropensityConfig, PropensityModel, fit_product


@pytest.fixture(scope="module")
def toy() -> tuple[PropensityModel, pd.DataFrame]:
    """Two products: ``loan`` driven by ``a`` only, ``card`` by ``b`` only; ``c`` is noise."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame(rng.normal(size=(1200, 3)), columns=["a", "b", "c"])
    rows["customer_id"] = [f"C{i:04d}" for i in range(len(rows))]
    X = rows[["a", "b", "c"]]
    model = PropensityModel(["a", "b", "c"], ["a", "b", "c"])
    config = PropensityConfig(n_estimators=60, min_child_samples=20, early_stopping_rounds=10)
    for product, column in (("loan", "a"), ("card", "b")):
        y = (rng.random(len(rows)) < 1 / (1 + np.exp(-3 * X[column]))).astype(int)
        model.products[product] = fit_product(
            product, X.iloc[:900], y[:900], X.iloc[900:], y[900:], config
        )
    return model, rows


def test_contributions_add_up_to_the_raw_score(toy):
    model, rows = toy
    for product, m in model.products.items():
        contrib = contributions(model, rows, product)
        raw = m.booster.predict(rows[["a", "b", "c"]], raw_score=True)
        assert list(contrib.columns) == ["a", "b", "c", BIAS]
        np.testing.assert_allclose(contrib.sum(axis=1).to_numpy(), raw, rtol=1e-6, atol=1e-6)


def test_top_reason_is_the_feature_that_drives_the_product(toy):
    model, rows = toy
    expl = explain_rows(model, rows.head(200), top=2)
    first = expl.loc[expl["rank"] == 1]
    share = first.groupby("product")["feature"].agg(lambda f: (f == f.mode()[0]).mean())
    top = first.groupby("product")["feature"].agg(lambda f: f.mode()[0])
    assert top["loan"] == "a" and top["card"] == "b"
    assert share.min() > 0.8
    # each row and product: 2 reasons, sorted by |contribution|, with the customer's value
    assert len(expl) == 200 * 2 * 2
    ranked = expl.pivot_table(
        index=["customer_id", "product"], columns="rank", values="contribution"
    )
    assert (ranked[1].abs() >= ranked[2].abs()).all()
    row = expl.iloc[0]
    assert row["value"] == pytest.approx(
        rows.set_index("customer_id").loc[row["customer_id"], row["feature"]]
    )
    assert set(expl["direction"]) <= {"up", "down"}
    assert ((expl["contribution"] >= 0) == (expl["direction"] == "up")).all()
    # the reported score is the calibrated probability the model serves
    scores = model.predict_proba(rows.head(200))
    got = expl.drop_duplicates(["customer_id", "product"]).set_index(["customer_id", "product"])
    assert got.loc[("C0000", "loan"), "score"] == pytest.approx(scores.loc[0, "loan"])


def test_reasons_text_and_plots_are_labelled(toy):
    model, rows = toy
    expl = explain_rows(model, rows.head(1), products=["loan"], top=3)
    lines = reasons_text(expl)
    assert len(lines) == 1 and lines[0].startswith("C0000 loan") and " a = " in lines[0]
    fig = plot_reasons(expl)
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.patches) == 3
    imp = global_importance(model, rows.head(300))
    assert imp.index[0] in {"a", "b"} and imp.loc["c"].max() < imp.loc["a", "loan"]
    ax = plot_global(imp).axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


def test_unknown_product_is_named(toy):
    model, rows = toy
    with pytest.raises(KeyError, match="fund"):
        contributions(model, rows, "fund")


@pytest.mark.slow
def test_endpoint_explains_a_customer_with_the_champion(small_bank, tmp_path):
    """``GET /v1/explanations/{customer_id}`` (behind the API key when one is set): the serving
    champion's score per product with its top reasons; 404 for an unknown customer."""
    from fastapi.testclient import TestClient

    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of
    from src.serving.app import create_app
    from src.settings import ServingSettings

    view_path = tmp_path / "customer_view.parquet"
    view = build_customer_view(small_bank.catalog, default_as_of(small_bank))
    view.to_parquet(view_path)
    settings = small_bank.model_copy(
        update={
            "mlruns_dir": tmp_path / "mlruns",
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'm.db'}",
        }
    )
    _register_propensity(settings, view)
    serving = ServingSettings(
        view_path=view_path, log_path=tmp_path / "log.sqlite", seed=1, api_key="s3cret"
    )
    customer = str(view["customer_id"].iloc[0])
    with TestClient(create_app(settings, serving)) as client:
        url = f"/v1/explanations/{customer}?top=3"
        assert client.get(url).status_code == 401  # reasons are for authenticated callers
        r = client.get(url, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["customer_id"] == customer and body["model_version"] == "1"
        products = {x["product"] for x in body["reasons"]}
        assert len(products) >= 1 and len(body["reasons"]) == 3 * len(products)
        assert all(x["direction"] in ("up", "down") for x in body["reasons"])
        # the score next to the reasons is the score decisions use
        scores = client.app.state.service.manager.current.propensity
        position = client.app.state.service.store.position(customer)
        for x in body["reasons"]:
            assert x["score"] == pytest.approx(scores.for_position(position)[x["product"]])
        missing = client.get("/v1/explanations/NOPE", headers={"X-API-Key": "s3cret"})
        assert missing.status_code == 404 and "NOPE" in missing.json()["detail"]


def _register_propensity(settings, view: pd.DataFrame) -> None:
    """A PropensityModel on the view's columns (labels from a page-view count, so it splits),
    logged and registered as training does."""
    import mlflow

    from benchmarks.harness.serving_fixtures import PROPENSITY_NAME, register
    from src.features.feature_table import view_feature_columns
    from src.models.tracking import configure_mlflow, log_pyfunc

    columns = [c for c in view_feature_columns() if c in view.columns]
    model = PropensityModel(columns, [])
    X = model_matrix_of(view, columns)
    model.matrix_columns = list(X.columns)
    rng = np.random.default_rng(0)
    config = PropensityConfig(n_estimators=20, min_child_samples=10, early_stopping_rounds=5)
    for product in ("loan", "card"):
        y = (rng.random(len(X)) < 0.3).astype(int)
        half = len(X) // 2
        model.products[product] = fit_product(
            product, X.iloc[:half], y[:half], X.iloc[half:], y[half:], config
        )
    with mlflow.start_run(experiment_id=configure_mlflow(settings, "explain-serving")):
        uri = log_pyfunc(model, view, columns)
    register(settings, uri, PROPENSITY_NAME)


def model_matrix_of(view: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    from src.features.feature_table import model_matrix

    return model_matrix(view, columns)
