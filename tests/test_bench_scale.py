"""The scale benchmark's bookkeeping: a capped engine gets a projection, never a measurement."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from benchmarks.bench_scale import add_projections, notes, parse_cap


def _points() -> list[dict[str, Any]]:
    def measured(seconds: float, events: int) -> dict[str, Any]:
        return {
            "seconds": seconds,
            "events_per_s": round(events / seconds),
            "peak_rss_gb": 1.0,
            "cpu_s": 2 * seconds,
        }

    return [
        {
            "customers": 10,
            "days": 30,
            "events": 1_000,
            "duckdb": measured(1.0, 1_000),
            "spark": measured(100.0, 1_000),
        },
        {
            "customers": 100,
            "days": 30,
            "events": 11_000,
            "duckdb": measured(5.0, 11_000),
            "spark": measured(200.0, 11_000),
        },
        {
            "customers": 1_000,
            "days": 30,
            "events": 111_000,
            "duckdb": {**measured(40.0, 111_000), "view_rows": 1_000, "memory_limit": "9.3 GiB"},
            "spark": {"not_run": "above the spark cap of 100 customers"},
        },
    ]


def test_capped_engine_gets_a_labelled_projection_not_seconds() -> None:
    points = _points()
    add_projections(points, ("duckdb", "spark"))
    spark = points[-1]["spark"]
    assert "seconds" not in spark  # a projection never poses as a measurement
    # the line through (1k events, 100 s) and (11k, 200 s): 0.01 s per event -> 1,200 s at 111k
    assert spark["projected"]["seconds"] == 1_200
    assert spark["projected"]["method"].startswith("NOT MEASURED")
    assert all("projected" not in p["duckdb"] for p in points)  # measured points stay as they are
    text = notes({"points": points}, {"engines": ["duckdb", "spark"], "machine_memory_gb": 23.5})
    assert "PROJECTED ~1,200 s" in text[2] and "(a projection)" in text[2]
    assert "1,000-customer view (1,000 rows)" in text[-1]


def test_parse_cap_names_the_engine() -> None:
    assert parse_cap("spark=100000") == ("spark", 100_000)
    with pytest.raises(argparse.ArgumentTypeError, match="ENGINE=CUSTOMERS"):
        parse_cap("flink=10")
