"""The endpoint on shared state: 1 and 2 replicas on PostgreSQL + Redis against the embedded
SQLite single process, in the same run; the contact charge in Redis (Lua) against a PostgreSQL
transaction; and a soak at a fixed rate.

Service load: every replica is ``python -m src.serving`` on loopback with champion models (a VW
bandit and a propensity pyfunc from a local registry), 20 offers eligible in the slot, caps
configured but not binding (``Cap()``), so every request takes the whole path: view row,
eligibility, the contact store's usage read and charge (Redis; in memory when embedded),
bandit PMF over 20 candidates, the log's group commit (PostgreSQL; SQLite ``FULL`` embedded),
response. With 2 replicas the client opens half its connections to each (what a load balancer
does). The machine has 2 cores shared by the client, the replicas, PostgreSQL and Redis, so
the 2-replica ratio says what 2 cores allow, not what 2 hosts would do; ``server_cpu_us``
per request says where the CPU went.

The customer rows: the bank's view (``--customers``), or with ``store_rows`` (``--store-rows
1000000``, what ``make bench`` runs) that view tiled to ``store_rows`` customers with new ids
(``bench_customer_store.tile_view``) and published once into the shared PostgreSQL customer
store (``publish_to_postgres``) that the shared-backend replicas read (``customer_store_url``,
each replica caching ``customer_cache_size`` rows); the embedded baseline loads the same tiled
rows in process. Requests name customers drawn at random across all ``store_rows`` (a new one
per request, so the replicas' row caches rarely help: the lookup is paid in the measurement).

Contact charge: ``RedisContactStore.try_charge`` (one Lua script: read the week, check, count)
against the same check-and-reserve as one PostgreSQL transaction (an advisory lock per
customer, count the week's contacts, insert), one client and 8 threads.

Soak: 2 replicas on the shared backends at a fixed request rate for ``soak_s`` seconds;
resident memory of each replica sampled, errors counted, every acknowledged decision and
reward looked up in the log afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import Report, bank_params
from benchmarks.harness.backends import PG_URL, REDIS_URL, pg_schema, redis_prefix
from benchmarks.harness.loadgen import LoadResult, run_load
from benchmarks.harness.serving_fixtures import PROPENSITY_NAME
from src.serving.config import Cap, ServingSettings, policy_from_offers
from src.serving.service import ServerProcess, serving_env


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# the servers' processes by name in /proc (``comm``): their CPU is part of every request's cost
SERVER_PROCESSES = {"postgres": "postgresql", "redis-server": "redis"}


def _cpu_by_role(replicas: list[int]) -> dict[str, float]:
    """CPU seconds so far of the replicas, this client and every PostgreSQL and Redis process
    on the machine (a snapshot: the difference of two is what a load cost each of them)."""
    out = dict.fromkeys(("service", "client", *SERVER_PROCESSES.values()), 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        pid = int(stat.parent.name)
        name = text[text.index("(") + 1 : text.rindex(")")]
        role = (
            "service"
            if pid in replicas
            else "client"
            if pid == me
            else SERVER_PROCESSES.get(name.split()[0] if name else "")
        )
        if role is not None:
            fields = text.rsplit(")", 1)[1].split()
            out[role] += (int(fields[11]) + int(fields[12])) / tick
    return out


def _merge(results: list[LoadResult]) -> LoadResult:
    out = LoadResult()
    for r in results:
        out.sent += r.sent
        out.completed += r.completed
        out.connection_errors += r.connection_errors
        out.latencies_s += r.latencies_s
        out.client_cpu_s = max(out.client_cpu_s, r.client_cpu_s)
        for s, n in r.statuses.items():
            out.statuses[s] = out.statuses.get(s, 0) + n
    out.elapsed_s = max((r.elapsed_s for r in results), default=0.0)
    return out


def load_replicas(
    servers: list[ServerProcess], make_request, concurrency: int, total: int, duration_s: float
) -> dict[str, Any]:
    """``concurrency`` connections spread over the replicas; one summary, server CPU included."""
    pids = [s.proc.pid for s in servers if s.proc is not None]
    before = sum(_cpu_s(p) for p in pids)
    roles_before = _cpu_by_role(pids)
    share = [
        concurrency // len(servers) + (k < concurrency % len(servers)) for k in range(len(servers))
    ]

    async def go() -> list[LoadResult]:
        return await asyncio.gather(
            *(
                run_load(
                    "127.0.0.1",
                    s.port,
                    make_request,
                    concurrency=c,
                    total=total * c // concurrency,
                    duration_s=duration_s,
                    warmup=min(100, total // 20),
                )
                for s, c in zip(servers, share, strict=True)
                if c
            )
        )

    result = _merge(asyncio.run(go()))
    out = result.summary()
    if result.completed:
        out["server_cpu_us_per_request"] = (
            (sum(_cpu_s(p) for p in pids) - before) / result.completed * 1e6
        )
        roles = _cpu_by_role(pids)
        per = {
            role: round((roles[role] - roles_before[role]) / result.completed * 1e6, 1)
            for role in roles
        }
        total = sum(per.values())
        summary: dict[str, Any] = {k: round(v, 3) for k, v in out.items()}
        summary["cpu_us_per_request_by_process"] = per
        summary["cpu_us_per_request_all"] = round(total, 1)
        # what the machine's cores could serve if every one of them did nothing but this
        summary["requests_per_s_if_cpu_bound"] = round((os.cpu_count() or 1) * 1e6 / total)
        return summary
    return {k: round(v, 3) for k, v in out.items()}


# --- contact charge: Redis Lua vs a PostgreSQL transaction ---------------------------------------

PG_CHARGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.contacts (
    contact_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, channel TEXT NOT NULL,
    offer_id TEXT NOT NULL, day INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS contacts_customer_day ON {s}.contacts (customer_id, day);
"""


def pg_try_charge(con, schema: str, charge, policy) -> str | None:
    """The check-and-reserve of ``RedisContactStore.try_charge`` as one PostgreSQL transaction."""
    cap, offer_cap = policy.cap_for(charge.channel), policy.offer_cap
    with con.transaction():
        con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (charge.customer_id,))
        if con.execute(
            f"SELECT 1 FROM {schema}.contacts WHERE contact_id = %s", (charge.contact_id,)
        ).fetchone():
            return None
        chd, chw, ofd, ofw = con.execute(
            f"SELECT count(*) FILTER (WHERE channel = %(ch)s AND day = %(d)s), "
            f"count(*) FILTER (WHERE channel = %(ch)s), "
            f"count(*) FILTER (WHERE offer_id = %(of)s AND day = %(d)s), "
            f"count(*) FILTER (WHERE offer_id = %(of)s) "
            f"FROM {schema}.contacts WHERE customer_id = %(c)s AND day > %(d)s - 7 AND day <= %(d)s",
            {"ch": charge.channel, "of": charge.offer_id, "d": charge.day, "c": charge.customer_id},
        ).fetchone()
        for count, limit, reason in (
            (chd, cap.per_day, "cap_channel_day"),
            (chw, cap.per_week, "cap_channel_week"),
            (ofd, offer_cap.per_day, "cap_offer_day"),
            (ofw, offer_cap.per_week, "cap_offer_week"),
        ):
            if limit is not None and count >= limit:
                return reason
        con.execute(
            f"INSERT INTO {schema}.contacts VALUES (%s, %s, %s, %s, %s)",
            (charge.contact_id, charge.customer_id, charge.channel, charge.offer_id, charge.day),
        )
    return None


def compare_charges(n: int = 3_000, threads: int = 8, customers: int = 2_000) -> dict[str, Any]:
    """Latency of one charge (one client) and charges/s (``threads`` clients), Redis vs PG."""
    import psycopg

    from src.contact.policy import Offer, PolicyConfig
    from src.contact.store import Charge
    from src.contact.store_redis import RedisContactStore

    policy = PolicyConfig(
        offers=tuple(Offer(offer_id=f"OF{i:02d}", slots=("s",), product="loan") for i in range(20)),
        channel_cap=Cap(per_day=3, per_week=10),
        offer_cap=Cap(per_day=1, per_week=3),
    )
    rng = random.Random(0)

    def charges(tag: str, k: int) -> list[Charge]:
        return [
            Charge(
                f"{tag}{k}-{i}",
                f"C{rng.randrange(customers)}",
                "app",
                f"OF{rng.randrange(20):02d}",
                20_500 + i * 7 // n,
                "slot",
            )
            for i in range(n)
        ]

    out: dict[str, Any] = {}
    with pg_schema("nextoffer_bench") as schema, redis_prefix("nextoffer-bench") as prefix:
        with psycopg.connect(PG_URL, autocommit=True) as con:
            con.execute(f"CREATE SCHEMA {schema}")
            con.execute(PG_CHARGE_SCHEMA.format(s=schema))
        stores = [RedisContactStore(REDIS_URL, prefix) for _ in range(threads)]
        pg_cons = [psycopg.connect(PG_URL, autocommit=True) for _ in range(threads)]

        def redis_one(k: int, c: Charge) -> None:
            stores[k].try_charge(c, policy)

        def pg_one(k: int, c: Charge) -> None:
            pg_try_charge(pg_cons[k], schema, c, policy)

        for name, one in (("redis_lua", redis_one), ("postgresql_transaction", pg_one)):
            seq = charges(name + "s", 0)
            lat = []
            for c in seq:
                t0 = time.perf_counter()
                one(0, c)
                lat.append(time.perf_counter() - t0)
            lat.sort()
            work = [charges(name + "p", k) for k in range(threads)]
            t0 = time.perf_counter()
            pool = [
                threading.Thread(target=lambda k=k, f=one, w=work: [f(k, c) for c in w[k]])
                for k in range(threads)
            ]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            elapsed = time.perf_counter() - t0
            out[name] = {
                "one_client_p50_us": round(lat[len(lat) // 2] * 1e6, 1),
                "one_client_p99_us": round(lat[int(len(lat) * 0.99)] * 1e6, 1),
                f"charges_per_s_{threads}_clients": round(threads * n / elapsed),
            }
        for s in stores:
            s.close()
        for c in pg_cons:
            c.close()
    out["ratio_redis_vs_postgresql_per_s"] = round(
        out["redis_lua"][f"charges_per_s_{threads}_clients"]
        / out["postgresql_transaction"][f"charges_per_s_{threads}_clients"],
        2,
    )
    out["params"] = {
        "charges_per_client": n,
        "clients": threads,
        "customers": customers,
        "offers": 20,
    }
    return out


# --- soak -----------------------------------------------------------------------------------------


def soak(
    servers: list[ServerProcess],
    bodies: list[dict],
    schema: str,
    rate_per_s: float,
    duration_s: float,
    sample_every_s: float = 10.0,
) -> dict[str, Any]:
    """A fixed request rate over the replicas (one connection per 10 req/s), a
    reward for every tenth decision with an offer; memory sampled; acknowledgements checked."""
    import psycopg

    acked_decisions: set[str] = set()
    acked_rewards: set[str] = set()
    errors = {"status": 0, "connection": 0}
    samples: list[dict[str, float]] = []
    lat: list[float] = []
    per_conn = 10.0  # req/s per connection: 100 ms for each request and its reward
    n_conn = max(len(servers), round(rate_per_s / per_conn))

    async def client(server: ServerProcess, k: int, stop_at: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        interval = n_conn / rate_per_s
        next_at = time.perf_counter() + interval * k / n_conn
        i = k
        try:
            while time.perf_counter() < stop_at:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
                body = json.dumps(bodies[i % len(bodies)]).encode()
                i += n_conn
                t0 = time.perf_counter()
                status, data = await _request(reader, writer, "/v1/decisions", body)
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    errors["status"] += 1
                    continue
                d = json.loads(data)
                if d["fallback_reason"] != "log_unavailable":
                    acked_decisions.add(d["decision_id"])
                if d["offer"] and i % 10 == 0:
                    rb = json.dumps({"decision_id": d["decision_id"], "kind": "click"}).encode()
                    status, _ = await _request(reader, writer, "/v1/rewards", rb)
                    if status == 200:
                        acked_rewards.add(d["decision_id"])
                    else:
                        errors["status"] += 1
        except OSError:
            errors["connection"] += 1
        finally:
            writer.close()

    async def sampler(stop_at: float, started: float) -> None:
        while time.perf_counter() < stop_at:
            samples.append(
                {"t_s": round(time.perf_counter() - started, 1)}
                | {
                    f"rss_mb_{k}": round(_rss_mb(s.proc.pid), 1)
                    for k, s in enumerate(servers)
                    if s.proc
                }
            )
            await asyncio.sleep(sample_every_s)

    async def go() -> None:
        started = time.perf_counter()
        stop_at = started + duration_s
        await asyncio.gather(
            sampler(stop_at, started),
            *(client(servers[k % len(servers)], k, stop_at) for k in range(n_conn)),
        )

    t0 = time.perf_counter()
    asyncio.run(go())
    elapsed = time.perf_counter() - t0
    with psycopg.connect(PG_URL) as con:
        logged = {r[0] for r in con.execute(f"SELECT decision_id FROM {schema}.decisions")}
        rewarded = {r[0] for r in con.execute(f"SELECT decision_id FROM {schema}.rewards")}
    lat.sort()
    first, last = samples[min(1, len(samples) - 1)], samples[-1]
    growth = {k: round(last[k] - first[k], 1) for k in last if k.startswith("rss_mb_")}
    return {
        "rate_per_s": rate_per_s,
        "duration_s": round(elapsed, 1),
        "requests": len(lat),
        "achieved_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 3) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 3) if lat else None,
        "errors": errors,
        "lost_decisions": len(acked_decisions - logged),
        "lost_rewards": len(acked_rewards - rewarded),
        "rss_growth_mb_after_first_sample": growth,
        "rss_samples": samples,
    }


def rate_sweep(
    servers: list[ServerProcess],
    bodies: list[dict],
    schema: str,
    rates: tuple[float, ...],
    seconds: float,
) -> list[dict[str, Any]]:
    """Latency at fixed request rates (open loop, as an app's users arrive, unlike the closed
    loop of ``c`` connections that wait for each answer): where p99 stays under the goal."""
    out = []
    for rate in rates:
        s = soak(servers, bodies, schema, rate, seconds, sample_every_s=seconds)
        out.append(
            {
                k: s[k]
                for k in ("rate_per_s", "achieved_per_s", "p50_ms", "p99_ms", "errors")
                if k in s
            }
            | {"lost": s["lost_decisions"] + s["lost_rewards"]}
        )
    return out


async def _request(reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


# --- the run --------------------------------------------------------------------------------------


def run(
    work_dir: Path,
    customers: int = 2_000,
    days: int = 14,
    seed: int = 3,
    concurrencies: tuple[int, ...] = (8, 32),
    requests: int = 8_000,
    duration_s: float = 15.0,
    soak_s: float = 600.0,
    soak_rate_per_s: float = 300.0,
    keep: bool = False,
    goal_p99_ms: float = 10.0,
    goal_scale: float = 1.6,
    store_rows: int | None = None,
    sweep_rates: tuple[float, ...] = (200.0, 400.0, 600.0, 800.0, 1000.0),
    sweep_s: float = 10.0,
) -> Report:
    """Build a bank with champion models under ``work_dir``, then measure (``store_rows``: see
    the module docstring)."""
    from benchmarks.harness.backends import missing_servers
    from benchmarks.harness.serving_fixtures import register_models, tiny_bank

    missing = missing_servers()
    if missing:
        raise RuntimeError("needs " + " and ".join(missing))
    work_dir = Path(work_dir)
    if work_dir.exists() and not keep:
        shutil.rmtree(work_dir)
    t0 = time.perf_counter()
    settings, view_path = tiny_bank(work_dir, customers=customers, days=days, seed=seed)
    settings = settings.model_copy(update={"mlruns_dir": work_dir / "mlruns"})
    versions = register_models(settings, view_path)
    offers = settings.catalog.read("offers").assign(slot="home_banner")
    policy_path = work_dir / "bench_policy.json"
    policy_path.write_text(
        policy_from_offers(offers, channel_cap=Cap(), offer_cap=Cap()).model_dump_json(indent=1)
    )
    setup_s = time.perf_counter() - t0
    stack = contextlib.ExitStack()
    store: dict[str, Any] = {}
    if store_rows:
        store_schema = stack.enter_context(pg_schema("nextoffer_bench_store"))
        view_path, ids, store = tiled_store(
            view_path,
            store_rows,
            work_dir / "store",
            store_schema,
            settings.tracking_uri,
            versions[PROPENSITY_NAME],
        )
    else:
        ids = pd.read_parquet(view_path, columns=["customer_id"])["customer_id"].tolist()
    # a fresh random customer per request (a cycle of 50,000 draws across the whole store)
    rng = random.Random(seed)
    drawn = ids if len(ids) <= 50_000 else [ids[rng.randrange(len(ids))] for _ in range(50_000)]
    bodies = [
        {
            "customer_id": c,
            "slot": "home_banner",
            "context": {"channel": "app", "device": "ios", "page": "home"},
        }
        for c in drawn
    ]
    n_customers = len(ids)
    del ids
    sent = itertools.count()

    def decision(i: int) -> tuple[str, Any]:
        return "/v1/decisions", bodies[next(sent) % len(bodies)]

    params = {
        "bank": bank_params(settings.raw_dir.parent),
        "customers_in_view": n_customers,
        "customer_rows": (
            f"the bank's view tiled to {store_rows:,} customers, new ids; PostgreSQL customer "
            "store for the shared backends, in process for the embedded baseline"
            if store_rows
            else "the bank's view, in each replica's memory"
        ),
        "candidates_per_request": len(offers),
        "concurrencies": list(concurrencies),
        "requests": requests,
        "duration_s": duration_s,
        "backends": {"postgresql": PG_URL, "redis": REDIS_URL},
        "soak": {"duration_s": soak_s, "rate_per_s": soak_rate_per_s},
        "rate_sweep": {"rates_per_s": list(sweep_rates), "seconds_each": sweep_s},
        "goal": {"p99_ms_at_c8_shared": goal_p99_ms, "two_replica_throughput_ratio": goal_scale},
    }
    out: dict[str, Any] = {
        "setup_s": round(setup_s, 1),
        **store,
        "models": versions,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    base = ServingSettings(policy_path=policy_path, view_path=view_path)
    log_dir = work_dir / "serving"
    log_dir.mkdir(parents=True, exist_ok=True)

    def measure(key: str, cfg: ServingSettings, replicas: int) -> list[ServerProcess]:
        env = serving_env(settings, cfg)
        servers = [
            # loading a million rows in process (the embedded baseline) takes a while
            ServerProcess(env).start(timeout_s=900.0, log_file=log_dir / f"{key}_{k}.log")
            for k in range(replicas)
        ]
        try:
            load_replicas(servers, decision, 8, 1_000, 10)  # warm: caches, connections
            for c in concurrencies:
                out[f"{key}_c{c}"] = load_replicas(servers, decision, c, requests, duration_s)
        except BaseException:
            for s in servers:
                s.stop()
            raise
        return servers

    with stack:
        for s in measure(
            "embedded_sqlite_1",
            base.model_copy(update={"log_path": log_dir / "embedded.sqlite"}),
            1,
        ):
            s.stop()
        for replicas in (1, 2):
            with pg_schema("nextoffer_bench") as schema, redis_prefix("nextoffer-bench") as prefix:
                update: dict[str, Any] = {
                    "log_path": log_dir / "unused.sqlite",
                    "log_url": PG_URL,
                    "log_schema": schema,
                    "contact_store_url": REDIS_URL,
                    "contact_key_prefix": prefix,
                }
                if store_rows:
                    update |= {
                        "customer_store_url": PG_URL,
                        "customer_store_schema": store["store_schema"],
                    }
                cfg = ServingSettings.model_validate(base.model_copy(update=update).model_dump())
                servers = measure(f"shared_pg_redis_{replicas}", cfg, replicas)
                try:
                    if sweep_rates:
                        out[f"shared_pg_redis_{replicas}_rates"] = rate_sweep(
                            servers, bodies, schema, sweep_rates, sweep_s
                        )
                    if replicas == 2 and soak_s > 0:
                        out["soak"] = soak(servers, bodies, schema, soak_rate_per_s, soak_s)
                finally:
                    for s in servers:
                        s.stop()
    out["contact_charge"] = compare_charges()
    for c in concurrencies:
        one, two = out[f"shared_pg_redis_1_c{c}"], out[f"shared_pg_redis_2_c{c}"]
        out[f"ratio_2_vs_1_replica_c{c}"] = (
            round(two["requests_per_s"] / one["requests_per_s"], 2)
            if one["requests_per_s"]
            else None
        )
        emb = out[f"embedded_sqlite_1_c{c}"]
        out[f"ratio_shared_1_vs_embedded_c{c}"] = (
            round(one["requests_per_s"] / emb["requests_per_s"], 2)
            if emb["requests_per_s"]
            else None
        )
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return Report(params, out, notes(out, params))


def tiled_store(
    view_path: Path, rows: int, out_dir: Path, schema: str, tracking_uri: str, version: str
) -> tuple[Path, list[str], dict[str, Any]]:
    """The bank's view tiled to ``rows`` customers (``bench_customer_store.tile_view``): written
    as a view file for the embedded replica (which scores it with the propensity champion at
    load) and published into PostgreSQL ``schema`` with the champion's scores (``version``) for
    the shared ones, as ``nextoffer score`` + ``publish-view`` would. Returns (the tiled view
    file, its customer ids, what it took)."""
    import gc

    import numpy as np

    from benchmarks.bench_customer_store import tile_view
    from src.serving.customer_store_shared import publish_to_postgres
    from src.serving.customers import CustomerStore
    from src.serving.models import MlflowModelSource, score_view

    started = time.perf_counter()
    base = pd.read_parquet(view_path)
    tiled = tile_view(base, rows)
    model = MlflowModelSource(tracking_uri).load(PROPENSITY_NAME, version)
    scored = score_view(model, CustomerStore(base, "base"), version)
    at = np.arange(rows) % len(base)  # tiled row i is base row i % len(base)
    products = list(scored.products)
    scores = pd.DataFrame(
        {
            "customer_id": np.repeat(tiled["customer_id"].to_numpy(), len(products)),
            "product": np.tile(products, rows),
            "score": scored.matrix[at].reshape(-1),
            "model_version": version,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tiled_path = out_dir / view_path.name  # customer_view_<as_of>.parquet: the as_of it serves
    tiled.to_parquet(tiled_path, index=False)
    as_of = view_path.stem.removeprefix("customer_view_")
    tiled_s = time.perf_counter() - started
    started = time.perf_counter()
    publish_to_postgres(PG_URL, schema, tiled, as_of, scores)
    publish_s = time.perf_counter() - started
    ids = tiled["customer_id"].tolist()
    del tiled, scores
    gc.collect()
    return (
        tiled_path,
        ids,
        {
            "store_schema": schema,
            "store_rows": rows,
            "store_tile_s": round(tiled_s, 1),
            "store_publish_s": round(publish_s, 1),
        },
    )


def run_soak(work_dir: Path, soak_s: float, rate_per_s: float) -> Report:
    """Only the soak, on the bank and models a previous :func:`run` left in ``work_dir``."""
    from src.settings import Settings

    work_dir = Path(work_dir)
    settings = Settings(
        data_dir=work_dir,
        mlruns_dir=work_dir / "mlruns",
        mlflow_tracking_uri=f"sqlite:///{work_dir / 'mlflow.db'}",
    )
    view_path = settings.catalog.latest("customer_view")
    if view_path is None or not (work_dir / "bench_policy.json").exists():
        raise FileNotFoundError(f"no bank from a previous run under {work_dir}")
    ids = pd.read_parquet(view_path, columns=["customer_id"])["customer_id"].tolist()
    bodies = [
        {"customer_id": c, "slot": "home_banner", "context": {"channel": "app", "page": "home"}}
        for c in ids
    ]
    log_dir = work_dir / "serving"
    log_dir.mkdir(parents=True, exist_ok=True)
    with pg_schema("nextoffer_bench") as schema, redis_prefix("nextoffer-bench") as prefix:
        cfg = ServingSettings(
            policy_path=work_dir / "bench_policy.json",
            view_path=view_path,
            log_path=log_dir / "unused.sqlite",
            log_url=PG_URL,
            log_schema=schema,
            contact_store_url=REDIS_URL,
            contact_key_prefix=prefix,
        )
        env = serving_env(settings, cfg)
        servers = [ServerProcess(env).start(log_file=log_dir / f"soak_{k}.log") for k in range(2)]
        try:
            result = soak(servers, bodies, schema, rate_per_s, soak_s)
        finally:
            for s in servers:
                s.stop()
    params = {
        "bank": bank_params(work_dir),
        "customers_in_view": len(ids),
        "replicas": 2,
        "soak": {"duration_s": soak_s, "rate_per_s": rate_per_s},
        "model_poll_seconds": cfg.model_poll_seconds,
    }
    return Report(params, {"soak": result}, notes({"soak": result}, params))


def notes(r: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    if "goal" not in params:  # the soak alone
        return _soak_note(r)
    out = []
    goal = params["goal"]
    if r.get("store_rows"):
        out.append(
            f"customer rows: {r['store_rows']:,} (a small bank's view tiled), published to the "
            f"PostgreSQL store in {r['store_publish_s']:.0f} s; each request names a random one"
        )
    for c in params["concurrencies"]:
        emb, one, two = (
            r[f"{k}_c{c}"] for k in ("embedded_sqlite_1", "shared_pg_redis_1", "shared_pg_redis_2")
        )
        out.append(
            f"c={c}: embedded SQLite {emb['requests_per_s']:,.0f} req/s (p99 {emb['p99_ms']:.1f} ms); "
            f"PostgreSQL+Redis 1 replica {one['requests_per_s']:,.0f} req/s (p50 {one['p50_ms']:.1f}, "
            f"p99 {one['p99_ms']:.1f} ms), 2 replicas {two['requests_per_s']:,.0f} req/s (p50 "
            f"{two['p50_ms']:.1f}, p99 {two['p99_ms']:.1f} ms): {r[f'ratio_2_vs_1_replica_c{c}']:.2f}x "
            f"one replica; {one['errors'] + two['errors']} errors"
        )
    c8 = [r[f"shared_pg_redis_{k}_c8"]["p99_ms"] for k in (1, 2) if f"shared_pg_redis_{k}_c8" in r]
    if c8:
        out.append(
            f"goal p99 < {goal['p99_ms_at_c8_shared']:g} ms at c=8 on the shared backends: "
            f"{'met' if max(c8) < goal['p99_ms_at_c8_shared'] else 'NOT met'} ({', '.join(f'{p:.1f}' for p in c8)} ms for 1, 2 replicas)"
        )
    for k in (1, 2):
        sweep = r.get(f"shared_pg_redis_{k}_rates")
        if sweep:
            under = [
                x["rate_per_s"]
                for x in sweep
                if x["p99_ms"] is not None and x["p99_ms"] < goal["p99_ms_at_c8_shared"]
            ]
            out.append(
                f"fixed rates, PostgreSQL+Redis {k} replica{'s' if k > 1 else ''}: "
                + ", ".join(f"{x['rate_per_s']:.0f} req/s p99 {x['p99_ms']:.1f} ms" for x in sweep)
                + f"; p99 under {goal['p99_ms_at_c8_shared']:g} ms up to "
                + (f"{max(under):.0f} req/s" if under else "none of these rates")
            )
    for key in ("embedded_sqlite_1_c8", "shared_pg_redis_1_c8", "shared_pg_redis_2_c8"):
        point = r.get(key, {})
        if "cpu_us_per_request_by_process" in point:
            by = point["cpu_us_per_request_by_process"]
            out.append(
                f"CPU per request, {key}: {point['cpu_us_per_request_all']:.0f} µs in all ("
                + ", ".join(f"{role} {us:.0f}" for role, us in by.items())
                + f"): {os.cpu_count()} cores could serve at most ~{point['requests_per_s_if_cpu_bound']:,} req/s; "
                f"measured {point['requests_per_s']:,.0f}"
            )
    ratios = [r[f"ratio_2_vs_1_replica_c{c}"] for c in params["concurrencies"]]
    cpu = r.get(f"shared_pg_redis_1_c{params['concurrencies'][-1]}", {}).get(
        "server_cpu_us_per_request"
    )
    out.append(
        f"2 replicas vs 1: {', '.join(f'{x:.2f}x' for x in ratios if x)} (goal {goal['two_replica_throughput_ratio']}x "
        f"where CPU allows; this machine has {os.cpu_count()} cores for the client, both replicas, "
        f"PostgreSQL and Redis; one replica spends {cpu or 0:.0f} µs of CPU per request)"
    )
    ch = r.get("contact_charge")
    if ch:
        red, pg = ch["redis_lua"], ch["postgresql_transaction"]
        k = ch["params"]["clients"]
        out.append(
            f"contact charge: Redis Lua p50 {red['one_client_p50_us']:.0f} µs, {red[f'charges_per_s_{k}_clients']:,} /s with "
            f"{k} clients; PostgreSQL transaction p50 {pg['one_client_p50_us']:.0f} µs, "
            f"{pg[f'charges_per_s_{k}_clients']:,} /s ({ch['ratio_redis_vs_postgresql_per_s']:.1f}x for Redis)"
        )
    return out + _soak_note(r)


def _soak_note(r: dict[str, Any]) -> list[str]:
    out = []
    s = r.get("soak")
    if s:
        out.append(
            f"soak: {s['duration_s']:.0f} s at {s['rate_per_s']:.0f} req/s over 2 replicas "
            f"({s['achieved_per_s']:.0f} achieved, p99 {s['p99_ms']:.1f} ms): "
            f"{sum(s['errors'].values())} errors, {s['lost_decisions']} decisions and "
            f"{s['lost_rewards']} rewards lost; memory growth after the first sample "
            f"{s['rss_growth_mb_after_first_sample']} MB"
        )
    return out


if __name__ == "__main__":
    import argparse
    from dataclasses import asdict

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("work_dir", type=Path, nargs="?", default=Path("/tmp/bench_serving_shared"))
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--requests", type=int, default=8_000)
    parser.add_argument("--soak", type=float, default=600.0, help="soak seconds (0: none)")
    parser.add_argument("--soak-rate", type=float, default=300.0)
    parser.add_argument(
        "--store-rows",
        type=int,
        default=None,
        help="customers in the store: the bank's view tiled to this many rows (1000000 at a "
        "bank's size), published to PostgreSQL for the shared backends (default: the bank's view)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write the JSON report here (a directory)"
    )
    parser.add_argument(
        "--soak-only", action="store_true", help="only the soak, on a previous run's bank"
    )
    parser.add_argument(
        "--sweep-rates", type=float, nargs="*", default=[200.0, 400.0, 600.0, 800.0, 1000.0]
    )
    parser.add_argument("--sweep-seconds", type=float, default=10.0)
    args = parser.parse_args()
    started = time.perf_counter()
    name = "serving_shared_soak" if args.soak_only else "serving_shared"
    report = (
        run_soak(args.work_dir, args.soak, args.soak_rate)
        if args.soak_only
        else run(
            args.work_dir,
            customers=args.customers,
            requests=args.requests,
            duration_s=args.duration,
            soak_s=args.soak,
            soak_rate_per_s=args.soak_rate,
            store_rows=args.store_rows,
            sweep_rates=tuple(args.sweep_rates),
            sweep_s=args.sweep_seconds,
        )
    )
    if args.out:
        from benchmarks.common import write_report

        print(write_report(args.out, name, report, seconds=time.perf_counter() - started))
    else:
        print(json.dumps(asdict(report), indent=2, default=str))
