r"""Scheduled retraining: run the training notebooks with papermill, keep what they did.

Each notebook runs with ``data_dir``, ``as_of`` (plus its own parameters) and writes a small
JSON with its MLflow run id (``run_info_path``) — no scrapbook needed. The executed notebooks
stay under ``reports/<as_of>/`` and are logged as artifacts of their run, so the run shows
the code, outputs and plots that produced the model. A failing notebook stops the sequence
with :class:`RetrainError` naming the step and the executed notebook to read; the CLI turns
it into exit status 1. Suggested cron line (nightly at 02:30, for the data up to today)::

    30 2 * * * cd /opt/nextoffer && .venv/bin/nextoffer retrain --as-of "$(date +\%F)" >> reports/retrain.log 2>&1
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from src.settings import Settings

DEFAULT_NOTEBOOKS: tuple[str, ...] = ("10_train_propensity", "11_train_cvr")


class RetrainError(RuntimeError):
    """A retraining step failed; ``step`` names it, ``notebook`` is the executed copy to read."""

    def __init__(self, step: str, notebook: Path, cause: BaseException) -> None:
        self.step, self.notebook, self.cause = step, notebook, cause
        super().__init__(
            f"retrain step {step!r} failed ({type(cause).__name__}: {str(cause).strip()[:500]}); "
            f"executed notebook: {notebook}"
        )


@dataclass
class StepResult:
    name: str
    notebook: Path
    seconds: float
    run_id: str | None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RetrainResult:
    as_of: str
    out_dir: Path
    steps: list[StepResult]

    @property
    def run_ids(self) -> dict[str, str | None]:
        return {s.name: s.run_id for s in self.steps}


def retrain(
    settings: Settings,
    as_of: date | datetime | str,
    notebooks: Sequence[str] = DEFAULT_NOTEBOOKS,
    out_dir: Path | None = None,
    parameters: dict[str, dict[str, Any]] | None = None,
    kernel_name: str = "python3",
    log_to_mlflow: bool = True,
) -> RetrainResult:
    """Run ``notebooks/<name>.ipynb`` in order for ``as_of``; executed copies under
    ``<out_dir or reports_dir>/<as_of>/``. ``parameters`` adds per-notebook parameters."""
    import papermill

    stamp = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    out = Path(out_dir or settings.resolve(settings.reports_dir)) / stamp
    out.mkdir(parents=True, exist_ok=True)
    source_dir = settings.root / "notebooks"
    steps = []
    for name in notebooks:
        source = source_dir / f"{name}.ipynb"
        executed = out / f"{name}.ipynb"
        info_path = out / f"{name}.run.json"
        info_path.unlink(missing_ok=True)
        params = {
            "data_dir": str(settings.resolve(settings.data_dir)),
            "as_of": stamp,
            "run_info_path": str(info_path),
            "out_dir": str(out / name),
        }
        params.update((parameters or {}).get(name, {}))
        started = time.perf_counter()
        try:
            if not source.exists():
                raise FileNotFoundError(source)
            import os
            import tempfile

            from traitlets.config import Config

            # IPC, not TCP, to the kernel: over TCP ipykernel warns on stderr on every run that
            # the channel is unencrypted. Sockets under the temp dir, removed at kernel shutdown.
            ipc = Path(tempfile.gettempdir()) / f"nextoffer-kernel-{os.getpid()}"
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=params,
                cwd=str(source_dir),
                kernel_name=kernel_name,
                progress_bar=False,
                config=Config({"KernelManager": {"transport": "ipc", "ip": str(ipc)}}),
            )
        except (
            Exception
        ) as exc:  # papermill raises PapermillExecutionError with the cell's traceback
            raise RetrainError(name, executed, exc) from exc
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        step = StepResult(name, executed, time.perf_counter() - started, info.get("run_id"), info)
        if log_to_mlflow and step.run_id:
            _attach(settings, step)
        steps.append(step)
    return RetrainResult(stamp, out, steps)


def _attach(settings: Settings, step: StepResult) -> None:
    """Log the executed notebook (and its JSON) to the run it created."""
    import mlflow

    run_id = step.run_id
    if run_id is None:
        raise ValueError(f"step {step.name!r} created no MLflow run to attach its notebook to")
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri)
    client.log_artifact(run_id, str(step.notebook), "notebook")
    client.set_tag(run_id, "retrain.notebook", step.notebook.name)
