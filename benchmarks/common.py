"""What every benchmark writes: one JSON envelope, and parameters read off the things it ran on.

A result file is ``{"benchmark", "commit", "dirty", "run_at", "command", "seconds", "machine",
"params", "results", "notes"}``:

- ``machine``: CPU, cores, Python, the 1-minute load at the start and the end of the run and
  ``python_loop_5m_s`` (a plain-Python yardstick: the same VM has run 2.3x slower on one day
  than on another, so compare runs with the same yardstick);
- ``params``: what the benchmark actually ran with, read from the objects it used (the simulated
  bank's own ``truth/meta.json``, the configs it built), never defaults restated; ``"bank":
  "no bank"`` where it used none;
- ``results``: the measurements;
- ``notes``: sentences computed from ``results`` (f-strings over the measured numbers).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from src.data.catalog import Catalog

ROOT = Path(__file__).resolve().parent.parent
NO_BANK = "no bank"


@dataclass
class Report:
    """What one benchmark hands to :func:`write_report`."""

    params: dict[str, Any]
    results: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def python_speed_probe(iterations: int = 5_000_000) -> float:
    """Seconds for a plain Python loop, best of three: the yardstick of the machine's speed."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - start)
    return round(best, 3)


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=False, cwd=ROOT
        ).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info(load_at_start: float | None = None) -> dict[str, Any]:
    """Where the figures come from, so results from different machines are not compared blindly."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m_start": load_at_start,
        "load_average_1m_end": load_average(),
        "python_loop_5m_s": python_speed_probe(),
    }


def bank_params(data_dir: Path) -> dict[str, Any]:
    """The simulated bank under ``data_dir`` (``raw/`` and ``truth/``), as its simulation recorded
    it in ``truth/meta.json``: whatever the caller asked for, this is what the data is."""
    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "truth" / "meta.json").read_text())
    config = meta["config"]
    return {
        "customers": int(meta["customers"]),
        "days": int(meta["days"]),
        "seed": config["seed"],
        "start_date": config["start_date"],
        "dir": _display_path(data_dir),
    }


def _display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _command() -> str:
    """How this process was started, as ``python -m <module> <args>`` where it was a module."""
    entry = Path(sys.argv[0]).resolve()
    if not entry.is_file():  # python -c, an interactive session
        return shlex.join(["python", *sys.argv])
    try:
        head = ["python", "-m", ".".join(entry.relative_to(ROOT).with_suffix("").parts)]
    except ValueError:
        head = ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def timed(step: Callable[[], Report]) -> tuple[Report, float, float]:
    """Run ``step``; its report, wall seconds and the load average when it started."""
    load = load_average()
    started = time.perf_counter()
    report = step()
    return report, time.perf_counter() - started, load


def write_report(
    out_dir: Path,
    name: str,
    report: Report,
    seconds: float | None = None,
    load_at_start: float | None = None,
) -> Path:
    """Write ``<out_dir>/<name>.json`` in the envelope every benchmark shares; print a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {
        "benchmark": name,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "run_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": _command(),
        "seconds": None if seconds is None else round(seconds, 1),
        "machine": machine_info(load_at_start),
        "params": report.params,
        "results": report.results,
        "notes": report.notes,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    for note in report.notes:
        print(f"[bench] {name}: {note}")
    print(f"[bench] wrote {path}")
    return path


def read_report(path: Path) -> dict[str, Any]:
    """A result file as a dict with ``params``, ``results`` and ``notes``, whatever its vintage
    (files written before the shared envelope keep their measurements under ``result``)."""
    doc = json.loads(Path(path).read_text())
    if "results" not in doc:
        doc["results"] = doc.get("result", {})
        doc.setdefault("notes", [])
        machine = doc.get("machine", {})
        doc.setdefault("commit", machine.get("commit"))
        doc.setdefault("run_at", machine.get("run_at"))
    return doc


def trusted_catalog(data_dir: Path) -> Catalog:
    """The simulated bank under ``data_dir`` with its raw tables published as the validated layer
    (hard links, no copy), for benchmarks of what comes after validation.

    The benchmark banks are the simulator's own output (tests validate smaller banks of it
    against the contract), and validating 46M clickstream rows in pandas would not fit in this
    machine's memory next to the benchmark. Production reads go through ``nextoffer validate``;
    the manifest says these tables were not re-validated.
    """
    from src.data.catalog import MANIFEST, SOURCE_TABLES, Catalog

    catalog = Catalog(Path(data_dir))
    catalog.validated_dir.mkdir(parents=True, exist_ok=True)
    for table in SOURCE_TABLES:
        raw, published = catalog.raw_dir / f"{table}.parquet", catalog.path(table)
        if not raw.exists():
            continue
        if published.exists() and published.stat().st_ino == raw.stat().st_ino:
            continue
        published.unlink(missing_ok=True)
        os.link(raw, published)
    manifest = {"trusted": "benchmark: the simulator's raw tables, not re-validated"}
    (catalog.validated_dir / MANIFEST).write_text(json.dumps(manifest) + "\n")
    return catalog
