"""MLflow plumbing: where runs go, what every run records, and the logged model format.

Embedded by default: tracking and registry in SQLite under ``mlruns/`` and artifacts under
``Settings().artifact_root`` (each experiment is created with that ``artifact_location``, as
a file URI — MLflow 3 no longer takes a bare ``./mlruns`` store). ``MLFLOW_TRACKING_URI``
points everything at a server instead; the server then decides where artifacts go.

The propensity model is logged as **one multi-output pyfunc**: input = raw feature rows (the
customer-view columns, as ``build_customer_view`` returns them), output = one column of
calibrated probabilities per product. One model, one version, one champion alias: serving
scores every product in one call and the products can never be out of step.

Every model is logged with the project's code (``code_paths=[<the src package>]``, see
:func:`project_code_paths`), so a registered model loads where the repository is not
importable (a serving container, a colleague's notebook). Why that and not a pure sklearn
Pipeline with the ``mlflow.sklearn`` flavour: the propensity model's input is the customer view
and its feature logic (``model_matrix``: closed vocabularies, derived per-product rates) is
project code a ColumnTransformer would have to duplicate and keep in step; the bandit is a VW
workspace that no sklearn flavour holds; and the baseline's log transform is a project function
that would be pickled by reference anyway. Shipping the code keeps one implementation for
training, serving and the logged model, for all three models (propensity, table, bandit).
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

# by name: ``mlflow.pyfunc`` is a LazyLoader attribute of ``mlflow`` that mypy cannot see
# through, so ``mlflow.pyfunc.PythonModel`` is no valid type there; the base class below loads
# the module on import either way.
from mlflow.pyfunc import PythonModel

from src.settings import Settings


def configure_mlflow(settings: Settings, experiment: str) -> str:
    """Point MLflow at the settings' tracking URI, ensure the experiment; its id."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if not uri.startswith(
        ("http://", "https://", "databricks")
    ):  # a local store: artifacts under mlruns/
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def code_version(root: Path | None = None) -> dict[str, str]:
    """Git commit and whether the tree had uncommitted changes ("unknown" outside git)."""
    root = root or Settings().root

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": commit,
        "git_dirty": "unknown" if commit == "unknown" else str(bool(dirty)).lower(),
    }


def serving_frame(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Raw rows in the logged signature's types: nullable ints become float (NaN for null),
    bools stay bool, strings stay strings — what a JSON request can carry."""
    out = rows[columns].copy()
    for c in columns:
        if isinstance(out[c].dtype, pd.Int64Dtype) or pd.api.types.is_integer_dtype(out[c]):
            out[c] = out[c].astype("float64")
        elif pd.api.types.is_string_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c]):
            out[c] = out[c].astype(object)
    return out.reset_index(drop=True)


class PropensityPyfunc(PythonModel):
    """Raw feature rows -> calibrated probability per product (one column each)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        rows = pd.DataFrame(model_input)
        return self.model.predict_proba(rows).reset_index(drop=True)


def log_pyfunc(
    model: Any,
    example_rows: pd.DataFrame,
    raw_columns: list[str],
    name: str = "model",
    wrapper: Callable[[Any], PythonModel] = PropensityPyfunc,
) -> str:
    """Log ``model`` (has ``predict_proba(rows) -> frame``) with signature and input example
    in the active run; its model URI."""
    from mlflow.models import infer_signature

    example = serving_frame(example_rows.head(5), raw_columns)
    output = model.predict_proba(example)
    products = getattr(model, "products", None)
    if isinstance(products, dict):  # which calibration each product got (a fallback says why)
        mlflow.log_params(
            {
                f"{p}.calibration": m.calibration
                for p, m in products.items()
                if hasattr(m, "calibration")
            }
        )
    with quiet_cloudpickle_notice():
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=wrapper(model),
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=_requirements(),
            code_paths=project_code_paths(),
        )
    return info.model_uri


CLOUDPICKLE_NOTICE = "Passing a Python object as `python_model` causes it to be serialized"


class _DropCloudpickleNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(CLOUDPICKLE_NOTICE)


@contextmanager
def quiet_cloudpickle_notice() -> Iterator[None]:
    """Drop exactly MLflow's "Passing a Python object as `python_model` ... CloudPickle" warning
    while logging our pyfuncs; every other ``mlflow.pyfunc`` message still shows.

    Why silence it rather than switch to models-from-code: the pickle holds only this project's
    own objects (the wrapper and the fitted model), and the code that unpickles them travels with
    the model in ``code_paths`` (see :func:`project_code_paths`); loading a registered model is
    loading our own code either way. Models-from-code would need every model rebuilt from
    artifacts in ``load_context`` — a larger change for the same trust boundary.
    """
    logger = logging.getLogger("mlflow.pyfunc")
    drop = _DropCloudpickleNotice()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def project_code_paths() -> list[str]:
    """The ``src`` package directory, for ``log_model(code_paths=...)``.

    MLflow copies it into the model's ``code/`` directory (without ``__pycache__``) and, on
    ``load_model``, puts that directory first on ``sys.path`` before unpickling, so the pickled
    ``src.*`` classes resolve in a process without the repository. A process that has already
    imported ``src`` (training, the endpoint) keeps its own copy: Python resolves submodules
    through the imported package, not through ``sys.path``.
    """
    import src

    return [str(Path(src.__file__).resolve().parent)]


PROJECT_REQUIREMENTS = ("pydantic", "pydantic-settings", "pandera", "duckdb")
"""Imported by the logged ``src`` modules when a model loads (measured: settings, the data
schemas, the feature code), beside the model's own libraries."""


def pinned_requirements(*packages: str) -> list[str]:
    """``package==installed version`` for each: what a logged pyfunc needs to load (the
    project's code travels with the model, see :func:`project_code_paths`)."""
    import importlib.metadata as md

    return [
        f"{p}=={md.version(p)}"
        for p in ("mlflow", "pandas", "numpy", "cloudpickle", *PROJECT_REQUIREMENTS, *packages)
    ]


def _requirements() -> list[str]:
    return pinned_requirements("lightgbm", "scikit-learn")


def log_figures(
    figures: dict[str, Any], artifact_dir: str = "plots", local_dir: Path | None = None
) -> None:
    """Save matplotlib figures as PNG (to ``local_dir`` too, if given) and log them."""
    for name, fig in figures.items():
        mlflow.log_figure(fig, f"{artifact_dir}/{name}.png")
        if local_dir is not None:
            local_dir.mkdir(parents=True, exist_ok=True)
            fig.savefig(local_dir / f"{name}.png", dpi=110, bbox_inches="tight")


def log_metrics_frame(metrics: pd.DataFrame, prefix: str = "") -> None:
    """A (product, scorer) x metric frame as flat MLflow metrics ``<prefix><product>.<scorer>.<metric>``."""
    flat = {}
    for (product, scorer), row in metrics.iterrows():
        for metric, value in row.items():
            if value is not None and np.isfinite(value):
                flat[f"{prefix}{product}.{scorer}.{metric}"] = float(value)
    mlflow.log_metrics(flat)
