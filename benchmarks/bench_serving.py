"""Offer-slot service under load: requests/s and p50/p99 at fixed concurrency, 20 candidates.

The service runs as a separate process (``python -m src.serving``) on loopback with champion
models from a local MLflow registry (a VW bandit trained on the bank's exposures, a propensity
pyfunc), every one of the 20 offers eligible in the requested slot and no contact caps, so
every request takes the whole path: view row, eligibility over 20 offers, caps bookkeeping,
bandit PMF over 20 candidates, durable log write (group commit), response.

Reference: ``mlflow models serve --env-manager local`` of the same propensity model, loaded
with one customer row per request (MLflow's scoring server cannot look up features itself).
Client: ``benchmarks.harness.loadgen`` (raw keep-alive HTTP/1.1), on the same machine.

Where the time goes: cProfile of the decision path in process (no HTTP), with the customer
caches warm (every customer seen before, as in the load runs) and cold (first request of each
customer); the whole request in process through the ASGI app (no sockets); CPU per request of
the server process and of the load client during each load run (they share the machine's
cores); and the service's ``/healthz`` rate as the ceiling of the HTTP stack alone.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.common import Report, bank_params
from benchmarks.harness.loadgen import load
from src.serving.config import Cap, ServingSettings, policy_from_offers
from src.serving.service import ServerProcess, free_port, serving_env


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _load(
    port: int,
    make_request,
    concurrency: int,
    total: int,
    duration_s: float,
    server_pid: int | None = None,
) -> dict[str, float]:
    before = _cpu_s(server_pid) if server_pid else 0.0
    result = load(
        "127.0.0.1",
        port,
        make_request,
        concurrency=concurrency,
        total=total,
        duration_s=duration_s,
        warmup=min(200, total // 10),
    )
    out = result.summary()
    if server_pid and result.completed:
        out["server_cpu_us_per_request"] = (_cpu_s(server_pid) - before) / result.completed * 1e6
    return {k: round(v, 3) for k, v in out.items()}


def _wait(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def _top(prof: cProfile.Profile, n: int, top: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = stats.total_tt
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in sorted(
        stats.stats.items(), key=lambda kv: -kv[1][3]
    )[: top * 4]:
        if (
            "serving" in file
            or "bandit" in file
            or "pylibvw" in func
            or "json" in func
            or "validate" in func
        ):
            rows.append(
                {
                    "function": f"{Path(file).name}:{line}({func})",
                    "calls_per_decision": round(ncalls / n, 3),
                    "cumulative_share": round(cumtime / total, 3),
                    "own_share": round(tottime / total, 3),
                }
            )
    return rows[:top]


def profile_decision_path(
    settings, serving: ServingSettings, n: int = 2_000, top: int = 20
) -> dict[str, Any]:
    """Per-decision cost in process and the functions it is spent in (cProfile, cumulative).

    ``per_decision_us``: engine + response body + log row, every customer seen before (the
    state of the load runs: 1,000 customers, thousands of requests). ``cold_per_decision_us``:
    the same for customers never seen (eligibility, scores and the customer's part of the VW
    example built on the request). ``request_in_process_us``: the whole ``POST /v1/decisions``
    through the ASGI app, log commit included, 8 concurrent requests, no sockets (CPU time)."""
    from src.serving.app import build_state, decision_json
    from src.serving.log import _decision_row
    from src.serving.metrics import service_metrics
    from src.serving.models import MlflowModelSource
    from src.serving.schemas import DecisionRequest

    serving = serving.model_copy(update={"log_path": serving.log_path.with_name("profile.sqlite")})
    state = build_state(
        settings,
        serving.resolved(settings),
        service_metrics(),
        MlflowModelSource(settings.tracking_uri),
    )
    state.manager.refresh()
    ids = list(state.store.index)
    requests = [
        DecisionRequest.model_validate(
            {
                "customer_id": ids[i % len(ids)],
                "slot": "home_banner",
                "context": {"channel": "app", "device": "ios", "page": "home"},
            }
        )
        for i in range(n)
    ]

    def work(batch=requests) -> None:
        for r in batch:
            record = state.engine.decide(r)
            decision_json(record, state.engine)
            _decision_row(record)

    work()  # every customer seen once: caches warm
    timings = []
    for _ in range(3):
        t0 = time.perf_counter()
        work()
        timings.append((time.perf_counter() - t0) / n * 1e6)
    prof = cProfile.Profile()
    prof.runcall(work)
    hot = _top(prof, n, top)

    def cold() -> float:  # a fresh engine cache and VW customer cache: every customer is new
        state.engine._audience_models = None
        scorer = getattr(state.manager.current.bandit, "scorer", None)
        if scorer is not None:
            scorer._customer.clear()
        batch = requests[: min(n, len(ids))]
        t0 = time.perf_counter()
        work(batch)
        return (time.perf_counter() - t0) / len(batch) * 1e6

    cold_us = min(cold() for _ in range(3))
    state.log.close()
    bandit = state.manager.current.bandit
    scorer = getattr(bandit, "scorer", None)
    return {
        "per_decision_us": round(min(timings), 1),
        "cold_per_decision_us": round(cold_us, 1),
        "request_in_process_us": _request_in_process(settings, serving),
        "models": state.manager.current.versions(),
        "vw_fast_path": bool(getattr(scorer, "fast", False)),
        "vw_cached_example_assembly": bool(getattr(scorer, "split", False)),
        "top": hot,
    }


def _request_in_process(
    settings, serving: ServingSettings, n: int = 2_000, concurrency: int = 8
) -> float:
    """CPU microseconds per ``POST /v1/decisions`` through the app's ASGI interface (no sockets,
    no HTTP parsing: what the service itself spends, its log writer thread included)."""
    import json

    from src.serving.app import create_app

    serving = serving.model_copy(
        update={"log_path": serving.log_path.with_name("profile_asgi.sqlite")}
    )
    app = create_app(settings, serving)
    view_ids = pd.read_parquet(serving.resolved(settings).view_path, columns=["customer_id"])[
        "customer_id"
    ]
    bodies = [
        json.dumps(
            {
                "customer_id": c,
                "slot": "home_banner",
                "context": {"channel": "app", "device": "ios", "page": "home"},
            }
        ).encode()
        for c in view_ids.tolist()
    ]

    async def one(body: bytes) -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        status = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/decisions",
            "raw_path": b"/v1/decisions",
            "root_path": "",
            "query_string": b"",
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"in-process request answered {status}")

    async def run() -> float:
        async with app.router.lifespan_context(app):

            async def rounds(k: int) -> None:
                it = iter(range(k))

                async def worker() -> None:
                    for i in it:
                        await one(bodies[i % len(bodies)])

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            await rounds(len(bodies))  # warm
            best = float("inf")
            for _ in range(3):
                c0 = time.process_time()
                await rounds(n)
                best = min(best, (time.process_time() - c0) / n * 1e6)
            return round(best, 1)

    return asyncio.run(run())


def _mlflow_serve(
    settings, model_uri: str, rows: pd.DataFrame, concurrency: int, total: int, duration_s: float
) -> dict[str, Any]:
    """Load ``mlflow models serve`` of ``model_uri`` with one row per request."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": settings.tracking_uri,  # its uvicorn is the venv's
        "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        str(mlflow_bin),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log_file = Path(settings.resolve(settings.data_dir)) / "mlflow_serve.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=settings.root)
    try:
        _wait(f"http://127.0.0.1:{port}/ping", 180, proc)
        records = rows.to_dict("split")
        bodies = [
            {"dataframe_split": {"columns": records["columns"], "data": [d]}}
            for d in records["data"]
        ]
        result = _load(
            port,
            lambda i: ("/invocations", bodies[i % len(bodies)]),
            concurrency,
            total,
            duration_s,
        )
        return {"command": " ".join(cmd[1:]), **result}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(
    work_dir: Path,
    customers: int = 1_000,
    days: int = 14,
    seed: int = 3,
    concurrency: int = 8,
    requests: int = 6_000,
    duration_s: float = 30.0,
    compare_mlflow: bool = True,
    keep: bool = False,
    goal_requests_per_s: float = 1_000,
    goal_p99_ms: float = 10,
) -> Report:
    """Build a small bank with champion models under ``work_dir``, then measure."""
    from benchmarks.harness.serving_fixtures import PROPENSITY_NAME, register_models, tiny_bank
    from src.models.tracking import serving_frame

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
    serving = ServingSettings(
        log_path=work_dir / "serving" / "decisions.sqlite", policy_path=policy_path
    )
    view = pd.read_parquet(view_path)
    ids = view["customer_id"].tolist()

    bodies = [
        {
            "customer_id": c,
            "slot": "home_banner",
            "context": {"channel": "app", "device": "ios", "page": "home"},
        }
        for c in ids
    ]

    def decision(
        i: int,
    ) -> tuple[str, Any]:  # the same body objects again: the client encodes each once
        return "/v1/decisions", bodies[i % len(bodies)]

    params = {
        "bank": bank_params(settings.raw_dir.parent),
        "customers_in_view": len(ids),
        "candidates_per_request": len(offers),
        "slot": "home_banner",
        "concurrency": concurrency,
        "requests": requests,
        "one_client": {"requests": requests // 3, "duration_s": duration_s / 2},
        "many_clients": {"concurrency": 2 * concurrency, "requests": requests},
        "duration_s": duration_s,
        "compare_mlflow": compare_mlflow,
        "goal": {"requests_per_s": goal_requests_per_s, "p99_ms": goal_p99_ms},
    }
    out: dict[str, Any] = {
        "setup_s": round(setup_s, 1),
        "models": versions,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for synchronous in ("FULL", "NORMAL"):
        cfg = serving.model_copy(
            update={
                "sqlite_synchronous": synchronous,
                "log_path": work_dir / "serving" / f"decisions_{synchronous}.sqlite",
            }
        )
        log_file = work_dir / "serving" / f"server_{synchronous}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with ServerProcess(serving_env(settings, cfg)).start(log_file=log_file) as server:
            pid = server.proc.pid
            _load(server.port, decision, concurrency, 500, 10)  # warm up (caches, page cache)
            key = f"service_sync_{synchronous.lower()}"
            out[key] = _load(server.port, decision, concurrency, requests, duration_s, pid)
            out[key + "_c1"] = _load(server.port, decision, 1, requests // 3, duration_s / 2, pid)
            out[f"{key}_c{2 * concurrency}"] = _load(
                server.port, decision, 2 * concurrency, requests, duration_s, pid
            )
            if synchronous == "NORMAL":
                out["healthz_ceiling"] = _load(
                    server.port,
                    lambda i: ("/healthz", None),
                    concurrency,
                    requests,
                    duration_s / 2,
                    pid,
                )
    # what answering decisions in front of FastAPI's routing buys: the same server, route only
    cfg = serving.model_copy(
        update={"fast_path": False, "log_path": work_dir / "serving" / "decisions_route.sqlite"}
    )
    with ServerProcess(serving_env(settings, cfg)).start(
        log_file=work_dir / "serving" / "server_route.log"
    ) as server:
        _load(server.port, decision, concurrency, 500, 10)
        out["service_sync_full_fastapi_route_only"] = _load(
            server.port, decision, concurrency, requests, duration_s, server.proc.pid
        )
    if compare_mlflow:
        try:
            import mlflow

            uri = f"models:/{PROPENSITY_NAME}/{versions[PROPENSITY_NAME]}"
            mlflow.set_registry_uri(settings.tracking_uri)
            columns = mlflow.models.get_model_info(uri).signature.inputs.input_names()
            frame = serving_frame(view.head(500), columns)
            frame = frame.astype(object).where(frame.notna(), None)
            ref = _mlflow_serve(settings, uri, frame, concurrency, requests, duration_s)
            out["mlflow_models_serve"] = ref
            out["ratio_rps_service_vs_mlflow"] = (
                round(out["service_sync_full"]["requests_per_s"] / ref["requests_per_s"], 2)
                if ref["requests_per_s"]
                else None
            )
        except Exception as error:  # noqa: BLE001 - report why the reference could not run
            out["mlflow_models_serve"] = {"error": f"{type(error).__name__}: {error}"}
    out["decision_path_profile"] = profile_decision_path(settings, serving)
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return Report(params, out, notes(out, params))


def notes(r: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """Sentences over the measured numbers."""
    full, goal = r["service_sync_full"], params["goal"]
    met = full["requests_per_s"] >= goal["requests_per_s"] and full["p99_ms"] <= goal["p99_ms"]
    out = [
        f"{params['concurrency']} clients, {params['candidates_per_request']} candidates, fsync "
        f"per commit: {full['requests_per_s']:,.0f} req/s, p50 {full['p50_ms']:.1f} ms, p99 "
        f"{full['p99_ms']:.1f} ms (goal >= {goal['requests_per_s']:,.0f} req/s at p99 <= "
        f"{goal['p99_ms']:g} ms: {'met' if met else 'NOT met'}); {full['errors']} errors, "
        f"{full['non_2xx']} non-2xx",
    ]
    route = r.get("service_sync_full_fastapi_route_only")
    if route and route.get("requests_per_s"):
        out.append(
            f"through FastAPI's routing only: {route['requests_per_s']:,.0f} req/s "
            f"(the service's own path answers {full['requests_per_s'] / route['requests_per_s']:.2f}x"
            " as many)"
        )
    ref = r.get("mlflow_models_serve", {})
    if ref.get("requests_per_s"):
        out.append(
            f"mlflow models serve: {ref['requests_per_s']:,.0f} req/s, p99 {ref['p99_ms']:.1f} ms "
            f"(the service answers {r['ratio_rps_service_vs_mlflow']:.1f}x as many)"
        )
    elif "error" in ref:
        out.append(f"mlflow models serve could not run: {ref['error']}")
    profile = r["decision_path_profile"]
    out.append(
        f"in process: {profile['per_decision_us']:.0f} µs per decision warm, "
        f"{profile['cold_per_decision_us']:.0f} µs cold, {profile['request_in_process_us']:.0f} µs "
        "CPU per request through the ASGI app"
    )
    return out


if __name__ == "__main__":
    import json
    from dataclasses import asdict

    report = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/bench_serving"))
    print(json.dumps(asdict(report), indent=2, default=str))
