"""Offer-slot service under load: requests/s and p50/p99 at fixed concurrency, 20 candidates.

The service runs as a separate process (``python -m src.serving``) on loopback with champion
models from a local MLflow registry (a VW bandit trained on the bank's exposures, a propensity
pyfunc), every one of the 20 offers eligible in the requested slot and no contact caps, so
every request takes the whole path: view row, eligibility over 20 offers, caps bookkeeping,
bandit PMF over 20 candidates, durable log write (group commit), response.

Reference: ``mlflow models serve --env-manager local`` of the same propensity model, loaded
with one customer row per request (MLflow's scoring server cannot look up features itself).
Client: ``src.serving.loadgen`` (raw keep-alive HTTP/1.1), on the same machine.

Where the time goes: cProfile of the decision path in process (no HTTP), and the service's
``/healthz`` rate as the ceiling of the HTTP stack alone.
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

from src.serving.config import Cap, ServingSettings, policy_from_offers
from src.serving.loadgen import run_load
from src.serving.service import ServerProcess, free_port, serving_env


def _load(port: int, make_request, concurrency: int, total: int, duration_s: float) -> dict[str, float]:
    result = asyncio.run(run_load("127.0.0.1", port, make_request, concurrency=concurrency, total=total,
                                  duration_s=duration_s, warmup=min(200, total // 10)))
    return {k: round(v, 3) for k, v in result.summary().items()}


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


def profile_decision_path(settings, serving: ServingSettings, n: int = 2_000, top: int = 15) -> dict[str, Any]:
    """Per-decision cost in process and the functions it is spent in (cProfile, cumulative)."""
    from src.serving.app import build_state, decision_json
    from src.serving.log import _decision_row
    from src.serving.metrics import service_metrics
    from src.serving.models import MlflowModelSource
    from src.serving.schemas import DecisionRequest

    serving = serving.model_copy(update={"log_path": serving.log_path.with_name("profile.sqlite")})
    state = build_state(settings, serving.resolved(settings), service_metrics(),
                        MlflowModelSource(settings.tracking_uri))
    state.manager.refresh()
    ids = list(state.store.index)
    requests = [DecisionRequest.model_validate({"customer_id": ids[i % len(ids)], "slot": "home_banner",
                                                "context": {"channel": "app"}}) for i in range(n)]

    def work() -> None:
        for r in requests:
            record = state.engine.decide(r)
            decision_json(record, state.engine)
            _decision_row(record)

    t0 = time.perf_counter()
    work()
    per_decision_us = (time.perf_counter() - t0) / n * 1e6
    prof = cProfile.Profile()
    prof.runcall(work)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
    total = stats.total_tt
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][3])[:top * 3]:
        if "serving" in file or "bandit" in file or "pylibvw" in func or "json" in file:
            rows.append({"function": f"{Path(file).name}:{line}({func})", "calls_per_decision": ncalls / n,
                         "cumulative_share": round(cumtime / total, 3)})
    state.log.close()
    return {"per_decision_us": round(per_decision_us, 1), "models": state.manager.current.versions(),
            "vw_fast_path": bool(getattr(getattr(getattr(state.manager.current.bandit, "pmf_fn", None),
                                                     "__self__", None), "fast", False)),
            "top": rows[:top]}


def _mlflow_serve(settings, model_uri: str, rows: pd.DataFrame, concurrency: int, total: int,
                  duration_s: float) -> dict[str, Any]:
    """Load ``mlflow models serve`` of ``model_uri`` with one row per request."""
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.tracking_uri,  # its uvicorn is the venv's
           "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(mlflow_bin), "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log_file = Path(settings.resolve(settings.data_dir)) / "mlflow_serve.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, cwd=settings.root)
    try:
        _wait(f"http://127.0.0.1:{port}/ping", 180, proc)
        records = rows.to_dict("split")
        bodies = [{"dataframe_split": {"columns": records["columns"], "data": [d]}} for d in records["data"]]
        result = _load(port, lambda i: ("/invocations", bodies[i % len(bodies)]), concurrency, total, duration_s)
        return {"command": " ".join(cmd[1:]), **result}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(work_dir: Path, customers: int = 1_000, days: int = 14, seed: int = 3, concurrency: int = 8,
        requests: int = 6_000, duration_s: float = 30.0, compare_mlflow: bool = True,
        keep: bool = False) -> dict[str, Any]:
    """Build a small bank with champion models under ``work_dir``, then measure."""
    from src.models.tracking import serving_frame
    from src.serving.fixtures import PROPENSITY_NAME, register_models, tiny_bank

    work_dir = Path(work_dir)
    if work_dir.exists() and not keep:
        shutil.rmtree(work_dir)
    t0 = time.perf_counter()
    settings, view_path = tiny_bank(work_dir, customers=customers, days=days, seed=seed)
    settings = settings.model_copy(update={"mlruns_dir": work_dir / "mlruns"})
    versions = register_models(settings, view_path)
    offers = pd.read_parquet(settings.raw_dir / "offers.parquet").assign(slot="home_banner")
    policy_path = work_dir / "bench_policy.json"
    policy_path.write_text(policy_from_offers(offers, channel_cap=Cap(), offer_cap=Cap()).model_dump_json(indent=1))
    setup_s = time.perf_counter() - t0
    serving = ServingSettings(log_path=work_dir / "serving" / "decisions.sqlite", policy_path=policy_path)
    view = pd.read_parquet(view_path)
    ids = view["customer_id"].tolist()

    def decision(i: int) -> tuple[str, Any]:
        return "/v1/decisions", {"customer_id": ids[i % len(ids)], "slot": "home_banner",
                                 "context": {"channel": "app", "device": "ios", "page": "home"}}

    out: dict[str, Any] = {"setup_s": round(setup_s, 1), "customers": customers, "candidates_per_request": 20,
                           "concurrency": concurrency, "models": versions, "cpu_count": os.cpu_count(),
                           "load_average_1m": round(os.getloadavg()[0], 2)}
    for synchronous in ("FULL", "NORMAL"):
        cfg = serving.model_copy(update={"sqlite_synchronous": synchronous,
                                         "log_path": work_dir / "serving" / f"decisions_{synchronous}.sqlite"})
        log_file = work_dir / "serving" / f"server_{synchronous}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with ServerProcess(serving_env(settings, cfg)).start(log_file=log_file) as server:
            _load(server.port, decision, concurrency, 500, 10)  # warm up (caches, page cache)
            key = f"service_sync_{synchronous.lower()}"
            out[key] = _load(server.port, decision, concurrency, requests, duration_s)
            out[key + "_c1"] = _load(server.port, decision, 1, requests // 3, duration_s / 2)
            if synchronous == "NORMAL":
                out["healthz_ceiling"] = _load(server.port, lambda i: ("/healthz", None), concurrency,
                                               requests, duration_s / 2)
    if compare_mlflow:
        try:
            import mlflow

            uri = f"models:/{PROPENSITY_NAME}/{versions[PROPENSITY_NAME]}"
            mlflow.set_registry_uri(settings.tracking_uri)
            columns = mlflow.models.get_model_info(uri).signature.inputs.input_names()
            frame = serving_frame(view.head(500), columns)
            frame = frame.astype(object).where(frame.notna(), None)
            ref = _mlflow_serve(settings, uri, frame,
                                concurrency, requests, duration_s)
            out["mlflow_models_serve"] = ref
            out["ratio_rps_service_vs_mlflow"] = round(
                out["service_sync_full"]["requests_per_s"] / ref["requests_per_s"], 2) if ref["requests_per_s"] else None
        except Exception as error:  # noqa: BLE001 - report why the reference could not run
            out["mlflow_models_serve"] = {"error": f"{type(error).__name__}: {error}"}
    out["decision_path_profile"] = profile_decision_path(settings, serving)
    out["goal"] = {"requests_per_s": 1000, "p99_ms": 10}
    out["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/bench_serving")), indent=2))
