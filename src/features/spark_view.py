"""The customer view and the stitched tables on Spark: the same SQL stages, the same outputs.

DuckDB is the default engine (:mod:`src.features.customer_view`, :mod:`src.features.identity`).
This module runs the very same SQL files on Spark: each stage is the DuckDB text transpiled by
sqlglot (:func:`src.features.spark.spark_stages`) and registered as a temp view of its name,
over the catalog's validated Parquet tables registered as temp views named after the tables.
Nothing is re-written by hand, so the two engines cannot drift apart; tests/test_spark_view.py
proves the outputs equal (rows, columns, types) on a simulated bank, in UTC and in Asia/Seoul.

The stages DuckDB materializes (:data:`~src.features.identity.MATERIALIZED`: read several times
downstream) are cached here for the same reason. Results are written where the catalog says
(``catalog.path``): by default as one Parquet file, like DuckDB's ``COPY``, so every reader
(pandas, DuckDB, the endpoint) reads a Spark-built table exactly as a DuckDB-built one; on a
cluster, ``single_file=False`` keeps Spark's directory of part files (see deploy/spark/).

pyspark is imported lazily (and only for type hints here): it is the optional ``spark`` extra.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import pandas as pd

from src.data.catalog import Catalog
from src.data.schemas import PRODUCTS
from src.features.customer_view import VIEW_STAGES, coerce_view
from src.features.identity import IDENTITY_STAGES, MATERIALIZED, RAW_TABLES, as_of_literal
from src.features.spark import spark_stages

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

DateLike: TypeAlias = datetime | date | str | pd.Timestamp

WRITTEN_ORDER: dict[str, str | None] = {
    "identity_map": "identifier_type, identifier",
    "session_map": "session_id",
    "stitched_events": None,  # ordered by its SQL
}
"""The identity tables ``build-view`` writes and the order DuckDB writes them in
(:func:`src.features.identity.write_identity`): same rows, same order on both engines."""


def register_sources(
    spark: SparkSession, catalog: Catalog, tables: Iterable[str] = RAW_TABLES
) -> None:
    """One temp view per validated source table, named after it (the names the SQL reads).

    Read through the catalog (``catalog.source``): only rows validation accepted, and a clear
    error naming the table if ``nextoffer validate`` has not written it. Timestamps come in as
    TIMESTAMP_NTZ when the session is :func:`~src.features.spark_session.spark_session`'s.
    """
    for table in tables:
        spark.read.parquet(str(catalog.source(table))).createOrReplaceTempView(table)


def register_spark_stages(
    spark: SparkSession, stages: Sequence[str], as_of: DateLike | None
) -> None:
    """One temp view per SQL stage bound to ``as_of`` (None: all history), in order.

    The :data:`~src.features.identity.MATERIALIZED` stages are cached (lazily, computed once at
    the first action) and their previous binding uncached first, so re-binding the same session
    to another ``as_of`` neither leaks memory nor reads a stale cache.
    """
    if as_of is not None:
        as_of_literal(as_of)  # the same validation as DuckDB's (naive local time)
    for name, sql in spark_stages(as_of, tuple(stages)):
        if spark.catalog.tableExists(name) and spark.catalog.isCached(name):
            spark.catalog.uncacheTable(name)
        spark.sql(sql).createOrReplaceTempView(name)
        if name in MATERIALIZED:
            spark.catalog.cacheTable(name)


def release_stages(spark: SparkSession, stages: Sequence[str] = IDENTITY_STAGES) -> None:
    """Uncache and drop the stage views (the session may go on to other work)."""
    for name in stages:
        if spark.catalog.tableExists(name):
            if spark.catalog.isCached(name):
                spark.catalog.uncacheTable(name)
            spark.catalog.dropTempView(name)


def customer_view_frame(spark: SparkSession, catalog: Catalog, as_of: DateLike) -> DataFrame:
    """The customer view as of ``as_of`` as a Spark DataFrame (ordered by customer_id)."""
    if as_of is None:
        raise ValueError("the customer view needs an as_of date")
    register_sources(spark, catalog)
    register_spark_stages(spark, VIEW_STAGES, as_of)
    return spark.table("customer_view")


def build_customer_view_spark(
    spark: SparkSession, catalog: Catalog, as_of: DateLike
) -> pd.DataFrame:
    """:func:`~src.features.customer_view.build_customer_view` on Spark: the same frame (column
    order and dtypes of the data dictionary). Collects to the driver: for tests and small
    banks; a large view is written with :func:`write_customer_view_spark` instead."""
    frame: pd.DataFrame = customer_view_frame(spark, catalog, as_of).toPandas()
    return coerce_view(frame)


def identity_frames(
    spark: SparkSession, catalog: Catalog, as_of: DateLike | None = None
) -> dict[str, DataFrame]:
    """``identity_map``, ``session_map`` and ``stitched_events`` as of ``as_of`` (None: all
    history), each in the order DuckDB writes it."""
    register_sources(spark, catalog, ("clickstream", "transactions"))
    register_spark_stages(spark, IDENTITY_STAGES, as_of)
    frames = {}
    for name, order in WRITTEN_ORDER.items():
        frames[name] = spark.sql(f"SELECT * FROM {name}" + (f" ORDER BY {order}" if order else ""))
    return frames


def write_parquet(df: DataFrame, path: Path, single_file: bool = True) -> Path:
    """Write ``df`` to ``path``, replacing what was there.

    ``single_file``: one Parquet file at ``path`` (the catalog's layout, what DuckDB writes):
    Spark writes one partition (``coalesce(1)`` keeps a sorted frame's order) into a scratch
    directory beside it, and its part file is moved into place. Otherwise ``path`` becomes
    Spark's directory of part files (pandas, pyarrow and Spark read either; DuckDB needs
    ``path/*.parquet``) — what a cluster writing to shared storage wants.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not single_file:
        _remove(path)
        df.write.mode("overwrite").parquet(str(path))
        return path
    scratch = path.with_name(f".{path.name}.spark-tmp")
    _remove(scratch)
    df.coalesce(1).write.mode("overwrite").parquet(str(scratch))
    parts = sorted(scratch.glob("part-*.parquet"))
    if len(parts) != 1:
        raise RuntimeError(f"expected one Parquet part in {scratch}, Spark wrote {len(parts)}")
    _remove(path)
    os.replace(parts[0], path)
    shutil.rmtree(scratch)
    return path


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_identity_spark(
    spark: SparkSession,
    catalog: Catalog,
    as_of: DateLike | None = None,
    single_file: bool = True,
) -> dict[str, Path]:
    """:func:`~src.features.identity.write_identity` on Spark: the same three tables, same paths."""
    frames = identity_frames(spark, catalog, as_of)
    return {name: write_parquet(df, catalog.path(name), single_file) for name, df in frames.items()}


def write_customer_view_spark(
    spark: SparkSession, catalog: Catalog, as_of: DateLike, single_file: bool = True
) -> Path:
    """:func:`~src.features.customer_view.write_customer_view` on Spark: same file, same rows."""
    view = customer_view_frame(spark, catalog, as_of)
    return write_parquet(view, catalog.path("customer_view", as_of), single_file)


BUILD_VIEW_STAGES: tuple[str, ...] = (*IDENTITY_STAGES, "customer_view")
"""Every stage ``build-view`` writes from, in dependency order: the identity stages and the
view share ``session_keys``, ``identity_map`` and ``session_map``."""


def run_customer_view_spark(
    spark: SparkSession, catalog: Catalog, as_of: DateLike, single_file: bool = True
) -> dict[str, Path]:
    """What ``nextoffer build-view`` writes, built on Spark: the identity tables as of ``as_of``
    and the customer view.

    All stages are bound once, so the cached ``session_keys``, ``identity_map`` and
    ``session_map`` are computed once for the four outputs (binding the view's stages again
    after the identity tables would uncache and recompute them: the clickstream scanned and
    aggregated twice)."""
    assert set(VIEW_STAGES) <= set(BUILD_VIEW_STAGES)
    register_sources(spark, catalog)
    register_spark_stages(spark, BUILD_VIEW_STAGES, as_of)
    paths = {}
    for name, order in WRITTEN_ORDER.items():
        frame = spark.sql(f"SELECT * FROM {name}" + (f" ORDER BY {order}" if order else ""))
        paths[name] = write_parquet(frame, catalog.path(name), single_file)
    view_path = catalog.path("customer_view", as_of)
    paths["customer_view"] = write_parquet(spark.table("customer_view"), view_path, single_file)
    release_stages(spark, BUILD_VIEW_STAGES)
    return paths


# -- the feature table ------------------------------------------------------------------------


def _labels_sql(as_of: pd.Timestamp, window_days: int, products: Sequence[str]) -> str:
    """``label_<product>`` per customer with a PRODUCT_SIGNUP of it in [as_of, as_of + window):
    the rule of :func:`~src.features.feature_table.signup_labels`, in Spark SQL."""
    start = as_of_literal(as_of)
    end = as_of_literal(as_of + pd.Timedelta(days=window_days))
    bad = [p for p in products if not p.replace("_", "").isalnum()]
    if bad:
        raise ValueError(f"product names are pasted into SQL: letters, digits and _ only: {bad}")
    columns = ",\n".join(f"    MAX(product = '{p}') AS label_{p}" for p in products)
    return (
        f"SELECT customer_id,\n{columns}\nFROM transactions\n"
        f"WHERE code = 'PRODUCT_SIGNUP' AND ts >= {start} AND ts < {end}\n"
        "GROUP BY customer_id"
    )


@dataclass(frozen=True)
class FeatureTableSpec:
    """What one feature table is built from (the arguments of ``build_feature_table``)."""

    as_of_dates: tuple[pd.Timestamp, ...]
    window_days: int = 30
    products: tuple[str, ...] = tuple(PRODUCTS)
    drop_closed: bool = True


def feature_table_frame(spark: SparkSession, catalog: Catalog, spec: FeatureTableSpec) -> DataFrame:
    """The feature table as a Spark DataFrame: per as_of, the view (closed customers dropped),
    an ``as_of`` column after ``customer_id`` and the labels; rows by as_of, then customer.

    Each date's view is computed and checkpointed to local storage before the next date
    re-binds the stages (the stage views are bound to one date at a time)."""
    from pyspark.sql import functions as F

    register_sources(spark, catalog)
    parts = []
    for as_of in spec.as_of_dates:
        register_spark_stages(spark, VIEW_STAGES, as_of)
        view = spark.table("customer_view")
        if spec.drop_closed:
            view = view.where(~F.col("is_closed"))
        labels = spark.sql(_labels_sql(as_of, spec.window_days, spec.products))
        label_cols = [f"label_{p}" for p in spec.products]
        part = view.join(labels, on="customer_id", how="left").select(
            "customer_id",
            # from text: a Python datetime could pass through the session zone
            F.lit(f"{as_of:%Y-%m-%d %H:%M:%S.%f}").cast("timestamp_ntz").alias("as_of"),
            *[c for c in view.columns if c != "customer_id"],
            *[F.coalesce(F.col(c), F.lit(False)).alias(c) for c in label_cols],
        )
        parts.append(part.localCheckpoint(eager=True))
    if not parts:
        raise ValueError("the feature table needs at least one as_of date")
    table = parts[0]
    for part in parts[1:]:
        table = table.unionByName(part)
    return table.orderBy("as_of", "customer_id")


def build_feature_table_spark(
    spark: SparkSession,
    catalog: Catalog,
    as_of_dates: Iterable[DateLike],
    window_days: int = 30,
    products: Sequence[str] = PRODUCTS,
    drop_closed: bool = True,
) -> pd.DataFrame:
    """:func:`~src.features.feature_table.build_feature_table` on Spark (without extras): the
    same rows, columns and dtypes, collected to the driver."""
    spec = FeatureTableSpec(
        tuple(pd.Timestamp(d) for d in as_of_dates), window_days, tuple(products), drop_closed
    )
    table: pd.DataFrame = feature_table_frame(spark, catalog, spec).toPandas()
    release_stages(spark)
    view_part = coerce_view(table.drop(columns=["as_of", *_label_columns(products)]))
    view_part.insert(1, "as_of", pd.to_datetime(table["as_of"]).to_numpy())
    labels = table[_label_columns(products)].astype(bool)
    return pd.concat([view_part, labels.reset_index(drop=True)], axis=1)


def _label_columns(products: Sequence[str]) -> list[str]:
    return [f"label_{p}" for p in products]


def write_feature_table_spark(
    spark: SparkSession,
    catalog: Catalog,
    spec: FeatureTableSpec,
    single_file: bool = True,
) -> Path:
    """The feature table straight from Spark to the catalog's ``feature_table`` path."""
    path = write_parquet(
        feature_table_frame(spark, catalog, spec), catalog.path("feature_table"), single_file
    )
    release_stages(spark)
    return path


__all__ = [
    "BUILD_VIEW_STAGES",
    "WRITTEN_ORDER",
    "FeatureTableSpec",
    "build_customer_view_spark",
    "build_feature_table_spark",
    "customer_view_frame",
    "feature_table_frame",
    "identity_frames",
    "register_sources",
    "register_spark_stages",
    "release_stages",
    "run_customer_view_spark",
    "write_customer_view_spark",
    "write_feature_table_spark",
    "write_identity_spark",
    "write_parquet",
]
