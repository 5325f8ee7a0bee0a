"""Streaming detection on Spark Structured Streaming: per-customer state, event-time timeouts.

The rules' online semantics (:class:`~src.features.detection.online.OnlineDetector`) run once
per customer inside ``applyInPandasWithState``: Spark groups each micro-batch by
``customer_id``, and the function restores that customer's detector state (open candidates,
counters, session tracker, pending absence deadlines — pickled into one binary state column),
feeds it the customer's new events in ``(ts, event_id)`` order and stores it back. The same
code as the endpoint's path, so no second implementation of the semantics.

Time. An absence ("did not reach the events page within 10 minutes") fires once the clock has
passed its deadline D. Embedded, the clock is the latest event of *any* customer; here it is
Spark's event-time **watermark** W = (latest event time seen) - ``watermark_seconds``. Every
call first advances the customer's detector to W (``tick(W)``: fires deadlines D < W), and a
customer with a pending deadline asks for an event-time timeout at D, so Spark calls it again
once W passes D even if the customer sends nothing more. The customer's own later events pass
its deadlines too (as on the embedded path), so a timeout is reported at whichever comes
first; once the stream is flushed the set of detections is the batch evaluator's. Rows older than the watermark are
dropped by Spark (``numRowsDroppedByWatermark`` in the query progress): the delay is how late an
event may arrive and still count, and it is also how long a timeout waits after its deadline.
Events are turned into a TIMESTAMP only for the watermark (``ts`` stays TIMESTAMP_NTZ, a
wall-clock time, so no session time zone enters the result).

End of stream. A live stream never ends; a *replay* does, and then the last deadlines before
the end would wait forever for a watermark that never comes. The choice here: the replay ends
with one **sentinel row** (no customer, ``ts = until + delay``); it moves W to exactly ``until``
and so fires exactly the timeouts with D < ``until`` — the batch evaluator's rule, and not one
more (a sentinel far in the future would fire timeouts the batch run does not report).
Processing-time flushes were rejected: they would make the output depend on wall-clock speed.
Rows without a customer still move the watermark (they form their own group, which emits
nothing), as they move the embedded clock.

Sources: a directory of Parquet or JSON files with the stitched-event columns
(:data:`~src.features.detection.spark_batch.EVENT_SCHEMA`), or Kafka (JSON values, needs the
``spark-sql-kafka`` package on the cluster). pyspark is imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.features.detection.events import (
    EVENT_FIELDS,
    NS,
    Event,
    detections_frame,
)
from src.features.detection.online import OnlineDetector
from src.features.detection.rules import SESSION_GAP_NS, CompiledRule
from src.features.detection.spark_batch import DETECTION_SCHEMA, EVENT_SCHEMA

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery
    from pyspark.sql.streaming.state import GroupState

STATE_SCHEMA = "blob binary"
_STATE_VERSION = 1
#: What :class:`OnlineDetector` keeps between events (everything else is built from the rules).
_STATE_FIELDS = (
    "clock",
    "late_events",
    "_since_sweep",
    "_seq",
    "_states",
    "_counts",
    "_sessions",
    "_heap",
)
DEFAULT_WATERMARK_SECONDS = 60
SENTINEL_EVENT_ID = -1
STRING_FIELDS = (
    "customer_id",
    "source",
    "channel",
    "page",
    "action",
    "referrer",
    "code",
    "currency",
    "product",
)
#: :data:`EVENT_SCHEMA` in Arrow: replay files keep their types even when a column is all null
EVENT_ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", pa.timestamp("us")),
        ("session_id", pa.int64()),
        ("dwell_seconds", pa.float64()),
        ("amount", pa.float64()),
        ("amount_krw", pa.float64()),
        *[(name, pa.string()) for name in STRING_FIELDS],
    ]
)
EVENT_ARROW_SCHEMA = pa.schema([EVENT_ARROW_SCHEMA.field(name) for name in EVENT_FIELDS])
_EPOCH_MICROS = "timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', ts)"


# -- per-customer detector state ----------------------------------------------------------
def rules_fingerprint(rules: list[CompiledRule]) -> str:
    """A stable digest of the compiled rules: state written under other rules is refused."""

    def plain(v: Any) -> Any:
        if isinstance(v, (frozenset, set)):
            return sorted(v)
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    spec = [
        [
            r.name,
            r.within_ns,
            r.cooldown_ns,
            [
                [s.source, plain(s.preds), s.session_start, s.absent, s.within_ns, plain(s.count)]
                for s in r.steps
            ],
        ]
        for r in rules
    ]
    return hashlib.sha1(json.dumps(spec, default=str).encode()).hexdigest()[:16]


def reset_state(det: OnlineDetector) -> None:
    """Empty the detector (a customer seen for the first time)."""
    det.clock = -(2**62)
    det.late_events = 0
    det._since_sweep = 0
    det._seq = 0
    det._states = {}
    det._counts = {}
    det._sessions = {}
    det._heap = []


def dump_state(det: OnlineDetector, fingerprint: str) -> bytes:
    """The detector's state as bytes (candidates shared by the heap and the rule states stay
    shared: one pickle)."""
    fields = {name: getattr(det, name) for name in _STATE_FIELDS}
    return pickle.dumps((_STATE_VERSION, fingerprint, fields), protocol=5)


def load_state(det: OnlineDetector, blob: bytes, fingerprint: str) -> None:
    """Restore what :func:`dump_state` wrote; a clear error for another rule set or version."""
    version, written_for, fields = pickle.loads(blob)  # noqa: S301 - our own checkpoint
    if version != _STATE_VERSION or written_for != fingerprint:
        raise ValueError(
            f"checkpointed detector state was written for other rules (fingerprint "
            f"{written_for}, version {version}; now {fingerprint}, {_STATE_VERSION}): "
            "start with a new checkpoint directory"
        )
    for name, value in fields.items():
        setattr(det, name, value)


def _pending_deadlines(det: OnlineDetector) -> list[int]:
    return [int(h[0]) for h in det._heap if h[6].alive and h[6].step == h[7]]


def is_idle(det: OnlineDetector) -> bool:
    """Nothing left that a later event or deadline could use (after a sweep)."""
    return not (det._states or det._counts or det._sessions or _pending_deadlines(det))


def state_horizon_ns(rules: list[CompiledRule]) -> int:
    """Longest time any piece of state can matter for (windows, cooldowns, the session gap):
    an idle customer is woken at ``clock + horizon`` so its state is swept and dropped."""
    spans = [SESSION_GAP_NS]
    for r in rules:
        spans += [r.within_ns or 0, r.cooldown_ns]
        for s in r.steps:
            spans += [s.within_ns or 0, s.count[1] if s.count else 0]
    return max(spans) + NS


def next_wakeup_ns(det: OnlineDetector, horizon_ns: int) -> int:
    """When Spark should call this customer again without data: the earliest pending absence
    deadline, else when the state has certainly expired."""
    pending = _pending_deadlines(det)
    return min(pending) if pending else det.clock + horizon_ns


class _DetectorCache:
    """One :class:`OnlineDetector` per rule set and Python worker (building one compiles the
    rules' predicates); its state is swapped in and out per customer."""

    def __init__(self) -> None:
        self._by_fingerprint: dict[str, OnlineDetector] = {}

    def get(self, rules: list[CompiledRule], fingerprint: str) -> OnlineDetector:
        det = self._by_fingerprint.get(fingerprint)
        if det is None:
            det = self._by_fingerprint[fingerprint] = OnlineDetector(rules)
        return det


_CACHE = _DetectorCache()


def _output(dets: list[Any]) -> pd.DataFrame:
    out = detections_frame(dets)
    out["event_ids"] = [list(t) for t in out["event_ids"]]
    return out


def _plain(values: np.ndarray) -> list[Any]:
    """Object values with every null (None, NaN, NA) as None."""
    return [None if v is None or v is pd.NA or v != v else v for v in values.tolist()]


def group_events(parts: list[pd.DataFrame]) -> list[Event]:
    """One customer's rows of a micro-batch as :class:`Event` in ``(ts, event_id)`` order.

    Column by column through numpy (a group holds a handful of rows; pandas' per-column
    machinery in :func:`events_from_frame` costs more than the detection itself here)."""
    frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    ts = frame["ts"].to_numpy().astype("datetime64[ns]").view("int64")
    eid = frame["event_id"].to_numpy(dtype=np.int64)
    order = np.lexsort((eid, ts))
    sid = frame["session_id"].to_numpy(dtype=np.float64, na_value=np.nan)[order]
    cols: list[list[Any]] = []
    for name in EVENT_FIELDS:
        if name == "event_id":
            cols.append(eid[order].tolist())
        elif name == "ts":
            cols.append(ts[order].tolist())
        elif name == "session_id":
            cols.append([None if v != v else int(v) for v in sid.tolist()])
        elif name in ("dwell_seconds", "amount", "amount_krw"):
            cols.append(frame[name].to_numpy(dtype=np.float64, na_value=np.nan)[order].tolist())
        else:
            cols.append(_plain(frame[name].to_numpy(dtype=object)[order]))
    return [Event(*row) for row in zip(*cols, strict=True)]


def customer_step(
    rules: list[CompiledRule],
    fingerprint: str,
    horizon_ns: int,
    key: tuple[Any, ...],
    frames: Iterator[pd.DataFrame],
    state: GroupState,
) -> Iterator[pd.DataFrame]:
    """The ``applyInPandasWithState`` function: one customer's new events (or a timeout)."""
    customer = key[0]
    parts = [f for f in frames if len(f)]
    if customer is None:  # rows without a customer only move the watermark
        return
    det = _CACHE.get(rules, fingerprint)
    if state.exists:
        load_state(det, state.get[0], fingerprint)
    else:
        reset_state(det)
    dets = []
    watermark_ms = state.getCurrentWatermarkMs()
    if watermark_ms > 0:
        dets += det.tick(watermark_ms * 1_000_000)
    if parts:
        dets += det.process_many(group_events(parts))
    det.sweep()
    if is_idle(det):
        if state.exists:
            state.remove()
    else:
        state.update((dump_state(det, fingerprint),))
        wake_ms = -(-next_wakeup_ns(det, horizon_ns) // 1_000_000)  # ceil: never before D
        # a deadline D fires on the call once the watermark is past it; a timeout set at
        # ceil(D) ms is called when W > ceil(D) >= D, and tick(W) then fires it
        state.setTimeoutTimestamp(max(wake_ms, watermark_ms))
    if dets:
        yield _output(dets)


def detect_stream(
    events: DataFrame,
    rules: list[CompiledRule],
    watermark_seconds: int = DEFAULT_WATERMARK_SECONDS,
) -> DataFrame:
    """The detections of a streaming frame of stitched events (append-only, one row each).

    ``watermark_seconds``: how late an event may arrive (older rows are dropped by Spark) and
    how long after its deadline a timeout is reported (see the module docstring).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout

    rules = list(rules)
    fingerprint = rules_fingerprint(rules)
    horizon = state_horizon_ns(rules)

    def step(key, frames, state):
        return customer_step(rules, fingerprint, horizon, key, frames, state)

    return (
        events.select(*EVENT_FIELDS)
        .withColumn("_event_time", F.expr(f"timestamp_micros({_EPOCH_MICROS})"))
        .withWatermark("_event_time", f"{int(watermark_seconds)} seconds")
        .groupBy("customer_id")
        .applyInPandasWithState(
            step,
            outputStructType=DETECTION_SCHEMA,
            stateStructType=STATE_SCHEMA,
            outputMode="append",
            timeoutConf=GroupStateTimeout.EventTimeTimeout,
        )
    )


# -- sources and sinks --------------------------------------------------------------------
def read_event_files(
    spark: SparkSession,
    source: Path | str,
    fmt: str = "parquet",
    max_files_per_trigger: int | None = None,
) -> DataFrame:
    """A directory of Parquet or JSON event files as a stream (files are taken oldest first;
    ``max_files_per_trigger`` bounds a micro-batch)."""
    if fmt not in ("parquet", "json"):
        raise ValueError(f"--format must be parquet or json, got {fmt!r}")
    reader = spark.readStream.schema(EVENT_SCHEMA)
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", int(max_files_per_trigger))
    if fmt == "json":
        reader = reader.option("timestampNTZFormat", "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]")
    return reader.format(fmt).load(str(source))


class KafkaConnectorMissing(RuntimeError):
    """The Kafka source was asked for but Spark has no ``spark-sql-kafka`` connector."""


def kafka_connector(spark_version: str) -> str:
    """The Maven coordinates of the Kafka connector matching this Spark (Scala 2.13 builds)."""
    return f"org.apache.spark:spark-sql-kafka-0-10_2.13:{spark_version}"


def kafka_options(bootstrap_servers: str, topic: str, starting_offsets: str = "latest") -> dict:
    """The Kafka source's options, checked before any session starts.

    ``starting_offsets`` is Spark's ``startingOffsets``: ``earliest``, ``latest`` (the
    default: a new query reads what arrives from now on) or a JSON object of offsets per
    partition (``{"events": {"0": 42}}``). It only applies to a new checkpoint; a restarted
    query continues from the offsets in its checkpoint.
    """
    if not bootstrap_servers.strip():
        raise ValueError("--kafka-bootstrap: give host:port[,host:port...]")
    if not topic.strip():
        raise ValueError("--source: give the Kafka topic to subscribe to")
    if starting_offsets not in ("earliest", "latest"):
        try:
            parsed = json.loads(starting_offsets)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise ValueError(
                f"--kafka-starting-offsets must be earliest, latest or a JSON object of "
                f"offsets per topic and partition, got {starting_offsets!r}"
            )
    return {
        "kafka.bootstrap.servers": bootstrap_servers,
        "subscribe": topic,
        "startingOffsets": starting_offsets,
    }


def read_kafka_events(
    spark: SparkSession, bootstrap_servers: str, topic: str, starting_offsets: str = "latest"
) -> DataFrame:
    """Events from a Kafka topic whose values are JSON objects with the stitched-event
    fields (the JSON replay files' format, one object per message).

    Needs the ``spark-sql-kafka`` connector, which pyspark does not bundle: ``spark-submit
    --packages`` :func:`kafka_connector` (or ``spark.jars.packages``). Without it this raises
    :class:`KafkaConnectorMissing` naming the package, not Spark's generic lookup error.
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    options = kafka_options(bootstrap_servers, topic, starting_offsets)
    try:
        raw = spark.readStream.format("kafka").options(**options).load()
    except AnalysisException as error:
        text = str(error)
        if "kafka" in text.lower() and (
            "DATA_SOURCE_NOT_FOUND" in text or "Failed to find data source" in text
        ):
            package = kafka_connector(spark.version)
            raise KafkaConnectorMissing(
                f"the Kafka source needs the spark-sql-kafka connector ({package}), which is "
                f"not on this Spark's classpath: submit with --packages {package} (or set "
                "spark.jars.packages), or read a directory of event files instead"
            ) from error
        raise
    parsed = F.from_json(
        F.col("value").cast("string"),
        EVENT_SCHEMA,
        {"timestampNTZFormat": "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]"},
    )
    return raw.select(parsed.alias("e")).select("e.*")


def start_detection_query(
    detections: DataFrame,
    output: Path | str,
    checkpoint: Path | str,
    available_now: bool = False,
    processing_time: str | None = None,
) -> StreamingQuery:
    """Append detections as Parquet under ``output`` (Spark's file sink: only committed
    batches are visible to readers); ``checkpoint`` holds offsets and per-customer state, so a
    restarted query continues where it stopped."""
    writer = (
        detections.writeStream.format("parquet")
        .option("path", str(output))
        .option("checkpointLocation", str(checkpoint))
        .outputMode("append")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    elif processing_time:
        writer = writer.trigger(processingTime=processing_time)
    return writer.start()


# -- replays ------------------------------------------------------------------------------
def sentinel_row(until: Any, watermark_seconds: int) -> pd.DataFrame:
    """The end-of-replay row: no customer, ``ts = until + delay`` (moves W to ``until``)."""
    ts = pd.Timestamp(until) + pd.Timedelta(seconds=watermark_seconds)
    row: dict[str, list[Any]] = {name: [None] for name in EVENT_FIELDS}
    row.update({"event_id": [SENTINEL_EVENT_ID], "ts": [ts], "source": ["click"]})
    return _typed(pd.DataFrame(row))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Stitched-event columns in the stream schema's types (for Parquet and JSON writers)."""
    out = frame[list(EVENT_FIELDS)].copy()
    out["event_id"] = out["event_id"].astype("int64")
    out["ts"] = pd.to_datetime(out["ts"]).astype("datetime64[us]")
    out["session_id"] = pd.array(out["session_id"], dtype="Int64")
    for name in ("dwell_seconds", "amount", "amount_krw"):
        out[name] = pd.to_numeric(out[name], errors="raise").astype("float64")
    for name in STRING_FIELDS:
        out[name] = out[name].astype(object).where(out[name].notna(), None)
    return out


def write_replay(
    events: pd.DataFrame,
    directory: Path | str,
    files: int = 10,
    fmt: str = "parquet",
    watermark_seconds: int = DEFAULT_WATERMARK_SECONDS,
    until: Any = None,
) -> list[Path]:
    """Write stitched events as a replay: ``files`` files in time order, then the sentinel.

    ``until`` (default: the largest ts) is the end the sentinel marks; a stream replaying the
    files then reports exactly the detections of the batch evaluator with that ``until``.
    Modification times increase file by file, the order Spark's file source reads them in.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = events.sort_values(["ts", "event_id"], kind="stable").reset_index(drop=True)
    end = pd.Timestamp(until) if until is not None else pd.Timestamp(ordered["ts"].max())
    ordered = ordered[ordered["ts"] <= end]
    chunks = [ordered.iloc[idx] for idx in np.array_split(np.arange(len(ordered)), files)]
    chunks.append(sentinel_row(end, watermark_seconds))
    paths = []
    base = time.time() - len(chunks)
    for i, chunk in enumerate(chunks):
        path = directory / f"events-{i:05d}.{fmt}"
        typed = _typed(chunk)
        if fmt == "parquet":
            table = pa.Table.from_pandas(typed, schema=EVENT_ARROW_SCHEMA, preserve_index=False)
            pq.write_table(table, path)
        elif fmt == "json":
            typed.assign(ts=typed["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%f")).to_json(
                path, orient="records", lines=True, date_format="iso"
            )
        else:
            raise ValueError(f"fmt must be parquet or json, got {fmt!r}")
        os.utime(path, (base + i, base + i))
        paths.append(path)
    return paths


__all__ = [
    "DEFAULT_WATERMARK_SECONDS",
    "KafkaConnectorMissing",
    "STATE_SCHEMA",
    "customer_step",
    "detect_stream",
    "dump_state",
    "kafka_connector",
    "kafka_options",
    "load_state",
    "read_event_files",
    "read_kafka_events",
    "rules_fingerprint",
    "sentinel_row",
    "start_detection_query",
    "write_replay",
]
