"""Spark builds the same customer view, stitched tables and feature table as DuckDB.

Parity, not transpiling alone: every stage runs on both engines over the session bank's
validated tables, and every written table must have the same rows in the same order, the same
columns with the same Parquet types, and numbers within 1e-9 relative. Once with the session
time zone UTC (through the CLI, ``build-view --engine spark``) and once with Asia/Seoul: the
timestamps are wall-clock times (TIMESTAMP_NTZ), so the zone must change nothing.

One SparkSession serves the whole test run (``spark`` in tests/conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.data.catalog import Catalog
from src.features.customer_view import write_customer_view
from src.features.feature_table import build_feature_table, data_period, plan_as_of_dates
from src.features.identity import write_identity
from src.settings import Settings

pytest.importorskip("pyspark")
pytestmark = pytest.mark.slow

AS_OF = "2026-01-31 12:30:00"  # mid-day inside the 35-day bank: windows cut through sessions
OUTPUTS = ("identity_map", "session_map", "stitched_events", "customer_view")


def _copy_bank(small_bank: Settings, to: Path) -> Catalog:
    shutil.copytree(small_bank.validated_dir, Catalog.at(to).validated_dir)
    return Catalog.at(to)


@pytest.fixture(scope="module")
def duckdb_outputs(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    catalog = _copy_bank(small_bank, tmp_path_factory.mktemp("duckdb"))
    paths = write_identity(catalog, AS_OF)
    paths["customer_view"] = write_customer_view(catalog, AS_OF)
    return paths


@pytest.fixture(scope="module", params=["UTC", "Asia/Seoul"])
def spark_outputs(
    request: pytest.FixtureRequest,
    spark,
    small_bank: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """The four tables written by Spark: in UTC through the CLI, in Asia/Seoul directly."""
    from src.features.spark_session import spark_session
    from src.features.spark_view import run_customer_view_spark

    zone = request.param
    data_dir = tmp_path_factory.mktemp(f"spark-{zone.replace('/', '-')}")
    catalog = _copy_bank(small_bank, data_dir)
    shutil.copy(small_bank.validated_dir / "_manifest.json", catalog.validated_dir)
    if zone == "UTC":
        result = CliRunner().invoke(
            app,
            ["build-view", "--engine", "spark", "--master", "local[2]"]
            + ["--as-of", AS_OF, "--data-dir", str(data_dir)],
        )
        assert result.exit_code == 0, result.output
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
        return {name: catalog.path(name, AS_OF) for name in OUTPUTS}
    session = spark_session("local[2]", session_time_zone=zone)
    assert session.conf.get("spark.sql.session.timeZone") == zone
    try:
        return run_customer_view_spark(session, catalog, AS_OF)
    finally:
        session.conf.set("spark.sql.session.timeZone", "UTC")


def assert_same_table(expected: pa.Table, actual: pa.Table, name: str) -> None:
    """Same columns and Arrow types, same rows in the same order; floats within 1e-9 relative."""
    want = [(f.name, f.type) for f in expected.schema]
    got = [(f.name, f.type) for f in actual.schema]
    assert got == want, f"{name}: schema differs"
    assert actual.num_rows == expected.num_rows > 0, f"{name}: row counts"
    a, b = expected.to_pandas(), actual.to_pandas()
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_float_dtype(x):
            assert np.allclose(y, x, rtol=1e-9, atol=0.0, equal_nan=True), f"{name}.{col}"
        else:
            assert x.isna().equals(y.isna()), f"{name}.{col}: nulls differ"
            assert x[x.notna()].equals(y[y.notna()]), f"{name}.{col}: values differ"


@pytest.mark.parametrize("name", OUTPUTS)
def test_spark_writes_the_same_tables_as_duckdb(
    name: str, duckdb_outputs: dict, spark_outputs: dict
) -> None:
    expected, actual = pq.read_table(duckdb_outputs[name]), pq.read_table(spark_outputs[name])
    assert Path(spark_outputs[name]).is_file()  # one Parquet file where the catalog says
    assert_same_table(expected, actual, name)


def test_the_view_is_not_trivially_equal(duckdb_outputs: dict) -> None:
    """The parity above compares tables with content: resolved sessions, windowed activity,
    timestamps and nulls — not empty or constant columns."""
    view = pd.read_parquet(duckdb_outputs["customer_view"])
    assert view["sessions_7d"].gt(0).any() and view["sessions_90d"].gt(view["sessions_7d"]).any()
    assert view["days_since_last_session"].isna().any()
    sessions = pd.read_parquet(duckdb_outputs["session_map"])
    assert {"login", "device"} <= set(sessions["resolution"])
    events = pd.read_parquet(duckdb_outputs["stitched_events"])
    assert events["ts"].max() < pd.Timestamp(AS_OF) and events["customer_id"].isna().any()


def test_feature_table_on_spark_equals_duckdb(spark, small_bank: Settings, tmp_path: Path) -> None:
    from src.features.spark_view import build_feature_table_spark

    catalog = _copy_bank(small_bank, tmp_path)
    plan = plan_as_of_dates(*data_period(catalog), window_days=30)
    dates = plan.dates[-2:]  # two dates: re-binding the stages to another as_of is exercised
    expected = build_feature_table(catalog, dates, plan.window_days)
    actual = build_feature_table_spark(spark, catalog, dates, plan.window_days)
    assert list(actual.columns) == list(expected.columns)
    assert actual.dtypes.equals(expected.dtypes)
    assert expected["as_of"].nunique() == 2 and expected.filter(like="label_").any().any()
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-9, atol=0.0)


def test_feature_table_command_on_spark(spark, small_bank: Settings, tmp_path: Path) -> None:
    catalog = _copy_bank(small_bank, tmp_path)
    shutil.copy(small_bank.validated_dir / "_manifest.json", catalog.validated_dir)
    as_of = "2026-01-20"
    args = ["feature-table", "--as-of", as_of, "--window-days", "7", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--engine", "spark", "--master", "local[2]"])
    assert result.exit_code == 0, result.output
    written = pd.read_parquet(catalog.path("feature_table"))
    expected = build_feature_table(catalog, [as_of], 7)
    assert list(written.columns) == list(expected.columns) and len(written) == len(expected)
    assert written["customer_id"].tolist() == expected["customer_id"].tolist()
    labels = [c for c in expected if c.startswith("label_")]
    assert written[labels].equals(expected[labels])
