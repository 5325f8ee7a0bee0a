"""One catalog of named tables: every reader asks it where a table lives, none builds a path.

Layers, in the order data flows through them (all under the data directory):

* ``raw``: what a bank hands over (or ``nextoffer ingest`` / the simulator writes), Parquet or
  CSV. Only validation reads it (:func:`src.data.loaders.validate_raw`).
* ``validated``: the accepted rows of each contract table, typed, as Parquet, written by
  ``nextoffer validate`` with a manifest. Everything downstream reads source tables from here,
  so a row the contract rejected can never reach a view, a model or the endpoint.
* ``rejects``: rows refused in quarantine mode, with their reasons.
* ``features``: derived tables (identity map, stitched events, customer views, detections, ...),
  some stamped with the ``as_of`` date they were computed for.

Small and typed on purpose (Kedro's idea of a data catalog, without the framework): a dataset
is a name, a layer and a file name pattern.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import duckdb
    import pandas as pd

Layer = Literal["raw", "validated", "rejects", "features"]

#: The contract's tables (``src.data.schemas.TABLES``), in dependency order.
SOURCE_TABLES: tuple[str, ...] = (
    "customers",
    "holdings",
    "clickstream",
    "transactions",
    "offers",
    "exposures",
)
RAW_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")  # preference order when both exist
MANIFEST = "_manifest.json"


@dataclass(frozen=True)
class Dataset:
    """A named table: its layer and file name (``{as_of}`` is filled with the as_of stamp)."""

    name: str
    layer: Layer
    filename: str
    description: str

    @property
    def dated(self) -> bool:
        return "{as_of}" in self.filename


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        *(
            Dataset(t, "validated", f"{t}.parquet", f"accepted rows of the contract's {t}")
            for t in SOURCE_TABLES
        ),
        Dataset("identity_map", "features", "identity_map.parquet", "device/cookie -> customer"),
        Dataset("session_map", "features", "session_map.parquet", "session -> customer"),
        Dataset(
            "stitched_events", "features", "stitched_events.parquet", "clicks + txns per customer"
        ),
        Dataset(
            "customer_view",
            "features",
            "customer_view_{as_of}.parquet",
            "one point-in-time row per customer",
        ),
        Dataset("detections", "features", "detections_{as_of}.parquet", "rule matches, timeouts"),
        Dataset("rule_funnels", "features", "rule_funnels_{as_of}.parquet", "step funnel per rule"),
        Dataset("rule_features", "features", "rule_features_{as_of}.parquet", "rule features"),
        Dataset(
            "scores", "features", "scores_{as_of}.parquet", "propensity per customer x product"
        ),
        Dataset("cvr_scores", "features", "cvr_scores_{as_of}.parquet", "CVR per customer x offer"),
        Dataset(
            "feature_table",
            "features",
            "feature_table.parquet",
            "customer x as_of: view features and the labels after as_of",
        ),
    )
}


class TableNotValidated(FileNotFoundError):
    """A reader asked for a source table that ``nextoffer validate`` has not written."""


def as_of_stamp(as_of: datetime | date | str | pd.Timestamp) -> str:
    """``YYYY-MM-DD`` for a midnight, else ``YYYY-MM-DDTHHMMSS``: the stamp in file names."""
    import pandas as pd

    ts = pd.Timestamp(as_of)
    return f"{ts:%Y-%m-%d}" if ts == ts.normalize() else f"{ts:%Y-%m-%dT%H%M%S}"


@dataclass(frozen=True)
class Catalog:
    """Where every named table of one data directory lives; nothing is read on construction."""

    data_dir: Path

    @classmethod
    def at(cls, data_dir: Path | str) -> Catalog:
        return cls(Path(data_dir))

    # -- layers ---------------------------------------------------------------------------
    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def validated_dir(self) -> Path:
        return self.data_dir / "validated"

    @property
    def rejects_dir(self) -> Path:
        return self.data_dir / "rejects"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    def layer_dir(self, layer: Layer) -> Path:
        return {
            "raw": self.raw_dir,
            "validated": self.validated_dir,
            "rejects": self.rejects_dir,
            "features": self.features_dir,
        }[layer]

    # -- paths ----------------------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        try:
            return DATASETS[name]
        except KeyError:
            raise KeyError(
                f"no dataset {name!r} in the catalog; known: {sorted(DATASETS)}"
            ) from None

    def path(self, name: str, as_of: datetime | date | str | pd.Timestamp | None = None) -> Path:
        """The file of dataset ``name`` (for dated ones, the one for ``as_of``)."""
        ds = self.dataset(name)
        if ds.dated:
            if as_of is None:
                raise ValueError(f"dataset {name!r} is stamped by as_of: pass as_of")
            filename = ds.filename.format(as_of=as_of_stamp(as_of))
        else:
            filename = ds.filename
        return self.layer_dir(ds.layer) / filename

    def latest(self, name: str) -> Path | None:
        """The newest file of a dated dataset (by its as_of stamp), or None."""
        ds = self.dataset(name)
        found = sorted(self.layer_dir(ds.layer).glob(ds.filename.format(as_of="*")))
        return found[-1] if found else None

    def raw_file(self, table: str) -> Path:
        """The raw export of ``table`` (Parquet preferred over CSV); only validation reads it."""
        for suffix in RAW_SUFFIXES:
            path = self.raw_dir / f"{table}{suffix}"
            if path.exists():
                return path
        raise FileNotFoundError(
            f"raw table {table!r} not found in {self.raw_dir} (looked for "
            + ", ".join(f"{table}{s}" for s in RAW_SUFFIXES)
            + ")"
        )

    def source(self, table: str) -> Path:
        """A validated source table's file; a clear error if validation has not written it."""
        path = self.path(table)
        if self.dataset(table).layer != "validated":
            raise ValueError(f"{table!r} is not a source table of the contract")
        if not path.exists():
            raise TableNotValidated(
                f"validated table {table!r} not found at {path}: run `nextoffer validate` "
                f"(raw exports are read only through the data contract)"
            )
        return path

    # -- reading --------------------------------------------------------------------------
    def read(
        self,
        name: str,
        as_of: datetime | date | str | pd.Timestamp | None = None,
        columns: Sequence[str] | None = None,
        filters: Any = None,
    ) -> pd.DataFrame:
        """A dataset as a DataFrame (source tables from the validated layer)."""
        import pandas as pd

        ds = self.dataset(name)
        path = self.source(name) if ds.layer == "validated" else self.path(name, as_of)
        return pd.read_parquet(
            path, columns=list(columns) if columns is not None else None, filters=filters
        )

    def connect(
        self,
        tables: Iterable[str] = SOURCE_TABLES,
        con: duckdb.DuckDBPyConnection | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one temp view per validated source table, named after it."""
        import duckdb

        if con is None:
            con = duckdb.connect()
            # library code: no terminal progress output (inside Jupyter without ipywidgets it's off)
            with contextlib.suppress(duckdb.InvalidInputException):
                con.execute("SET enable_progress_bar = false")
        for table in tables:
            quoted = "'" + str(self.source(table)).replace("'", "''") + "'"
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW {table} AS SELECT * FROM read_parquet({quoted})"
            )
        return con

    def manifest(self) -> dict[str, Any]:
        """What the last ``validate`` wrote: per table its source, accepted and rejected rows."""
        path = self.validated_dir / MANIFEST
        if not path.exists():
            raise TableNotValidated(f"no validation manifest at {path}: run `nextoffer validate`")
        result: dict[str, Any] = json.loads(path.read_text())
        return result
