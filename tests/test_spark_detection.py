"""Detection on Spark equals the embedded batch evaluator on the session's small bank.

Batch: ``applyInPandas`` over customer buckets. Streaming: a replay of the bank's stitched
events in micro-batches through ``applyInPandasWithState`` (watermark, event-time timeouts,
the end-of-replay sentinel) yields exactly the batch detections, absence timeouts included.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pyspark")

from src.features.detection import detect, load_rules  # noqa: E402
from src.features.detection.events import (  # noqa: E402
    detection_keys,
    events_from_frame,
    sort_detections,
)  # noqa: E402
from src.features.detection.online import OnlineDetector, detect_online  # noqa: E402
from src.features.detection.spark_batch import (  # noqa: E402
    detect_spark,
    funnel_report_spark,
    sorted_detections,
)
from src.features.detection.spark_stream import (  # noqa: E402
    SENTINEL_EVENT_ID,
    detect_stream,
    dump_state,
    load_state,
    read_event_files,
    rules_fingerprint,
    start_detection_query,
    write_replay,
)
from src.settings import Settings  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def bank(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The small bank's stitched history as of its last day and the embedded detections."""
    from src.features.identity import stitched_events
    from src.pipeline import default_as_of

    as_of = default_as_of(small_bank)
    events = stitched_events(small_bank.catalog, as_of=as_of).astype({"session_id": "Int64"})
    work = tmp_path_factory.mktemp("spark_detection")
    path = work / "stitched_events.parquet"
    events.to_parquet(path, index=False)
    rules = load_rules()
    expected = detect(events, rules, until=as_of)
    return {"events": events, "path": path, "as_of": as_of, "rules": rules, "expected": expected}


def test_the_bank_exercises_every_kind(bank: dict) -> None:
    """Otherwise the equality tests below would prove little: matches and timeouts occur."""
    kinds = set(bank["expected"]["kind"])
    assert kinds == {"match", "timeout"}
    assert bank["expected"]["rule"].nunique() >= 4


@pytest.mark.slow
def test_batch_on_spark_equals_embedded(spark, bank: dict) -> None:
    events = spark.read.parquet(str(bank["path"]))
    got = sorted_detections(detect_spark(events, bank["rules"], until=bank["as_of"], buckets=8))
    expected = bank["expected"]
    assert len(got) == len(expected)
    assert detection_keys(got) == detection_keys(expected)
    pd.testing.assert_frame_equal(
        got.drop(columns="event_ids"), sort_detections(expected).drop(columns="event_ids")
    )


@pytest.mark.slow
def test_batch_on_spark_default_until_is_the_last_event(spark, bank: dict) -> None:
    """Without ``until`` both engines use the largest ts of any event (null customers too)."""
    cut = bank["events"][bank["events"]["ts"] < bank["as_of"] - pd.Timedelta(days=3)]
    frame = spark.createDataFrame(cut.astype({"session_id": "float64"}))
    frame = frame.withColumn("session_id", frame["session_id"].cast("bigint"))
    got = sorted_detections(detect_spark(frame, bank["rules"], buckets=3))
    assert detection_keys(got) == detection_keys(detect(cut, bank["rules"]))


@pytest.mark.slow
def test_stream_replay_equals_batch(spark, bank: dict, tmp_path: Path) -> None:
    source, out, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "ck"
    files = write_replay(bank["events"], source, files=6, watermark_seconds=60, until=bank["as_of"])
    stream = read_event_files(spark, source, max_files_per_trigger=1)
    query = start_detection_query(
        detect_stream(stream, bank["rules"], watermark_seconds=60), out, checkpoint, True
    )
    query.awaitTermination()
    assert query.exception() is None
    batches = [p for p in query.recentProgress if p["numInputRows"] > 0]
    assert len(batches) == len(files)  # one micro-batch per file: state crossed batches
    got = sorted_detections(spark.read.parquet(str(out)))
    expected = bank["expected"]
    assert (got["kind"] == "timeout").sum() == (expected["kind"] == "timeout").sum() > 0
    assert len(got) == len(expected)
    assert detection_keys(got) == detection_keys(expected)


@pytest.mark.slow
def test_stream_without_sentinel_holds_back_only_the_last_timeouts(
    spark, bank: dict, tmp_path: Path
) -> None:
    """Without the end-of-replay row the watermark stops a delay short of the end: the stream
    reports the batch detections except the timeouts whose deadline is within that delay of
    the end and after the customer's last event (nothing has passed them yet)."""
    delay = 6 * 3600
    source, out, checkpoint = tmp_path / "in", tmp_path / "out", tmp_path / "ck"
    files = write_replay(bank["events"], source, files=2, watermark_seconds=delay)
    files[-1].unlink()
    stream = read_event_files(spark, source, max_files_per_trigger=1)
    query = start_detection_query(
        detect_stream(stream, bank["rules"], watermark_seconds=delay), out, checkpoint, True
    )
    query.awaitTermination()
    got = detection_keys(sorted_detections(spark.read.parquet(str(out))))
    expected = detect(bank["events"], bank["rules"])
    events = bank["events"]
    watermark = events["ts"].max() - pd.Timedelta(seconds=delay)
    own_last = events.groupby("customer_id")["ts"].max()
    # a deadline passes when the watermark does or when the customer's own next event does
    held = (
        (expected["kind"] == "timeout")
        & (expected["fired_at"] >= watermark)
        & (expected["fired_at"] >= expected["customer_id"].map(own_last))
    )
    assert held.any()
    assert got == detection_keys(expected[~held])


def test_replay_files_end_with_the_sentinel(bank: dict, tmp_path: Path) -> None:
    files = write_replay(bank["events"], tmp_path, files=3, watermark_seconds=90)
    last = pd.read_parquet(files[-1])
    assert list(last["event_id"]) == [SENTINEL_EVENT_ID] and last["customer_id"].isna().all()
    assert last["ts"].iloc[0] == bank["events"]["ts"].max() + pd.Timedelta(seconds=90)
    body = pd.concat([pd.read_parquet(f) for f in files[:-1]], ignore_index=True)
    assert len(body) == len(bank["events"])
    assert body["ts"].is_monotonic_increasing
    mtimes = [f.stat().st_mtime for f in files]
    assert mtimes == sorted(mtimes) and len(set(mtimes)) == len(mtimes)


def test_state_round_trip_per_customer_equals_online(bank: dict) -> None:
    """What the Spark state function does (restore, feed, store per customer and chunk) gives
    the online evaluator's detections: the pickled state loses nothing."""
    rules = bank["rules"]
    events = bank["events"]
    customers = events["customer_id"].dropna().unique()[:60]
    sample = events[events["customer_id"].isin(customers)]
    fingerprint = rules_fingerprint(rules)
    det = OnlineDetector(rules)
    blobs: dict[str, bytes] = {}
    found = []
    for _, chunk in sample.groupby(sample["ts"].dt.floor("3D")):
        for customer, part in chunk.groupby("customer_id"):
            det = OnlineDetector(rules)
            if customer in blobs:
                load_state(det, blobs[customer], fingerprint)
            found += det.process_many(events_from_frame(part, order="time"))
            blobs[customer] = dump_state(det, fingerprint)
    end = sample["ts"].max()
    for blob in blobs.values():
        det = OnlineDetector(rules)
        load_state(det, blob, fingerprint)
        found += det.tick(end)
    expected = detect_online(sample, rules, until=end)
    assert sorted(d.key() for d in found) == sorted(d.key() for d in expected)
    assert expected


def test_state_from_other_rules_is_refused(bank: dict) -> None:
    rules = bank["rules"]
    det = OnlineDetector(rules)
    blob = dump_state(det, rules_fingerprint(rules))
    with pytest.raises(ValueError, match="other rules"):
        load_state(det, blob, rules_fingerprint(rules[:-1]))


@pytest.mark.slow
@pytest.mark.parametrize("by", [None, "life_stage"])
def test_funnels_on_spark_equal_embedded(spark, small_bank: Settings, bank: dict, by) -> None:
    """Every rule's step funnel on Spark equals the embedded report (what ``detect`` writes as
    ``rule_funnels``; by segment too): counts, conversions, median gaps within 1e-9."""
    from src.features.detection import funnel_report

    customers = small_bank.catalog.read("customers", columns=["customer_id", "life_stage"])
    expected = pd.concat(
        [
            funnel_report(bank["events"], r, customers, by=by, until=bank["as_of"]).assign(
                rule=r.name
            )
            for r in bank["rules"]
        ],
        ignore_index=True,
    )
    events = spark.read.parquet(str(bank["path"]))
    got = funnel_report_spark(
        events,
        bank["rules"],
        until=bank["as_of"],
        customers=spark.createDataFrame(customers) if by else None,
        by=by,
        buckets=5,
    )
    assert expected["customers"].sum() > 0 and expected["median_seconds_from_prev"].notna().any()
    assert set(expected["rule"]) == {r.name for r in bank["rules"]}
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, atol=0.0)


def test_kafka_options_are_checked_before_spark_starts() -> None:
    from src.features.detection.spark_stream import kafka_options

    assert kafka_options("b:9092", "events", '{"events": {"0": 5}}')["startingOffsets"] == (
        '{"events": {"0": 5}}'
    )
    with pytest.raises(ValueError, match="--kafka-starting-offsets"):
        kafka_options("b:9092", "events", "yesterday")
    with pytest.raises(ValueError, match="--kafka-bootstrap"):
        kafka_options(" ", "events")


@pytest.mark.slow
def test_kafka_without_the_connector_names_the_package(spark, tmp_path: Path) -> None:
    """pyspark ships no Kafka connector (and there is no broker here): the Kafka source fails
    at once with the package to add, from the function and from the CLI (exit 1)."""
    from typer.testing import CliRunner

    from src.cli import app
    from src.features.detection.spark_stream import KafkaConnectorMissing, read_kafka_events

    package = f"spark-sql-kafka-0-10_2.13:{spark.version}"
    with pytest.raises(KafkaConnectorMissing, match=package):
        read_kafka_events(spark, "127.0.0.1:9", "events", "earliest")
    args = ["--source", "events", "--kafka-bootstrap", "127.0.0.1:9"]
    args += ["--checkpoint", str(tmp_path / "ck"), "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(app, ["detect-stream", *args])
    assert result.exit_code == 1 and package in result.output, result.output
    assert not (tmp_path / "out").exists()
