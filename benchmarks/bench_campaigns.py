"""Campaigns: dry-run time and peak memory, outbox throughput (SQLite vs PostgreSQL), and the
report's lift estimate against the simulator's true lift.

1. **Dry run** of a rule + model segment campaign (``age 30-49`` and ``detected(...)`` or the
   top 5 % by score, minus closed accounts etc.) over 100k and 1M customers, each in a fresh
   process (peak RSS is that process's): plan (segment, gate) + funnel (bulk fatigue read).
2. **Outbox**: enqueue (cap charge + outbox row in one transaction per batch) and dispatch to
   the simulated channel (acks marked in batches), messages/s, with the embedded SQLite store
   and, when the server answers, PostgreSQL (a fresh schema, dropped after).
3. **Lift vs truth**: a 100k-customer campaign answered by the simulator's response model
   (``src.data.synthetic.campaigns``; needs and traits drawn for the run); the ITT estimate, its
   95 % interval and the oracle's true ITT lift, over several seeds (coverage).

Run alone: ``python -m benchmarks.run --only campaigns``.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import NO_BANK, Report
from benchmarks.harness.campaign_bank import AS_OF, write_campaign_bank

SPEC = {
    "campaign_id": "bench",
    "owner": "bench",
    "who": {
        "intersect": [
            {"rule": "age BETWEEN 30 AND 49"},
            {
                "union": [
                    {"rule": "detected('loan_inquiry_no_application', 14)"},
                    {"model": {"product": "savings", "threshold": 0.1}},
                ]
            },
        ]
    },
    "when": {"at": "2026-02-05T12:00:00"},
    "holdout": {"share": 0.1},
    "steps": [{"step_id": "s1", "channel": "push", "offer_id": "OF02"}],
}


def _dry_run(data_dir: str, queue: Any) -> None:
    from src.campaigns import engine
    from src.campaigns.spec import CampaignSpec
    from src.campaigns.state import CampaignDB
    from src.contact.store_sql import SQLContactStore
    from src.data.catalog import Catalog

    catalog = Catalog(Path(data_dir))
    db = CampaignDB(SQLContactStore(Path(data_dir) / f"dry-{uuid.uuid4().hex}.sqlite"))
    started = time.perf_counter()
    ctx = engine.Context.open(catalog, AS_OF, db)
    p = engine.plan(CampaignSpec.model_validate(SPEC), ctx)
    funnel = engine.funnel(p, ctx, catalog.read("scores", AS_OF))
    seconds = time.perf_counter() - started
    queue.put(
        {
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "segment": funnel["funnel"]["segment"],
            "to_contact": funnel["to_contact"],
            "expected_conversions": round(funnel.get("expected_conversions", 0.0), 1),
        }
    )


def dry_run(data_dir: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_dry_run, args=(str(data_dir), queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


def outbox(data_dir: Path, url: str | None, messages: int) -> dict[str, Any]:
    from src.campaigns import engine
    from src.campaigns.adapters import SimulatedChannel
    from src.campaigns.spec import CampaignSpec
    from src.campaigns.state import CampaignDB
    from src.contact.store_sql import SQLContactStore
    from src.data.catalog import Catalog

    schema = None
    if url is None:
        store = SQLContactStore(Path(data_dir) / f"outbox-{uuid.uuid4().hex}.sqlite")
    else:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        store = SQLContactStore(url, schema=schema)
    try:
        db = CampaignDB(store)
        ctx = engine.Context.open(Catalog(Path(data_dir)), AS_OF, db)
        last = f"C{messages * 3:07d}"  # ~1/3 pass consent and exclusions
        spec = CampaignSpec.model_validate(
            {**SPEC, "who": {"rule": f"customer_id < '{last}'"}, "holdout": {"share": 0.0}}
        )
        p = engine.plan(spec, ctx)
        started = time.perf_counter()
        result = engine.run(spec, ctx, SimulatedChannel(), require_approval=False, batch_size=500)
        seconds = time.perf_counter() - started
        plan_rows = len(p.frame)
    finally:
        if schema:
            store.drop_schema()
        store.close()
    return {
        "engine": "postgresql" if url else "sqlite",
        "audience": plan_rows,
        "sent": result.sent,
        "seconds": round(seconds, 2),
        "messages_per_s": round(result.sent / seconds, 1),
    }


def lift_vs_truth(n: int, seeds: int) -> dict[str, Any]:
    from src.campaigns.gate import hash_unit
    from src.campaigns.report import itt_lift
    from src.data.synthetic.campaigns import CampaignTruth, effects, respond
    from src.evaluation.campaigns import true_itt_lift

    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        truth = CampaignTruth(
            pd.Index([f"C{i:07d}" for i in range(n)]),
            rng.beta(1.2, 4.0, (n, 6)),
            rng.lognormal(0, 0.35, n),
            rng.gamma(2.0, 0.5, n),
            np.clip(rng.normal(20, 3, n), 7, 23),
        )
        ids = truth.customer_ids
        eff = effects(truth, ids, "savings", "push", 19, seed=seed)
        arms = pd.Series(
            np.where(hash_unit(ids, f"b{seed}") < 0.1, "control", "treatment"), index=ids
        )
        reach = hash_unit(ids, f"r{seed}") < 0.6  # consent, caps, exclusions: 40 % not contacted
        contacted = pd.Series((arms == "treatment").to_numpy() & reach, index=ids)
        drawn = respond(eff, contacted, seed=seed)
        lift = itt_lift(arms, drawn["converted"], 0.1)
        true = true_itt_lift(eff, arms, drawn["delivered"])
        rows.append(
            {
                "seed": seed,
                "estimate_pp": round(lift.lift * 100, 3),
                "ci_pp": [round(lift.ci_low * 100, 3), round(lift.ci_high * 100, 3)],
                "true_pp": round(true * 100, 3),
                "covered": bool(lift.ci_low <= true <= lift.ci_high),
                "srm_p": round(lift.srm_p_value, 3),
            }
        )
    errors = [abs(r["estimate_pp"] - r["true_pp"]) for r in rows]
    return {
        "customers": n,
        "runs": rows,
        "coverage": sum(r["covered"] for r in rows) / len(rows),
        "mean_abs_error_pp": round(float(np.mean(errors)), 3),
        "mean_ci_half_width_pp": round(
            float(np.mean([(r["ci_pp"][1] - r["ci_pp"][0]) / 2 for r in rows])), 3
        ),
    }


def run(
    work_dir: Path,
    sizes: tuple[int, ...] = (100_000, 1_000_000),
    outbox_messages: int = 20_000,
    lift_customers: int = 100_000,
    lift_seeds: int = 10,
    postgres_url: str | None = "postgresql://postgres@127.0.0.1:5432/test",
) -> Report:
    dry = {}
    for n in sizes:
        data_dir = write_campaign_bank(Path(work_dir) / f"campaign-bank-{n}", n)
        dry[str(n)] = dry_run(data_dir.data_dir)
    out_dir = Path(work_dir) / f"campaign-bank-{sizes[0]}"
    outbox_results = [outbox(out_dir, None, outbox_messages)]
    pg_note = "PostgreSQL not measured (server not reachable)"
    if postgres_url:
        try:
            import psycopg

            psycopg.connect(postgres_url, connect_timeout=2).close()
            outbox_results.append(outbox(out_dir, postgres_url, outbox_messages))
            pg_note = ""
        except Exception as error:  # a missing server is reported, not fatal
            pg_note = f"PostgreSQL not measured: {error}"
    lift = lift_vs_truth(lift_customers, lift_seeds)
    results = {"dry_run": dry, "outbox": outbox_results, "lift_vs_truth": lift}
    notes = [
        f"dry run over {n} customers: {d['seconds']} s, peak RSS {d['peak_rss_mb']} MB "
        f"({d['to_contact']} to contact of a {d['segment']} segment)"
        for n, d in dry.items()
    ]
    if len(dry) > 1:
        a, b = list(dry.values())[0], list(dry.values())[-1]
        notes.append(
            f"{sizes[-1] // sizes[0]}x the customers took {b['seconds'] / a['seconds']:.1f}x the time"
        )
    notes += [
        f"outbox {o['engine']}: {o['messages_per_s']} messages/s ({o['sent']} sent)"
        for o in outbox_results
    ]
    if len(outbox_results) == 2:
        notes.append(
            f"PostgreSQL / SQLite throughput: {outbox_results[1]['messages_per_s'] / outbox_results[0]['messages_per_s']:.2f}"
        )
    elif pg_note:
        notes.append(pg_note)
    notes.append(
        f"lift vs truth on {lift_customers} customers: 95 % interval covered the true lift in "
        f"{lift['coverage']:.0%} of {lift_seeds} runs; mean |estimate - truth| "
        f"{lift['mean_abs_error_pp']} pp (interval half-width {lift['mean_ci_half_width_pp']} pp)"
    )
    params = {
        "bank": NO_BANK,
        "sizes": list(sizes),
        "outbox_messages_target": outbox_messages,
        "lift_customers": lift_customers,
        "lift_seeds": lift_seeds,
        "spec": SPEC,
    }
    return Report(params, results, notes)
