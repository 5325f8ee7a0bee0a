"""One tracked propensity training run, end to end: what notebook 10 and the benchmark call.

plan the time split -> feature table -> fit (LightGBM + calibration, logistic baseline) ->
score the test date next to the baseline -> MLflow run (params, data window, code version,
metrics, plots, tables, the pyfunc) -> register as challenger, promote if it beats the
champion on the same test rows (mean AUC over products).

Training never reads the simulator's truth: on a simulated bank the oracle and the ceilings
are added afterwards by :mod:`src.evaluation.propensity` and :mod:`src.evaluation.cvr`.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.catalog import Catalog, TableNotValidated
from src.data.schemas import PRODUCTS
from src.features.feature_table import (
    AsOfPlan,
    ExtraFeatures,
    build_feature_table,
    data_period,
    label_column,
    plan_as_of_dates,
    view_feature_columns,
)
from src.models.cvr import CvrModel
from src.models.evaluate import gap_summary, metrics_table, propensity_figures, score_table
from src.models.model_card import CARD_ARTIFACT, cvr_card, propensity_card, version_description
from src.models.monitor import log_reference
from src.models.propensity import PropensityConfig, PropensityModel, split_rows, train_propensity
from src.models.registry import (
    PairedComparison,
    PromotionResult,
    paired_bootstrap_auc,
    register_and_promote,
)
from src.settings import ModelSettings, Settings

EXPERIMENT = "propensity"
MODEL_NAME = "nextoffer-propensity"


@dataclass
class PropensityRun:
    """Everything a notebook shows and a scheduler checks."""

    plan: AsOfPlan
    model: PropensityModel
    metrics: pd.DataFrame
    gaps: pd.DataFrame
    figures: dict
    test_rows: pd.DataFrame
    timings: dict[str, float]
    run_id: str | None = None
    model_uri: str | None = None
    promotion: PromotionResult | None = None
    extra: dict = field(default_factory=dict)


def plan_for(
    catalog: Catalog,
    as_of: date | datetime | str | None,
    window_days: int | None = None,
    embargo: bool | None = None,
) -> AsOfPlan:
    """The time split for a retraining on ``as_of``: only data before it (default: all data).
    ``window_days``/``embargo`` default to the ``models`` section's defaults."""
    defaults = ModelSettings()
    window_days = defaults.window_days if window_days is None else window_days
    embargo = defaults.embargo if embargo is None else embargo
    start, end = data_period(catalog)
    if as_of:
        end = min(end, pd.Timestamp(as_of).normalize())
    return plan_as_of_dates(start, end, window_days=window_days, embargo=embargo)


def mean_auc(model, rows: pd.DataFrame, products: Sequence[str]) -> float:
    """Promotion metric: AUC averaged over products (products with one class only skipped)."""
    from sklearn.metrics import roc_auc_score

    preds = model.predict_proba(rows) if hasattr(model, "predict_proba") else model.predict(rows)
    aucs = []
    for p in products:
        y = rows[label_column(p)].to_numpy(int)
        if 0 < y.sum() < len(y) and p in preds:
            aucs.append(roc_auc_score(y, np.asarray(preds[p], float)))
    return float(np.mean(aucs)) if aucs else float("nan")


def champion_scorer(rows: pd.DataFrame, raw_columns: list[str], products: Sequence[str]):
    """``score_champion`` for the registry: load the champion pyfunc, score the same rows."""
    from src.models.tracking import serving_frame

    def score(uri: str) -> float:
        import mlflow

        champion = mlflow.pyfunc.load_model(uri)
        preds = champion.predict(serving_frame(rows, raw_columns))
        preds.index = rows.index
        return mean_auc(_Preds(preds), rows, products)

    return score


def champion_comparison(
    model,
    rows: pd.DataFrame,
    raw_columns: list[str],
    products: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
):
    """``compare_champion`` for the registry: the candidate ``model`` and the champion pyfunc
    on the same test rows, mean AUC compared by a seeded paired bootstrap
    (:func:`src.models.registry.paired_bootstrap_auc`)."""
    from src.models.tracking import serving_frame

    def compare(uri: str) -> PairedComparison:
        import mlflow

        champion = mlflow.pyfunc.load_model(uri).predict(serving_frame(rows, raw_columns))
        candidate = model.predict_proba(rows)
        labels = {p: rows[label_column(p)].to_numpy(int) for p in products}
        return paired_bootstrap_auc(
            labels,
            {p: np.asarray(candidate[p], float) for p in products if p in candidate},
            {p: np.asarray(champion[p], float) for p in products if p in champion},
            n_resamples=n_resamples,
            seed=seed,
        )

    return compare


def auc_confidence_intervals(
    model, rows: pd.DataFrame, products: Sequence[str], n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """95% bootstrap CIs (seeded, rows resampled) of each product's AUC and of the mean AUC,
    as MLflow metrics ``<product>.auc_ci_low/high`` and ``mean_auc_ci_low/high``."""
    preds = model.predict_proba(rows)
    labels = {p: rows[label_column(p)].to_numpy(int) for p in products if p in preds}
    out: dict[str, float] = {}
    for key, keys in [(p, [p]) for p in labels] + [("mean", list(labels))]:
        scores = {p: np.asarray(preds[p], float) for p in keys}
        # against a constant scorer (AUC 0.5 on every resample): the effect is AUC - 0.5
        flat = {p: np.zeros(len(rows)) for p in keys}
        cmp = paired_bootstrap_auc(
            {p: labels[p] for p in keys}, scores, flat, n_resamples=n_resamples, seed=seed
        )
        if cmp.n_rows:
            name = "mean_auc" if key == "mean" else f"{key}.auc"
            out[f"{name}_ci_low"] = cmp.ci_low + 0.5
            out[f"{name}_ci_high"] = cmp.ci_high + 0.5
    return out


def rows_digest(rows: pd.DataFrame) -> str:
    """sha256 of the rows' content as a multiset: the same rows give the same digest whatever
    their order, and floats count at float32 precision, so a view whose parallel sums differ in
    the last bits between two builds still shows as the same data (lineage, not a checksum)."""
    import hashlib

    floats = rows.select_dtypes("floating").columns
    content = rows.reset_index(drop=True).astype(dict.fromkeys(floats, "float32"))
    row_hashes = np.sort(pd.util.hash_pandas_object(content, index=False).to_numpy())
    return hashlib.sha256(row_hashes.tobytes()).hexdigest()


def _log_training_input(train_rows: pd.DataFrame | None, name: str = "propensity_train") -> str:
    """Dataset lineage: the training rows as an MLflow input (``from_pandas`` digest) plus a
    sha256 of their content as a param, so two runs on the same rows show the same digest.
    Returns the digest's first 16 characters ("" without rows)."""
    if train_rows is None:
        return ""
    import mlflow
    from mlflow.data.pandas_dataset import from_pandas

    digest = rows_digest(train_rows)[:16]
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values in a serving schema; this
        # schema only describes the logged training rows (lineage), never a model's input
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        dataset = from_pandas(train_rows.reset_index(drop=True), name=name)
        mlflow.log_input(dataset, context="training")  # the schema is inferred here
    mlflow.log_params({"train_rows": len(train_rows), "train_rows_sha256": digest})
    return digest


class _Preds:
    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def predict_proba(self, rows: pd.DataFrame) -> pd.DataFrame:
        return self.frame


def run_propensity_training(
    settings: Settings,
    as_of: date | datetime | str | None = None,
    products: Sequence[str] = PRODUCTS,
    config: PropensityConfig | None = None,
    window_days: int | None = None,
    embargo: bool | None = None,
    extra: ExtraFeatures | None = None,
    track: bool = True,
    register: bool = True,
    out_dir: Path | None = None,
    table: pd.DataFrame | None = None,
    plan: AsOfPlan | None = None,
    progress: bool = True,
) -> PropensityRun:
    """Train, evaluate on the held-out test date against the logistic baseline, track, register.

    ``table``/``plan`` skip the feature build (benchmarks reuse one table). ``out_dir`` gets
    the plots and metrics as files as well. ``config``, ``window_days`` and ``embargo``
    default to ``settings.models``. The oracle and the ceilings of a simulated bank:
    :func:`src.evaluation.propensity.oracle_gaps` on the returned run.
    """
    config = config or settings.models.propensity
    window_days = settings.models.window_days if window_days is None else window_days
    embargo = settings.models.embargo if embargo is None else embargo
    products = list(products)
    timings: dict[str, float] = {}
    plan = plan or plan_for(settings.catalog, as_of, window_days, embargo)
    t0 = time.perf_counter()
    if table is None:
        table = build_feature_table(
            settings.catalog, plan.dates, plan.window_days, products, extra=extra, progress=progress
        )
    timings["feature_table_s"] = time.perf_counter() - t0
    raw_columns = [
        c for c in table.columns if c in set(view_feature_columns()) or c.startswith("rule_")
    ]
    t0 = time.perf_counter()
    model = train_propensity(table, plan, products, config, raw_columns, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    splits = split_rows(table, plan, config.val_customer_share)
    test = splits["test"]
    scores = score_table(model, test, products)
    metrics = metrics_table(test, scores, products)
    gaps = gap_summary(metrics)
    figures = propensity_figures(model, test, scores, products)
    run = PropensityRun(plan, model, metrics, gaps, figures, test, timings)
    run.extra["train_rows"] = splits["train"]
    run.extra["as_of"] = "" if not as_of else f"{pd.Timestamp(as_of):%Y-%m-%d}"
    if out_dir is not None:
        _write_local(run, Path(out_dir))
    if track:
        _track(run, settings, config, products, register)
    return run


def _write_local(run: PropensityRun, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    run.metrics.to_csv(out_dir / "propensity_metrics.csv")
    run.gaps.to_csv(out_dir / "propensity_auc_gap.csv")
    for name, fig in run.figures.items():
        fig.savefig(out_dir / f"propensity_{name}.png", dpi=110, bbox_inches="tight")


def _track(
    run: PropensityRun,
    settings: Settings,
    config: PropensityConfig,
    products: list[str],
    register: bool,
) -> None:
    import mlflow

    from src.models.tracking import (
        code_version,
        configure_mlflow,
        log_figures,
        log_metrics_frame,
        log_pyfunc,
    )

    experiment_id = configure_mlflow(settings, EXPERIMENT)
    window = run.plan.as_dict()
    test_dates = window["test"]
    assert isinstance(test_dates, list)  # as_dict: each split is a list of date strings
    as_of = run.extra.get("as_of") or test_dates[-1]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"propensity {as_of}") as active:
        window_start = min(run.plan.dates)
        window_end = max(run.plan.dates) + pd.Timedelta(days=run.plan.window_days)
        mlflow.log_params(
            {
                "as_of": as_of,
                "data_window_start": f"{window_start:%Y-%m-%d}",
                "data_window_end": f"{window_end:%Y-%m-%d}",
            }
        )
        digest = _log_training_input(run.extra.get("train_rows"))
        mlflow.log_params(
            {
                **config.model_dump(),
                "products": ",".join(products),
                "window_days": run.plan.window_days,
                "n_features_raw": len(run.model.raw_columns),
                "n_features_matrix": len(run.model.matrix_columns),
            }
        )
        mlflow.log_params(
            {f"as_of_{k}": ",".join(v) for k, v in window.items() if isinstance(v, list)}
        )
        mlflow.set_tags(
            {
                **code_version(settings.root),
                "data_dir": str(settings.resolve(settings.data_dir)),
                "as_of_test": test_dates[-1],
            }
        )
        mlflow.log_dict(window, "data_window.json")
        log_metrics_frame(run.metrics)
        for p, m in run.model.products.items():
            mlflow.log_metric(f"{p}.best_iteration", m.best_iteration)
        mlflow.log_metrics(run.timings)
        score = mean_auc(run.model, run.test_rows, products)
        mlflow.log_metric("mean_auc", score)
        intervals = auc_confidence_intervals(run.model, run.test_rows, products)
        mlflow.log_metrics(intervals)
        mlflow.log_text(run.metrics.to_csv(), "tables/metrics.csv")
        mlflow.log_text(run.gaps.to_csv(), "tables/auc_gap.csv")
        log_figures(run.figures)
        train_rows = run.extra.get("train_rows")
        # what `nextoffer monitor` compares the current view with: the test snapshot, the
        # newest view of the plan and the rows the metrics above were measured on (why not the
        # training rows: src/models/monitor.py)
        log_reference(
            run.test_rows,
            run.model.raw_columns,
            snapshot=test_dates[-1],
            data_start=_data_start(settings.catalog),
            train_snapshots=[f"{d:%Y-%m-%d}" for d in run.plan.train],
        )
        run.run_id = active.info.run_id
        run.model_uri = log_pyfunc(run.model, run.test_rows, run.model.raw_columns)
        card_args = {
            "model_name": MODEL_NAME,
            "run_id": run.run_id,
            "as_of": as_of,
            "window": window,
            "data_window": (f"{window_start:%Y-%m-%d}", f"{window_end:%Y-%m-%d}"),
            "train_rows": 0 if train_rows is None else len(train_rows),
            "train_digest": digest,
            "metrics": run.metrics,
            "intervals": intervals,
            "calibration": {p: m.calibration for p, m in run.model.products.items()},
            "importances": {p: m.feature_importance() for p, m in run.model.products.items()},
            "code": code_version(settings.root),
        }
        version = None
        if register:
            ci = (intervals.get("mean_auc_ci_low"), intervals.get("mean_auc_ci_high"))
            description = version_description(
                f"Propensity per product ({', '.join(products)}): calibrated LightGBM on the "
                f"customer view, trained for as_of {as_of}.",
                run.run_id,
                {
                    "data window": f"{window_start:%Y-%m-%d} to {window_end:%Y-%m-%d}, "
                    f"{card_args['train_rows']:,} training rows (sha256 {digest})",
                    "test date": test_dates[-1],
                    "mean AUC": _with_interval(score, *ci),
                },
            )
            run.promotion = register_and_promote(
                run.model_uri,
                MODEL_NAME,
                metric="mean_auc",
                candidate_score=score,
                score_champion=champion_scorer(run.test_rows, run.model.raw_columns, products),
                tracking_uri=settings.tracking_uri,
                compare_champion=champion_comparison(
                    run.model, run.test_rows, run.model.raw_columns, products
                ),
                min_gain=settings.models.min_auc_gain,
                description=description,
            )
            version = run.promotion.version
            _tag_promotion(run.promotion)
        card = propensity_card(
            version=version,
            promotion=None if run.promotion is None else run.promotion.reason,
            **card_args,
        )
        mlflow.log_text(card, CARD_ARTIFACT)
        run.extra["model_card"] = card
        run.extra["experiment_id"] = experiment_id


def write_run_info(path: Path | str, **info) -> Path:
    """Small JSON a notebook writes next to itself so ``retrain`` finds its MLflow run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path


# --- CVR -------------------------------------------------------------------------------------
CVR_EXPERIMENT = "cvr"
CVR_MODEL_NAME = "nextoffer-cvr"


@dataclass
class CvrRun:
    """The CVR model, its held-out metrics, the segment report and the MLflow run; the test
    exposures, the scored view and the offers stay with it so an evaluation can reuse them."""

    model: object
    metrics: pd.DataFrame
    report: pd.DataFrame
    summary: pd.DataFrame
    weeks: dict[str, list[str]]
    figures: dict
    timings: dict[str, float]
    run_id: str | None = None
    per_offer: pd.DataFrame | None = None
    test_rows: pd.DataFrame | None = None
    view: pd.DataFrame | None = None  # the customers of the segment report (last snapshot)
    offers: pd.DataFrame | None = None
    snapshot: pd.Timestamp | None = None
    model_uri: str | None = None
    promotion: PromotionResult | None = None
    model_card: str | None = None


def run_cvr_training(
    settings: Settings,
    as_of: date | datetime | str | None = None,
    step_days: int | None = None,
    min_history_days: int = 7,
    track: bool = True,
    out_dir: Path | None = None,
    progress: bool = True,
    max_weeks: int | None = None,
    register: bool = True,
) -> CvrRun:
    """Weekly snapshots up to ``as_of``: exposures of the last week test, the week before
    validate, earlier weeks train; then the segment report on the last snapshot. The oracle's
    conversion probabilities of a simulated bank: :func:`src.evaluation.cvr.oracle_comparison`.

    ``max_weeks`` keeps only the latest snapshots (one customer view each: on a 100k bank a
    view is the cost, so the benchmark trains on the last few weeks). ``step_days`` defaults to
    ``settings.models.cvr_step_days``. Tracked like the propensity run (run name, as_of and
    window params, lineage of the training exposures, AUC interval, model card); ``register``
    registers it as ``nextoffer-cvr`` with the same champion/challenger rule (AUC on the same
    test exposures, paired bootstrap)."""
    from src.features.customer_view import build_customer_view
    from src.models import cvr

    step_days = step_days or settings.models.cvr_step_days
    start, end = data_period(settings.catalog)
    if as_of:
        end = min(end, pd.Timestamp(as_of).normalize())
    snaps = cvr.weekly_snapshots(
        start + pd.Timedelta(days=min_history_days), end - pd.Timedelta(days=1), step_days
    )
    if max_weeks:
        snaps = snaps[-max_weeks:]
    if len(snaps) < 3:
        raise ValueError(f"need 3 weekly snapshots before {end:%Y-%m-%d}, have {len(snaps)}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows = cvr.exposure_rows(settings.catalog, snaps, progress=progress)
    rows = rows.loc[rows["ts"] < end]
    timings["exposure_rows_s"] = time.perf_counter() - t0
    test, val = rows["snapshot"] == snaps[-1], rows["snapshot"] == snaps[-2]
    offers = settings.catalog.read("offers")
    t0 = time.perf_counter()
    model = cvr.train_cvr(rows.loc[~test & ~val], rows.loc[val], offers["offer_id"].tolist())
    timings["train_s"] = time.perf_counter() - t0
    metrics = cvr.evaluate_cvr(model, rows.loc[test])
    per_offer = cvr.per_offer_table(rows.loc[test], model.predict(rows.loc[test]))
    view = build_customer_view(settings.catalog, snaps[-1])
    view = view.loc[~view["is_closed"]].reset_index(drop=True)
    report = cvr.segment_report(view, offers, model)
    summary = cvr.segment_product_summary(report)
    weeks = {
        "train": [f"{s:%Y-%m-%d}" for s in snaps[:-2]],
        "val": [f"{snaps[-2]:%Y-%m-%d}"],
        "test": [f"{snaps[-1]:%Y-%m-%d}"],
        "end": [f"{end:%Y-%m-%d}"],
    }
    figures = {"segment_roas": plot_roas(summary)}
    run = CvrRun(
        model,
        metrics,
        report,
        summary,
        weeks,
        figures,
        timings,
        per_offer=per_offer,
        test_rows=rows.loc[test],
        view=view,
        offers=offers,
        snapshot=snaps[-1],
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        metrics.to_csv(Path(out_dir) / "cvr_metrics.csv")
        report.to_csv(Path(out_dir) / "segment_report.csv", index=False)
        for name, fig in figures.items():
            fig.savefig(Path(out_dir) / f"cvr_{name}.png", dpi=110, bbox_inches="tight")
    if track:
        _track_cvr(
            run,
            settings,
            train_rows=rows.loc[~test & ~val],
            as_of=f"{end:%Y-%m-%d}",
            step_days=step_days,
            n_val=int(val.sum()),
            register=register,
        )
    return run


def cvr_comparison(model, rows: pd.DataFrame, n_resamples: int = 1000, seed: int = 0):
    """``compare_champion`` for the CVR model: candidate and champion pyfunc on the same test
    exposures, AUC compared by a seeded paired bootstrap."""
    from src.models.tracking import serving_frame

    def compare(uri: str) -> PairedComparison:
        import mlflow

        champion = mlflow.pyfunc.load_model(uri).predict(serving_frame(rows, model.raw_columns))
        return paired_bootstrap_auc(
            {"convert": rows["convert"].to_numpy(int)},
            {"convert": model.predict(rows)},
            {"convert": np.asarray(pd.DataFrame(champion).iloc[:, 0], float)},
            n_resamples=n_resamples,
            seed=seed,
        )

    return compare


def _track_cvr(
    run: CvrRun,
    settings: Settings,
    train_rows: pd.DataFrame,
    as_of: str,
    step_days: int,
    n_val: int,
    register: bool,
) -> None:
    import mlflow

    from src.models.tracking import code_version, configure_mlflow, log_figures, log_pyfunc

    model = run.model
    assert isinstance(model, CvrModel)
    test = run.test_rows if run.test_rows is not None else train_rows.head(0)
    experiment_id = configure_mlflow(settings, CVR_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"cvr {as_of}") as active:
        weeks = run.weeks
        mlflow.log_params(
            {
                "as_of": as_of,
                "data_window_start": weeks["train"][0] if weeks["train"] else weeks["val"][0],
                "data_window_end": as_of,
                "step_days": step_days,
                "best_iteration": model.best_iteration,
                "n_val": n_val,
                "n_test": len(test),
            }
        )
        digest = _log_training_input(train_rows[[*model.raw_columns, "convert"]], name="cvr_train")
        mlflow.log_params({f"weeks_{k}": ",".join(v) for k, v in weeks.items()})
        mlflow.set_tags(
            {**code_version(settings.root), "data_dir": str(settings.resolve(settings.data_dir))}
        )
        mlflow.log_dict(weeks, "data_window.json")
        for scorer, row in run.metrics.iterrows():
            mlflow.log_metrics(
                {f"{scorer}.{k}": float(v) for k, v in row.items() if np.isfinite(v)}
            )
        ci = paired_bootstrap_auc(
            {"convert": test["convert"].to_numpy(int)},
            {"convert": model.predict(test)},
            {"convert": np.zeros(len(test))},
        )
        intervals = (
            {"auc_ci_low": ci.ci_low + 0.5, "auc_ci_high": ci.ci_high + 0.5} if ci.n_rows else {}
        )
        mlflow.log_metrics(intervals)
        mlflow.log_metrics(run.timings)
        mlflow.log_text(run.report.to_csv(index=False), "tables/segment_report.csv")
        mlflow.log_text(run.summary.to_csv(index=False), "tables/segment_product_summary.csv")
        if run.per_offer is not None:
            mlflow.log_text(run.per_offer.to_csv(), "tables/per_offer.csv")
        log_figures(run.figures)
        run.run_id = active.info.run_id
        run.model_uri = log_pyfunc(model, test, model.raw_columns)
        auc = float(run.metrics.loc["model", "auc"])
        importance = pd.Series(
            model.booster.booster_.feature_importance(importance_type="gain"),
            index=model.booster.booster_.feature_name(),
        )
        card_args = {
            "model_name": CVR_MODEL_NAME,
            "run_id": run.run_id,
            "as_of": as_of,
            "weeks": weeks,
            "rows": {"train": len(train_rows), "validation": n_val, "test": len(test)},
            "train_digest": digest,
            "metrics": run.metrics,
            "intervals": intervals,
            "per_offer": run.per_offer,
            "importance": importance,
            "code": code_version(settings.root),
        }
        version = None
        if register:
            auc_text = _with_interval(
                auc, intervals.get("auc_ci_low"), intervals.get("auc_ci_high")
            )
            description = version_description(
                f"Conversion rate per offer: LightGBM on exposures x customer view, trained for "
                f"as_of {as_of}.",
                run.run_id,
                {
                    "data window": f"snapshots {', '.join(weeks['train'][:1] + weeks['test'])}"
                    f", {len(train_rows):,} training exposures (sha256 {digest})",
                    "test week": weeks["test"][0],
                    "AUC": auc_text,
                },
            )
            run.promotion = register_and_promote(
                run.model_uri,
                CVR_MODEL_NAME,
                metric="auc",
                candidate_score=auc,
                score_champion=None,
                tracking_uri=settings.tracking_uri,
                compare_champion=cvr_comparison(model, test),
                min_gain=settings.models.min_auc_gain,
                description=description,
            )
            version = run.promotion.version
            _tag_promotion(run.promotion)
        card = cvr_card(
            version=version,
            promotion=None if run.promotion is None else run.promotion.reason,
            **card_args,
        )
        mlflow.log_text(card, CARD_ARTIFACT)
        run.model_card = card


def _data_start(catalog: Catalog) -> str | None:
    """The first day of the bank's data, for the monitor's history check; None when the run was
    handed its feature table and this catalog holds no validated data (the monitor then skips
    the history-truncation analysis instead of guessing)."""
    try:
        return f"{data_period(catalog)[0]:%Y-%m-%d}"
    except TableNotValidated:
        return None


def _with_interval(value: float, low: float | None, high: float | None) -> str:
    """A metric for a version description, with its 95% interval when there is one."""
    if low is None or high is None:
        return f"{value:.4f}"
    return f"{value:.4f} (95% CI {low:.4f} to {high:.4f})"


def _tag_promotion(promotion: PromotionResult) -> None:
    """Tag the active run with the version it registered and whether it became champion."""
    import mlflow

    mlflow.set_tags(
        {
            "registered_version": promotion.version,
            "promotion_outcome": "promoted" if promotion.promoted else "kept_champion",
        }
    )


def plot_roas(summary: pd.DataFrame, top: int = 20):
    """The best segment x product cells by ROAS (oracle's ROAS marked if the summary has it)."""
    import matplotlib.pyplot as plt

    head = summary.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(head) + 1.2))
    ax.barh(head["segment"] + " · " + head["product"], head["roas"], label="model")
    if "oracle_roas" in head:
        ax.plot(head["oracle_roas"], np.arange(len(head)), "k|", ms=10, label="oracle")
    ax.axvline(1, color="k", ls=":", lw=0.8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set(
        xlabel="ROAS (value / cost of one exposure per customer)",
        title="Best segment x product by ROAS",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
