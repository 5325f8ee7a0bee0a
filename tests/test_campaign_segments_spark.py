"""A rule segment is SQL that runs on Spark as it does on DuckDB: the same members from the same
view and detections (one tiny local session; the view's own Spark parity is test_spark_view)."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from src.campaigns.segments import rule_query

AS_OF = "2026-02-05"
VIEW = pd.DataFrame(
    {
        "customer_id": [f"C{i:07d}" for i in range(12)],
        "age": [25, 31, 35, 39, 40, 45, 33, 38, 29, 30, 52, 36],
        "life_stage": ["student", "worker", "worker", "family", "family", "worker"] * 2,
        "sessions_7d": [0, 3, 1, 2, 5, 0, 2, 1, 4, 0, 1, 3],
    }
)
DETECTIONS = pd.DataFrame(
    {
        "customer_id": ["C0000001", "C0000002", "C0000003", "C0000007", "C0000011"],
        "rule": ["loan_limit_inquiry"] * 4 + ["other"],
        # in the 7 days before AS_OF, except C0000003 (8 days) and C0000007 (on AS_OF: not before)
        "fired_at": pd.to_datetime(
            ["2026-02-04 09:00", "2026-01-30 12:00", "2026-01-28 08:00", "2026-02-05 00:00"]
            + ["2026-02-03 10:00"]
        ),
    }
)
RULES = [
    "age BETWEEN 30 AND 39 AND detected('loan_limit_inquiry', 7)",
    "(life_stage IN ('worker', 'family') AND sessions_7d >= 2) OR age < 26",
    "NOT detected('other', 30) AND age >= 35",
]


def _duckdb(sql: str) -> list[str]:
    con = duckdb.connect()
    try:
        con.register("cv", VIEW)
        con.register("detections", DETECTIONS)
        return sorted(con.execute(sql).fetchdf()["customer_id"])
    finally:
        con.close()


@pytest.mark.slow
def test_rule_segments_give_the_same_members_on_spark_and_duckdb(spark) -> None:
    spark.createDataFrame(VIEW).createOrReplaceTempView("cv")
    spark.createDataFrame(DETECTIONS).createOrReplaceTempView("detections")
    columns = list(VIEW.columns)
    expected = {
        RULES[0]: ["C0000001", "C0000002"],
        RULES[1]: ["C0000000", "C0000001", "C0000003", "C0000004", "C0000008", "C0000011"],
        RULES[2]: ["C0000002", "C0000003", "C0000004", "C0000005", "C0000007", "C0000010"],
    }
    for rule in RULES:
        on_duckdb = _duckdb(rule_query(rule, columns, AS_OF))
        spark_sql = rule_query(rule, columns, AS_OF, dialect="spark")
        on_spark = sorted(r["customer_id"] for r in spark.sql(spark_sql).collect())
        assert on_duckdb == expected[rule], rule
        assert on_spark == on_duckdb, (rule, spark_sql)
    for view in ("cv", "detections"):  # the session is shared by every Spark test
        spark.catalog.dropTempView(view)
