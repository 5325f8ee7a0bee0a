"""Score the whole base: every customer of the view x every product, with the champion model.

``nextoffer score --as-of DATE`` reads the catalog's ``customer_view`` for that date, runs the
registered champion propensity pyfunc (``models:/<name>@champion``, resolved to its version
first, so an alias moving mid-run cannot mix two versions) and writes the catalog's ``scores``
dataset for the same date, one row per (customer, product):

==============  ===============  =====================================================
column          type             meaning
==============  ===============  =====================================================
customer_id     string           the view's customer
product         string           a product (a column of the model's output)
score           double           calibrated P(signs up for the product), in [0, 1]
model_version   string           ``<registered model name>/<version>`` that scored it
as_of           timestamp (NTZ)  the view's as_of (the date in the file name)
==============  ===============  =====================================================

Rows are in no particular order; (customer_id, product) is the key. The endpoint can read this
table instead of scoring per request (same model, same input types).

Two engines, the same numbers: **duckdb** (embedded) streams the view in Arrow record batches
(``chunk_rows`` at a time) through the model and appends each batch to one Parquet file, so
memory is bounded by a batch whatever the size of the base; **spark** runs the same pyfunc with
``mlflow.pyfunc.spark_udf`` over the view read by Spark. Both give the model the types of its
logged signature (integers as doubles, strings as strings — what the endpoint sends), so the
scores agree to the last bit in practice and within 1e-9 by test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.data.catalog import Catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _scores_schema(key: str) -> tuple[tuple[str, ...], pa.Schema]:
    """A scores table's columns and Parquet schema: one row per customer x ``key`` (the
    propensity scores are per product, the CVR scores per offer)."""
    columns = ("customer_id", key, "score", "model_version", "as_of")
    types = (pa.string(), pa.string(), pa.float64(), pa.string(), pa.timestamp("us"))
    return columns, pa.schema(list(zip(columns, types, strict=True)))


SCORE_COLUMNS, SCORES_SCHEMA = _scores_schema("product")
DEFAULT_MODEL = "nextoffer-propensity"
ENGINES = ("duckdb", "spark")

# MLflow signature types -> the Spark SQL type the column is cast to before the UDF
_SPARK_TYPES = {
    "double": "double",
    "float": "float",
    "long": "bigint",
    "integer": "int",
    "string": "string",
    "boolean": "boolean",
    "datetime": "timestamp_ntz",
    "binary": "binary",
}


class NoChampion(LookupError):
    """The registry has no model under the name, or no version holds the alias."""


@dataclass(frozen=True)
class Champion:
    """A resolved registered model version and what its signature says it reads and returns."""

    name: str
    version: str
    inputs: tuple[tuple[str, str], ...]  # (column, MLflow type name)
    products: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """What the scores table's ``model_version`` says."""
        return f"{self.name}/{self.version}"

    @property
    def input_columns(self) -> list[str]:
        return [c for c, _ in self.inputs]


def resolve_champion(
    name: str = DEFAULT_MODEL, alias: str = "champion", tracking_uri: str | None = None
) -> Champion:
    """The version holding ``alias`` and its signature (inputs and output columns)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        version = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        raise NoChampion(
            f"model {name!r}: no version with alias {alias!r} in the registry "
            f"({tracking_uri or mlflow.get_tracking_uri()}): run `nextoffer retrain` first"
        ) from error
    if tracking_uri:
        mlflow.set_registry_uri(tracking_uri)
    info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    signature = info.signature
    if signature is None or signature.inputs is None or signature.outputs is None:
        raise ValueError(f"model {name}/{version} has no signature: cannot score the view")
    inputs = tuple(
        (str(col.name), str(col.type.name))
        for col in signature.inputs.inputs
        if col.name != "customer_id"
    )
    products = tuple(str(p) for p in signature.outputs.input_names())
    return Champion(name, version, inputs, products)


def model_rows(frame: pd.DataFrame, champion: Champion) -> pd.DataFrame:
    """View rows in the signature's types (as :func:`src.models.tracking.serving_frame`)."""
    from src.models.tracking import serving_frame

    missing = [c for c in champion.input_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the customer view lacks model input column(s) {missing[:5]}")
    return serving_frame(frame, champion.input_columns)


def long_scores(
    customer_ids: pd.Series, predictions: pd.DataFrame, champion: Champion, as_of: Any
) -> pd.DataFrame:
    """(customers x products) predictions as scores rows; refuses what is not a probability,
    naming the customer and product."""
    predictions = pd.DataFrame(predictions).reset_index(drop=True)
    if len(predictions) != len(customer_ids):
        raise ValueError(
            f"model {champion.label} returned {len(predictions)} rows for {len(customer_ids)}"
        )
    absent = [p for p in champion.products if p not in predictions.columns]
    if absent:
        raise ValueError(f"model {champion.label} returned no column for product(s) {absent}")
    values = predictions[list(champion.products)].to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"model {champion.label} scored customer {customer_ids.iloc[row]!r} product "
            f"{champion.products[col]!r} as {values[row, col]!r}: not a probability"
        )
    n, k = values.shape
    return pd.DataFrame(
        {
            "customer_id": np.repeat(customer_ids.astype(str).to_numpy(), k),
            "product": np.tile(np.asarray(champion.products, dtype=object), n),
            "score": values.reshape(-1),
            "model_version": champion.label,
            "as_of": pd.Timestamp(as_of).as_unit("us"),
        },
        columns=list(SCORE_COLUMNS),
    )


def _view_path(catalog: Catalog, as_of: Any) -> Path:
    path = catalog.path("customer_view", as_of)
    if not path.exists():
        raise FileNotFoundError(
            f"no customer view for as_of {pd.Timestamp(as_of):%Y-%m-%d} at {path}: "
            "run `nextoffer build-view --as-of` for that date first"
        )
    return path


def score_embedded(
    catalog: Catalog,
    as_of: Any,
    champion: Champion,
    chunk_rows: int = 50_000,
    model: Any = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Score the view in record batches of ``chunk_rows`` and write ``scores_{as_of}``.

    The file is written under a temporary name and moved into place at the end, so a reader
    never sees half a table. ``model``: the loaded pyfunc (default: load ``champion.uri``).
    """
    import mlflow

    source = pq.ParquetFile(_view_path(catalog, as_of))
    if "customer_id" not in source.schema_arrow.names:
        raise ValueError("the customer view has no customer_id column")
    model = model if model is not None else mlflow.pyfunc.load_model(champion.uri)
    out = catalog.path("scores", as_of)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    columns = ["customer_id", *[c for c in champion.input_columns if c != "customer_id"]]
    try:
        with pq.ParquetWriter(scratch, SCORES_SCHEMA) as writer:
            for batch in source.iter_batches(batch_size=chunk_rows, columns=columns):
                frame = batch.to_pandas()
                predictions = model.predict(model_rows(frame, champion))
                rows = long_scores(frame["customer_id"], predictions, champion, as_of)
                writer.write_table(
                    pa.Table.from_pandas(rows, schema=SCORES_SCHEMA, preserve_index=False)
                )
                if progress is not None:
                    progress(len(frame))
        os.replace(scratch, out)
    finally:
        scratch.unlink(missing_ok=True)
    return out


def scores_spark(spark: SparkSession, view: DataFrame, champion: Champion, as_of: Any) -> DataFrame:
    """The scores rows of a Spark view frame through ``mlflow.pyfunc.spark_udf``."""
    import mlflow.pyfunc
    from pyspark.sql import functions as F

    from src.features.detection.spark_batch import ntz_literal

    missing = [c for c in champion.input_columns if c not in view.columns]
    if missing:
        raise ValueError(f"the customer view lacks model input column(s) {missing[:5]}")
    result_type = ", ".join(f"`{p}` double" for p in champion.products)
    udf = mlflow.pyfunc.spark_udf(spark, champion.uri, result_type=result_type, env_manager="local")
    inputs = [
        F.col(f"`{c}`").cast(_SPARK_TYPES.get(t, "string")).alias(c) for c, t in champion.inputs
    ]
    scored = view.select("customer_id", udf(F.struct(*inputs)).alias("_s"))
    pairs = ", ".join(f"'{p}', _s.`{p}`" for p in champion.products)
    long = scored.select(
        F.col("customer_id").cast("string").alias("customer_id"),
        F.expr(f"stack({len(champion.products)}, {pairs}) as (product, score)"),
    )
    return long.select(
        "customer_id",
        "product",
        F.col("score").cast("double").alias("score"),
        F.lit(champion.label).alias("model_version"),
        F.expr(ntz_literal(pd.Timestamp(as_of))).alias("as_of"),
    )


def score_spark(spark: SparkSession, catalog: Catalog, as_of: Any, champion: Champion) -> Path:
    """Score the view on Spark and write ``scores_{as_of}`` (one Parquet file, as embedded).

    Out-of-range scores are refused as on the embedded engine (one pass over the result)."""
    from pyspark.sql import functions as F

    from src.features.spark_view import write_parquet

    view = spark.read.parquet(str(_view_path(catalog, as_of)))
    rows = scores_spark(spark, view, champion, as_of).cache()
    try:
        bad = rows.where(
            F.col("score").isNull() | F.isnan("score") | (F.col("score") < 0) | (F.col("score") > 1)
        ).first()
        if bad is not None:
            raise ValueError(
                f"model {champion.label} scored customer {bad['customer_id']!r} product "
                f"{bad['product']!r} as {bad['score']!r}: not a probability"
            )
        return write_parquet(rows, catalog.path("scores", as_of))
    finally:
        rows.unpersist()


def run_score(
    catalog: Catalog,
    as_of: Any,
    tracking_uri: str,
    engine: str = "duckdb",
    master: str | None = "local[2]",
    model_name: str = DEFAULT_MODEL,
    alias: str = "champion",
    chunk_rows: int = 50_000,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, Champion]:
    """``nextoffer score``: resolve the champion, score the view on ``engine``, write
    ``scores_{as_of}``; the path and the champion that scored."""
    import mlflow

    if engine not in ENGINES:
        raise ValueError(f"--engine must be one of {ENGINES}, got {engine!r}")
    _view_path(catalog, as_of)  # fail before the registry or a JVM is touched
    mlflow.set_tracking_uri(tracking_uri)
    champion = resolve_champion(model_name, alias, tracking_uri)
    if engine == "duckdb":
        return score_embedded(catalog, as_of, champion, chunk_rows, progress=progress), champion
    from src.features.detection.spark_batch import python_workers_session

    spark = python_workers_session(master, app_name="nextoffer-score")
    return score_spark(spark, catalog, as_of, champion), champion


# --- CVR: customer x offer ------------------------------------------------------------------
CVR_MODEL = "nextoffer-cvr"
CVR_SCORE_COLUMNS, CVR_SCORES_SCHEMA = _scores_schema("offer_id")


def cvr_rows(
    frame: pd.DataFrame,
    model: Any,
    champion: Champion,
    offer_ids: list[str],
    as_of: Any,
    channel: str = "app",
) -> pd.DataFrame:
    """``cvr_scores`` rows of view rows x offers: the CVR pyfunc's P(convert | shown the offer
    on ``channel``) (its one output column); refuses what is not a probability, naming the
    customer and offer."""
    parts = []
    for offer_id in offer_ids:
        rows = frame.assign(offer_id=offer_id, channel=channel)
        out = model.predict(model_rows(rows, champion))
        values = np.asarray(
            out[champion.products[0]] if isinstance(out, pd.DataFrame) else out, dtype=float
        ).reshape(-1)
        bad = ~np.isfinite(values) | (values < 0) | (values > 1)
        if bad.any():
            i = int(np.nonzero(bad)[0][0])
            raise ValueError(
                f"model {champion.label} scored customer {frame['customer_id'].iloc[i]!r} offer "
                f"{offer_id!r} as {values[i]!r}: not a probability"
            )
        parts.append(
            pd.DataFrame(
                {
                    "customer_id": frame["customer_id"].astype(str).to_numpy(),
                    "offer_id": offer_id,
                    "score": values,
                    "model_version": champion.label,
                    "as_of": pd.Timestamp(as_of).as_unit("us"),
                },
                columns=list(CVR_SCORE_COLUMNS),
            )
        )
    return pd.concat(parts, ignore_index=True)


def score_cvr_embedded(
    catalog: Catalog,
    as_of: Any,
    champion: Champion,
    offer_ids: list[str] | None = None,
    chunk_rows: int = 50_000,
    model: Any = None,
    channel: str = "app",
) -> Path:
    """Score the view x every offer (default: the catalog's) with the CVR champion and write
    ``cvr_scores_{as_of}`` (what CVR and expected-value campaign segments read); batches of
    ``chunk_rows`` customers, moved into place at the end as the propensity scores."""
    import mlflow

    source = pq.ParquetFile(_view_path(catalog, as_of))
    model = model if model is not None else mlflow.pyfunc.load_model(champion.uri)
    if offer_ids is None:
        offer_ids = catalog.read("offers", columns=["offer_id"])["offer_id"].astype(str).tolist()
    out = catalog.path("cvr_scores", as_of)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    inputs = [c for c in champion.input_columns if c not in ("customer_id", "offer_id", "channel")]
    try:
        with pq.ParquetWriter(scratch, CVR_SCORES_SCHEMA) as writer:
            for batch in source.iter_batches(
                batch_size=chunk_rows, columns=["customer_id", *inputs]
            ):
                rows = cvr_rows(batch.to_pandas(), model, champion, offer_ids, as_of, channel)
                writer.write_table(
                    pa.Table.from_pandas(rows, schema=CVR_SCORES_SCHEMA, preserve_index=False)
                )
        os.replace(scratch, out)
    finally:
        scratch.unlink(missing_ok=True)
    return out


def run_score_cvr(
    catalog: Catalog,
    as_of: Any,
    tracking_uri: str,
    model_name: str = CVR_MODEL,
    alias: str = "champion",
    chunk_rows: int = 50_000,
) -> tuple[Path, Champion]:
    """``nextoffer score --cvr``: the CVR champion over the view x every offer."""
    import mlflow

    _view_path(catalog, as_of)
    mlflow.set_tracking_uri(tracking_uri)
    champion = resolve_champion(model_name, alias, tracking_uri)
    return score_cvr_embedded(catalog, as_of, champion, chunk_rows=chunk_rows), champion


__all__ = [
    "CVR_MODEL",
    "CVR_SCORES_SCHEMA",
    "cvr_rows",
    "run_score_cvr",
    "score_cvr_embedded",
    "DEFAULT_MODEL",
    "ENGINES",
    "SCORES_SCHEMA",
    "SCORE_COLUMNS",
    "Champion",
    "NoChampion",
    "long_scores",
    "model_rows",
    "resolve_champion",
    "run_score",
    "score_embedded",
    "score_spark",
    "scores_spark",
]
