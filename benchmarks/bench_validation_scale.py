"""Validation at scale: peak RSS and time of ``validate_raw`` whole-table vs chunked, same run.

Whole-table validation holds every raw table in pandas (4.3 GiB at 100k customers x 30 days,
~43 GiB projected at 1M); chunked validation (``Settings.validation_chunk_rows``) is bounded by
the chunk. Each run is a fresh spawned process reading an existing bank's ``raw/`` (never
modified: a temp data dir links to it) and writing validated tables to a temp dir under /tmp,
deleted afterwards. Whole-table runs are skipped above ``--whole-max-customers`` (they would not
fit the shared machine).

    python -m benchmarks.bench_validation_scale \
        --bank benchmarks/.data/100000x30-seed7 --bank benchmarks/.data/1000000x30-seed7
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_scale import _in_child
from benchmarks.common import Report, load_average, write_report

TIMEOUT_S = 3600.0


def _validate_child(raw_dir: str, chunk_rows: int | None, memory_limit: str, queue: Any) -> None:
    from src.data.catalog import Catalog
    from src.data.loaders import validate_raw

    work = Path(tempfile.mkdtemp(prefix="nextoffer-validate-bench-", dir="/tmp"))
    try:
        (work / "raw").symlink_to(Path(raw_dir).resolve())
        started = time.perf_counter()
        report = validate_raw(Catalog(work), chunk_rows=chunk_rows, memory_limit=memory_limit)
        seconds = time.perf_counter() - started
        out_bytes = sum(f.stat().st_size for f in (work / "validated").iterdir())
        queue.put(
            {
                "validate_s": round(seconds, 1),
                "accepted": report["accepted"],
                "rejected": report["rejected"],
                "validated_gb": round(out_bytes / 2**30, 2),
            }
        )
    except Exception as exc:  # reported, not raised: the parent records it
        queue.put({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bank(path: Path) -> dict[str, Any]:
    """The bank as its simulation recorded it (``truth/meta.json``)."""
    meta = json.loads((path / "truth" / "meta.json").read_text())
    return {
        "dir": str(path),
        "customers": int(meta["customers"]),
        "days": int(meta["days"]),
        "seed": meta["config"]["seed"],
    }


def run(banks: list[Path], chunk_rows: int, memory_limit: str, whole_max: int) -> Report:
    results: dict[str, Any] = {}
    params: dict[str, Any] = {
        "chunk_rows": chunk_rows,
        "duckdb_memory_limit": memory_limit,
        "whole_max_customers": whole_max,
        "banks": [],
    }
    notes: list[str] = []
    for bank in banks:
        info = _bank(bank)
        raw_bytes = sum(f.stat().st_size for f in (bank / "raw").iterdir())
        info["raw_gb"] = round(raw_bytes / 2**30, 2)
        params["banks"].append(info)
        key = f"{info.get('customers')}x{info.get('days')}"
        point: dict[str, Any] = {}
        if int(info.get("customers", 0)) <= whole_max:
            point["whole"] = _in_child(
                _validate_child, str(bank / "raw"), None, memory_limit, timeout_s=TIMEOUT_S
            )
        else:
            point["whole"] = {"skipped": f"more than {whole_max} customers: would not fit"}
        point["chunked"] = _in_child(
            _validate_child, str(bank / "raw"), chunk_rows, memory_limit, timeout_s=TIMEOUT_S
        )
        results[key] = point
        w, c = point["whole"], point["chunked"]
        if "peak_rss_gb" in w and "peak_rss_gb" in c and "error" not in w and "error" not in c:
            same = w["accepted"] == c["accepted"] and w["rejected"] == c["rejected"]
            notes.append(
                f"{key}: whole tables {w['wall_s']} s, {w['peak_rss_gb']} GiB peak; chunked "
                f"({chunk_rows:,} rows) {c['wall_s']} s, {c['peak_rss_gb']} GiB peak "
                f"(x{w['peak_rss_gb'] / max(c['peak_rss_gb'], 0.01):.1f} less memory); "
                f"same counts: {same}"
            )
        elif "error" not in c:
            notes.append(
                f"{key}: chunked ({chunk_rows:,} rows) {c['wall_s']} s, {c['peak_rss_gb']} GiB "
                f"peak; whole tables not run ({w.get('skipped', w.get('error'))})"
            )
        else:
            notes.append(f"{key}: chunked run failed: {c['error']}")
    return Report(params=params, results=results, notes=notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, action="append", required=True)
    parser.add_argument("--chunk-rows", type=int, default=None, help="default: the settings'")
    parser.add_argument("--memory-limit", default=None, help="default: the settings'")
    parser.add_argument("--whole-max-customers", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="validation_scale")
    args = parser.parse_args(argv)
    from src.settings import Settings

    settings = Settings()
    chunk_rows = args.chunk_rows or settings.validation_chunk_rows or 250_000
    memory_limit = args.memory_limit or settings.validation_memory_limit
    load = load_average()
    started = time.perf_counter()
    report = run(args.bank, chunk_rows, memory_limit, args.whole_max_customers)
    write_report(args.out, args.name, report, time.perf_counter() - started, load)


if __name__ == "__main__":
    main()
