"""Crash safety under load: concurrent clients on loopback, ``kill -9`` of the server mid-load,
restart on the same log. Every decision and reward a client was answered 200 for must be in
the log, and no contact cap may be exceeded — before the crash, across it, or after it.

Bounded: a few thousand requests, at most ~10 s of load per phase, 127.0.0.1 only. The server
runs in fallback mode (no models), which is the same decision path minus the model call.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.harness.loadgen import run_load
from src.serving.config import Cap, ServingSettings, policy_from_offers
from src.serving.service import ServerProcess, serving_env
from src.settings import Settings

CHANNEL_CAP = Cap(per_day=3, per_week=5)
OFFER_CAP = Cap(per_day=1, per_week=2)


@pytest.fixture(scope="module")
def setup(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    work = tmp_path_factory.mktemp("serving_load")
    view_path = work / "customer_view.parquet"
    build_customer_view(small_bank.catalog, default_as_of(small_bank)).to_parquet(view_path)
    view = pd.read_parquet(view_path)
    offers = small_bank.catalog.read("offers")
    policy = policy_from_offers(
        offers, channel_cap=CHANNEL_CAP, offer_cap=OFFER_CAP, fallback_epsilon=0.3
    )
    policy_path = work / "policy.json"
    policy_path.write_text(policy.model_dump_json())
    ok = view.loc[
        ~view["is_closed"] & ~view["is_accident_reported"] & view["consent_push"], "customer_id"
    ]
    serving = ServingSettings(
        view_path=view_path,
        policy_path=policy_path,
        log_path=work / "log.sqlite",
        propensity_model=None,
        bandit_model=None,
        seed=5,
    )
    return {
        "env": serving_env(small_bank, serving),
        "log": work / "log.sqlite",
        "work": work,
        "customers": ok.head(100).tolist(),
    }


class Acks:
    """What clients were told: decisions (with their contact) and rewards answered 200."""

    def __init__(self) -> None:
        self.decisions: dict[str, tuple[str, str, str]] = {}  # with an offer: the contact
        self.all_decisions: set[str] = set()  # with or without an offer
        self.rewards: set[tuple[str, str]] = set()

    def request(self, customers: list[str]):
        def make(i: int):
            return "/v1/decisions", {
                "customer_id": customers[i % len(customers)],
                "slot": "home_banner",
                "context": {"channel": "app" if i % 3 else "push"},
            }

        return make

    def on_response(self, i, path, body, status, data):
        if status != 200:
            return None
        payload = json.loads(data)
        if path == "/v1/decisions":
            self.all_decisions.add(payload["decision_id"])
            if payload["offer"] is None:
                return None
            self.decisions[payload["decision_id"]] = (
                payload["customer_id"],
                payload["channel"],
                payload["offer"]["offer_id"],
            )
            kind = "click" if len(self.decisions) % 2 else "conversion"
            return "/v1/rewards", {"decision_id": payload["decision_id"], "kind": kind}
        self.rewards.add((payload["decision_id"], payload["kind"]))
        return None


def _logged(path: Path) -> tuple[pd.DataFrame, set[tuple[str, str]]]:
    con = sqlite3.connect(path)
    try:
        decisions = pd.read_sql_query(
            "SELECT decision_id, customer_id, channel, offer_id, day FROM decisions", con
        )
        rewards = set(con.execute("SELECT decision_id, kind FROM rewards").fetchall())
    finally:
        con.close()
    return decisions, rewards


def _assert_caps(decisions: pd.DataFrame) -> None:
    decisions = decisions.loc[decisions["offer_id"].notna()]
    per_channel_day = decisions.groupby(["customer_id", "channel", "day"]).size()
    per_channel = decisions.groupby(
        ["customer_id", "channel"]
    ).size()  # one test run spans < a week
    per_offer_day = decisions.groupby(["customer_id", "offer_id", "day"]).size()
    per_offer = decisions.groupby(["customer_id", "offer_id"]).size()
    assert per_channel_day.max() <= CHANNEL_CAP.per_day
    assert per_channel.max() <= CHANNEL_CAP.per_week
    assert per_offer_day.max() <= OFFER_CAP.per_day
    assert per_offer.max() <= OFFER_CAP.per_week


@pytest.mark.slow
def test_kill_9_mid_load_loses_nothing_acknowledged_and_never_exceeds_a_cap(setup: dict):
    customers = setup["customers"]
    acks = Acks()
    server = ServerProcess(setup["env"]).start(log_file=setup["work"] / "server1.log")
    try:
        killer = threading.Timer(2.5, server.kill)  # SIGKILL while requests are in flight
        killer.start()
        result = asyncio.run(
            run_load(
                "127.0.0.1",
                server.port,
                acks.request(customers),
                concurrency=8,
                total=20_000,
                duration_s=10,
                on_response=acks.on_response,
            )
        )
        killer.join()
    finally:
        server.kill()
    assert server.proc.returncode == -9
    assert result.completed > 50 and acks.decisions and acks.rewards, "the load never got going"
    assert result.connection_errors > 0, "the kill did not interrupt the load"

    decisions, rewards = _logged(setup["log"])
    missing = acks.all_decisions - set(decisions["decision_id"])
    assert not missing, f"{len(missing)} acknowledged decisions lost"
    assert acks.rewards <= rewards, f"{len(acks.rewards - rewards)} acknowledged rewards lost"
    _assert_caps(decisions)
    # caps saturated for these customers: the log shows they were binding, not trivially met
    shown = decisions.loc[decisions["offer_id"].notna()]
    assert shown.groupby(["customer_id", "channel", "day"]).size().max() == CHANNEL_CAP.per_day
    print(
        f"acknowledged before the kill: {len(acks.all_decisions)} decisions "
        f"({len(acks.decisions)} with an offer), {len(acks.rewards)} rewards; "
        f"logged: {len(decisions)} decisions; {result.connection_errors} connections cut"
    )

    # restart on the same log: counts come back from it, so more load cannot push past a cap
    before = len(decisions)
    with ServerProcess(setup["env"]).start(log_file=setup["work"] / "server2.log") as again:
        more = Acks()
        asyncio.run(
            run_load(
                "127.0.0.1",
                again.port,
                more.request(customers),
                concurrency=4,
                total=300,
                duration_s=10,
                on_response=more.on_response,
            )
        )
        ready = json.loads(
            __import__("urllib.request").request.urlopen(again.url + "/readyz").read()
        )
        assert ready["status"] == "ready"
    decisions, rewards = _logged(setup["log"])
    assert acks.all_decisions | more.all_decisions <= set(decisions["decision_id"])
    assert acks.rewards | more.rewards <= rewards
    _assert_caps(decisions)
    assert len(decisions) - before == len(more.all_decisions)
