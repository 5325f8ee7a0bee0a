"""Batch detection on Spark: the embedded evaluator, run per group of customers.

A rule only ever looks at one customer's events; the one global input is the evaluation time
``until`` (timeouts fire iff their deadline is strictly before it, and by default it is the
largest ``ts`` of *any* event, null customers included). So the history is shuffled by customer
into ``buckets`` groups (``pmod(xxhash64(customer_id), buckets)``: many customers per pandas
call, the per-call overhead amortised; each customer whole inside one group) and each group runs
:func:`src.features.detection.batch.detect` with the same ``until``. The output is the same
detections table, with no second implementation of the semantics to keep in step.

pyspark is imported lazily (optional dependency); the functions take and return Spark frames.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from src.data.catalog import Catalog
from src.features.detection.batch import detect
from src.features.detection.events import DETECTION_COLUMNS, EVENT_FIELDS, sort_detections, to_ns
from src.features.detection.reports import FUNNEL_STEP_COLUMNS, funnel_steps, funnel_table
from src.features.detection.rules import CompiledRule
from src.features.spark_view import write_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.group import GroupedData

#: The stitched events the rules read, as Spark DDL (the streaming source needs a schema).
EVENT_SCHEMA = ", ".join(
    f"{name} {kind}"
    for name, kind in (
        ("event_id", "bigint"),
        ("ts", "timestamp_ntz"),
        ("customer_id", "string"),
        ("source", "string"),
        ("channel", "string"),
        ("session_id", "bigint"),
        ("page", "string"),
        ("action", "string"),
        ("dwell_seconds", "double"),
        ("referrer", "string"),
        ("code", "string"),
        ("amount", "double"),
        ("currency", "string"),
        ("product", "string"),
        ("amount_krw", "double"),
    )
)
#: The detections table (:data:`~src.features.detection.events.DETECTION_COLUMNS`) as Spark DDL.
DETECTION_SCHEMA = (
    "customer_id string, rule string, kind string, anchor_at timestamp_ntz, "
    "fired_at timestamp_ntz, fired_event_id bigint, event_ids array<bigint>"
)
#: :data:`~src.features.detection.reports.FUNNEL_STEP_COLUMNS` per rule, as Spark DDL.
FUNNEL_STEP_SCHEMA = (
    "rule string, customer_id string, period timestamp_ntz, step bigint, gap_ns bigint"
)
DEFAULT_BUCKETS = 64
assert tuple(f.split()[0] for f in EVENT_SCHEMA.split(", ")) == EVENT_FIELDS


def python_workers_session(master: str | None = "local[2]", **kwargs: Any) -> SparkSession:
    """:func:`~src.features.spark_session.spark_session`, with Python workers on this
    interpreter.

    Spark starts its Python workers with ``python3`` from the PATH unless ``PYSPARK_PYTHON``
    says otherwise; that interpreter lacks this environment's packages (pandas, pyarrow,
    ``src``) and every pandas UDF would fail. The variable is only set if unset, before the
    JVM starts (on a cluster, set it in the job's environment instead).
    """
    from src.features.spark_session import spark_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return spark_session(master=master, **kwargs)


def ntz_literal(value: Any) -> str:
    """A SQL TIMESTAMP_NTZ literal for a naive time (ns precision is cut to Spark's µs)."""
    ts = pd.Timestamp(to_ns(value))
    return f"TIMESTAMP_NTZ'{ts:%Y-%m-%d %H:%M:%S.%f}'"


def detections_for_pandas(events: pd.DataFrame, rules: list[CompiledRule], until_ns: int):
    """One group's detections, in the types Arrow hands back to Spark."""
    if "session_id" in events:  # a nullable bigint arrives as float64 (NaN for null)
        events = events.astype({"session_id": "Int64"})
    out = detect(events, rules, until=until_ns, sort=False)
    out["event_ids"] = [list(t) for t in out["event_ids"]]
    return out


def spark_until(events: DataFrame, until: Any = None) -> int:
    """The evaluation time in ns: ``until`` if given, else the largest ts of any event."""
    if until is not None:
        return to_ns(until)
    from pyspark.sql import functions as F

    latest = events.agg(F.max("ts")).first()
    if latest is None or latest[0] is None:
        return 0
    return to_ns(latest[0])


def detect_spark(
    events: DataFrame,
    rules: list[CompiledRule],
    until: Any = None,
    buckets: int = DEFAULT_BUCKETS,
) -> DataFrame:
    """Detections of ``rules`` over a Spark frame of stitched events (the batch semantics).

    ``until`` as in :func:`~src.features.detection.batch.detect` (events after it are
    ignored; default: the largest ts in ``events``). ``buckets``: how many groups of customers
    the history is split into; each group must fit one Python worker's memory (a group's
    events are one pandas frame), so a large history wants more.
    """
    missing = [c for c in EVENT_FIELDS if c not in events.columns]
    if missing:
        raise ValueError(f"the event frame lacks column(s) {missing}")
    until_ns = spark_until(events, until)
    rules = list(rules)

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        return detections_for_pandas(pdf.drop(columns="_bucket"), rules, until_ns)

    return _bucketed(events, until_ns, buckets).applyInPandas(run, DETECTION_SCHEMA)


def _bucketed(events: DataFrame, until_ns: int, buckets: int) -> GroupedData:
    """Identified events up to ``until`` grouped into ``buckets`` groups of whole customers."""
    from pyspark.sql import functions as F

    missing = [c for c in EVENT_FIELDS if c not in events.columns]
    if missing:
        raise ValueError(f"the event frame lacks column(s) {missing}")
    chosen = events.select(*EVENT_FIELDS).where(
        F.col("customer_id").isNotNull() & (F.col("ts") <= F.expr(ntz_literal(until_ns)))
    )
    bucket = F.pmod(F.xxhash64("customer_id"), F.lit(buckets)).alias("_bucket")
    return chosen.select(bucket, *EVENT_FIELDS).groupBy("_bucket")


def funnel_steps_for_pandas(
    events: pd.DataFrame, rules: list[CompiledRule], until_ns: int, freq: str
) -> pd.DataFrame:
    """One group's :func:`~src.features.detection.reports.funnel_steps` for every rule."""
    if "session_id" in events:
        events = events.astype({"session_id": "Int64"})
    parts = [funnel_steps(events, rule, freq=freq, until=until_ns) for rule in rules]
    out = pd.concat(
        [p.assign(rule=rule.name) for p, rule in zip(parts, rules, strict=True)], ignore_index=True
    )
    # plain object strings: Arrow-backed ``str`` columns reach pyspark as chunked arrays
    return out[["rule", *FUNNEL_STEP_COLUMNS]].astype({"rule": object, "customer_id": object})


def funnel_report_spark(
    events: DataFrame,
    rules: list[CompiledRule],
    until: Any = None,
    customers: DataFrame | None = None,
    by: str | None = None,
    freq: str = "D",
    buckets: int = DEFAULT_BUCKETS,
) -> pd.DataFrame:
    """:func:`~src.features.detection.reports.funnel_report` of every rule on Spark, the
    rules' reports concatenated with a ``rule`` column (what ``detect`` writes as
    ``rule_funnels``): equal to the embedded reports.

    Which steps a customer-period reached only depends on that customer's events, so it runs
    per group of customers (``applyInPandas``, the embedded code); the counts and the exact
    median gap per period, segment and step are one Spark aggregation, and only that small
    table comes back to the driver. ``by`` names a column of ``customers`` (a Spark frame).
    """
    from pyspark.sql import functions as F

    if by and customers is None:
        raise ValueError("funnel_report_spark: 'by' needs the customers frame")
    until_ns = spark_until(events, until)
    rules = list(rules)

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        return funnel_steps_for_pandas(pdf.drop(columns="_bucket"), rules, until_ns, freq)

    steps = _bucketed(events, until_ns, buckets).applyInPandas(run, FUNNEL_STEP_SCHEMA)
    keys = ["period", *([by] if by else [])]
    if by:
        assert customers is not None
        steps = steps.join(customers.select("customer_id", by), "customer_id", "left")
    counts = pd.DataFrame(
        steps.groupBy("rule", *keys, "step")
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.percentile("gap_ns", F.lit(0.5)).alias("median_ns"),
        )
        .toPandas()
    )
    counts["period"] = pd.to_datetime(counts["period"]).astype("datetime64[ns]")
    reports = [
        funnel_table(counts[counts["rule"] == rule.name].drop(columns="rule"), rule, by).assign(
            rule=rule.name
        )
        for rule in rules
    ]
    return pd.concat(reports, ignore_index=True)


def sorted_detections(df: DataFrame) -> pd.DataFrame:
    """A Spark detections frame as the embedded table: same dtypes, canonical row order."""
    pdf = pd.DataFrame(df.toPandas())
    out = pd.DataFrame(
        {
            "customer_id": pdf["customer_id"].astype("str"),
            "rule": pdf["rule"].astype("str"),
            "kind": pdf["kind"].astype("str"),
            "anchor_at": pd.to_datetime(pdf["anchor_at"]).astype("datetime64[ns]"),
            "fired_at": pd.to_datetime(pdf["fired_at"]).astype("datetime64[ns]"),
            "fired_event_id": pd.array(pdf["fired_event_id"], dtype="Int64"),
            "event_ids": pd.Series(
                [tuple(None if pd.isna(v) else int(v) for v in ids) for ids in pdf["event_ids"]],
                dtype=object,
            ),
        },
        columns=list(DETECTION_COLUMNS),
    )
    return sort_detections(out)


def run_detection_spark(
    spark: SparkSession,
    catalog: Catalog,
    rules: list[CompiledRule],
    as_of: Any,
    buckets: int = DEFAULT_BUCKETS,
) -> dict[str, Path]:
    """``nextoffer detect`` on Spark: detections, step funnels and rule features as of ``as_of``.

    Reads the catalog's ``stitched_events`` (written by ``build-view`` on either engine for the
    same ``as_of``): events strictly before ``as_of``, as the embedded path stitches them.
    The step funnels are counted on Spark (:func:`funnel_report_spark`); the rule features are
    computed from the detections (one small table) with the embedded code.
    """
    from pyspark.sql import functions as F

    from src.features.detection.reports import rule_features

    path = catalog.path("stitched_events")
    if not path.exists():
        raise FileNotFoundError(
            f"no stitched events at {path}: run `nextoffer build-view --as-of` first"
        )
    events = spark.read.parquet(str(path))
    later = events.where(F.col("ts") >= F.expr(ntz_literal(as_of))).limit(1).count()
    if later:
        raise ValueError(
            f"stitched_events at {path} holds events at or after {pd.Timestamp(as_of)}: it was "
            "built for a later as_of (identities would use the future); run "
            f"`nextoffer build-view --as-of {pd.Timestamp(as_of):%Y-%m-%d}` first"
        )
    out = catalog.path("detections", as_of)
    write_parquet(detect_spark(events, rules, as_of, buckets), out)
    detections = sort_detections(pd.read_parquet(out))
    customers = catalog.read("customers", columns=["customer_id", "life_stage"])
    paths = {
        "detections": out,
        "rule_funnels": catalog.path("rule_funnels", as_of),
        "rule_features": catalog.path("rule_features", as_of),
    }
    funnels = funnel_report_spark(events, rules, as_of, buckets=buckets)
    funnels.to_parquet(paths["rule_funnels"], index=False)
    features = rule_features(detections, as_of, customers, rules=rules, wide=True)
    features.to_parquet(paths["rule_features"], index=False)
    return paths


__all__ = [
    "DETECTION_SCHEMA",
    "FUNNEL_STEP_SCHEMA",
    "EVENT_SCHEMA",
    "detect_spark",
    "detections_for_pandas",
    "funnel_report_spark",
    "funnel_steps_for_pandas",
    "ntz_literal",
    "python_workers_session",
    "run_detection_spark",
    "sorted_detections",
    "spark_until",
]
