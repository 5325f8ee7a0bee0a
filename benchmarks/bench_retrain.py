"""The data scientist's loop, timed: ``nextoffer retrain``, ``nextoffer monitor`` and every notebook.

On one simulated bank (the demo bank by default; ``--customers 100000`` for the large one):

- ``nextoffer retrain --as-of <day after the bank>`` as a subprocess (what cron runs): wall
  seconds, CPU seconds of the command and everything it started (the notebook kernels), and the
  per-step seconds it prints;
- ``nextoffer monitor --as-of <same day>`` on the champion that retrain just registered: wall,
  CPU, its verdict and exit code;
- (``--notebooks``) every notebook under papermill at its default parameters on the same bank:
  wall and CPU seconds, image outputs (the screenshot-free proof that plots render inline) and
  whether it stays under the 2-minute budget the issue sets.

Baseline in the same run: the 2-minute budget for notebooks, and monitor's cost relative to
retrain (monitoring must be cheap enough to run daily). CPU seconds are reported next to wall
seconds because the machine is shared: wall time moves with the load (recorded in the
envelope), CPU time much less.

    .venv/bin/python -m benchmarks.bench_retrain                      # demo bank + notebooks
    .venv/bin/python -m benchmarks.bench_retrain --customers 100000 --days 90 --no-notebooks
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, Report, bank_params, timed, write_report

NOTEBOOK_BUDGET_S = 120.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_command(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a command; wall and CPU seconds (its whole process tree), exit code, output tail."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
    return {
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args)),
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(_children_cpu() - cpu0, 1),
        "exit_code": done.returncode,
        "stdout_tail": done.stdout.strip().splitlines()[-8:],
        "stderr_tail": [] if done.returncode in (0, 3) else done.stderr.strip().splitlines()[-5:],
    }


def _bank(work: Path, customers: int, days: int, seed: int) -> Path:
    """Simulate and validate the bank under ``work/bank`` unless it is there already."""
    from src.pipeline import run_simulation, run_validation
    from src.settings import Settings

    data_dir = work / "bank"
    settings = Settings(data_dir=data_dir, sim={"customers": customers, "days": days, "seed": seed})
    if not (settings.validated_dir / "_manifest.json").exists():
        if not (settings.raw_dir / "clickstream.parquet").exists():
            run_simulation(settings, progress=False)
        run_validation(settings)
    return data_dir


def _image_count(path: Path) -> int:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def time_notebooks(data_dir: Path, out_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Every notebook at its defaults on ``data_dir`` (a kernel each): seconds and images."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernels inherit the MLflow store
    try:
        os.environ.pop("MPLBACKEND", None)
        for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
            executed = out_dir / source.name
            cpu0, t0 = _children_cpu(), time.perf_counter()
            error = None
            try:
                papermill.execute_notebook(
                    str(source),
                    str(executed),
                    parameters={"data_dir": str(data_dir)},
                    cwd=str(source.parent),
                    kernel_name="python3",
                    progress_bar=False,
                )
            except Exception as exc:  # a failing notebook is a result, not a crash
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
            wall = time.perf_counter() - t0
            results[source.stem] = {
                "wall_s": round(wall, 1),
                "cpu_s": round(_children_cpu() - cpu0, 1),
                "images": _image_count(executed) if executed.exists() else 0,
                "under_budget": wall < NOTEBOOK_BUDGET_S,
                "error": error,
            }
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return results


def run(
    work: Path,
    customers: int,
    days: int,
    seed: int,
    notebooks: bool = True,
) -> Report:
    work.mkdir(parents=True, exist_ok=True)
    data_dir = _bank(work, customers, days, seed)
    bank = bank_params(data_dir)
    as_of = datetime.fromisoformat(bank["start_date"]) + timedelta(days=bank["days"])
    stamp = f"{as_of:%Y-%m-%d}"
    store = work / f"mlflow-{int(time.time())}.db"  # a fresh registry: retrain registers v1
    env = {
        # no MPLBACKEND: the kernels' inline backend draws the images that are counted
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND")},
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
        "NEXTOFFER_REPORTS_DIR": str(work / "reports"),
    }
    cli = str(Path(sys.executable).parent / "nextoffer")
    retrain = _timed_command([cli, "retrain", "--as-of", stamp, "--data-dir", str(data_dir)], env)
    steps = {}
    for line in retrain["stdout_tail"]:
        parts = line.split()
        if len(parts) > 1 and parts[1].endswith("s") and parts[0][:2].isdigit():
            steps[parts[0]] = float(parts[1].rstrip("s"))
    retrain["steps_s"] = steps
    executed = work / "reports" / stamp
    retrain["images"] = {p.stem: _image_count(p) for p in sorted(executed.glob("*.ipynb"))}
    monitor = _timed_command([cli, "monitor", "--as-of", stamp, "--data-dir", str(data_dir)], env)
    monitor["verdict"] = next(
        (
            line.split(":")[1].split("—")[0].strip()
            for line in monitor["stdout_tail"]
            if line.startswith("monitor ")
        ),
        None,
    )
    results: dict[str, Any] = {
        "as_of": stamp,
        "retrain": retrain,
        "monitor": monitor,
        "monitor_over_retrain_wall": round(monitor["wall_s"] / max(retrain["wall_s"], 1e-9), 3),
    }
    notes = [
        f"nextoffer retrain on {bank['customers']:,} customers x {bank['days']} days: "
        f"{retrain['wall_s']:.0f} s wall, {retrain['cpu_s']:.0f} s CPU (exit "
        f"{retrain['exit_code']}); steps: " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.items()),
        f"nextoffer monitor: {monitor['wall_s']:.0f} s wall, {monitor['cpu_s']:.0f} s CPU, "
        f"verdict {monitor['verdict']} (exit {monitor['exit_code']}); "
        f"{results['monitor_over_retrain_wall']:.2f} x retrain's wall time",
    ]
    if notebooks:
        nbs = time_notebooks(data_dir, work / "notebooks", env)
        results["notebooks"] = nbs
        results["notebook_budget_s"] = NOTEBOOK_BUDGET_S
        notes.append(
            "notebooks at their defaults (wall s / CPU s / images): "
            + "; ".join(
                f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}/{v['images']}"
                + ("" if v["error"] is None else " FAILED")
                for k, v in nbs.items()
            )
        )
        over = [k for k, v in nbs.items() if not v["under_budget"]]
        notes.append(
            f"over the {NOTEBOOK_BUDGET_S:.0f} s budget (wall, on this run's load): "
            + (", ".join(over) if over else "none")
        )
    params = {"bank": bank, "notebooks": notebooks, "mlflow": "fresh SQLite store per run"}
    return Report(params, results, notes)


def main(argv: list[str] | None = None) -> None:
    from src.settings import Settings, SimSettings

    demo = SimSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=demo.customers)
    parser.add_argument("--days", type=int, default=demo.days)
    parser.add_argument("--seed", type=int, default=demo.seed)
    parser.add_argument("--no-notebooks", dest="notebooks", action="store_false")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument("--name", default=None, help="result name (default: retrain_<customers>)")
    args = parser.parse_args(argv)
    settings = Settings()
    work = ROOT / "benchmarks" / ".data" / f"retrain-{args.customers}x{args.days}-seed{args.seed}"
    report, seconds, load = timed(
        lambda: run(work, args.customers, args.days, args.seed, notebooks=args.notebooks)
    )
    out = args.out or settings.resolve(settings.benchmarks_dir)
    write_report(
        out, args.name or f"retrain_{args.customers}", report, seconds=seconds, load_at_start=load
    )


if __name__ == "__main__":
    main()
