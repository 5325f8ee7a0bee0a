"""The main job, step by step: what ``nextoffer demo`` (and ``make demo``) runs.

Each step is a function of the settings that reads and writes files under the data directory,
so a notebook or a scheduler can run any one of them on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from src.settings import Settings


def default_as_of(settings: Settings) -> datetime:
    """The day after the last simulated day: the view then sees the whole history."""
    start = datetime.combine(settings.sim.start_date, datetime.min.time())
    return start + timedelta(days=settings.sim.days)


def run_simulation(settings: Settings, progress: bool = True) -> dict[str, int]:
    """Simulate the synthetic bank into data/raw (observable) and data/truth (hidden)."""
    from src.data.synthetic import SimConfig, simulate

    config = SimConfig(**settings.sim.model_dump())
    return simulate(config, settings.raw_dir, settings.truth_dir, progress=progress)


def run_validation(settings: Settings, quarantine: bool = False) -> dict[str, dict[str, Any]]:
    """Validate the raw tables and publish the accepted rows: the only door downstream."""
    from src.data.loaders import validate_raw

    return validate_raw(
        settings.catalog,
        quarantine=quarantine,
        chunk_rows=settings.validation_chunk_rows,
        memory_limit=settings.validation_memory_limit,
    )


def run_customer_view(settings: Settings, as_of: datetime | None = None) -> dict[str, Path]:
    """Stitch identities and build the customer view as of a date; write them as Parquet.

    Both go straight from DuckDB to Parquet, so this step scales to the full bank.
    """
    from src.features.customer_view import write_customer_view
    from src.features.identity import write_identity

    as_of = as_of or default_as_of(settings)
    paths = write_identity(settings.catalog, as_of=as_of)
    paths["customer_view"] = write_customer_view(settings.catalog, as_of)
    return paths


def run_detection(
    settings: Settings,
    as_of: datetime | None = None,
    rules_path: Path | None = None,
    stitched_events_path: Path | None = None,
) -> dict[str, Path]:
    """Run the YAML rules over the stitched history: detections, step funnels, rule features.

    Detections use events strictly before ``as_of`` (timeouts fire only if their deadline is
    before it), so the rule features as of that date are point-in-time correct. Pass the
    stitched stream written for the same ``as_of`` (``run_customer_view``) to skip re-stitching.
    """
    import pandas as pd

    from src.features.detection import detect, funnel_report, load_rules, rule_features
    from src.features.identity import stitched_events

    as_of = as_of or default_as_of(settings)
    rules = load_rules(rules_path) if rules_path else load_rules()
    catalog = settings.catalog
    if stitched_events_path is not None:
        events = pd.read_parquet(stitched_events_path).astype({"session_id": "Int64"})
    else:
        events = stitched_events(catalog, as_of=as_of)
    customers = catalog.read("customers", columns=["customer_id", "life_stage"])
    detections = detect(events, rules, until=as_of)
    funnels = pd.concat(
        [
            funnel_report(events, rule, customers=customers, until=as_of).assign(rule=rule.name)
            for rule in rules
        ],
        ignore_index=True,
    )
    features = rule_features(detections, as_of, customers, rules=rules, wide=True)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: catalog.path(name, as_of) for name in ("detections", "rule_funnels", "rule_features")
    }
    detections.to_parquet(paths["detections"], index=False)
    funnels.to_parquet(paths["rule_funnels"], index=False)
    features.to_parquet(paths["rule_features"], index=False)
    return paths


def run_training(settings: Settings, echo: Callable[[str], None] = print) -> None:
    """Train the propensity models on held-out time, track the run, register and maybe promote.

    The training reads no truth; on the simulated bank the demo then shows the oracle's AUC
    next to the model's (``src.evaluation``), on a real bank only the model and the baseline.
    """
    from src.evaluation.propensity import has_truth, oracle_gaps
    from src.models.train import run_propensity_training

    result = run_propensity_training(settings, progress=False)
    gaps = oracle_gaps(settings, result, figures=False).gaps if has_truth(settings) else result.gaps
    for product, row in gaps.iterrows():
        oracle = f"  oracle {row['oracle']:.3f}" if "oracle" in row else ""
        fitted = result.model.products.get(str(product))
        calibration = f"  calibration {fitted.calibration}" if fitted is not None else ""
        echo(
            f"      {product:<8} AUC {row['model']:.3f}{oracle}  logreg {row['logreg']:.3f}"
            f"{calibration}"
        )
    if result.promotion is not None:
        outcome = "champion" if result.promotion.promoted else "challenger"
        echo(
            f"      registered {result.promotion.name} v{result.promotion.version} as "
            f"{outcome}: {result.promotion.reason}"
        )


@dataclass(frozen=True)
class BanditTrainingResult:
    """What the bandit step did: how much log it learned from and how it scored held out."""

    train_decisions: int
    held_out_decisions: int
    held_out_dr_value: float
    logged_policy_value: float
    promotion: Any


def run_bandit_training(
    settings: Settings,
    held_out_share: float | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
) -> BanditTrainingResult:
    """Train the content bandit off-policy from the bank's logged exposures, score it, register it.

    The log's earlier days train the VW bandit (each decision with the probability the bank's
    logging policy chose it with); the later ``held_out_share`` of days scores it by the doubly
    robust off-policy estimate. It is registered as ``challenger`` and becomes ``champion`` only
    if it beats the current champion on that same held-out log, so the endpoint never swaps
    in a bandit that was not shown to be better first. The learner and ``held_out_share``
    default to ``settings.bandit``.
    """
    import pandas as pd

    from src.models.bandit import (
        BanditConfig,
        ContextualBandit,
        log_bandit,
        logged_decisions,
        pyfunc_input_example,
        register_bandit,
        train_offline,
    )
    from src.models.bandit_eval import held_out_scorer
    from src.models.bandit_features import build_views, default_feature_spec, view_schedule

    exposures = settings.catalog.read("exposures")
    offers = settings.catalog.read("offers")
    start = exposures["ts"].min().normalize()
    end = exposures["ts"].max().normalize() + pd.Timedelta(days=1)
    days = (end - start).days
    share = settings.bandit.held_out_share if held_out_share is None else held_out_share
    held_out_days = max(1, round(days * share))
    if days - held_out_days < 1:
        raise ValueError(f"{days} logged day(s): too few to train a bandit and hold some out")
    split = end - pd.Timedelta(days=held_out_days)
    spec, config = default_feature_spec(), BanditConfig.of(settings.bandit)
    views = build_views(settings.catalog, view_schedule(start, end, 7), spec, progress=progress)
    log = logged_decisions(exposures, views, offers, config, end=split)
    bandit = ContextualBandit(config, spec)
    train_offline(bandit, log, offers, progress=progress)
    score = held_out_scorer(settings.catalog, views, config, start=split, seed=config.seed)
    value = score(bandit)
    held_out = logged_decisions(exposures, views, offers, config, start=split)
    logged_value = float(held_out["reward"].mean()) if len(held_out) else float("nan")
    settings.artifact_root.mkdir(parents=True, exist_ok=True)
    uri = log_bandit(
        bandit,
        offers,
        run_name=f"bandit-{split:%Y-%m-%d}",
        metrics={
            "ope_dr_value": value,
            "logged_policy_value": logged_value,
            "train_decisions": float(len(log)),
        },
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_root.as_uri(),
        input_example=pyfunc_input_example(log, offers),
    )
    from src.models.model_card import version_description

    description = version_description(
        f"Vowpal Wabbit contextual bandit ({config.exploration}) trained off-policy on the "
        f"logged exposures {start:%Y-%m-%d} to {split:%Y-%m-%d}, scored on "
        f"{split:%Y-%m-%d} to {end:%Y-%m-%d} (held out).",
        None,
        {
            "held-out value (doubly robust)": f"{value:.5f}",
            "logged policy's value": f"{logged_value:.5f}",
            "decisions": f"{len(log):,} train, {len(held_out):,} held out",
        },
    )
    promotion = register_bandit(
        uri,
        "nextoffer-bandit",
        value,
        score_champion=score,
        tracking_uri=settings.tracking_uri,
        description=description,
    )
    return BanditTrainingResult(len(log), len(held_out), value, logged_value, promotion)


def run_demo(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, Path]:
    """Simulate a small bank, validate it, stitch identities and build the view; say where."""
    import pandas as pd

    from src.features.feature_table import TooShortForTimeSplit

    started = time.perf_counter()
    echo(
        f"1/7 simulating {settings.sim.customers:,} customers x {settings.sim.days} days "
        f"(seed {settings.sim.seed}) ..."
    )
    counts = run_simulation(settings)
    for table, rows in counts.items():
        echo(f"      {table:<14} {rows:>10,} rows")

    echo("2/7 validating raw tables against the data contract ...")
    report = run_validation(settings)
    echo(
        f"      {sum(report['accepted'].values()):,} rows accepted, "
        f"{sum(report['rejected'].values()):,} rejected -> {settings.validated_dir}"
    )

    as_of = default_as_of(settings)
    echo(f"3/7 stitching identities and building the customer view as of {as_of:%Y-%m-%d} ...")
    paths = run_customer_view(settings, as_of=as_of)
    view = pd.read_parquet(paths["customer_view"])
    identity = pd.read_parquet(paths["identity_map"])
    echo(f"      customer view: {len(view):,} customers x {view.shape[1]} columns")
    echo(
        f"      identity map: {len(identity):,} devices/cookies, "
        f"{int(identity['is_shared'].sum()):,} shared (not merged)"
    )

    echo("4/7 detecting behaviour with the rules in src/features/rules ...")
    paths.update(
        run_detection(settings, as_of=as_of, stitched_events_path=paths["stitched_events"])
    )
    detections = pd.read_parquet(paths["detections"])
    for (rule, kind), count in detections.groupby(["rule", "kind"]).size().items():
        echo(f"      {rule:<30} {kind:<8} {count:>8,}")

    echo("5/7 training propensity models (MLflow, SQLite under mlruns/) ...")
    try:
        run_training(settings, echo=echo)
    except TooShortForTimeSplit as reason:  # a tiny demo bank: serve with the fallback order
        echo(f"      skipped: {reason}")

    echo("6/7 training the content bandit (VW) from the logged offer exposures ...")
    bandit = run_bandit_training(settings, echo=echo)
    outcome = "champion" if bandit.promotion.promoted else "challenger"
    echo(
        f"      {bandit.train_decisions:,} logged decisions learned; held out "
        f"{bandit.held_out_decisions:,}: click rate {bandit.logged_policy_value:.4f} logged vs "
        f"{bandit.held_out_dr_value:.4f} bandit (doubly robust estimate)"
    )
    echo(
        f"      registered {bandit.promotion.name} v{bandit.promotion.version} as {outcome}: "
        f"{bandit.promotion.reason}"
    )

    from src.serving.service import run_demo as serve_a_few_decisions

    echo("7/7 starting the scoring endpoint, sending a few decisions and rewards ...")
    serve_a_few_decisions(settings, echo=echo)

    echo(f"\ndone in {time.perf_counter() - started:.1f}s. Where to look:")
    echo(f"  raw tables       {settings.raw_dir}")
    echo(f"  validated        {settings.validated_dir}")
    for name, path in paths.items():
        echo(f"  {name:<16} {path}")
    echo(f"  MLflow           {settings.tracking_uri}  (mlflow ui --backend-store-uri ...)")
    echo(
        "  notebooks        make lab  ->  notebooks/01_customer_view.ipynb, "
        "02_detection_and_journeys.ipynb"
    )
    return paths
