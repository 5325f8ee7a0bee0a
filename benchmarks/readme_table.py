"""The README's benchmark figures, rendered from benchmarks/results/*.json.

The README marks each generated block with ``<!-- benchmarks:begin NAME -->`` and
``<!-- benchmarks:end NAME -->``; nothing between the markers is edited by hand.

    python -m benchmarks.readme_table            # print the blocks
    python -m benchmarks.readme_table --write    # rewrite them in README.md
    python -m benchmarks.readme_table --check    # exit 1 if README.md is not up to date

Blocks: ``table`` (the Benchmarks section's intro sentence and table, one row per result file
present) and ``policies`` (the bandit-vs-A/B figures of the Content-selection section, from
``policies.json``). A block whose result files are missing is left as it is, with a warning.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, read_report
from src.settings import SimSettings

Row = tuple[str, str, str]


class Missing(Exception):
    """A result file (or a figure in it) that a block needs is not there."""


# -- helpers -----------------------------------------------------------------------------------


def _bank(doc: dict[str, Any]) -> dict[str, Any]:
    """The bank a result ran on: ``params.bank``, or, in files written before the shared
    envelope, ``result.bank`` (models) or the run's arguments."""
    params, results = doc.get("params", {}), doc["results"]
    if isinstance(params.get("bank"), dict):
        return params["bank"]
    if isinstance(results.get("bank"), dict):
        return results["bank"]
    return params


def _k(n: float) -> str:
    """100000 -> 100k, 20000 -> 20k, 2000 -> 2k, 800 -> 800."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n / 1_000_000:.0f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}k" if n % 1_000 == 0 else f"{n / 1_000:.1f}k"
    return f"{n:.0f}"


def _rate(n: float) -> str:
    """Events per second: 5.70M, 174k."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _span(values: list[float], digits: int = 3) -> str:
    low, high = min(values), max(values)
    return (
        f"{low:.{digits}f}"
        if f"{low:.{digits}f}" == f"{high:.{digits}f}"
        else (f"{low:.{digits}f}–{high:.{digits}f}")
    )


def _size(bank: dict[str, Any]) -> str:
    return f"{_k(bank['customers'])} × {bank['days']}"


# -- the table ---------------------------------------------------------------------------------


def _simulator(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    return [
        (
            f"simulator, {_size(_bank(doc))}",
            f"{r['events_per_s'] / 1e6:.2f}M events/s ({r['events'] / 1e6:.1f}M events in "
            f"{r['seconds']:.1f} s)",
            "—",
        )
    ]


def _customer_view(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    full, sub = r["full"], r["subsample"]
    if full.get("pandas_run", False):
        baseline = "pandas: see the next row (the bank is its own subsample)"
    else:
        need, have = full["pandas_peak_rss_gb_extrapolated"], full["machine_memory_gb"]
        verdict = "out of memory" if need > have else "not run"
        baseline = f"pandas: {verdict} (needs ~{need:.0f} GB)"
    rows = [
        (
            f"customer view, {_size(_bank(doc))} (DuckDB over Parquet), {full['columns']} columns",
            f"{full['duckdb_s']:.1f} s, {full['duckdb_peak_rss_gb']:.1f} GB peak",
            baseline,
        )
    ]
    label = (
        "customer view, the whole bank"
        if sub.get("whole_bank")
        else f"customer view, {_k(sub['customers'])}-customer subsample"
    )
    rows.append(
        (
            label,
            f"{sub['duckdb_s']:.1f} s",
            f"pandas {sub['pandas_total_s']:.1f} s: {sub['speedup_total']:.1f}×",
        )
    )
    return rows


def _detection(doc: dict[str, Any]) -> list[Row]:
    """Rates per CPU second, as the ratios are (the machine is shared: CPU time is steadier)."""
    r = doc["results"]
    rules = doc.get("params", {}).get("rules") or r.get("rules")
    state = r["online_peak_state_entries"]
    return [
        (
            f"detection, batch, {_k(round(r['events'], -5))} events, {len(rules)} rules",
            f"{_rate(r['batch_events_per_cpu_s'])} events/s",
            f"per-customer loop {_rate(r['baseline_events_per_cpu_s_extrapolated'])}/s: "
            f"{r['baseline_speedup_batch']:.1f}×",
        ),
        (
            "detection, online, one core",
            f"{_rate(r['online_events_per_cpu_s'])} events/s, state ≤ "
            + (f"{state / 1e3:.1f}k" if state >= 10_000 else f"{state:,}")
            + " entries",
            f"{r['baseline_speedup_online']:.1f}× the loop",
        ),
    ]


def _models(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    bank = _bank(doc)
    auc = r["auc"]
    gaps = (
        f"AUC gap to the oracle {_span(list(r['gap_to_oracle_auc'].values()))}"
        + (
            f"; to the Bayes-at-as_of ceiling {_span(list(r['gap_to_ceiling_auc'].values()))}"
            if "gap_to_ceiling_auc" in r
            else ""
        )
        + f"; feature table {r['feature_table_s']:.0f} s, training "
        f"{r['train_all_products_s']:.0f} s ({_k(round(r['train_rows'], -3))} rows × "
        f"{len(auc)} products)"
    )
    gain = [a["model"] - a["logreg"] for a in auc.values()]
    versus = (
        f"logistic regression: AUC {_span(gain)} lower"
        if min(gain) >= 0
        else f"logistic regression: AUC up to {max(gain):.3f} lower, up to {-min(gain):.3f} higher"
    )
    rows = [
        (
            f"propensity, {_k(bank['customers'])} × {bank['days']}-day bank, {len(auc)} products, "
            f"{len(r['plan']['train'])} training dates",
            gaps,
            versus,
        )
    ]
    if "cvr" in r:
        c = r["cvr"]
        rows.append(
            (
                f"CVR, {_k(bank['customers'])}, {_k(round(c['test_exposures'], -3))} test "
                "exposures",
                f"AUC {c['auc']['model']:.3f} (oracle {c['auc']['oracle']:.3f}); per-offer rate "
                f"error {c['per_offer']['mean_abs_error_model_vs_oracle']:.4f}; ROAS ranking "
                f"Spearman {c['segment_ranking']['spearman_roas']:.2f}",
                "the oracle",
            )
        )
    return rows


def _uci(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    if "skipped" in r:
        raise Missing(f"uci_bank_marketing: {r['skipped']}")
    cv = r.get("cv_auc") or r["cv5_auc"]
    folds = doc.get("params", {}).get("n_folds", 5)
    return [
        (
            "propensity on UCI Bank Marketing (real outcomes, `duration` left out)",
            f"{folds}-fold CV AUC {cv.get('lightgbm', cv.get('model')):.3f} (paper's best ~0.80)",
            f"logistic regression {cv['logreg']:.3f}",
        )
    ]


def _bandit(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    return [
        (
            f"bandit (VW), {r['candidates']} offers",
            f"{r['train_examples_per_s']:,} examples/s training end to end "
            f"({r['train_vw_only_examples_per_s']:,} VW only); "
            f"{r['decision_us_median']:,.0f} µs median, {r['decision_us_p99']:,.0f} µs p99 per "
            "decision",
            f"the logged pyfunc's path, one-row frames: {r['pyfunc_decision_us_median']:,.0f} µs "
            f"median ({r['speedup_median_vs_pyfunc']:.1f}×)",
        )
    ]


def _serving(doc: dict[str, Any]) -> list[Row]:
    r, params = doc["results"], doc.get("params", {})
    full = r["service_sync_full"]
    clients = params.get("concurrency", r.get("concurrency"))
    offers = params.get("candidates_per_request", r.get("candidates_per_request"))
    route = r["service_sync_full_fastapi_route_only"]
    baseline = (
        f"same server through FastAPI's routing only: {route['requests_per_s']:,.0f} req/s "
        f"({full['requests_per_s'] / route['requests_per_s']:.2f}×)"
    )
    ref = r.get("mlflow_models_serve", {})
    if ref.get("requests_per_s"):
        baseline += (
            f"; `mlflow models serve`: {ref['requests_per_s']:,.0f} req/s "
            f"({r['ratio_rps_service_vs_mlflow']:.1f}×)"
        )
    return [
        (
            f"scoring endpoint, {clients} clients, {offers} offers, fsync per commit",
            f"{full['requests_per_s']:,.0f} req/s, p50 {full['p50_ms']:.1f} ms, p99 "
            f"{full['p99_ms']:.1f} ms",
            baseline,
        )
    ]


def _customer_store(doc: dict[str, Any]) -> list[Row]:
    r, params = doc["results"], doc["params"]
    pg = r.get("pg_lookup_cached_pages", r["pg_lookup"])
    local = r["inprocess_lookup"]
    baseline = (
        f"in process: p50 {local['p50_us']:,.0f} µs after a {r['inprocess_load_seconds']:.0f} s "
        f"load and +{r['inprocess_rss_growth_mb']:,.0f} MB in every process"
    )
    redis = r.get("redis", {})
    if "lookup" in redis:
        baseline += (
            f"; Redis: p50 {redis['lookup']['p50_us']:,.0f} µs for "
            f"{redis['projected_gb']:.1f} GB of RAM"
        )
    return [
        (
            f"customer store shared by replicas (PostgreSQL), {params['customers'] / 1e6:g}M "
            f"customers × {params['columns']} columns + scores",
            f"publish {r['publish_seconds']:.0f} s; a customer's row + scores p50 "
            f"{pg['p50_us']:,.0f} µs, p99 {pg['p99_us']:,.0f} µs",
            baseline,
        )
    ]


def _serving_shared(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    two, one, emb = r["shared_pg_redis_2_c8"], r["shared_pg_redis_1_c8"], r["embedded_sqlite_1_c8"]
    return [
        (
            "scoring endpoint on PostgreSQL + Redis, 2 replicas, 8 clients"
            + (f", {r['store_rows']:,} customers in the store" if r.get("store_rows") else ""),
            f"{two['requests_per_s']:,.0f} req/s, p50 {two['p50_ms']:.1f} ms, p99 "
            f"{two['p99_ms']:.1f} ms",
            f"1 replica: {one['requests_per_s']:,.0f} req/s ({r['ratio_2_vs_1_replica_c8']:.2f}× "
            f"for 2, on {doc['machine'].get('cores')} cores shared with both servers); embedded "
            f"SQLite: {emb['requests_per_s']:,.0f} req/s"
            + _under_goal(r.get("shared_pg_redis_2_rates"), doc["params"]),
        )
    ]


def _under_goal(sweep: list[dict[str, Any]] | None, params: dict[str, Any]) -> str:
    """The highest fixed request rate at which p99 stayed under the goal, if swept."""
    if not sweep:
        return ""
    goal = params["goal"]["p99_ms_at_c8_shared"]
    under = [x for x in sweep if x["p99_ms"] is not None and x["p99_ms"] < goal]
    if not under:
        return f"; p99 over {goal:g} ms at every fixed rate tried"
    best = max(under, key=lambda x: x["rate_per_s"])
    return f"; at a fixed {best['rate_per_s']:,.0f} req/s: p99 {best['p99_ms']:.1f} ms"


def _spark_score_detect(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    score, stream, latency = r["score"], r["stream"], r["latency"]
    return [
        (
            f"`nextoffer score --engine spark`, {score['customers']:,} customers × "
            f"{score['products']} products (local[2])",
            f"{score['spark_s']:.1f} s; scores equal to the embedded run "
            f"(max relative difference {score['parity_max_rel_diff']:.0e})",
            f"embedded (DuckDB + LightGBM in chunks): {score['embedded_s']:.1f} s "
            f"({score['spark_over_embedded']:.1f}× faster)",
        ),
        (
            f"detection on Spark Structured Streaming, {stream['events']:,} events in "
            f"{stream['micro_batches']} micro-batches (local[2])",
            f"{stream['stream_events_per_s']:,} events/s; a match lands in the sink "
            f"{latency['latency_median_s']:.1f} s (median, max {latency['latency_max_s']:.1f} s) "
            "after its file; detections equal to the batch evaluator's",
            f"embedded online evaluator: {stream['online_embedded_events_per_s']:,} events/s "
            f"on one core; Spark batch {stream['batch_spark_events_per_s']:,} events/s",
        ),
    ]


def _policies(doc: dict[str, Any]) -> list[Row]:
    r, params = doc["results"], doc["params"]
    pol = r["report"]["policies"]
    what = "clicks" if params["reward"] == "click" else params["reward"]
    return [
        (
            f"bandit vs A/B-then-fix, {_size(params['report_bank'])} (seed "
            f"{params['report_bank']['seed']}; learning rate and epsilon tuned on seed "
            f"{params['tuning_bank']['seed']})",
            f"bandit {pol['bandit']['pct_of_oracle']:.1f} % of the oracle's expected {what}",
            f"A/B-then-fix {pol['ab_then_fix']['pct_of_oracle']:.1f} % "
            f"({pol['bandit']['lift_vs_ab_pct']:+.1f} % for the bandit); random "
            f"{pol['random']['pct_of_oracle']:.1f} %",
        )
    ]


def _ope(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    s = r["steps"]
    figure = (
        f"IPS/SNIPS + diagnostics, 2 policies: {s['ips_snips']['seconds']:.1f} s, "
        f"{s['ips_snips']['peak_rss_mb'] / 1024:.1f} GB peak"
    )
    if "reward_model" in s:
        figure += (
            f"; with the reward model (DM, DR, SNDR, DR-OS) {s['reward_model']['seconds']:.0f} s, "
            f"{s['reward_model']['peak_rss_mb'] / 1024:.1f} GB peak"
        )
    return [
        (
            f"off-policy evaluation, {r['rows']:,} decisions × {r['actions']} candidates",
            figure,
            f"closed-form numpy IPS/SNIPS on arrays in memory: {r['closed_form_ips_snips_s']:.3f} s;"
            f" reading the log alone {s['read_only']['peak_rss_mb'] / 1024:.1f} GB peak",
        ),
        (
            f"bandit (VW) from a generic log, {r['train_candidates']} candidates",
            f"{r['train_examples_per_s']:,} examples/s training end to end",
            f"VW alone on the same examples: {r['train_vw_only_examples_per_s']:,} examples/s",
        ),
    ]


def _campaigns(doc: dict[str, Any]) -> list[Row]:
    r = doc["results"]
    dry = r["dry_run"]
    sizes = sorted(dry, key=int)
    rows = [
        (
            "campaign dry run, rule + model segment, "
            + " / ".join(_k(int(n)) for n in sizes)
            + " customers",
            " / ".join(
                f"{dry[n]['seconds']:.1f} s ({dry[n]['peak_rss_mb']:,.0f} MB peak)" for n in sizes
            ),
            "—",
        )
    ]
    out = {o["engine"]: o for o in r["outbox"]}
    if "sqlite" in out:
        base = out["sqlite"]
        pg = out.get("postgresql")
        rows.append(
            (
                f"campaign outbox (cap charge + outbox row per transaction batch, ack marks), {base['sent']:,} messages",
                f"SQLite {base['messages_per_s']:,.0f} msg/s",
                f"PostgreSQL {pg['messages_per_s']:,.0f} msg/s ({pg['messages_per_s'] / base['messages_per_s']:.2f}×)"
                if pg
                else "PostgreSQL not measured",
            )
        )
    lift = r["lift_vs_truth"]
    rows.append(
        (
            f"campaign ITT lift vs the simulator's true lift, {_k(lift['customers'])} customers",
            f"95 % interval covered the truth in {lift['coverage']:.0%} of {len(lift['runs'])} runs; "
            f"mean error {lift['mean_abs_error_pp']:.2f} pp (half-width {lift['mean_ci_half_width_pp']:.2f} pp)",
            "the oracle",
        )
    )
    return rows


def _validation_scale(doc: dict[str, Any]) -> list[Row]:
    r, params = doc["results"], doc["params"]
    rows = []
    for bank in params["banks"]:
        key = f"{bank['customers']}x{bank['days']}"
        point = r[key]
        chunked, whole = point["chunked"], point["whole"]
        rows.append(
            (
                f"`nextoffer validate`, {_size(bank)} (chunks of {params['chunk_rows']:,} rows)",
                f"{chunked['wall_s']:.0f} s, {chunked['peak_rss_gb']:.2f} GiB peak",
                f"whole tables in memory: {whole['wall_s']:.0f} s, {whole['peak_rss_gb']:.2f} GiB peak"
                if "wall_s" in whole
                else f"whole tables in memory: not run ({whole.get('skipped', 'skipped')})",
            )
        )
    return rows


def _retrain(doc: dict[str, Any]) -> list[Row]:
    r, params = doc["results"], doc["params"]
    steps = r["retrain"]["steps_s"]
    books = r.get("notebooks", {})
    slowest = max(books, key=lambda n: books[n]["wall_s"]) if books else None
    return [
        (
            f"`nextoffer retrain` + `monitor`, {_size(params['bank'])}",
            f"retrain {r['retrain']['wall_s']:.0f} s wall ("
            + ", ".join(f"{name.split('_', 1)[0]}: {s:.0f} s" for name, s in steps.items())
            + f"); monitor {r['monitor']['wall_s']:.0f} s",
            f"every notebook at its defaults: slowest {slowest} {books[slowest]['wall_s']:.0f} s "
            f"of the 120 s budget ({sum(b['images'] for b in books.values())} images in "
            f"{len(books)} notebooks)"
            if slowest
            else f"notebooks not run; retrain used {r['retrain']['cpu_s']:.0f} CPU s "
            f"(load average {doc['machine']['load_average_1m_end']:.0f} at the end)",
        )
    ]


ROWS: tuple[tuple[str, Callable[[dict[str, Any]], list[Row]]], ...] = (
    ("simulator", _simulator),
    ("customer_view", _customer_view),
    ("detection", _detection),
    ("models", _models),
    ("uci_bank_marketing", _uci),
    ("bandit", _bandit),
    ("serving", _serving),
    ("customer_store", _customer_store),
    ("serving_shared", _serving_shared),
    ("spark_score_detect", _spark_score_detect),
    ("policies", _policies),
    ("ope", _ope),
    ("campaigns", _campaigns),
    ("retrain_demo", _retrain),
    ("retrain_100000", _retrain),
    ("validation_scale", _validation_scale),
)
# the README's order: propensity, UCI, then CVR (which lives in models.json)
_ORDER = ("simulator", "customer view", "detection", "propensity,", "propensity on", "CVR")


def _load(results_dir: Path, name: str) -> dict[str, Any]:
    path = results_dir / f"{name}.json"
    if not path.exists():
        raise Missing(f"no {path}")
    return read_report(path)


def render_table(results_dir: Path) -> str:
    docs, rows = {}, []
    for name, render in ROWS:
        try:
            docs[name] = _load(results_dir, name)
            rows += render(docs[name])
        except Missing as missing:
            print(f"[readme] table: {missing}; its row is left out", file=sys.stderr)
    if not rows:
        raise Missing(f"no result files under {results_dir}")

    def order(row: Row) -> int:
        return next((i for i, p in enumerate(_ORDER) if row[0].startswith(p)), len(_ORDER))

    rows.sort(key=order)  # stable: the others keep ROWS' order
    dates = sorted({str(d["run_at"])[:10] for d in docs.values() if d.get("run_at")})
    machines = {(d["machine"].get("cpu"), d["machine"].get("cores")) for d in docs.values()}
    yardstick = [d["machine"]["python_loop_5m_s"] for d in docs.values()]
    cores = sorted({c for _, c in machines if c})
    when = f"on {dates[0]}" if len(dates) == 1 else f"between {dates[0]} and {dates[-1]}"
    where = "on the same machine" if len(machines) == 1 else f"on {len(machines)} machines"
    intro = (
        f"Last runs, all {when} {where} ({'/'.join(map(str, cores))} cores, "
        f"`python_loop_5m_s` {_span(yardstick, 2)}):"
    )
    table = ["| what | figure | baseline in the same run |", "|---|---|---|"]
    table += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join([intro, "", *table])


# -- the content-selection figures -------------------------------------------------------------


def render_policies(results_dir: Path) -> str:
    doc = _load(results_dir, "policies")
    r, params = doc["results"], doc["params"]
    pol, chosen = r["report"]["policies"], r["chosen"]
    bank, tuning = params["report_bank"], params["tuning_bank"]
    b, ab = pol["bandit"], pol["ab_then_fix"]
    what = "clicks" if params["reward"] == "click" else params["reward"]
    lift_goal, share_goal = 15, 90
    demo = SimSettings().model_dump(include={"customers", "days", "seed"})
    which = "the demo bank" if all(bank[k] == v for k, v in demo.items()) else "a bank"
    text = (
        f"`benchmarks/bench_policies.py` runs it on {which} ({bank['customers']:,} customers, "
        f"seed {bank['seed']}; {params['run_days']} days after a {params['train_days']}-day "
        f"log, {b['decisions']:,} decisions per policy) with the learning rate and epsilon tuned "
        f"on another bank (seed {tuning['seed']}: learning rate {chosen['learning_rate']:g}, "
        f"epsilon {chosen['epsilon']:g}, best of {len(r['tuning']['grid'])} grid points): the "
        f"bandit earns {b['pct_of_oracle']:.1f} % of the oracle's expected {what} (random "
        f"{pol['random']['pct_of_oracle']:.1f} %, A/B-then-fix {ab['pct_of_oracle']:.1f} %): "
        f"{b['lift_vs_ab_pct']:+.1f} % over A/B-then-fix (goal {lift_goal} %), "
        + (
            f"short of the {share_goal} % goal."
            if b["pct_of_oracle"] < share_goal
            else f"meeting the {share_goal} % goal."
        )
    )
    if {"bandit_frozen", "greedy_true_need", "bandit_true_need"} <= set(pol):
        truth = pol["bandit_true_need"]["pct_of_oracle"]
        frozen = pol["bandit_frozen"]["pct_of_oracle"]
        text += (
            f" The gap report shows why: a greedy policy on the *true* latent need reaches "
            f"{pol['greedy_true_need']['pct_of_oracle']:.1f} %, and the bandit given the exact "
            f"affinity × need term {truth:.1f} %"
            + (
                f", so no observable feature can take a linear bandit to {share_goal} % here"
                if truth < share_goal
                else ""
            )
            + f"; exploration costs {b['exploration_cost_pts']:.1f} points and online learning "
            f"is worth {b['pct_of_oracle'] - frozen:.1f} ({frozen:.1f} % frozen after offline "
            "training)."
        )
    return wrap(text)


def wrap(text: str, width: int = 100) -> str:
    """Fill a paragraph to the README's width, never starting a line with what Markdown would
    read as a list item or heading."""
    glue = "\x00"  # keeps "74.2 %" on one line
    lines = [
        line.replace(glue, " ")
        for line in textwrap.wrap(
            text.replace(" %", glue + "%"), width, break_long_words=False, break_on_hyphens=False
        )
    ]
    if any(re.match(r"([-+*#>]|\d+[.)])(\s|$)", line) for line in lines):
        return text
    return "\n".join(lines)


def render_scale(results_dir: Path) -> str:
    """The Spark section's scale curve: the view on DuckDB and Spark per bank size."""
    doc = _load(results_dir, "scale")
    engines = doc["params"]["engines"]
    table = [
        "| bank | events | " + " | ".join(engines) + " | views |",
        "|---" * (len(engines) + 3) + "|",
    ]
    for p in doc["results"]["points"]:
        cells = []
        for engine in engines:
            r = p.get(engine, {})
            if "seconds" in r:
                cells.append(
                    f"{r['seconds']:.1f} s, {_rate(r['events_per_s'])} events/s, "
                    f"{r['peak_rss_gb']:.1f} GB peak"
                )
            elif "not_run" in r or "projected" in r:
                proj = r.get("projected")
                cells.append(
                    "not run"
                    + (f" ({r['not_run']})" if "not_run" in r else f": {r.get('error')}")
                    + (f"; projected ~{proj['seconds']:,} s, NOT measured" if proj else "")
                )
            else:
                cells.append(f"failed: {r.get('error', 'not run')}")
        same = {True: "equal", False: "DIFFER"}.get(p.get("views_match"), "—")
        table.append(
            f"| {_k(p['customers'])} × {p['days']} | {p['events'] / 1e6:.1f}M | "
            + " | ".join(cells)
            + f" | {same} |"
        )
    machine = doc["machine"]
    intro = (
        f"Run on {str(doc['run_at'])[:10]} ({machine.get('cores')} cores, "
        f"`python_loop_5m_s` {machine.get('python_loop_5m_s')}, load "
        f"{machine.get('load_average_1m_start')} at the start; DuckDB memory_limit "
        f"{doc['params']['duckdb']['memory_limit']}, Spark {doc['params']['spark']['master']} "
        f"with a {doc['params']['spark']['driver_memory']} driver):"
    )
    return "\n".join([intro, "", *table, "", *(f"- {n}" for n in doc["notes"])])


BLOCKS: dict[str, Callable[[Path], str]] = {
    "table": render_table,
    "policies": render_policies,
    "scale": render_scale,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- benchmarks:begin {name} -->\n)(.*?)(\n<!-- benchmarks:end {name} -->)", re.S
    )


def update(readme: str, results_dir: Path) -> str:
    """``readme`` with every marked block re-rendered (blocks that cannot be rendered kept)."""
    for name, render in BLOCKS.items():
        pattern = _pattern(name)
        if not pattern.search(readme):
            print(f"[readme] no '{name}' markers in the README", file=sys.stderr)
            continue
        try:
            body = render(results_dir)
        except Missing as missing:
            print(f"[readme] {name}: {missing}; left as it is", file=sys.stderr)
            continue
        readme = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), readme)
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the README's blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        for name, render in BLOCKS.items():
            try:
                print(f"<!-- {name} -->\n{render(args.results)}\n")
            except Missing as missing:
                print(f"[readme] {name}: {missing}", file=sys.stderr)
        return
    before = args.readme.read_text()
    after = update(before, args.results)
    if args.check:
        if after != before:
            print(f"[readme] {args.readme} is not up to date with {args.results}", file=sys.stderr)
            sys.exit(1)
        print(f"[readme] {args.readme} is up to date")
    elif after != before:
        args.readme.write_text(after)
        print(f"[readme] rewrote {args.readme}")
    else:
        print(f"[readme] {args.readme} already up to date")


if __name__ == "__main__":
    main()
