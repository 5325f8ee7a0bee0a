"""A propensity run next to the simulator's truth: the oracle and the ceilings on the test rows.

References on the run's test rows, per product: ``oracle`` (the simulator's true probability
for the label window, ``Oracle.true_signup_prob``), ``need_frozen`` (the organic signup
probability from the true need on the day *before* as_of, frozen over the window),
``oracle_organic`` (the true window probability without the offers' uplift), ``bayes_as_of``
(:func:`bayes_as_of`: the expected window probability given the full true state the day before,
the honest ceiling of any model scoring on as_of) and ``static_only``. They go through the same
metrics, gaps and plots as the model (:mod:`src.models.evaluate`): gap_to_oracle =
gap_to_ceiling + drift_gap + offers_gap (``gap_summary``).

Training (:func:`src.models.train.run_propensity_training`) never reads the truth;
:func:`oracle_gaps` adds it afterwards, for the demo, notebook 10 and the benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from src.models.evaluate import gap_summary, metrics_table, propensity_figures, score_table
from src.models.train import EXPERIMENT, PropensityRun
from src.settings import Settings


def has_truth(settings: Settings) -> bool:
    """Whether the bank is a simulated one with its truth directory (a real bank has none)."""
    return (settings.truth_dir / "meta.json").exists()


def oracle_scores(
    truth_dir: Path | str,
    raw_dir: Path | str,
    rows: pd.DataFrame,
    products: Sequence[str],
    window_days: int,
) -> dict[str, pd.DataFrame]:
    """``oracle`` and ``need_frozen`` probabilities for ``rows`` (customer_id, as_of), per product."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic.response import organic_signup_prob

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    cust = oracle.customer_idx(rows["customer_id"])
    day = ((pd.to_datetime(rows["as_of"]) - oracle.start).dt.days).to_numpy()
    prev = np.clip(day - 1, 0, oracle.days - 1)
    horizon = np.clip(np.minimum(day + window_days, oracle.days) - day, 0, None)
    true, frozen = {}, {}
    for p in products:
        true[p] = np.empty(len(rows))
        for d in np.unique(day):
            at = day == d
            true[p][at] = oracle.true_signup_prob(
                rows.loc[at, "customer_id"], p, rows.loc[at, "as_of"].iloc[0], window_days
            )
        need = np.asarray(oracle.needs[prev, cust, PRODUCTS.index(p)], dtype=float)
        frozen[p] = 1.0 - (1.0 - organic_signup_prob(need)) ** horizon
    return {
        "oracle": pd.DataFrame(true, index=rows.index),
        "need_frozen": pd.DataFrame(frozen, index=rows.index),
    }


@dataclass(frozen=True)
class HoldingDueDays:
    """The due days that schedule the need pushes (``needs.push_logits``), customers in order."""

    n: int
    savings_maturity_day: np.ndarray
    auto_transfer_end_day: np.ndarray


class TruthState(TypedDict):
    """:func:`truth_state`: the simulator's need state of every customer at the end of a day."""

    customer_id: np.ndarray
    stage: np.ndarray
    static: np.ndarray
    walk: np.ndarray
    event: np.ndarray
    pop: HoldingDueDays


def truth_state(truth_dir: Path | str, raw_dir: Path | str, last_day: int) -> TruthState:
    """The simulator's full need state at the end of ``last_day``, rebuilt from the truth files.

    need = sigmoid(static + walk + event + push) (``synthetic.needs``): static comes from the
    traits and the customer master, push from the due dates of the holdings held at the start;
    the rest of the stored logit is split into the AR(1) walk and the life-event term by
    replaying the days: an innovation of more than 1.25 logits (10 walk sigmas; a jump is 2.5)
    is an event. Customers in the traits' order.
    """
    from src.data.schemas import INCOME_BANDS, LIFE_STAGES, PRODUCTS
    from src.data.synthetic import needs as N

    truth_dir, raw_dir = Path(truth_dir), Path(raw_dir)
    import json

    meta = json.loads((truth_dir / "meta.json").read_text())
    start = pd.Timestamp(meta["start_us"] * 1000)
    traits = pd.read_parquet(truth_dir / "customer_traits.parquet")
    ids = pd.Index(traits["customer_id"].astype(str))
    income = (
        pd.read_parquet(raw_dir / "customers.parquet", columns=["customer_id", "income_band"])
        .set_index("customer_id")["income_band"]
        .reindex(ids)
    )
    stage = traits["life_stage"].map({s: i for i, s in enumerate(LIFE_STAGES)}).to_numpy(np.int64)
    inc = income.map({s: i for i, s in enumerate(INCOME_BANDS)}).to_numpy(np.int64)
    holds = traits[[f"holds_{p}" for p in PRODUCTS]].to_numpy(float)
    offset = traits[[f"need_offset_{p}" for p in PRODUCTS]].to_numpy(np.float32)
    static = (N.STAGE_BASE[stage] + N.INCOME_EFFECT[inc] + N.HOLDS_EFFECT * holds + offset).astype(
        np.float32
    )
    holdings = pd.read_parquet(raw_dir / "holdings.parquet")
    holdings = holdings.loc[holdings["opened_at"] < start]
    due = {}
    for kind, col in (("savings", "maturity_date"), ("auto_transfer", "auto_transfer_end_date")):
        h = holdings.loc[holdings["holding_type"] == kind]
        days = np.full(len(ids), 1 << 30, dtype=np.int64)
        days[ids.get_indexer(h["customer_id"].astype(str))] = (h[col] - start).dt.days.to_numpy()
        due[kind] = days
    pop = HoldingDueDays(
        n=len(ids), savings_maturity_day=due["savings"], auto_transfer_end_day=due["auto_transfer"]
    )
    stored = np.load(truth_dir / "needs.npy", mmap_mode="r")
    walk: np.ndarray | None = None
    event: np.ndarray | None = None
    for d in range(last_day + 1):
        need = np.clip(np.asarray(stored[d], np.float64), 1e-7, 1 - 1e-7)
        rest = np.log(need / (1 - need)) - static - N.push_logits(pop, d)
        if walk is None or event is None:  # day 0: no previous day, all of it is the walk
            walk, event = rest, np.zeros_like(rest)
            continue
        jump = rest - (N.WALK_RHO * walk + N.EVENT_DECAY * event) > 1.25
        event = N.EVENT_DECAY * event + N.EVENT_JUMP * jump
        walk = rest - event
    if walk is None or event is None:
        raise ValueError(f"last_day must be a day of the simulation (>= 0), got {last_day}")
    return {
        "customer_id": ids.to_numpy(),
        "stage": stage,
        "static": static,
        "walk": walk,
        "event": event,
        "pop": pop,
    }


def bayes_as_of(
    state: TruthState,
    first_day: int,
    window_days: int,
    n_paths: int = 32,
    seed: int = 0,
    chunk: int = 8,
) -> np.ndarray:
    """E[P(organic signup in [first_day, first_day + window)) | full state the day before].

    Monte Carlo over the simulator's own dynamics (``needs.advance``: walk noise, life events;
    pushes are scheduled, so known). The honest ceiling for any model scoring on as_of: it knows
    everything a model could ever learn about the past (static offsets included) and averages
    over what has not happened yet. Offers shown inside the window are left out (organic
    hazard), so ``oracle_organic`` - ``bayes_as_of`` is the pure need drift. (customers, products).
    """
    from src.data.synthetic import needs as N
    from src.data.synthetic.response import organic_signup_prob

    rng = np.random.default_rng(seed)
    static, stage, pop = state["static"], state["stage"], state["pop"]
    n, k = static.shape
    pushes = [N.push_logits(pop, d) for d in range(first_day, first_day + window_days)]
    total = np.zeros((n, k))
    for lo in range(0, n_paths, chunk):
        m = min(chunk, n_paths - lo)
        walk = np.repeat(state["walk"][None].astype(np.float32), m, axis=0)
        event = np.repeat(state["event"][None].astype(np.float32), m, axis=0)
        log_none = np.zeros((m, n, k))
        for push in pushes:
            walk = N.WALK_RHO * walk + rng.normal(0.0, N.WALK_SIGMA, walk.shape).astype(np.float32)
            event = N.EVENT_DECAY * event
            path, cust = np.nonzero(rng.random((m, n)) < N.EVENT_RATE)
            if len(cust):
                cum = N.LIFE_EVENT_PRODUCT[stage[cust]].cumsum(axis=1)
                product = (rng.random(len(cust))[:, None] > cum).sum(axis=1).clip(0, k - 1)
                event[path, cust, product] += N.EVENT_JUMP
            need = 1.0 / (1.0 + np.exp(-(static[None] + walk + event + push[None])))
            log_none += np.log1p(-organic_signup_prob(need))
        total += (1.0 - np.exp(log_none)).sum(axis=0)
    return total / n_paths


def ceiling_scores(
    truth_dir: Path | str,
    raw_dir: Path | str,
    rows: pd.DataFrame,
    products: Sequence[str],
    window_days: int,
    n_paths: int = 32,
) -> dict[str, pd.DataFrame]:
    """``oracle_organic`` (true window probability without the offers' uplift), ``bayes_as_of``
    (:func:`bayes_as_of`) and ``static_only`` (the never-moving part of the need alone, frozen)
    for ``rows`` — the references that split the gap to the oracle (see module docstring)."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic.response import organic_signup_prob

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    day = ((pd.to_datetime(rows["as_of"]) - oracle.start).dt.days).to_numpy()
    organic = {p: np.empty(len(rows)) for p in products}
    bayes = {p: np.empty(len(rows)) for p in products}
    static_only = {p: np.empty(len(rows)) for p in products}
    for d in np.unique(day):
        at = np.flatnonzero(day == d)
        ids = rows["customer_id"].iloc[at]
        horizon = int(min(d + window_days, oracle.days) - d)
        state = truth_state(truth_dir, raw_dir, int(d) - 1)
        cust = pd.Index(state["customer_id"]).get_indexer(ids.astype(str))
        ceiling = bayes_as_of(state, int(d), horizon, n_paths=n_paths)
        for p in products:
            j = PRODUCTS.index(p)
            organic[p][at] = oracle.true_signup_prob(
                ids, p, rows["as_of"].iloc[at[0]], window_days, include_offers=False
            )
            bayes[p][at] = ceiling[cust, j]
            need = 1.0 / (1.0 + np.exp(-state["static"][cust, j].astype(float)))
            static_only[p][at] = 1.0 - (1.0 - organic_signup_prob(need)) ** horizon

    def frame(d):
        return pd.DataFrame(d, index=rows.index)

    return {
        "oracle_organic": frame(organic),
        "bayes_as_of": frame(bayes),
        "static_only": frame(static_only),
    }


@dataclass
class OracleComparison:
    """The run's scorers and the references on its test rows: the frames of a run, extended."""

    scores: dict[str, pd.DataFrame]
    metrics: pd.DataFrame
    gaps: pd.DataFrame
    figures: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def oracle_gaps(
    settings: Settings,
    run: PropensityRun,
    ceiling_paths: int = 0,
    figures: bool = True,
) -> OracleComparison:
    """Score ``run``'s test rows with the oracle (and the ceilings) next to its own scorers.

    ``metrics`` and ``gaps`` are ``run.metrics`` / ``run.gaps`` with the reference scorers and
    the gap columns added; ``figures`` the run's plots with the references drawn in.
    ``ceiling_paths`` > 0 adds ``oracle_organic``, ``bayes_as_of`` and ``static_only``
    (:func:`ceiling_scores`, Monte Carlo with that many paths; minutes at 100k customers).
    """
    if not has_truth(settings):
        raise FileNotFoundError(f"no simulator truth under {settings.truth_dir}")
    products = list(run.model.products)
    test = run.test_rows
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reference = oracle_scores(
        settings.truth_dir, settings.raw_dir, test, products, run.plan.window_days
    )
    timings["oracle_s"] = time.perf_counter() - t0
    if ceiling_paths:
        t0 = time.perf_counter()
        reference.update(
            ceiling_scores(
                settings.truth_dir,
                settings.raw_dir,
                test,
                products,
                run.plan.window_days,
                n_paths=ceiling_paths,
            )
        )
        timings["ceiling_s"] = time.perf_counter() - t0
    scores = score_table(run.model, test, products, reference)
    metrics = metrics_table(test, scores, products)
    return OracleComparison(
        scores,
        metrics,
        gap_summary(metrics),
        propensity_figures(run.model, test, scores, products) if figures else {},
        timings,
    )


def log_comparison(settings: Settings, run_id: str, comparison: OracleComparison) -> None:
    """Add the comparison to the training's MLflow run (``<product>.<scorer>.<metric>`` for
    the references, ``<product>.gap_to_oracle_auc``, the gap table and the plots with the
    references), so a run on the simulated bank still shows how far it is from the truth."""
    import mlflow

    from src.models.tracking import configure_mlflow, log_figures, log_metrics_frame

    configure_mlflow(settings, EXPERIMENT)
    references = comparison.metrics.drop(
        index=["model", "lgbm_raw", "logreg"], level="scorer", errors="ignore"
    )
    with mlflow.start_run(run_id=run_id):
        log_metrics_frame(references)
        mlflow.log_metrics(
            {
                f"{p}.gap_to_oracle_auc": float(v)
                for p, v in comparison.gaps.get("gap_to_oracle", {}).items()
                if np.isfinite(v)
            }
        )
        mlflow.log_metrics(comparison.timings)
        mlflow.log_text(comparison.gaps.to_csv(), "tables/auc_gap_oracle.csv")
        log_figures(comparison.figures, artifact_dir="plots_oracle")
