"""Bandit speed: VW training throughput from the decision log, decision latency at 20 candidates.

Training throughput is measured end to end (format the text example + ``learn``) and for VW
alone (pre-formatted examples), so the cost of our Python formatting is visible next to VW's.
Latency is one decision: format the request's example with 20 candidate offers, predict the
PMF, sample — what the offer slot pays per request. Its baseline in the same run is the
logged pyfunc's path (``predict_frame`` on a one-row DataFrame, as ``mlflow models serve`` would
call it per request) on the same contexts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import Report, bank_params, trusted_catalog
from src.models.bandit import BanditConfig, ContextualBandit, logged_decisions, predict_frame
from src.models.bandit_features import (
    build_views,
    default_feature_spec,
    slot_candidates,
    vw_example,
)


def run(
    raw_dir: Path,
    truth_dir: Path,
    max_examples: int = 50_000,
    decisions: int = 5_000,
    log_days: int = 14,
    seed: int = 0,
) -> Report:
    """Train on up to ``max_examples`` logged decisions; time ``decisions`` choices over the
    whole catalog."""
    raw_dir = Path(raw_dir)
    catalog = trusted_catalog(raw_dir.parent)
    spec = default_feature_spec()
    config = BanditConfig(seed=seed)
    offers = catalog.read("offers")
    exposures = catalog.read("exposures")
    start = exposures["ts"].min().normalize()
    end = start + pd.Timedelta(days=log_days)
    views = build_views(catalog, [start, start + pd.Timedelta(days=7)], spec)
    log = logged_decisions(exposures[exposures["ts"] < end], views, offers, config).head(
        max_examples
    )
    by_slot = slot_candidates(offers)

    bandit = ContextualBandit(config, spec)
    t0 = time.perf_counter()
    for r in log.itertuples(index=False):
        bandit.learn(r.context, by_slot[r.slot], int(r.action), float(r.prob), float(r.reward))
    end_to_end = time.perf_counter() - t0

    texts = [
        vw_example(
            r.context, by_slot[r.slot], spec, label=(int(r.action), float(r.reward), float(r.prob))
        )
        for r in log.itertuples(index=False)
    ]
    vw_only = ContextualBandit(config, spec)
    t0 = time.perf_counter()
    for lines in texts:
        vw_only.vw.learn(lines)
    vw_seconds = time.perf_counter() - t0

    all_offers = offers.to_dict("records")  # the whole catalog: 20 candidate offers
    rng = np.random.default_rng(seed)
    contexts = log["context"].sample(
        min(decisions, len(log)), replace=len(log) < decisions, random_state=seed
    )
    latency = np.empty(len(contexts))
    for i, ctx in enumerate(contexts):
        t0 = time.perf_counter_ns()
        bandit.choose(ctx, all_offers, rng)
        latency[i] = (time.perf_counter_ns() - t0) / 1_000
    candidate_ids = ",".join(offers["offer_id"].astype(str))
    frames = [
        pd.DataFrame(
            [{**ctx, "seen": json.dumps(ctx.get("seen", {})), "candidates": candidate_ids}]
        )
        for ctx in contexts.head(min(1_000, len(contexts)))
    ]
    pyfunc_latency = np.empty(len(frames))
    for i, frame in enumerate(frames):
        t0 = time.perf_counter_ns()
        predict_frame(bandit, offers, frame)
        pyfunc_latency[i] = (time.perf_counter_ns() - t0) / 1_000
    params = {
        "bank": bank_params(raw_dir.parent),
        "log_days": log_days,
        "max_examples": max_examples,
        "decisions_requested": decisions,
        "seed": seed,
        "bandit": config.model_dump(),
        "vw_args": config.vw_args(spec),
    }
    results = {
        "examples": len(log),
        "train_examples_per_s": round(len(log) / end_to_end),
        "train_vw_only_examples_per_s": round(len(log) / vw_seconds),
        "candidates": len(all_offers),
        "decisions": len(latency),
        "decision_us_median": round(float(np.median(latency)), 1),
        "decision_us_p99": round(float(np.percentile(latency, 99)), 1),
        "pyfunc_decisions": len(pyfunc_latency),
        "pyfunc_decision_us_median": round(float(np.median(pyfunc_latency)), 1),
        "pyfunc_decision_us_p99": round(float(np.percentile(pyfunc_latency, 99)), 1),
        "speedup_median_vs_pyfunc": round(float(np.median(pyfunc_latency) / np.median(latency)), 2),
        "vw_share_of_training": round(vw_seconds / end_to_end, 3),
    }
    return Report(params, results, notes(results))


def notes(r: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    return [
        f"training on {r['examples']:,} logged decisions: {r['train_examples_per_s']:,} examples/s "
        f"end to end, {r['train_vw_only_examples_per_s']:,} in VW alone (VW is "
        f"{100 * r['vw_share_of_training']:.0f} % of the time)",
        f"a decision over {r['candidates']} candidates: {r['decision_us_median']:,.0f} µs median, "
        f"{r['decision_us_p99']:,.0f} µs p99; the logged pyfunc's path "
        f"{r['pyfunc_decision_us_median']:,.0f} µs median ({r['speedup_median_vs_pyfunc']:.1f}x)",
    ]
