r"""Scheduled retraining: run the training notebooks with papermill, keep what they did.

Each notebook runs with ``data_dir``, ``as_of`` (plus its own parameters) and writes a small
JSON with its MLflow run id (``run_info_path``) — no scrapbook needed. The executed notebooks
stay under ``reports/<as_of>/`` and are logged as artifacts of their run, so the run shows
the code, outputs and plots that produced the model. A failing notebook stops the sequence
with :class:`RetrainError`: one line with the step and the reason (the failing cell's exception
type and message, no traceback), then the executed notebook to read on its own line; the CLI
prints it and exits 1. Before any notebook runs, :class:`StaleDataError` refuses an ``as_of``
more than ``models.max_staleness_days`` after the last event in the validated tables (a feed
that stopped must not turn into a silent retrain on old data). Suggested cron line (nightly at
02:30, for the data up to today; ``mkdir -p`` so the log has a folder on a fresh deploy)::

    30 2 * * * cd /opt/nextoffer && mkdir -p reports && .venv/bin/nextoffer retrain --as-of "$(date +\%F)" >> reports/retrain.log 2>&1
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


def failure_reason(cause: BaseException) -> str:
    """One line: the failing cell's exception type and message (papermill's
    ``PapermillExecutionError`` carries them as ``ename``/``evalue``; its ``str`` is the whole
    traceback), else the exception's own type and first line."""
    ename = getattr(cause, "ename", None)
    evalue = getattr(cause, "evalue", None)
    if ename is None:
        ename, evalue = type(cause).__name__, str(cause)
    lines = [line.strip() for line in str(evalue or "").splitlines() if line.strip()]
    message = " ".join(lines)
    return f"{ename}: {message}" if message else str(ename)


class RetrainError(RuntimeError):
    """A retraining step failed; ``step`` names it, ``notebook`` is the executed copy to read,
    ``reason`` is the one-line cause. ``str()``: the reason line, then the notebook line."""

    def __init__(self, step: str, notebook: Path, cause: BaseException) -> None:
        self.step, self.notebook, self.cause = step, notebook, cause
        self.reason = failure_reason(cause)
        super().__init__(
            f"retrain step {step!r} failed: {self.reason}\nexecuted notebook: {notebook}"
        )


class StaleDataError(ValueError):
    """``as_of`` is too far past the last event: the data feed looks stopped."""

    def __init__(self, as_of: pd.Timestamp, last_event: pd.Timestamp, max_days: int) -> None:
        self.as_of, self.last_event, self.max_days = as_of, last_event, max_days
        days = (as_of.normalize() - last_event.normalize()).days
        super().__init__(
            f"stale data: --as-of {as_of:%Y-%m-%d} is {days} days after the last event "
            f"({last_event:%Y-%m-%d}); at most {max_days} allowed "
            "(models.max_staleness_days / --max-staleness-days)"
        )


def check_staleness(
    settings: Settings, as_of: date | datetime | str, max_days: int | None = None
) -> pd.Timestamp:
    """The last event day in the validated tables; raise :class:`StaleDataError` if ``as_of``
    is more than ``max_days`` (default ``models.max_staleness_days``) after it."""
    from src.features.feature_table import data_period

    max_days = settings.models.max_staleness_days if max_days is None else max_days
    _, last = data_period(settings.catalog)
    stamp = pd.Timestamp(as_of).normalize()
    if (stamp - last).days > max_days:
        raise StaleDataError(stamp, last, max_days)
    return last


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
    max_staleness_days: int | None = None,
    progress: bool = False,
) -> RetrainResult:
    """Run ``notebooks/<name>.ipynb`` in order for ``as_of``; executed copies under
    ``<out_dir or reports_dir>/<as_of>/`` (created). ``parameters`` adds per-notebook
    parameters. Refuses stale data first (:func:`check_staleness`). ``progress`` shows one bar
    per step on stderr (cells executed, ``step i/n: <notebook>``): a step takes minutes on a
    large bank, and a scheduler's log shows where a run stopped."""
    import papermill

    check_staleness(settings, as_of, max_staleness_days)
    stamp = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    out = Path(out_dir or settings.resolve(settings.reports_dir)) / stamp
    out.mkdir(parents=True, exist_ok=True)
    source_dir = settings.root / "notebooks"
    steps = []
    for index, name in enumerate(notebooks, start=1):
        source = source_dir / f"{name}.ipynb"
        executed = out / f"{name}.ipynb"
        info_path = out / f"{name}.run.json"
        info_path.unlink(missing_ok=True)
        params = {
            "data_dir": str(settings.resolve(settings.data_dir)),
            "as_of": stamp,
            "run_info_path": str(info_path),
            "out_dir": str(out / name),
            "register": True,  # only retrain registers: the notebooks default to False
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
                progress_bar={"desc": f"retrain {index}/{len(notebooks)}: {name}"}
                if progress
                else False,
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
    # the one-line outcome from the registry (what the CLI prints); the notebook's own record
    # (a dict of the PromotionResult) stays under ``promotion_result``
    outcome = promotion_outcome(client, run_id)
    if outcome is not None:
        step.info["promotion_result"] = step.info.get("promotion")
        step.info["promotion"] = outcome


def promotion_outcome(client: Any, run_id: str) -> str | None:
    """``<model> v<version> -> promoted|kept_champion: <reason>`` for the version the run
    registered (its ``registered_version`` tag), or None when it registered none."""
    from src.models.registry import TAG_PREFIX

    run = client.get_run(run_id)
    version = run.data.tags.get("registered_version")
    if not version:
        return None
    for mv in client.search_model_versions(f"run_id = '{run_id}'"):
        if str(mv.version) == str(version):
            tags = client.get_model_version(mv.name, mv.version).tags or {}
            outcome = tags.get(TAG_PREFIX + "outcome", "?")
            reason = tags.get(TAG_PREFIX + "reason", "")
            return f"{mv.name} v{version} -> {outcome}: {reason}"
    return None
