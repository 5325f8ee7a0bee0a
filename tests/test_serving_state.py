"""Shared serving state: customer rows and scores published to PostgreSQL (or the catalog's
manifest file) and switched by every replica without a restart; stale views make it not ready.

Against the real PostgreSQL on 127.0.0.1:5432 (a fresh schema with a uuid per test, dropped
after); under ``CI=true`` a missing server fails the test instead of skipping it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from src.data.catalog import Catalog
from src.serving.app import create_app
from src.serving.config import ServingSettings
from src.serving.customer_store_shared import (
    RETRY_AFTER_S,
    PgCustomerStore,
    PostgresViewSource,
    publish_to_file,
    publish_to_postgres,
)
from src.serving.customers import CustomerStore
from src.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PG_URL = os.environ.get("NEXTOFFER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _server_or_skip(name: str, error: Exception) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required under CI=true: {error}")
    pytest.skip(f"{name} not reachable: {error}")


@pytest.fixture()
def pg_schema() -> str:
    """A fresh schema on the real PostgreSQL, dropped after the test."""
    import psycopg

    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        _server_or_skip("PostgreSQL at 127.0.0.1:5432", error)
    schema = f"servstate_{uuid.uuid4().hex[:12]}"
    yield schema
    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    conn.close()


@pytest.fixture(scope="module")
def views(small_bank: Settings) -> dict:
    """The small bank's view as of its last day and as of a week before, with scores."""
    from src.features.customer_view import build_customer_view
    from src.pipeline import default_as_of

    new = pd.Timestamp(default_as_of(small_bank)).normalize()
    old = new - pd.Timedelta(days=7)
    return {
        "old": (old, build_customer_view(small_bank.catalog, old)),
        "new": (new, build_customer_view(small_bank.catalog, new)),
    }


def scores_of(view: pd.DataFrame, version: str, skip: int = 0) -> pd.DataFrame:
    """A scores table (customer_id, product, score, model_version), the first ``skip``
    customers left out."""
    rng = np.random.default_rng(len(view))
    ids = view["customer_id"].astype(str).tolist()[skip:]
    products = ["loan", "card", "fund"]
    return pd.DataFrame(
        {
            "customer_id": np.repeat(ids, len(products)),
            "product": products * len(ids),
            "score": rng.uniform(0.01, 0.9, len(ids) * len(products)).round(6),
            "model_version": version,
        }
    )


def test_published_rows_and_scores_read_back_exactly(views: dict, pg_schema: str) -> None:
    as_of, view = views["new"]
    scores = scores_of(view, "7", skip=3)
    manifest = publish_to_postgres(PG_URL, pg_schema, view, as_of, scores)
    source = PostgresViewSource(PG_URL, pg_schema, cache_size=50)  # smaller than the view
    assert source.manifest() == manifest
    store = source.open(manifest)
    assert isinstance(store, PgCustomerStore) and len(store) == len(view)
    local = CustomerStore(view)
    columns = list(view.columns)
    for cid in view["customer_id"].astype(str):
        pos = store.position(cid)
        assert pos == local.position(cid)
        got, want = store.row(pos, columns), local.row(pos, columns)
        assert got == want, cid
        assert {c: type(v) for c, v in got.items()} == {c: type(v) for c, v in want.items()}
    assert store.position("NOT-A-CUSTOMER") is None
    published = store.published_scores
    assert published.version == "7"
    wide = scores.pivot(index="customer_id", columns="product", values="score")
    for cid in view["customer_id"].astype(str).iloc[:10]:
        got = published.for_position(store.position(cid))
        if cid in wide.index:
            assert got == {p: float(wide.loc[cid, p]) for p in published.products}
        else:  # not scored: the prior, the mean over scored customers
            assert got == pytest.approx(wide.mean().to_dict())
    store.close()


def _closed_port_url(url: str) -> str:
    """``url`` on a local port nothing listens on (connections are refused)."""
    import socket

    from benchmarks.harness.backends import with_port

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return with_port(url, port)


def test_prefetch_reads_the_row_on_the_loop_without_blocking_it(
    views: dict, pg_schema: str
) -> None:
    """The decision path awaits ``prefetch`` first: the PostgreSQL round trip goes through the
    async connection (no blocking call, no worker thread), and the engine's lookups are then
    served from the cache; a store that cannot be reached answers UNREACHABLE at once."""
    import asyncio

    from src.serving.customer_store_shared import UNREACHABLE

    as_of, view = views["new"]
    publish_to_postgres(PG_URL, pg_schema, view, as_of)
    source = PostgresViewSource(PG_URL, pg_schema, cache_size=50)
    store = source.open(source.manifest())
    assert isinstance(store, PgCustomerStore)
    cid = str(view["customer_id"].iloc[7])
    real_aquery, looked_up = store._aquery, []

    async def aquery(customer_id):
        looked_up.append(customer_id)
        return await real_aquery(customer_id)

    def blocking(where, value):
        raise AssertionError(f"a blocking lookup of {where}={value}")

    store._aquery = aquery  # type: ignore[method-assign]
    store._query = blocking  # type: ignore[method-assign]

    async def requests() -> None:
        await asyncio.gather(store.prefetch(cid), store.prefetch("NOT-A-CUSTOMER"))
        await store.prefetch(cid)  # cached: no second query

    asyncio.run(requests())
    assert sorted(looked_up) == sorted([cid, "NOT-A-CUSTOMER"])
    assert store.position(cid) == 7 and store.row(7, ["customer_id"]) == {"customer_id": cid}
    assert store.position("NOT-A-CUSTOMER") is None
    asyncio.run(store.prefetch(str(view["customer_id"].iloc[8])))  # a second event loop
    assert store.position(str(view["customer_id"].iloc[8])) == 8
    store.close()

    manifest = source.manifest()
    assert manifest is not None
    down = PgCustomerStore(_closed_port_url(PG_URL), pg_schema, manifest, cache_size=50)
    started = time.monotonic()
    asyncio.run(down.prefetch(cid))
    assert down.position(cid) == UNREACHABLE  # no second (blocking) attempt on the loop
    assert time.monotonic() - started < 1.5
    down.close()


def test_a_bad_scores_table_is_refused_and_nothing_is_published(
    views: dict, pg_schema: str
) -> None:
    as_of, view = views["new"]
    publish_to_postgres(PG_URL, pg_schema, view, as_of)
    before = PostgresViewSource(PG_URL, pg_schema).manifest()
    scores = scores_of(view, "7")
    scores.loc[4, "score"] = 1.5
    with pytest.raises(ValueError, match=rf"{scores.loc[4, 'customer_id']}.*not in \[0, 1\]"):
        publish_to_postgres(PG_URL, pg_schema, view, as_of, scores)
    assert PostgresViewSource(PG_URL, pg_schema).manifest() == before


def _file_bank(small_bank: Settings, tmp_path: Path, views: dict) -> Settings:
    """A writable catalog with the bank's offers and both views."""
    data = tmp_path / "data"
    shutil.copytree(small_bank.validated_dir, data / "validated")
    settings = small_bank.model_copy(update={"data_dir": data})
    catalog = Catalog(data)
    catalog.features_dir.mkdir(parents=True)
    for as_of, view in views.values():
        view.to_parquet(catalog.path("customer_view", as_of))
    return settings


def _decide(client: TestClient, customer_id: str) -> dict:
    response = client.post(
        "/v1/decisions",
        json={"customer_id": customer_id, "slot": "home_banner", "context": {"channel": "app"}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback_reason"] not in ("internal_error", "log_unavailable"), body
    return body


@pytest.mark.parametrize("backend", ["postgresql", "file"])
def test_a_new_publication_is_served_without_restart_and_no_request_fails(
    backend: str, views: dict, small_bank: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    old_as_of, old = views["old"]
    new_as_of, new = views["new"]
    if backend == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        settings = small_bank
        serving = ServingSettings(
            customer_store_url=PG_URL, customer_store_schema=schema, customer_cache_size=64
        )

        def publish(as_of, view, version):
            publish_to_postgres(PG_URL, schema, view, as_of, scores_of(view, version))
    else:
        settings = _file_bank(small_bank, tmp_path, views)

        def publish(as_of, view, version):
            scores_of(view, version).to_parquet(settings.catalog.path("scores", as_of))
            publish_to_file(settings.catalog, as_of)

        serving = ServingSettings()
    serving = serving.model_copy(
        update={"log_path": tmp_path / "log.sqlite", "seed": 1, "view_poll_seconds": 0.05}
    )
    publish(old_as_of, old, "1")
    ids = new["customer_id"].astype(str).tolist()
    app = create_app(settings, serving, model_source=None)
    with TestClient(app) as client:
        ready = client.get("/readyz").json()["detail"]
        assert ready["view_as_of"] == f"{old_as_of:%Y-%m-%d}"
        assert ready["scores_version"] == "1"
        assert ready["model_versions"] == {"propensity": "1"}
        for cid in ids[:20]:
            _decide(client, cid)
        publisher = threading.Thread(target=publish, args=(new_as_of, new, "2"))
        publisher.start()
        served = 0
        deadline = time.monotonic() + 60
        while client.get("/readyz").json()["detail"]["view_as_of"] != f"{new_as_of:%Y-%m-%d}":
            assert time.monotonic() < deadline, "the new view was not picked up in 60 s"
            _decide(client, ids[served % len(ids)])  # requests keep flowing during the switch
            served += 1
        publisher.join()
        ready = client.get("/readyz").json()["detail"]
        assert ready["scores_version"] == "2" and ready["model_versions"] == {"propensity": "2"}
        assert "view_error" not in ready
        after = [_decide(client, cid) for cid in ids[:20]]
    assert all(d["model_versions"] == {"propensity": "2"} for d in after)
    import sqlite3

    with sqlite3.connect(tmp_path / "log.sqlite") as db:
        as_ofs = {r[0] for r in db.execute("SELECT DISTINCT view_as_of FROM decisions")}
    assert as_ofs == {f"{old_as_of:%Y-%m-%d}", f"{new_as_of:%Y-%m-%d}"}


def test_a_view_older_than_the_max_age_makes_the_service_not_ready(
    views: dict, small_bank: Settings, tmp_path: Path
) -> None:
    as_of, _ = views["new"]
    settings = _file_bank(small_bank, tmp_path, views)
    publish_to_file(settings.catalog, as_of)
    tz = ZoneInfo("Asia/Seoul")
    now = {"t": datetime(as_of.year, as_of.month, as_of.day, 12, tzinfo=tz)}
    serving = ServingSettings(log_path=tmp_path / "log.sqlite", view_max_age_days=2)
    app = create_app(settings, serving, model_source=None, clock=lambda: now["t"])
    with TestClient(app) as client:
        fresh = client.get("/readyz")
        assert fresh.status_code == 200 and fresh.json()["detail"]["view_age_days"] == 0.5
        now["t"] += timedelta(days=3)
        stale = client.get("/readyz")
        assert stale.status_code == 503
        assert stale.json()["status"] == "not_ready"
        assert "view_max_age_days=2" in stale.json()["detail"]["not_ready"]


class CuttableProxy:
    """A TCP proxy to a real server that the test can cut and restore (the server itself is
    never stopped: other tests and helpers share it)."""

    def __init__(self, host: str, port: int) -> None:
        import socket

        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._conns: list = []
        self._listener = None
        self.restore()

    def restore(self) -> None:
        import socket

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        import socket

        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._conns = []


def test_postgresql_outage_makes_it_not_ready_fails_closed_and_recovers(
    views: dict, small_bank: Settings, tmp_path: Path, pg_schema: str
) -> None:
    as_of, view = views["new"]
    publish_to_postgres(PG_URL, pg_schema, view, as_of, scores_of(view, "1"))
    proxy = CuttableProxy("127.0.0.1", 5432)
    url = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
    serving = ServingSettings(
        customer_store_url=url,
        customer_store_schema=pg_schema,
        customer_cache_size=16,
        log_path=tmp_path / "log.sqlite",
        view_poll_seconds=0.05,
    )
    ids = view["customer_id"].astype(str).tolist()

    def wait_ready(client: TestClient, status: int) -> dict:
        deadline = time.monotonic() + 30
        while (r := client.get("/readyz")).status_code != status:
            assert time.monotonic() < deadline, r.json()
            time.sleep(0.05)
        return r.json()

    with TestClient(create_app(small_bank, serving, model_source=None)) as client:
        assert any(_decide(client, cid)["offer"] for cid in ids[:5])
        proxy.cut()
        down = wait_ready(client, 503)
        assert "customer store unreachable" in down["detail"]["not_ready"]
        during = [
            client.post(
                "/v1/decisions",
                json={"customer_id": cid, "slot": "home_banner", "context": {"channel": "app"}},
            )
            for cid in ids[100:130]
        ]
        assert all(r.status_code == 200 for r in during)  # no 5xx storm
        assert all(r.json()["offer"] is None for r in during), [r.json() for r in during][:2]
        proxy.restore()
        up = wait_ready(client, 200)
        assert up["status"] == "ready" and "not_ready" not in up["detail"]
        time.sleep(RETRY_AFTER_S)  # lookups fail fast for this long after the last failure
        after = [_decide(client, cid) for cid in ids[200:230]]
    assert any(d["offer"] for d in after)  # recovered by itself
    proxy.cut()


def test_redis_outage_answers_events_503_and_decisions_show_nothing(
    views: dict, small_bank: Settings, tmp_path: Path
) -> None:
    import socket

    _, view = views["new"]
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    view_path = tmp_path / "customer_view_2026-02-05.parquet"
    view.to_parquet(view_path)
    serving = ServingSettings(
        view_path=view_path,
        log_path=tmp_path / "log.sqlite",
        shared_state_url=f"redis://127.0.0.1:{port}/0",
        shared_state_prefix="unreachable",
    )
    with TestClient(create_app(small_bank, serving, model_source=None)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "shared state (Redis) unreachable" in ready.json()["detail"]["not_ready"]
        cid = str(view["customer_id"].iloc[0])
        event = client.post(
            "/v1/events",
            json={
                "event_id": 1,
                "customer_id": cid,
                "channel": "app",
                "ts": "2026-02-05T10:00:00",
                "source": "click",
                "page": "home",
                "action": "view",
            },
        )
        assert event.status_code == 503 and event.headers["retry-after"] == "1"
        decision = client.post(
            "/v1/decisions",
            json={"customer_id": cid, "slot": "home_banner", "context": {"channel": "app"}},
        )
        assert decision.status_code == 200 and decision.json()["offer"] is None


def test_publish_view_command_to_postgresql(
    views: dict, small_bank: Settings, tmp_path: Path, pg_schema: str
) -> None:
    from typer.testing import CliRunner

    from src.cli import app

    settings = _file_bank(small_bank, tmp_path, views)
    as_of, view = views["new"]
    scores_of(view, "9").to_parquet(settings.catalog.path("scores", as_of))
    env = {"NEXTOFFER_SERVING__CUSTOMER_STORE_SCHEMA": pg_schema}
    args = ["publish-view", "--store-url", PG_URL, "--data-dir", str(settings.data_dir)]
    result = CliRunner().invoke(app, [*args, "--as-of", f"{as_of:%Y-%m-%d}"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{len(view):,} customers, scores 9" in result.output
    manifest = PostgresViewSource(PG_URL, pg_schema).manifest()
    assert manifest is not None and manifest.as_of == f"{as_of:%Y-%m-%d}"
    missing = CliRunner().invoke(app, [*args, "--as-of", "2031-01-01"], env=env)
    assert missing.exit_code == 1 and "no customer view" in missing.output
    assert "Traceback" not in missing.output
