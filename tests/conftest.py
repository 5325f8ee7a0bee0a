"""Shared fixtures: one small simulated bank per test session, reused read-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.settings import Settings

SMALL_BANK = {"customers": 400, "days": 35, "seed": 11}


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every test (and every notebook kernel it starts) tracks into a temp SQLite store.

    Set in the process environment, not monkeypatched per test, so papermill's kernels inherit it;
    the project's own mlruns/ is never written by the test suite.
    """
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def small_bank(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at a small simulated bank (raw, validated + truth) in a temp data dir.

    Tests must not write into it; copy it first if a test needs to change the data.
    """
    from src.pipeline import run_simulation, run_validation

    data_dir: Path = tmp_path_factory.mktemp("bank")
    settings = Settings(data_dir=data_dir, sim=SMALL_BANK)
    run_simulation(settings, progress=False)
    run_validation(settings)
    return settings


REDIS_URL = os.environ.get("NEXTOFFER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture()
def redis_prefix():
    """(client, a fresh key prefix) on the real Redis; every key under it is deleted after the
    test. Under CI=true a missing server fails the test, elsewhere it skips naming the server."""
    import uuid

    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at 127.0.0.1:6379 is required under CI=true: {error}")
        pytest.skip(f"Redis at 127.0.0.1:6379 not reachable: {error}")
    prefix = f"test-servstate-{uuid.uuid4().hex[:12]}"
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def spark():
    """The one Spark session of the test run (``local[2]``, a 2 GB driver, Python workers on
    this interpreter): a JVM start costs tens of seconds on the shared box, so every Spark test
    module takes this fixture instead of starting its own. Tests may change ``spark.sql.*``
    settings only if they put them back."""
    pytest.importorskip("pyspark")
    from src.features.detection.spark_batch import python_workers_session

    session = python_workers_session(
        "local[2]",
        app_name="nextoffer-tests",
        shuffle_partitions=2,
        extra_conf={"spark.driver.memory": "2g"},
    )
    yield session
    session.stop()
