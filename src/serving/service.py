"""Entry points for the CLI: ``serve``, ``export_log``, ``run_demo``; and a server subprocess
helper the tests, the benchmark and the demo share.

``python -m src.serving --host H --port P`` runs :func:`serve` with settings from the
environment (``NEXTOFFER_*``, ``NEXTOFFER_SERVING__*``, ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from pydantic import SecretStr

from src.serving.config import ServingSettings
from src.settings import Settings


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    serving: ServingSettings | None = None,
    log_level: str = "info",
    switch_interval_s: float = 0.0005,
    workers: int | None = None,
) -> None:
    """Run the service in the foreground until interrupted.

    ``workers`` > 1 (argument or ``serving.workers``): that many processes share the port, each
    a replica like those on other hosts, so the state they must agree on has to be shared: the
    PostgreSQL log (``log_url``) and the Redis contact store (``contact_store_url``) are
    required. The online detector's flags stay per process (a customer's events and decisions
    should reach the same replica, e.g. by a load balancer hashing the customer id)."""
    import uvicorn

    serving = (serving or settings.serving).resolved(settings)
    workers = workers or serving.workers
    # The log writer thread hands the GIL back and forth with the event loop on every commit;
    # at the default 5 ms switch interval each handoff can stall a commit by up to 5 ms.
    sys.setswitchinterval(switch_interval_s)
    # no access log: it would write client addresses, and ids belong in the decision log only
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        check_workers(serving, workers)
        # the workers are fresh interpreters: they read these settings from the environment
        os.environ.update(serving_env(settings, serving.model_copy(update={"workers": 1})))
        uvicorn.run("src.serving.service:worker_app", factory=True, workers=workers, **options)
        return
    from src.serving.app import create_app

    uvicorn.run(create_app(settings, serving, tune_gc=True), **options)


def check_workers(serving: ServingSettings, workers: int) -> None:
    """Several processes need the shared backends: caps counted per process would let each
    worker give a customer the whole cap."""
    missing = [name for name in ("log_url", "contact_store_url") if getattr(serving, name) is None]
    if missing:
        raise ValueError(
            f"serving.workers={workers}: set serving.{' and serving.'.join(missing)} "
            "(NEXTOFFER_SERVING__LOG_URL, NEXTOFFER_SERVING__CONTACT_STORE_URL): replicas must "
            "share the decision log and the contact caps"
        )


def worker_app() -> Any:
    """The app of one worker process of ``serve(workers=N)`` (settings from the environment)."""
    sys.setswitchinterval(0.0005)
    from src.serving.app import create_app

    return create_app(Settings(), tune_gc=True)


def export_log(
    settings: Settings, out_dir: Path, serving: ServingSettings | None = None, reward: str = "click"
) -> dict[str, Path]:
    """Decisions, rewards and the off-policy evaluation log as Parquet under ``out_dir``
    (``evaluation_log.parquet`` is what ``nextoffer evaluate-policy`` reads)."""
    from src.serving.log import decisions_for_evaluation, export_log_files

    serving = serving or settings.serving
    if serving.log_url is not None:  # the PostgreSQL log of the replicas
        from src.serving.log_postgres import read_postgres_log

        decisions, rewards = read_postgres_log(
            serving.log_url.get_secret_value(), serving.log_schema
        )
        out = settings.resolve(Path(out_dir))
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            name: out / f"{name}.parquet" for name in ("decisions", "rewards", "evaluation_log")
        }
        decisions.to_parquet(paths["decisions"], index=False)
        rewards.to_parquet(paths["rewards"], index=False)
        decisions_for_evaluation(decisions, rewards, reward).to_parquet(  # type: ignore[arg-type]
            paths["evaluation_log"], index=False
        )
        return paths
    log_path = serving.resolved(settings).log_path
    if log_path is None or not log_path.exists():
        raise FileNotFoundError(f"no decision log at {log_path}")
    return export_log_files(log_path, settings.resolve(Path(out_dir)), reward)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m src.serving`` in a child process on a free loopback port.

    ``env``: extra environment (settings). ``start()`` waits for ``/readyz``; ``kill()`` is a
    SIGKILL (no shutdown, no flush: what a crash looks like); ``stop()`` is a clean SIGTERM.
    """

    def __init__(
        self,
        env: dict[str, str],
        port: int | None = None,
        cwd: Path | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.args = args or []  # more options of ``python -m src.serving`` (--workers N)
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.cwd = cwd or Settings().root
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120.0, log_file: Path | None = None) -> Self:
        self.log_file = log_file
        out = (  # 0600 like the decision log: a server log may name customers
            os.fdopen(os.open(log_file, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600), "ab")
            if log_file
            else subprocess.DEVNULL
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.serving",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.args,
            ],
            cwd=self.cwd,
            env=self.env,
            stdout=out,
            stderr=out,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} (log: {log_file})")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"server not ready after {timeout_s}s (log: {log_file})")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def post_json(
    url: str, body: Any, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """(status, parsed body) of a JSON POST; HTTP errors are returned, not raised."""
    req = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def serving_env(settings: Settings, serving: ServingSettings) -> dict[str, str]:
    """Environment variables that reproduce these settings in a child process."""
    env = {
        "NEXTOFFER_ROOT": str(settings.root),
        "NEXTOFFER_DATA_DIR": str(settings.resolve(settings.data_dir)),
        "NEXTOFFER_MLRUNS_DIR": str(settings.resolve(settings.mlruns_dir)),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
    }
    for name, value in serving.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"NEXTOFFER_SERVING__{name.upper()}"] = str(value)
    for name in ("propensity_model", "bandit_model"):
        if getattr(serving, name) is None:
            env[f"NEXTOFFER_SERVING__{name.upper()}"] = ""
    return env


def run_demo(
    settings: Settings, echo: Callable[[str], None] = print, n_decisions: int = 5
) -> list[dict]:
    """Start the service on a free local port, send a few decisions and rewards, print them, stop.

    Uses the demo's customer view and whatever champions the registry holds (the fallback order
    if none). Returns the decisions it printed."""
    internal = settings.serving.internal_api_key or SecretStr(secrets.token_hex(16))
    serving = settings.serving.model_copy(
        update={
            "log_path": settings.resolve(settings.data_dir) / "serving" / "demo_decisions.sqlite",
            "internal_api_key": internal,  # the demo shows reasons: it calls as an internal caller
        }
    )
    headers = {serving.api_key_header: internal.get_secret_value()}
    view = serving.resolved(settings).view_path
    import pandas as pd

    customers = (
        pd.read_parquet(view, columns=["customer_id"])["customer_id"].head(n_decisions - 1).tolist()
    )
    customers.append("NEW-CUSTOMER")  # a cold start
    out = []
    log_file = settings.resolve(settings.data_dir) / "serving" / "demo_server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with ServerProcess(serving_env(settings, serving)).start(log_file=log_file) as server:
        echo(f"      service on {server.url} (OpenAPI: {server.url}/docs)")
        for i, customer_id in enumerate(customers):
            status, d = post_json(
                server.url + "/v1/decisions",
                {
                    "customer_id": customer_id,
                    "slot": "home_banner",
                    "context": {"channel": "app", "page": "home"},
                },
                headers,
            )
            if status != 200:
                echo(f"      decision for {customer_id}: HTTP {status}")
                continue
            offer = d["offer"]["offer_id"] if d["offer"] else "nothing"
            flags = [f for f in ("cold_start", "fallback") if d[f]]
            echo(
                f"      {customer_id:>12}  ->  {offer:<7} p={d['probability'] or 0:.3f}  policy={d['policy']}"
                f"  models={d['model_versions'] or '-'}  excluded={len(d['excluded'])}"
                + (
                    f"  [{', '.join(flags)}{': ' + d['fallback_reason'] if d['fallback_reason'] else ''}]"
                    if flags
                    else ""
                )
            )
            if d["offer"] and i % 2 == 0:
                status, r = post_json(
                    server.url + "/v1/rewards",
                    {"decision_id": d["decision_id"], "kind": "click"},
                    headers,
                )
                echo(
                    f"      {'':>12}     reward click -> HTTP {status} stored={r.get('stored') if status == 200 else '-'}"
                )
            out.append(d)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m src.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    serve(Settings(), args.host, args.port, log_level=args.log_level, workers=args.workers)
