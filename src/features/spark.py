"""The feature SQL for Spark: transpile the DuckDB-dialect files with sqlglot.

The SQL files are written against table names (``customers``, ``clickstream``, ...), so on Spark
one registers the raw tables as temp views with those names, then each stage of
:func:`spark_stages` as a temp view in order. ``$as_of`` becomes Spark's named parameter
``:as_of`` (``spark.sql(text, args={"as_of": ts})``) or, with ``as_of`` given, a literal —
needed for ``CREATE TEMP VIEW``, which takes no parameters. No pyspark import here.
"""

from __future__ import annotations

from datetime import date, datetime

import sqlglot
from sqlglot import exp

from src.features.customer_view import VIEW_STAGES
from src.features.identity import IDENTITY_STAGES, load_sql, render_sql


def to_spark_sql(sql: str, as_of: datetime | date | str | None = None) -> str:
    """One DuckDB-dialect statement as Spark SQL; raises on anything sqlglot cannot express.

    ``as_of`` (optional) binds ``$as_of`` as a timestamp literal before transpiling. Besides
    sqlglot's own unsupported-feature errors, this refuses what sqlglot passes through unchecked:
    functions it does not know (copied verbatim, so maybe DuckDB-only) and ASOF/POSITIONAL joins.
    """
    if as_of is not None:
        sql = render_sql(sql, as_of)
    for tree in sqlglot.parse(sql, read="duckdb"):
        if tree is None:  # an empty statement (a trailing semicolon)
            continue
        unknown = sorted({f.name for f in tree.find_all(exp.Anonymous)})
        duckdb_joins = sorted(
            {j.text("method") for j in tree.find_all(exp.Join)} & {"ASOF", "POSITIONAL"}
        )
        if unknown or duckdb_joins:
            raise sqlglot.errors.UnsupportedError(
                f"not portable to Spark: functions {unknown}, joins {duckdb_joins}"
            )
    statements = sqlglot.transpile(
        sql,
        read="duckdb",
        write="spark",
        unsupported_level=sqlglot.ErrorLevel.RAISE,
        pretty=True,
    )
    if len(statements) != 1:
        raise ValueError(f"expected one SQL statement, got {len(statements)}")
    return statements[0]


def spark_stages(
    as_of: datetime | date | str | None, stages: tuple[str, ...] = VIEW_STAGES
) -> list[tuple[str, str]]:
    """(view name, Spark SQL) in dependency order, ``as_of`` bound as a literal (None keeps
    the ``:as_of`` parameter).

    ``stages`` defaults to the customer view; pass ``IDENTITY_STAGES`` for the stitched stream.
    Usage: ``for name, sql in spark_stages(T): spark.sql(sql).createOrReplaceTempView(name)``.
    """
    return [(name, to_spark_sql(load_sql(name), as_of)) for name in stages]


__all__ = ["IDENTITY_STAGES", "VIEW_STAGES", "spark_stages", "to_spark_sql"]
