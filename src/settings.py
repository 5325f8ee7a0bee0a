"""One typed settings object for the whole project.

Every path is resolved against the project root so the CLI, notebooks (which run with
``notebooks/`` as working directory) and tests all agree on where data lives.
Override any field with an environment variable ``NEXTOFFER_<FIELD>``.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.data.catalog import Catalog

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Paths and defaults; nothing is read or created when this is constructed."""

    model_config = SettingsConfigDict(env_prefix="NEXTOFFER_", extra="ignore")

    root: Path = Field(default=PACKAGE_ROOT, description="Project root; other paths hang off it.")
    data_dir: Path = Path("data")
    mlruns_dir: Path = Path("mlruns")
    reports_dir: Path = Path("reports")
    benchmarks_dir: Path = Path("benchmarks/results")

    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="A tracking server; default: SQLite under mlruns/ (embedded).",
    )

    seed: int = 7
    customers: int = 2_000
    days: int = 60
    start_date: date = date(2026, 1, 1)

    def resolve(self, path: Path) -> Path:
        """Absolute path: relative paths are taken from the project root."""
        return path if path.is_absolute() else self.root / path

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking + registry: ``MLFLOW_TRACKING_URI`` if set, else SQLite in mlruns/."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolve(self.mlruns_dir) / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where runs store artifacts when tracking is embedded: beside the SQLite store.

        MLflow 3 has no bare ./mlruns file store; keeping artifacts next to the database means a
        store pointed elsewhere (a test's temp dir) takes its artifacts with it.
        """
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        return self.resolve(self.mlruns_dir) / "artifacts"

    @property
    def catalog(self) -> Catalog:
        """The named tables under the data directory; every reader goes through it."""
        return Catalog(self.resolve(self.data_dir))

    @property
    def raw_dir(self) -> Path:
        """Observable raw tables, as a bank would hand them over (read only by validation)."""
        return self.catalog.raw_dir

    @property
    def validated_dir(self) -> Path:
        """Accepted rows of the contract's tables: what everything downstream reads."""
        return self.catalog.validated_dir

    @property
    def truth_dir(self) -> Path:
        """The simulator's hidden truth (latent needs, true probabilities); never a model input."""
        return self.resolve(self.data_dir) / "truth"

    @property
    def features_dir(self) -> Path:
        """Derived tables: identity map, customer views, feature tables."""
        return self.catalog.features_dir

    @property
    def rejects_dir(self) -> Path:
        """Rows refused by validation in quarantine mode, with the reason."""
        return self.catalog.rejects_dir
