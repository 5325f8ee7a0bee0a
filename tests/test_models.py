"""Propensity / CVR models: metrics, training, the logged pyfunc, retraining, real data."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import nbformat
import numpy as np
import pandas as pd
import pytest

from src.features.feature_table import (
    build_feature_table,
    data_period,
    plan_as_of_dates,
    view_feature_columns,
)
from src.models.metrics import binary_metrics, expected_calibration_error, lift_by_decile
from src.models.propensity import PropensityConfig, fit_product, train_propensity
from src.settings import Settings

BANK_MARKETING = Path("/work/shared/data/bank-marketing/bank-additional-full.csv")


def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    p = 1 / (1 + np.exp(-(-2.5 + 1.5 * X["a"] - X["b"] * X["c"])))
    return X, (rng.random(n) < p).astype(int), p.to_numpy()


def test_metrics_tell_calibrated_from_miscalibrated():
    _, y, p = _synthetic(20_000, 0)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p * 2, 0, 1)) > 0.05
    lift = lift_by_decile(y, p)
    assert lift.iloc[0] > 2 > lift.iloc[-1]
    one_class = binary_metrics(np.zeros(10), np.full(10, 0.1))
    assert np.isnan(one_class["auc"]) and one_class["brier"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("asked", "min_positives", "used"),
    [
        ("sigmoid", 100, "sigmoid"),
        ("isotonic", 100, "isotonic"),
        ("isotonic", 10**6, "sigmoid"),
    ],
)
def test_boosting_learns_an_interaction_and_calibration_holds(asked, min_positives, used):
    X, y, p = _synthetic(12_000, 1)
    m = fit_product(
        "toy",
        X[:8000],
        y[:8000],
        X[8000:10000],
        y[8000:10000],
        PropensityConfig(
            n_estimators=300,
            min_child_samples=50,
            calibration=asked,
            isotonic_min_positives=min_positives,
        ),
    )
    Xt, yt = X[10000:], y[10000:]
    model, base, oracle = (
        binary_metrics(yt, f) for f in (m.predict(Xt), m.predict_baseline(Xt), p[10000:])
    )
    assert m.best_iteration < 300 and m.calibration == used  # isotonic only with enough positives
    assert model["auc"] > base["auc"] + 0.02  # the interaction b*c is beyond the linear baseline
    assert oracle["auc"] - model["auc"] < 0.03
    assert model["ece"] < 0.04  # calibrated on 2,000 validation rows


@pytest.fixture(scope="module")
def trained(small_bank: Settings):
    start, end = data_period(small_bank.catalog)
    plan = plan_as_of_dates(start, end)
    table = build_feature_table(small_bank.catalog, plan.dates, plan.window_days)
    model = train_propensity(
        table, plan, ["savings", "card"], PropensityConfig(n_estimators=50), view_feature_columns()
    )
    return table, plan, model


def test_pyfunc_takes_raw_view_rows_and_returns_calibrated_probabilities(trained, tmp_path: Path):
    from src.models.tracking import log_pyfunc, serving_frame

    table, plan, model = trained
    rows = table.loc[table["as_of"] == plan.test[0]].head(50)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=exp):
        uri = log_pyfunc(model, rows, model.raw_columns)
    loaded = mlflow.pyfunc.load_model(uri)
    assert loaded.metadata.signature is not None
    assert set(loaded.metadata.get_input_schema().input_names()) == set(model.raw_columns)
    got = loaded.predict(serving_frame(rows, model.raw_columns))
    want = model.predict_proba(rows).reset_index(drop=True)
    assert list(got.columns) == ["savings", "card"]
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-6)
    assert ((got >= 0) & (got <= 1)).all().all()


@pytest.mark.slow
def test_cvr_segment_report_ranks_by_roas(small_bank: Settings):
    from src.evaluation.cvr import oracle_comparison
    from src.models.train import run_cvr_training

    run = run_cvr_training(small_bank, track=False, progress=False)
    rep = run.report
    assert "oracle" not in run.metrics.index and "oracle_roas" not in rep  # training reads no truth
    np.testing.assert_allclose(rep["roas"], rep["value_krw"] / rep["cost_krw"])
    assert rep["roas"].is_monotonic_decreasing
    assert (rep["expected_conversions"] <= rep["customers"]).all()
    assert run.summary.groupby(["segment", "product"]).size().max() == 1

    compared = oracle_comparison(small_bank, run, figures=False)
    assert {"model", "oracle"} <= set(compared.metrics.index)
    pd.testing.assert_frame_equal(compared.metrics.loc[["model"]], run.metrics.loc[["model"]])
    assert {"oracle_conversions", "oracle_roas"} <= set(compared.report.columns)
    assert len(compared.report) == len(rep) and {"oracle_mean"} <= set(compared.per_offer)
    assert -1 <= compared.ranking["spearman_roas"] <= 1


def test_propensity_training_reads_no_truth_and_the_oracle_comes_after(
    trained, small_bank: Settings, tmp_path: Path
):
    """Training on a data dir without truth (table and plan given: nothing else to read) gives
    the model and the baseline; the evaluation adds the oracle to the same test rows."""
    from src.evaluation.propensity import has_truth, oracle_gaps
    from src.models.train import run_propensity_training

    table, plan, _ = trained
    blind = Settings(data_dir=tmp_path)
    assert not has_truth(blind)
    run = run_propensity_training(
        blind,
        products=["savings", "card"],
        config=PropensityConfig(n_estimators=50),
        table=table,
        plan=plan,
        track=False,
        register=False,
        progress=False,
    )
    assert set(run.metrics.index.get_level_values("scorer")) == {"model", "lgbm_raw", "logreg"}
    assert list(run.gaps.columns) == ["model", "logreg"]
    assert not (tmp_path / "truth").exists()

    compared = oracle_gaps(small_bank, run, figures=False)
    assert {"oracle", "need_frozen"} <= set(compared.metrics.index.get_level_values("scorer"))
    pd.testing.assert_series_equal(compared.gaps["model"], run.gaps["model"])
    np.testing.assert_allclose(
        compared.gaps["gap_to_oracle"], compared.gaps["oracle"] - compared.gaps["model"]
    )
    with pytest.raises(FileNotFoundError):
        oracle_gaps(blind, run)


@pytest.mark.slow
def test_retrain_names_the_failing_step(small_bank: Settings, tmp_path: Path):
    from src.models.retrain import RetrainError, retrain

    (tmp_path / "notebooks").mkdir()
    ok = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(
                "data_dir = ''\nas_of = ''\nrun_info_path = ''\nout_dir = ''",
                metadata={"tags": ["parameters"]},
            ),
            nbformat.v4.new_code_cell(
                "import json, pathlib\npathlib.Path(run_info_path).write_text(json.dumps({'run_id': None, 'as_of': as_of}))"
            ),
        ]
    )
    bad = nbformat.v4.new_notebook(
        cells=[
            ok.cells[0],
            nbformat.v4.new_code_cell(
                "def split():\n    raise ValueError('period too short for a time split: ' + 'x' * 600)\n"
                "split()"
            ),
        ]
    )
    for nb in (ok, bad):
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(ok, tmp_path / "notebooks" / "good.ipynb")
    nbformat.write(bad, tmp_path / "notebooks" / "bad.ipynb")
    settings = small_bank.model_copy(update={"root": tmp_path})

    result = retrain(
        settings,
        "2026-02-01",
        notebooks=["good"],
        out_dir=tmp_path / "reports",
        log_to_mlflow=False,
    )
    assert (tmp_path / "reports" / "2026-02-01" / "good.ipynb").exists()
    assert (
        json.loads((tmp_path / "reports" / "2026-02-01" / "good.run.json").read_text())["as_of"]
        == "2026-02-01"
    )
    assert result.steps[0].name == "good"
    with pytest.raises(RetrainError, match="'bad'") as err:
        retrain(
            settings,
            "2026-02-01",
            notebooks=["good", "bad"],
            out_dir=tmp_path / "reports",
            log_to_mlflow=False,
        )
    assert err.value.step == "bad" and err.value.notebook.exists()
    reason, where = str(err.value).splitlines()
    assert reason.startswith("retrain step 'bad' failed: ValueError: period too short")
    assert reason.endswith("x" * 600)  # the whole message, not cut at 500 characters
    assert where == f"executed notebook: {err.value.notebook}"
    assert "Traceback" not in str(err.value) and "split()" not in str(err.value)
    assert "\x1b[" not in str(err.value)  # no ANSI colour codes from the kernel


def test_retrain_refuses_stale_data(small_bank: Settings, tmp_path: Path):
    from src.features.feature_table import data_period
    from src.models.retrain import StaleDataError, check_staleness, retrain

    _, last = data_period(small_bank.catalog)
    assert small_bank.models.max_staleness_days == 3
    assert check_staleness(small_bank, last + pd.Timedelta(days=3)) == last
    late = last + pd.Timedelta(days=4)
    with pytest.raises(StaleDataError) as err:
        retrain(small_bank, late, notebooks=["none"], out_dir=tmp_path, log_to_mlflow=False)
    assert f"{late:%Y-%m-%d}" in str(err.value) and f"{last:%Y-%m-%d}" in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before any notebook ran
    strict = small_bank.model_copy(
        update={"models": small_bank.models.model_copy(update={"max_staleness_days": 0})}
    )
    with pytest.raises(StaleDataError, match="at most 0"):
        check_staleness(strict, last + pd.Timedelta(days=1))
    check_staleness(small_bank, late, max_days=4)  # the CLI option overrides the setting


@pytest.mark.skipif(not BANK_MARKETING.exists(), reason="UCI Bank Marketing data not present")
def test_bank_marketing_pipeline_on_a_subsample():
    """The tabular pipeline with the UCI file's quirks passed as options (as the benchmark does,
    ``benchmarks/bench_uci_bank_marketing.py``: uci_bank_marketing_spec)."""
    from src.models.tabular import TableSpec, evaluate_table, prepare, read_table

    spec = TableSpec(
        target="y",
        drop=("duration",),
        missing=(("pdays", "999"),),
        time_order="rows",
        drift_cols=("emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed"),
    )
    data = prepare(read_table(BANK_MARKETING), spec, sample=6000)
    assert "duration" not in data.features.columns
    out = evaluate_table(
        data,
        n_folds=3,
        config=PropensityConfig(n_estimators=200, min_child_samples=50, num_leaves=15),
        final_model=False,
    )
    assert "pdays_is_999" in out.encoder.columns
    assert len(out.cv) == 6
    assert out.cv_mean.loc["lightgbm", "auc"] > 0.7  # real signal without the leaking duration
    assert set(out.time.index) == {"lightgbm", "logreg"}
    # the context columns rank the later rows the other way round: a sign flip, and dropping
    # them is what rescues the time split
    drift = out.drift
    assert drift.loc["euribor3m", "auc_train"] > 0.5 > drift.loc["euribor3m", "auc_test"]
    by = out.time_by_features["auc"]
    assert by.loc[("without_drift_cols", "lightgbm")] > by.loc[("all", "lightgbm")] + 0.05


def test_truth_state_rebuilds_the_stored_needs_and_the_ceiling_is_unbiased(small_bank: Settings):
    """walk + event + static + push must give back the needs the simulator stored, and the
    Monte Carlo ceiling must average to the realized organic window probability."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic import needs as N
    from src.evaluation.propensity import bayes_as_of, truth_state

    oracle = Oracle(small_bank.truth_dir, small_bank.raw_dir)
    day = oracle.days // 2
    state = truth_state(small_bank.truth_dir, small_bank.raw_dir, day - 1)
    z = state["static"] + state["walk"] + state["event"] + N.push_logits(state["pop"], day - 1)
    np.testing.assert_allclose(1 / (1 + np.exp(-z)), oracle.needs[day - 1], atol=2e-4)
    window = min(20, oracle.days - day)
    ceiling = bayes_as_of(state, day, window, n_paths=16)
    assert ceiling.shape == (len(state["customer_id"]), len(PRODUCTS))
    as_of = oracle.start + pd.Timedelta(days=day)
    realized = np.column_stack(
        [
            oracle.true_signup_prob(state["customer_id"], p, as_of, window, include_offers=False)
            for p in PRODUCTS
        ]
    )
    # 400 customers: the realized paths are one draw, so per product only roughly (on the 100k
    # bank the means agree to 4 digits); pooled over products more tightly
    np.testing.assert_allclose(ceiling.mean(axis=0), realized.mean(axis=0), rtol=0.2)
    assert ceiling.mean() == pytest.approx(realized.mean(), rel=0.08)
    assert np.corrcoef(ceiling.ravel(), realized.ravel())[0, 1] > 0.8


def test_gap_summary_splits_the_gap_to_the_oracle_exactly():
    from src.models.evaluate import gap_summary

    auc = {
        "model": 0.70,
        "logreg": 0.69,
        "oracle": 0.80,
        "oracle_organic": 0.79,
        "bayes_as_of": 0.77,
        "need_frozen": 0.76,
    }
    metrics = pd.DataFrame({"auc": auc}).rename_axis("scorer")
    metrics = pd.concat({"loan": metrics}, names=["product"])
    g = gap_summary(metrics).loc["loan"]
    assert g["gap_to_ceiling"] == pytest.approx(0.07) and g["drift_gap"] == pytest.approx(0.02)
    assert g["offers_gap"] == pytest.approx(0.01)
    assert g["gap_to_oracle"] == pytest.approx(
        g["gap_to_ceiling"] + g["drift_gap"] + g["offers_gap"]
    )


def test_retrain_cli_exits_1_on_stale_data(small_bank: Settings, tmp_path: Path):
    from typer.testing import CliRunner

    from src.cli import app
    from src.features.feature_table import data_period

    _, last = data_period(small_bank.catalog)
    late = f"{last + pd.Timedelta(days=10):%Y-%m-%d}"
    data_dir = str(small_bank.resolve(small_bank.data_dir))
    args = ["retrain", "--as-of", late, "--data-dir", data_dir, "--max-staleness-days", "5"]
    out = CliRunner().invoke(app, args, env={"NEXTOFFER_REPORTS_DIR": str(tmp_path)})
    assert out.exit_code == 1
    assert late in out.output and f"{last:%Y-%m-%d}" in out.output and "at most 5" in out.output
    assert "Traceback" not in out.output


@pytest.mark.slow
def test_retraining_the_same_model_keeps_the_champion(trained, tmp_path: Path):
    """The same model trained twice on the same rows: effect 0, not significant, so the second
    version stays challenger; the comparison is on the version's tags."""
    from src.models.train import MODEL_NAME, run_propensity_training

    table, plan, _ = trained
    settings = Settings(data_dir=tmp_path)
    runs = [
        run_propensity_training(
            settings,
            products=["savings", "card"],
            config=PropensityConfig(n_estimators=30),
            table=table,
            plan=plan,
            progress=False,
        )
        for _ in range(2)
    ]
    second = runs[1].promotion
    assert second is not None and not second.promoted and second.comparison is not None
    assert second.comparison.effect == pytest.approx(0.0, abs=1e-9)
    tags = (
        mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
        .get_model_version(MODEL_NAME, second.version)
        .tags
    )
    assert tags["promotion.outcome"] == "kept_champion"
    assert float(tags["promotion.p_value"]) >= 0.05
    assert {"promotion.effect", "promotion.ci_low", "promotion.ci_high"} <= set(tags)
    # what a reviewer needs on the run: a name, the as_of and window, lineage, AUC CIs
    run = mlflow.get_run(runs[1].run_id)
    as_of = f"{max(plan.test):%Y-%m-%d}"
    assert run.info.run_name == f"propensity {as_of}" and run.data.params["as_of"] == as_of
    assert run.data.params["data_window_start"] < run.data.params["data_window_end"]
    assert (
        run.data.params["train_rows_sha256"]
        == mlflow.get_run(runs[0].run_id).data.params["train_rows_sha256"]
    )
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["propensity_train"]
    m = run.data.metrics
    assert m["mean_auc_ci_low"] <= m["mean_auc"] <= m["mean_auc_ci_high"]
    assert m["savings.auc_ci_low"] < m["savings.auc_ci_high"]
    from src.models.retrain import promotion_outcome  # what `nextoffer retrain` prints

    line = promotion_outcome(
        mlflow.MlflowClient(tracking_uri=settings.tracking_uri), run.info.run_id
    )
    assert line is not None and line.startswith(f"{MODEL_NAME} v{second.version} -> kept_champion")
    assert "p=" in line and "95% CI" in line
