"""The SQL contact store: caps hold, charges are idempotent, and a charge commits or rolls back
with whatever else its transaction wrote (SQLite here; PostgreSQL on the shared server)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from src.contact.policy import Cap, Offer, PolicyConfig
from src.contact.store import Charge
from src.contact.store_sql import SQLContactStore

POLICY = PolicyConfig(
    offers=(
        Offer(offer_id="A", slots=("s",), product="loan"),
        Offer(offer_id="B", slots=("s",), product="fund"),
    ),
    channel_cap=Cap(per_day=2, per_week=3),
    offer_cap=Cap(per_day=1, per_week=2),
)
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_available() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLContactStore]:
    if request.param == "sqlite":
        s = SQLContactStore(tmp_path / "store.sqlite")
        yield s
        s.close()
        return
    if not _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required under CI")
        pytest.skip("PostgreSQL server at 127.0.0.1:5432 not available")
    s = SQLContactStore(PG_URL, schema=f"camp_{uuid.uuid4().hex[:12]}")
    yield s
    s.drop_schema()
    s.close()


def c(
    cid: str, customer: str = "C1", channel: str = "push", offer: str = "A", day: int = 100
) -> Charge:
    return Charge(cid, customer, channel, offer, day, "test")


def test_caps_and_reasons(store: SQLContactStore) -> None:
    assert store.try_charge(c("1"), POLICY) is None
    assert store.try_charge(c("2"), POLICY) == "cap_offer_day"  # offer A once a day
    assert store.try_charge(c("3", offer="B"), POLICY) is None
    assert store.try_charge(c("4", offer="B", day=100), POLICY) == "cap_channel_day"
    assert store.try_charge(c("5", day=101), POLICY) is None  # A: 2 this week
    assert store.try_charge(c("6", offer="B", day=102), POLICY) == "cap_channel_week"
    assert store.try_charge(c("7", channel="sms", offer="A", day=103), POLICY) == "cap_offer_week"
    u = store.usage("C1", "push", 101)
    assert (u.channel_day, u.channel_week, u.week_total) == (1, 3, 3)
    assert store.usage("C1", "push", 100 + 7).channel_week == 1  # days 100 left the window


def test_idempotent_and_release(store: SQLContactStore) -> None:
    assert store.try_charge(c("x"), POLICY) is None
    assert store.try_charge(c("x"), POLICY) is None  # the same contact: not charged twice
    assert store.usage("C1", "push", 100).channel_day == 1
    store.release("x")
    assert store.usage("C1", "push", 100).channel_day == 0


def test_charge_rolls_back_with_its_transaction(store: SQLContactStore) -> None:
    store.ensure(["CREATE TABLE IF NOT EXISTS side (k TEXT PRIMARY KEY)"])
    with pytest.raises(RuntimeError), store.transaction() as tx:
        assert store.charge_in(tx, c("r"), POLICY) is None
        tx.execute("INSERT INTO side (k) VALUES (?)", ("r",))
        raise RuntimeError("crash before commit")
    assert store.usage("C1", "push", 100).channel_day == 0
    with store.transaction() as tx:
        assert tx.fetchone("SELECT COUNT(*) FROM side") == (0,)


def test_concurrent_charges_never_exceed_the_cap(store: SQLContactStore, tmp_path: Path) -> None:
    """Threads on separate connections race for one customer's 2 daily contacts."""
    url, schema = store.url, store.schema
    results: list[str | None] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        own = SQLContactStore(url, schema=schema)
        try:
            r = own.try_charge(c(f"t{i}", offer="A" if i % 2 else "B", customer="C9"), POLICY)
        finally:
            own.close()
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is None for r in results) == 2
    assert store.usage("C9", "push", 100).channel_day == 2


def test_batch_charges_match_one_by_one(store: SQLContactStore, tmp_path: Path) -> None:
    """charge_many_in gives each charge the verdict charge_in would have, in order."""
    import random

    rng = random.Random(3)
    charges = [
        Charge(
            f"b{i % 37}",  # some ids repeat: idempotent within and across batches
            f"C{rng.randint(0, 4)}",
            rng.choice(["push", "sms"]),
            rng.choice(["A", "B"]),
            100 + rng.randint(0, 9),
            "batch",
        )
        for i in range(60)
    ]
    one = SQLContactStore(tmp_path / "one.sqlite")
    expected = [one.try_charge(c, POLICY) for c in charges]
    with store.transaction() as tx:
        got = store.charge_many_in(tx, charges[:30], POLICY)
    with store.transaction() as tx:
        got += store.charge_many_in(tx, charges[30:], POLICY)
    assert got == expected and any(r is not None for r in got)
    one.close()
