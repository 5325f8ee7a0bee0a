"""The shared backends on the real servers: the decision log in PostgreSQL and the contact caps
in Redis (one Lua script), each in its own uuid-named schema / key prefix.

Under ``CI=true`` these must run: a missing server fails them; elsewhere they skip, naming it.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import date

import pandas as pd
import pytest

from benchmarks.harness.backends import (
    PG_URL,
    REDIS_URL,
    TcpProxy,
    missing_servers,
    pg_schema,
    redis_prefix,
    with_port,
)
from src.contact.caps import ContactCaps
from src.contact.policy import Cap, Offer, PolicyConfig
from src.contact.store import Charge, StoreUnavailable
from src.contact.store_redis import RedisContactStore
from src.serving.log import DecisionRecord, RewardRecord, decisions_for_evaluation
from src.serving.log_postgres import PostgresDecisionLog, read_postgres_log


@pytest.fixture(scope="module", autouse=True)
def servers() -> None:
    missing = missing_servers()
    if missing:
        message = "needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def schema() -> Iterator[str]:
    with pg_schema() as name:
        yield name


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as name:
        yield name


def _record(i: int | str, offer: str | None = "A", customer: str = "C1") -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i}",
        created_at=f"2026-02-01T10:00:{int(str(i)[-2:]) % 60 if str(i).isdigit() else 0:02d}",
        day=20_000,
        customer_id=customer,
        slot="home_banner",
        channel="app",
        device=None,
        page=None,
        request_time=None,
        offer_id=offer,
        product="loan" if offer else None,
        prob=0.5 if offer else None,
        candidates=("A", "B") if offer else (),
        pmf=(0.5, 0.5) if offer else (),
        scores={"A": 0.1, "B": None},
        excluded={"C": "product_held"},
        policy="default_order",
        model_versions={"bandit": "3"},
        cold_start=False,
        fallback=True,
        fallback_reason="no_model",
        view_as_of="2026-02-01",
        flags=("mark_loan",),
    )


# --- the PostgreSQL log -----------------------------------------------------------------------


def test_postgres_log_group_commits_idempotent_ids_and_reward_outcomes(schema: str):
    log = PostgresDecisionLog(PG_URL, schema, timeout_s=5)
    try:
        threads = [
            threading.Thread(target=log.submit_blocking, args=("decision", _record(i)))
            for i in range(60)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.submit_blocking("decision", _record(3)) is None  # a retried id: no error
        outcomes = [
            log.submit_blocking("reward", RewardRecord("d3", "conversion", 1000.0, "t"))
            for _ in range(2)
        ]
        assert outcomes == ["stored", "duplicate"]
        assert (
            log.submit_blocking("reward", RewardRecord("d3", "conversion", 2000.0, "t"))
            == "conflict"
        )
        assert log.submit_blocking("reward", RewardRecord("d4", "click", None, "t")) == "stored"
        assert log.submit_blocking("reward", RewardRecord("d4", "click", None, "t")) == "duplicate"
        assert (
            log.submit_blocking("reward", RewardRecord("zz", "click", None, "t"))
            == "unknown_decision"
        )
        assert log.stats.commits < log.stats.writes  # several writes shared a commit
        assert sorted(log.recent_contacts(20_000))[0] == ("C1", "app", "A", 20_000)
        assert log.recent_contacts(20_001) == []
    finally:
        log.close()
    decisions, rewards = read_postgres_log(PG_URL, schema)
    assert len(decisions) == 60 and decisions["decision_id"].is_unique
    assert len(rewards) == 2
    stored = rewards.set_index("decision_id").loc["d3"]
    assert stored["value_krw"] == 1000.0  # the conflicting value did not overwrite it
    evaluation = decisions_for_evaluation(decisions, rewards)
    assert evaluation["click"].sum() == 1 and evaluation["convert"].sum() == 1


def test_postgres_log_batches_from_the_event_loop_and_in_one_batch(schema: str):
    """Rewards in the same batch as their decision, the same reward twice in one batch."""
    log = PostgresDecisionLog(PG_URL, schema, timeout_s=5)

    async def go() -> list:
        return await asyncio.gather(
            log.append_decision(_record(1)),
            log.append_decision(_record(2, offer=None)),
            log.append_reward(RewardRecord("d1", "click", None, "t")),
            log.append_reward(RewardRecord("d1", "click", None, "t")),
            log.append_reward(RewardRecord("d1", "conversion", 5.0, "t")),
            log.append_reward(RewardRecord("d1", "conversion", 6.0, "t")),
        )

    try:
        assert asyncio.run(go()) == [None, None, "stored", "duplicate", "stored", "conflict"]
    finally:
        log.close()


def test_postgres_log_fails_while_the_server_is_cut_and_recovers_by_itself(schema: str):
    host, port = PG_URL.split("@")[1].split("/")[0].split(":")
    proxy = TcpProxy((host, int(port)))
    log = PostgresDecisionLog(with_port(PG_URL, proxy.port), schema, timeout_s=2)
    try:
        log.submit_blocking("decision", _record(1))
        log.ping()
        proxy.cut()
        with pytest.raises(ConnectionError):
            log.submit_blocking("decision", _record(2))
        with pytest.raises(ConnectionError, match="PostgreSQL"):
            log.ping()
        with pytest.raises(ConnectionError):
            log.submit_blocking("reward", RewardRecord("d1", "click", None, "t"))
        proxy.restore()
        log.ping()
        log.submit_blocking("decision", _record(2))
        assert log.submit_blocking("reward", RewardRecord("d1", "click", None, "t")) == "stored"
    finally:
        log.close()
        proxy.close()
    decisions, _ = read_postgres_log(PG_URL, schema)
    assert sorted(decisions["decision_id"]) == ["d1", "d2"]


# --- the Redis contact store ------------------------------------------------------------------

POLICY = PolicyConfig(
    offers=(
        Offer(offer_id="A", slots=("s",), product="loan"),
        Offer(offer_id="B", slots=("s",), product="card"),
        Offer(offer_id="C", slots=("s",), product="fund"),
    ),
    channel_cap=Cap(per_day=3, per_week=5),
    offer_cap=Cap(per_day=1, per_week=2),
)


def _store(prefix: str, url: str = REDIS_URL) -> RedisContactStore:
    return RedisContactStore(url, prefix, timeout_s=1)


def test_redis_store_agrees_with_the_in_memory_caps_on_random_charges(prefix: str):
    """Same charges, same answers and counts as ContactCaps (the embedded reference), days
    moving forward so the weekly window slides; idempotent on contact id; release undoes."""
    store, caps = _store(prefix), ContactCaps(POLICY)
    rng = random.Random(3)
    charged: list[Charge] = []
    try:
        day = 20_000
        for i in range(400):
            day += rng.random() < 0.08
            customer, channel, offer = (
                rng.choice(["c1", "c2"]),
                rng.choice(["app", "push"]),
                rng.choice("ABC"),
            )
            expected_usage = caps.usage(customer, channel, day)
            assert store.usage(customer, channel, day) == expected_usage
            blocked = caps.blocked(expected_usage, channel, [offer]).get(offer)
            charge = Charge(f"k{i}", customer, channel, offer, day, "slot")
            assert store.try_charge(charge, POLICY) == blocked
            if blocked is None:
                caps.reserve_with(customer, channel, day, [offer], lambda u, b, o=offer: (o, None))
                charged.append(charge)
                assert store.try_charge(charge, POLICY) is None  # again: no second charge
                assert store.usage(customer, channel, day) == caps.usage(customer, channel, day)
            if charged and rng.random() < 0.1:
                undo = charged.pop(rng.randrange(len(charged)))
                store.release(undo.contact_id)
                store.release(undo.contact_id)  # twice: undone once
                caps.release(undo.customer_id, undo.channel, undo.day, undo.offer_id)
        assert len(charged) > 20
    finally:
        store.close()


def test_redis_store_never_lets_concurrent_chargers_exceed_a_cap(prefix: str):
    stores = [_store(prefix) for _ in range(4)]
    granted: list[Charge] = []
    lock = threading.Lock()

    def charge(k: int) -> None:
        rng = random.Random(k)
        for i in range(150):
            c = Charge(f"t{k}-{i}", f"c{i % 3}", "app", rng.choice("ABC"), 20_000, "slot")
            if stores[k].try_charge(c, POLICY) is None:
                with lock:
                    granted.append(c)

    threads = [threading.Thread(target=charge, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    per_customer: dict[str, int] = {}
    per_offer: dict[tuple[str, str], int] = {}
    for c in granted:
        per_customer[c.customer_id] = per_customer.get(c.customer_id, 0) + 1
        per_offer[(c.customer_id, c.offer_id)] = per_offer.get((c.customer_id, c.offer_id), 0) + 1
    assert per_customer == {"c0": 3, "c1": 3, "c2": 3}  # caps reached, never passed
    assert max(per_offer.values()) == 1


def test_redis_store_raises_store_unavailable_when_cut_and_recovers(prefix: str):
    host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
    proxy = TcpProxy((host, int(port)))
    store = _store(prefix, with_port(REDIS_URL, proxy.port))
    charge = Charge("x1", "c1", "app", "A", 20_000, "slot")
    try:
        assert store.try_charge(charge, POLICY) is None
        proxy.cut()
        for call in (
            store.ping,
            lambda: store.usage("c1", "app", 20_000),
            lambda: store.try_charge(replace(charge, contact_id="x2", offer_id="B"), POLICY),
            lambda: store.release("x1"),
        ):
            with pytest.raises(StoreUnavailable):
                call()
        proxy.restore()
        store.ping()
        assert store.usage("c1", "app", 20_000).channel_day == 1
    finally:
        store.close()
        proxy.close()


def test_serve_with_workers_refuses_to_start_without_the_shared_backends(tmp_path):
    from typer.testing import CliRunner

    from src.cli import app

    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "serving.log_url and serving.contact_store_url" in result.output
    assert "Traceback" not in result.output


# --- the engine on a shared store (no server needed: a scripted store) --------------------------


class ScriptedStore:
    """A ContactStore that refuses the first ``refuse`` charges (another replica took the
    contact meanwhile) or is unreachable."""

    def __init__(self, refuse: int = 0, down: bool = False) -> None:
        self.refuse, self.down = refuse, down
        self.charged: list[Charge] = []
        self.released: list[str] = []

    def usage(self, customer_id, channel, day):
        from src.contact.caps import Usage

        if self.down:
            raise StoreUnavailable("down")
        return Usage(0, 0, {}, {}, 0)

    def try_charge(self, charge, policy):
        if self.down:
            raise StoreUnavailable("down")
        if self.refuse:
            self.refuse -= 1
            return "cap_offer_day"
        self.charged.append(charge)
        return None

    def release(self, contact_id):
        self.released.append(contact_id)

    def ping(self):
        pass

    def close(self):
        pass


def _engine(store: ScriptedStore, **caps):
    from src.serving.customers import CustomerStore, OnlineFlags
    from src.serving.engine import DecisionEngine
    from src.serving.models import ModelManager

    view = pd.DataFrame(
        {"customer_id": ["C1"], "is_closed": [False], "is_accident_reported": [False]}
    )
    customers = CustomerStore(view)
    offers = tuple(o.model_copy(update={"slots": ("home_banner",)}) for o in POLICY.offers)
    policy = PolicyConfig(offers=offers, fallback_epsilon=0.0, **caps)
    manager = ModelManager(None, customers, propensity_name=None, bandit_name=None)
    engine = DecisionEngine(
        policy,
        customers,
        OnlineFlags(),
        ContactCaps(policy),
        manager,
        seed=1,
        contact_store=store,
    )
    return engine


def _request():
    from src.serving.schemas import DecisionRequest

    return DecisionRequest.model_validate(
        {"customer_id": "C1", "slot": "home_banner", "context": {"channel": "app"}}
    )


def test_engine_chooses_again_when_another_replica_took_the_contact():
    store = ScriptedStore(refuse=1)
    record = _engine(store).decide(_request())
    assert record.offer_id == "B"  # A was refused at charge time; the next in order is charged
    assert record.excluded["A"] == "cap_offer_day"
    assert [c.offer_id for c in store.charged] == ["B"]
    charge = store.charged[0]
    assert charge.contact_id == record.decision_id  # idempotent on the decision
    assert charge.day == record.day - date(1970, 1, 1).toordinal()  # the store's day numbers


def test_engine_fails_closed_when_the_store_is_unreachable_and_a_cap_applies():
    record = _engine(ScriptedStore(down=True)).decide(_request())
    assert record.offer_id is None and record.fallback_reason == "contact_store_unavailable"
    # no cap configured on the channel or the offers: nothing to check, the offer may go
    free = _engine(ScriptedStore(down=True), channel_cap=Cap(), offer_cap=Cap())
    assert free.decide(_request()).offer_id == "A"


def test_engine_releases_through_the_store():
    store = ScriptedStore()
    engine = _engine(store)
    record = engine.decide(_request())
    engine.release(record)
    assert store.released == [record.decision_id]


def test_export_log_reads_the_postgresql_log(schema: str, tmp_path):
    from src.serving.config import ServingSettings
    from src.serving.service import export_log
    from src.settings import Settings

    log = PostgresDecisionLog(PG_URL, schema, timeout_s=5)
    try:
        for i in range(3):
            log.submit_blocking("decision", _record(i))
        log.submit_blocking("reward", RewardRecord("d1", "click", None, "t"))
    finally:
        log.close()
    serving = ServingSettings(log_url=PG_URL, log_schema=schema)
    paths = export_log(Settings(data_dir=tmp_path), tmp_path / "out", serving=serving)
    evaluation = pd.read_parquet(paths["evaluation_log"])
    assert len(evaluation) == 3 and evaluation["click"].sum() == 1
    assert len(pd.read_parquet(paths["decisions"])) == 3


def test_a_model_poll_that_loaded_nothing_keeps_the_customers_audiences():
    """Every poll makes a new ModelSet; rebuilding every audience on it made the VW scorer's
    per-candidate-tuple cache grow for the whole soak (found by bench_serving_shared)."""
    engine = _engine(ScriptedStore())
    models = engine.models.current
    first = engine.audience(0, "app", "home_banner", models)
    polled = replace(models, errors={"bandit": "no champion"})
    assert polled is not models
    assert engine.audience(0, "app", "home_banner", polled) is first

    class Propensity:
        version = "2"

        def for_position(self, position):
            return {"loan": 0.5}

    swapped = replace(models, propensity=Propensity())  # a new model: scores change
    again = engine.audience(0, "app", "home_banner", swapped)
    assert again is not first and again.scores == {"loan": 0.5}


# --- counts read on the event loop before the decision ---------------------------------------


def test_async_usage_read_matches_the_sync_one_and_fails_closed_when_down(prefix: str):
    import socket

    store = _store(prefix)
    try:
        for i, offer in enumerate(("A", "B", "A")):
            store.try_charge(Charge(f"k{i}", "C1", "app", offer, 20_000 + i, "slot"), POLICY)
        for day in (20_000, 20_001, 20_002, 20_010):
            assert asyncio.run(store.ausage("C1", "app", day)) == store.usage("C1", "app", day)
    finally:
        store.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = _store(prefix, with_port(REDIS_URL, port))
    with pytest.raises(StoreUnavailable):
        asyncio.run(down.ausage("C1", "app", 20_000))
    down.close()


def test_prefetched_counts_a_moment_old_never_break_a_cap(prefix: str):
    """The counts read before the decision say nothing was shown; meanwhile another replica
    reaches the channel's day cap: the charge is refused, the counts are read again and the
    customer gets nothing (a stale read cannot push a customer past a cap)."""
    store = _store(prefix)
    engine = _engine(store)  # type: ignore[arg-type]
    try:
        prefetched = asyncio.run(engine.prefetch(_request()))
        assert prefetched is not None and prefetched.usage is not None
        assert prefetched.usage.channel_day == 0
        day = prefetched.local_day
        for i, offer in enumerate("ABC"):  # the other replica: 3 = the channel's day cap
            assert (
                store.try_charge(Charge(f"other{i}", "C1", "app", offer, day, "slot"), POLICY)
                is None
            )
        record = engine.decide(_request(), prefetched)
        assert record.offer_id is None
        assert store.usage("C1", "app", day).channel_day == 3
        fresh = engine.decide(_request(), asyncio.run(engine.prefetch(_request())))
        assert fresh.offer_id is None and set(fresh.excluded.values()) == {"cap_channel_day"}
    finally:
        store.close()


def test_a_prefetch_that_could_not_read_the_counts_fails_closed_without_reading_again():
    from src.serving.engine import EPOCH_ORDINAL, Prefetched

    class CountingStore(ScriptedStore):
        reads = 0

        def usage(self, customer_id, channel, day):
            self.reads += 1
            return super().usage(customer_id, channel, day)

    store = CountingStore()
    engine = _engine(store)
    day = engine.now().toordinal() - EPOCH_ORDINAL
    record = engine.decide(_request(), Prefetched("C1", "app", day, None))
    assert record.offer_id is None and record.fallback_reason == "contact_store_unavailable"
    assert store.reads == 0 and store.charged == []
    # counts prefetched for another customer are not used
    other = engine.decide(_request(), Prefetched("C2", "app", day, None))
    assert other.offer_id == "A" and store.reads == 1
