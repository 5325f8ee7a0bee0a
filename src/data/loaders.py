"""Read raw tables (Parquet or CSV), validate them against the contract, explain bad input.

Everything downstream trusts ``src.data.schemas``; this module is the only door into it.
Bad input never passes silently: either the load fails with a :class:`RawDataError` that
names the table, column, check and offending rows, or — in quarantine mode — the failing
rows are written, with their reasons, to ``<quarantine_dir>/<table>.rejects.parquet`` and
the rest is returned validated.

Conventions
-----------
* **Row numbers** are 0-based positions of data rows in the source file, header excluded
  (CSV line number = row + 2). They are the index of the frame as read, before any row is
  removed; returned frames get a fresh ``RangeIndex``.
* **CSV** cells are read as text; an empty cell is null. Text (from CSV, or a text column in
  Parquet) is parsed cell by cell: timestamps as ISO 8601 naive local time (a UTC offset is
  rejected), booleans as ``true/false/t/f/yes/no/1/0`` (any case), integers only when whole.
  A cell that does not parse is a *type* failure of that cell, never a silent null.
* **Duplicate ids** (a ``unique`` column): every row sharing the duplicated value is rejected,
  because nothing in the file says which copy is right.
* **Table-level failures** (missing or unexpected column, a column that cannot be typed at
  all) cannot be quarantined row-wise and always raise.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq
from pandera.engines import pandas_engine

from src.data.catalog import MANIFEST, RAW_SUFFIXES, Catalog
from src.data.schemas import TABLES

__all__ = [
    "FAILURE_COLUMNS",
    "REFERENCES",
    "LoadResult",
    "RawDataError",
    "ReferenceProblem",
    "check_references",
    "find_table_file",
    "format_failures",
    "load_raw",
    "load_table",
    "load_table_result",
    "read_table_file",
    "validate_frame",
    "validate_raw",
    "write_table",
]

logger = logging.getLogger(__name__)

#: Columns of :attr:`RawDataError.failures` and :attr:`LoadResult.failures`.
FAILURE_COLUMNS: tuple[str, ...] = ("table", "column", "check", "row", "value", "record_id")

#: (table, column) -> (referenced table, referenced column). Nulls are not checked.
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("holdings", "customer_id", "customers", "customer_id"),
    ("transactions", "customer_id", "customers", "customer_id"),
    ("clickstream", "customer_id", "customers", "customer_id"),
    ("exposures", "customer_id", "customers", "customer_id"),
    ("exposures", "offer_id", "offers", "offer_id"),
)

SUFFIXES: tuple[str, ...] = RAW_SUFFIXES  # preference order when both exist
REJECT_SUFFIX = ".rejects.parquet"
MAX_ROWS_SHOWN = 5  # offending rows listed per (column, check) in an error message
MAX_GROUPS_SHOWN = 20  # (column, check) groups listed in an error message
_MAX_PASSES = 4  # validation passes; see _validate_rows
_TABLE_LEVEL_CHECKS = ("column_in_dataframe", "column_in_schema")
_TRUE = frozenset({"true", "1", "t", "yes"})
_FALSE = frozenset({"false", "0", "f", "no"})


class RawDataError(ValueError):
    """Raw input breaks the contract.

    ``failures`` is a DataFrame with :data:`FAILURE_COLUMNS` (``row`` is null for
    table-level failures) so callers and tests can inspect problems without parsing text.
    """

    def __init__(self, message: str, failures: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.failures = failures if failures is not None else _empty_failures()

    @property
    def tables(self) -> list[str]:
        """Tables with at least one failure, in order of first appearance."""
        return list(dict.fromkeys(self.failures["table"]))


@dataclass(frozen=True)
class LoadResult:
    """What a load produced: the validated rows, the rejected rows and why."""

    table: str
    data: pd.DataFrame
    rejects: pd.DataFrame  # original columns as text + reject_reason + source_row
    failures: pd.DataFrame  # one row per (column, check, row); FAILURE_COLUMNS
    source: str | None = None
    source_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="int64"))
    """File row number of each row of ``data`` (``data`` itself has a fresh RangeIndex)."""

    @property
    def n_accepted(self) -> int:
        return len(self.data)

    @property
    def n_rejected(self) -> int:
        return len(self.rejects)

    @property
    def n_input(self) -> int:
        return self.n_accepted + self.n_rejected


@dataclass(frozen=True)
class ReferenceProblem:
    """Rows whose foreign key does not exist in the referenced table."""

    table: str
    column: str
    ref_table: str
    ref_column: str
    rows: tuple[int, ...]  # index labels in the checked frame
    missing: tuple[str, ...] = field(default=())  # distinct missing values

    def __str__(self) -> str:
        return (
            f"table '{self.table}', column '{self.column}': {len(self.rows)} row(s) reference "
            f"{self.ref_table}.{self.ref_column} values that do not exist "
            f"(check 'references {self.ref_table}.{self.ref_column}'): "
            f"rows {_preview(self.rows)}; missing values {_preview(self.missing)}"
        )


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def find_table_file(name: str, raw_dir: Path) -> Path:
    """``<raw_dir>/<name>.parquet`` or ``.csv``; Parquet wins (with a warning) if both exist."""
    _schema_model(name)
    found = [Path(raw_dir) / f"{name}{suffix}" for suffix in SUFFIXES]
    found = [p for p in found if p.is_file()]
    if not found:
        raise FileNotFoundError(
            f"table '{name}': neither {name}.parquet nor {name}.csv found in {raw_dir}"
        )
    if len(found) > 1:
        logger.warning("table '%s': both %s exist; using %s", name, found, found[0])
    return found[0]


def read_table_file(name: str, path: Path) -> pd.DataFrame:
    """Read a raw file without validating it: CSV cells as text (empty = null), row index 0..n-1.

    Malformed files (no header, ragged lines, not Parquet) raise :class:`RawDataError`.
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        elif path.suffix == ".csv":
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
            )
        else:
            raise RawDataError(
                f"table '{name}': unsupported file type {path.name!r} (want .parquet or .csv)",
                _table_failure(name, None, "file_type", path.name),
            )
    except RawDataError:
        raise
    except FileNotFoundError:
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        # EmptyDataError and ParserError are ValueErrors; pyarrow errors subclass ValueError/OSError
        raise RawDataError(
            f"table '{name}': cannot read {path}: {exc}",
            _table_failure(name, None, "read_file", str(exc)),
        ) from exc
    return df.reset_index(drop=True)


def validate_frame(
    df: pd.DataFrame, name: str, *, quarantine: bool = False, source: str | None = None
) -> LoadResult:
    """Validate an in-memory raw frame (index = source row numbers) against ``TABLES[name]``.

    Without ``quarantine`` any failure raises :class:`RawDataError` listing *all* problems.
    With it, failing rows move to ``LoadResult.rejects`` and the rest is returned; table-level
    failures still raise. Pure: no I/O.
    """
    model = _schema_model(name)
    schema = model.to_schema()
    raw = df.copy()
    if not raw.index.equals(pd.RangeIndex(len(raw))):
        raw = raw.reset_index(drop=True)
    accepted, failures, fatal = _check(raw, name, schema, _id_column(schema))

    if not fatal.empty or (not failures.empty and not quarantine):
        all_failures = pd.concat([fatal, failures], ignore_index=True)
        raise RawDataError(format_failures(all_failures, source=source), all_failures)

    bad_rows = sorted(set(failures["row"].astype(int)))
    rejects = _reject_frame(raw.loc[bad_rows], failures)
    source_rows = accepted.index.to_numpy(dtype="int64")
    data = accepted.reset_index(drop=True)
    if len(data) + len(rejects) != len(raw):  # the contract of this module; never expected
        raise AssertionError(f"{name}: {len(data)} + {len(rejects)} != {len(raw)} input rows")
    return LoadResult(
        table=name,
        data=data,
        rejects=rejects,
        failures=failures,
        source=source,
        source_rows=source_rows,
    )


def load_table_result(name: str, path: Path, *, quarantine_dir: Path | None = None) -> LoadResult:
    """Like :func:`load_table` but also returns the rejects and failures (for reports/CLI).

    ``path`` is the file, or a directory holding ``<name>.parquet`` / ``<name>.csv``.
    """
    path = Path(path)
    if path.is_dir():
        path = find_table_file(name, path)
    raw = read_table_file(name, path)
    result = validate_frame(raw, name, quarantine=quarantine_dir is not None, source=str(path))
    _quarantine(result, quarantine_dir)
    return result


def _quarantine(result: LoadResult, quarantine_dir: Path | None) -> None:
    """Write the rejects of a whole-table result (quarantine mode) and log the counts."""
    name = result.table
    if quarantine_dir is not None:
        reject_path = Path(quarantine_dir) / f"{name}{REJECT_SUFFIX}"
        _atomic_parquet(result.rejects, reject_path)  # written even when empty: no stale file
        logger.info(
            "%s: %d input rows, %d accepted, %d rejected -> %s",
            name,
            result.n_input,
            result.n_accepted,
            result.n_rejected,
            reject_path,
        )
        if result.n_rejected:
            logger.warning(
                "%s: %d row(s) quarantined: %s",
                name,
                result.n_rejected,
                _summary_by_check(result.failures),
            )


def load_table(name: str, path: Path, *, quarantine_dir: Path | None = None) -> pd.DataFrame:
    """Load one raw table from Parquet or CSV, validated against the contract.

    Raises :class:`RawDataError` on bad input, unless ``quarantine_dir`` is given: then
    failing rows go to ``quarantine_dir/<name>.rejects.parquet`` and the rest is returned.
    """
    return load_table_result(name, path, quarantine_dir=quarantine_dir).data


def load_raw(
    raw_dir: Path,
    *,
    tables: Iterable[str] | None = None,
    quarantine_dir: Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Load several tables from ``raw_dir`` (default: all of ``TABLES``).

    Every table is validated before anything raises, so one :class:`RawDataError` reports the
    problems of all tables at once. Referential integrity is :func:`check_references`' job.
    """
    results = _load_results(raw_dir, tables=tables, quarantine_dir=quarantine_dir)
    return {name: result.data for name, result in results.items()}


def check_references(tables: Mapping[str, pd.DataFrame]) -> list[ReferenceProblem]:
    """Foreign keys that point nowhere (see :data:`REFERENCES`); empty list if all resolve.

    Pairs whose tables are not both in ``tables`` are skipped; null keys are not checked.
    """
    problems: list[ReferenceProblem] = []
    for table, column, ref_table, ref_column in REFERENCES:
        if table not in tables or ref_table not in tables:
            continue
        keys = tables[table][column]
        known = pd.Index(tables[ref_table][ref_column].dropna().unique())
        orphan = keys.notna() & ~keys.isin(known)
        if orphan.any():
            problems.append(
                ReferenceProblem(
                    table=table,
                    column=column,
                    ref_table=ref_table,
                    ref_column=ref_column,
                    rows=tuple(int(i) for i in keys.index[orphan]),
                    missing=tuple(str(v) for v in pd.unique(keys[orphan])),
                )
            )
    return problems


def validate_raw(
    catalog: Catalog,
    *,
    quarantine: bool = False,
    chunk_rows: int | None = None,
    memory_limit: str = "1GB",
) -> dict[str, dict[str, Any]]:
    """Validate the catalog's raw tables and publish the accepted rows as its validated layer.

    Every table plus the cross-table references are checked before anything is written, so one
    :class:`RawDataError` names every table, column, check and row at fault. Without
    ``quarantine`` any failing row stops the run; with it the failing rows go, with their
    reasons, to ``rejects/<table>.rejects.parquet`` and the rest flows on. Keys that point to
    customers/offers missing from the accepted rows raise in both modes: an orphan row is a
    policy question (drop it? fix the master?), not a row-level defect.

    On success the validated layer is replaced as a whole (a fresh directory swapped in), with a
    manifest of sources and counts; on failure it is removed, so nothing downstream can read
    tables that no longer match the raw export. Returns ``{"accepted": {table: rows},
    "rejected": {table: rows}, "reject_files": {table: path}}`` for all of ``TABLES``.

    With ``chunk_rows`` (``Settings.validation_chunk_rows``) a table longer than that is read,
    validated and written chunk by chunk with the same schemas, so memory is bounded by the
    chunk, not the table; ids are checked for uniqueness across the whole table in DuckDB
    (``memory_limit``, spilling to disk) and references against the accepted keys. The
    outputs are the same as without it. ``None`` validates each table in memory at once.
    """
    if chunk_rows is not None:
        return _validate_raw_chunked(catalog, quarantine, chunk_rows, memory_limit)
    try:
        results = _load_results(
            catalog.raw_dir,
            tables=None,
            quarantine_dir=catalog.rejects_dir if quarantine else None,
        )
        _raise_on_references(results, catalog.raw_dir)
    except (RawDataError, FileNotFoundError):
        _remove_tree(catalog.validated_dir)
        raise
    _publish_validated(catalog, results)
    return _report(catalog, results, quarantine)


def _report(
    catalog: Catalog, results: Mapping[str, LoadResult | _Counts], quarantine: bool
) -> dict[str, dict[str, Any]]:
    return {
        "accepted": {name: r.n_accepted for name, r in results.items()},
        "rejected": {name: r.n_rejected for name, r in results.items()},
        "reject_files": {
            name: str(catalog.rejects_dir / f"{name}{REJECT_SUFFIX}")
            for name, r in results.items()
            if quarantine and r.n_rejected
        },
    }


def _raise_on_references(results: Mapping[str, LoadResult], raw_dir: Path) -> None:
    problems = check_references({name: r.data for name, r in results.items()})
    if not problems:
        return
    records = []
    for p in problems:
        result = results[p.table]
        id_column = _id_column(TABLES[p.table].to_schema())
        for row in p.rows:
            records.append(
                {
                    "table": p.table,
                    "column": p.column,
                    "check": f"references {p.ref_table}.{p.ref_column}",
                    "row": int(result.source_rows[row]),
                    "value": _render(result.data.at[row, p.column]),
                    "record_id": _render(result.data.at[row, id_column]) if id_column else None,
                }
            )
    failures = _normalise_failure_dtypes(pd.DataFrame(records))
    raise RawDataError(
        f"raw data in {raw_dir}: {len(problems)} referential problem(s)\n"
        + format_failures(failures),
        failures,
    )


def _publish_validated(catalog: Catalog, results: Mapping[str, LoadResult]) -> None:
    """Write every accepted table and the manifest into a new directory, then swap it in."""
    target = catalog.validated_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".validated."))
    try:
        manifest: dict[str, Any] = {"tables": {}}
        for name, result in results.items():
            path = staging / catalog.path(name).name
            _with_microsecond_timestamps(result.data).to_parquet(path, index=False)
            manifest["tables"][name] = {
                "source": result.source,
                "accepted": result.n_accepted,
                "rejected": result.n_rejected,
            }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        _swap_in(staging, target)
    except BaseException:
        _remove_tree(staging)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    """Replace ``target`` by the finished ``staging`` directory as a whole."""
    old = None
    if target.exists():
        old = target.parent / f".validated.old.{os.getpid()}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        _remove_tree(old)


def _with_microsecond_timestamps(df: pd.DataFrame) -> pd.DataFrame:
    """Timestamps at microsecond precision, as the raw exports and Spark have them: DuckDB and
    Spark compare a nanosecond column with an ordinary TIMESTAMP literal by widening the
    literal, which overflows for far dates (the all-history cut-off)."""
    nanos = [c for c in df.columns if str(df[c].dtype) == "datetime64[ns]"]
    return df.astype(dict.fromkeys(nanos, "datetime64[us]")) if nanos else df


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def write_table(df: pd.DataFrame, name: str, raw_dir: Path) -> Path:
    """Validate ``df`` (raising :class:`RawDataError` on bad input) and write ``<name>.parquet``.

    The file is written atomically so a crashed run never leaves a half-written table.
    """
    result = validate_frame(df, name, quarantine=False, source=f"frame for {name}")
    path = Path(raw_dir) / f"{name}.parquet"
    _atomic_parquet(result.data, path)
    return path


def format_failures(failures: pd.DataFrame, *, source: str | None = None) -> str:
    """Human-readable report of a failures frame, grouped by table, column and check."""
    if failures.empty:
        return "no failures"
    lines: list[str] = []
    for table, by_table in failures.groupby("table", sort=False):
        n_rows = by_table["row"].dropna().nunique()
        where = f" ({source})" if source else ""
        csv_hint = " (CSV line = row + 2)" if source and source.endswith(".csv") else ""
        lines.append(
            f"raw table '{table}'{where} failed validation: {len(by_table)} failure(s) "
            f"in {n_rows} row(s); rows are 0-based data rows, header excluded{csv_hint}"
        )
        groups = list(by_table.groupby(["column", "check"], sort=False, dropna=False))
        for (column, check), group in groups[:MAX_GROUPS_SHOWN]:
            lines.append(f"  - {_group_line(str(table), column, check, group)}")
        if len(groups) > MAX_GROUPS_SHOWN:
            lines.append(f"  ... and {len(groups) - MAX_GROUPS_SHOWN} more column/check group(s)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------


def _schema_model(name: str) -> type[pa.DataFrameModel]:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known tables: {sorted(TABLES)}") from None


def _id_column(schema: pa.DataFrameSchema) -> str | None:
    """The record id shown next to offending rows: the first ``unique`` column."""
    return next((n for n, c in schema.columns.items() if c.unique), None)


def _empty_failures() -> pd.DataFrame:
    return _normalise_failure_dtypes(pd.DataFrame(columns=list(FAILURE_COLUMNS)))


def _normalise_failure_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    out = df.reindex(columns=list(FAILURE_COLUMNS))
    for col in ("table", "column", "check", "value", "record_id"):
        out[col] = out[col].astype("string")
    out["row"] = pd.array(out["row"], dtype="Int64")
    return out.reset_index(drop=True)


def _table_failure(name: str, column: str | None, check: str, value: str) -> pd.DataFrame:
    return _normalise_failure_dtypes(
        pd.DataFrame(
            [
                {
                    "table": name,
                    "column": column,
                    "check": check,
                    "row": None,
                    "value": value,
                    "record_id": None,
                }
            ]
        )
    )


def _load_results(
    raw_dir: Path, *, tables: Iterable[str] | None, quarantine_dir: Path | None
) -> dict[str, LoadResult]:
    names = list(TABLES) if tables is None else list(tables)
    for name in names:
        _schema_model(name)
    missing = [n for n in names if not any((Path(raw_dir) / f"{n}{s}").is_file() for s in SUFFIXES)]
    if missing:
        raise FileNotFoundError(
            f"raw tables not found in {raw_dir} (want <table>.parquet or <table>.csv): {missing}"
        )
    results: dict[str, LoadResult] = {}
    errors: list[RawDataError] = []
    for name in names:
        try:
            results[name] = load_table_result(name, Path(raw_dir), quarantine_dir=quarantine_dir)
        except RawDataError as exc:
            errors.append(exc)
    _raise_collected(errors)
    return results


def _raise_collected(errors: list[RawDataError]) -> None:
    """Raise every table's failures at once (one error as it is; several as one, all rows)."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        failures = pd.concat([e.failures for e in errors], ignore_index=True)
        raise RawDataError("\n".join(str(e) for e in errors), failures)


def _pre_coerce(raw: pd.DataFrame, schema: pa.DataFrameSchema) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Type columns pandera would coerce badly; cells that do not fit become row failures.

    pandera's own coercion gives up on a whole text column when, e.g., timestamp formats are
    mixed, and silently truncates 2.5 to 2 (float -> int) or turns 7 into True (int -> bool).
    Parsing cell by cell here keeps such failures row-level (so they can be quarantined) and
    never lets a bad cell through or turns it into a silent null: it is reported, then nulled.
    """
    typed = raw.copy()
    failures: list[pd.DataFrame] = []
    for name, column in schema.columns.items():
        if name not in raw.columns:
            continue
        parsed = _parse_cells(raw[name], column.dtype)
        if parsed is None:
            continue
        bad = raw[name].notna().to_numpy(bool) & parsed.isna().to_numpy(bool)
        if bad.any():
            failures.append(
                pd.DataFrame(
                    {
                        "column": name,
                        "check": f"coerce_dtype('{column.dtype}')",
                        "row": pd.array(raw.index[bad], dtype="Int64"),
                    }
                )
            )
        typed[name] = parsed
    return typed, _concat(failures)


def _is_text(series: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(series.dtype) or series.dtype == object


def _parse_cells(values: pd.Series, dtype: object) -> pd.Series | None:
    """``values`` in the contract's dtype, null where a cell does not fit; None = leave as is."""
    kind = str(dtype).lower()
    if _is_text(values):
        return _parse_text(values.astype("string").str.strip(), dtype)
    if kind.startswith(("int", "uint")) and pd.api.types.is_float_dtype(values.dtype):
        whole = np.isfinite(values) & (values % 1 == 0)
        return values.where(whole).astype("Int64")
    if (
        kind.startswith("bool")
        and pd.api.types.is_numeric_dtype(values.dtype)
        and not (pd.api.types.is_bool_dtype(values.dtype))
    ):
        return values.map({0: False, 1: True}).astype("boolean")
    return None


def _parse_text(text: pd.Series, dtype: object) -> pd.Series | None:
    """Parse a text column to the contract's dtype (null where it does not parse)."""
    if isinstance(dtype, pandas_engine.DateTime):
        # Naive local time only: a value with a UTC offset is as wrong as one that won't parse.
        has_offset = text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
        naive = text.where(~has_offset.fillna(False).to_numpy(bool))
        return pd.to_datetime(naive, format="ISO8601", errors="coerce")
    kind = str(dtype).lower()
    if kind.startswith("bool"):
        lower = text.str.lower()
        out = pd.Series(pd.NA, index=text.index, dtype="boolean")
        out[lower.isin(_TRUE).fillna(False).to_numpy(bool)] = True
        out[lower.isin(_FALSE).fillna(False).to_numpy(bool)] = False
        return out
    if kind.startswith(("int", "uint")):
        # Whole numbers only ("3" or "3.0"); parsed from text, so large ids stay exact.
        whole = text.str.fullmatch(r"[+-]?\d+(?:\.0*)?").fillna(False).to_numpy(bool)
        return text.where(whole).str.replace(r"\.0*$", "", regex=True).astype("Int64")
    if kind.startswith("float"):
        return pd.to_numeric(text, errors="coerce").astype("float64")
    return None  # text columns and anything else: pandera coerces/validates as is


def _validate_rows(
    typed: pd.DataFrame, schema: pa.DataFrameSchema, parse_failures: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run pandera until the surviving rows pass: (accepted, row failures, table failures).

    A column whose cells fail type coercion makes pandera's other checks on it fail as a
    whole (index-less TypeErrors). Those are consequences, so each pass drops the failing rows
    and re-validates; an index-less failure only counts once its column has no failing rows,
    except a missing/unexpected column, which is fatal at once. Row failures are returned
    raw: (column, check, row).
    """
    row_failures = [parse_failures]
    # Cells that did not parse are null by now; keep their rows in the first pass anyway so
    # that uniqueness is judged on every row (a duplicate of a bad row is still a duplicate).
    remaining = typed
    for _ in range(_MAX_PASSES):
        try:
            return schema.validate(remaining, lazy=True), _concat(row_failures), _concat([])
        except pa.errors.SchemaErrors as exc:
            cases = _normalise_cases(exc.failure_cases)
        rows = cases[cases["row"].notna()]
        table = cases[cases["row"].isna()]
        structural = table["check"].isin(_TABLE_LEVEL_CHECKS)
        fatal = table[structural | ~table["column"].isin(rows["column"])]
        # A column that cannot be typed at all fails every other check on it, too: noise.
        untyped = fatal.loc[fatal["check"].str.startswith("coerce_dtype"), "column"]
        fatal = fatal[
            ~fatal["column"].isin(untyped) | fatal["check"].str.startswith("coerce_dtype")
        ]
        row_failures.append(rows)
        if not fatal.empty:  # also the case whenever rows is empty
            return remaining.iloc[0:0], _concat(row_failures), fatal
        remaining = remaining.drop(index=rows["row"].unique())
    fatal = pd.DataFrame([{"column": None, "check": "validation_did_not_converge", "row": None}])
    return remaining.iloc[0:0], _concat(row_failures), fatal


def _check(
    raw: pd.DataFrame,
    name: str,
    schema: pa.DataFrameSchema,
    id_column: str | None,
    known_failures: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Validate ``raw`` (RangeIndex): (accepted rows, row failures, table-level failures).

    ``known_failures`` (column, check, row) were found outside this frame (a chunk's duplicate
    ids across the whole table); they are reported like pandera's and their rows not accepted.
    """
    typed, parse_failures = _pre_coerce(raw, schema)
    if known_failures is not None and len(known_failures):
        parse_failures = _concat([parse_failures, known_failures])
    accepted, failures, fatal = _validate_rows(typed, schema, parse_failures)
    if known_failures is not None and len(known_failures):
        accepted = accepted.drop(index=known_failures["row"].astype("int64"), errors="ignore")
    failures = _dedupe(failures, raw)
    failures = _with_values(failures, raw, name, id_column)
    fatal = _with_values(fatal, raw, name, id_column)
    return accepted, failures, fatal


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(
            {
                "column": pd.Series(dtype=object),
                "check": pd.Series(dtype=object),
                "row": pd.Series(dtype="Int64"),
            }
        )
    return pd.concat(parts, ignore_index=True)


def _normalise_cases(cases: pd.DataFrame) -> pd.DataFrame:
    """pandera failure_cases -> (column, check, row, pandera_value), one row per problem."""
    out = pd.DataFrame(
        {
            "column": cases["column"].astype("object"),
            "check": cases["check"].astype(str).map(_short_check),
            "row": pd.array(pd.to_numeric(cases["index"], errors="coerce"), dtype="Int64"),
            "pandera_value": cases["failure_case"].astype("object"),
        }
    )
    # Table-level strict-mode failures name the column in failure_case, not in column.
    strict = out["check"].isin(_TABLE_LEVEL_CHECKS)
    out.loc[strict, "column"] = out.loc[strict, "pandera_value"]
    # Index-less coercion reports without a value duplicate the typed ones; drop the noise.
    out = out[out["row"].notna() | out["pandera_value"].notna()]
    # pandera reports a failed coercion twice (coerce_dtype and dtype); keep one.
    out["check"] = out["check"].str.replace(r"^dtype\(", "coerce_dtype(", regex=True)
    return out


def _dedupe(failures: pd.DataFrame, raw: pd.DataFrame) -> pd.DataFrame:
    """One failure per (column, check, row), and one explanation per bad cell.

    A cell that is null in the file and fails both ``not_nullable`` and type coercion (a null
    int/bool) is a null problem; a cell with text that did not parse was nulled by the parser,
    so its ``not_nullable`` is a consequence and the type problem is what is reported.
    """
    if failures.empty:
        return failures
    df = failures.drop_duplicates(["column", "check", "row"]).reset_index(drop=True)
    is_type = df["check"].str.startswith("coerce_dtype")
    is_null = df["check"].eq("not_nullable")
    both = set(zip(df.loc[is_type, "column"], df.loc[is_type, "row"], strict=True)) & set(
        zip(df.loc[is_null, "column"], df.loc[is_null, "row"], strict=True)
    )
    keep = []
    for column, row, t, n in zip(df["column"], df["row"], is_type, is_null, strict=True):
        if (column, row) not in both or column not in raw.columns:
            keep.append(True)
            continue
        null_in_file = _isna(raw.at[int(row), column])
        keep.append(n if null_in_file else t)
    return df[keep].reset_index(drop=True)


def _with_values(
    failures: pd.DataFrame,
    raw: pd.DataFrame,
    name: str,
    id_column: str | None,
    witnesses: Mapping[str, object] | None = None,
) -> pd.DataFrame:
    """Add table, the value as found in the file and the record id; sort by row."""
    if failures.empty:
        return _empty_failures()
    out = failures.reset_index(drop=True)
    fallback = out.get("pandera_value", pd.Series(pd.NA, index=out.index, dtype=object))
    values = pd.Series(fallback, dtype=object).where(lambda v: v.notna(), None).astype("string")
    ids = pd.Series(pd.NA, index=out.index, dtype="string")
    has_row = out["row"].notna()
    for column, index in (
        out[has_row & out["column"].isin(raw.columns)].groupby("column").groups.items()
    ):
        witness = (witnesses or {}).get(str(column))
        values[index] = _cells_as_text(raw[column], out.loc[index, "row"], witness)
    if id_column in raw.columns:
        ids[has_row] = _cells_as_text(raw[id_column], out.loc[has_row, "row"])
    out["value"] = values
    out["record_id"] = ids
    out["table"] = name
    out = _normalise_failure_dtypes(out)
    return out.sort_values(["row", "column", "check"], na_position="first").reset_index(drop=True)


def _cells_as_text(column: pd.Series, rows: pd.Series, witness: object = None) -> np.ndarray:
    """``column`` at positions ``rows`` as text, null as ``<null>``; vectorised."""
    cells = _as_text(column.iloc[rows.astype("int64").to_numpy()], witness)
    return cells.fillna("<null>").to_numpy()


def _as_text(values: pd.Series, witness: object = None) -> pd.Series:
    """``values`` as text. pandas writes a timestamp column with the precision its finest value
    needs ('09:41:17.000' next to '06:00:17.300'), so a chunk renders as its whole table would
    when the table's finest value (``witness``, see :func:`_finest`) is rendered along."""
    if witness is None:
        return values.astype("string")
    extended = pd.concat(
        [values, pd.Series([witness], dtype=values.dtype)], ignore_index=True
    ).astype("string")
    return pd.Series(extended.iloc[:-1].to_numpy(), index=values.index, dtype="string")


def _finest(values: pd.Series, best: tuple[int, object] | None) -> tuple[int, object] | None:
    """The value of ``values`` (or ``best``) whose text needs the finest precision, with its
    rank: 0 midnight, 1 whole second, 2 ms, 3 us, 4 ns. None for non-timestamp columns."""
    if not pd.api.types.is_datetime64_dtype(values.dtype) or isinstance(
        values.dtype, pd.DatetimeTZDtype
    ):
        return best
    present = values.dropna()
    if present.empty:
        return best
    unit = np.datetime_data(present.dtype)[0]
    per_s = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}.get(unit)
    if per_s is None:
        return best
    ticks = present.to_numpy().astype("int64")
    sub = ticks % per_s
    rank = np.where(ticks % (86_400 * per_s) != 0, 1, 0)
    rank[sub != 0] = 2
    if per_s >= 10**6:
        rank[sub % (per_s // 10**3) != 0] = 3
    if per_s >= 10**9:
        rank[sub % (per_s // 10**6) != 0] = 4
    at = int(rank.argmax())
    found = (int(rank[at]), present.iloc[at])
    return found if best is None or found[0] > best[0] else best


def _isna(value: object) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _render(value: object) -> str:
    """A cell as text for messages and reject files; null is '<null>'."""
    return "<null>" if _isna(value) else str(value)


def _short_check(check: str) -> str:
    """``isin([... 31 values ...])`` -> ``isin``; other pandera check names are kept."""
    return "isin" if check.startswith("isin(") else check


_CHECK_TEXT: tuple[tuple[str, str], ...] = (
    (r"^column_in_dataframe$", "missing column"),
    (r"^column_in_schema$", "unexpected column (not in the contract)"),
    (
        r"^coerce_dtype\('datetime64.*'\)$",
        "wrong type: not a timestamp (want ISO 8601, naive local time)",
    ),
    (r"^coerce_dtype\('(.+)'\)$", r"wrong type: cannot be read as \1"),
    (r"^not_nullable$", "null where none may be"),
    (r"^field_uniqueness$", "duplicate id: the value occurs in more than one row"),
    (r"^isin$", "unknown code: value outside the allowed vocabulary"),
    (r"^greater_than_or_equal_to\((.+)\)$", r"must be >= \1"),
    (r"^greater_than\((.+)\)$", r"must be > \1"),
    (r"^less_than_or_equal_to\((.+)\)$", r"must be <= \1"),
    (r"^less_than\((.+)\)$", r"must be < \1"),
    (r"^in_range\((.+)\)$", r"must be in range \1"),
)


def _explain(check: str) -> str:
    for pattern, text in _CHECK_TEXT:
        if re.match(pattern, check):
            return re.sub(pattern, text, check)
    return check


def _allowed(schema_name: str, column: str) -> str:
    """The allowed vocabulary of an ``isin`` column, abbreviated for messages."""
    try:
        col = TABLES[schema_name].to_schema().columns[column]
    except KeyError:
        return ""
    for check in col.checks:
        allowed = check.statistics.get("allowed_values") if check.statistics else None
        if allowed is not None:
            return f" {_preview(tuple(allowed), limit=8)}"
    return ""


def _preview(items: Iterable[object], limit: int = MAX_ROWS_SHOWN) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}, ... {len(items) - limit} more]" if len(items) > limit else f"[{shown}]"


def _group_line(table: str, column: object, check: str, group: pd.DataFrame) -> str:
    col = "<table>" if _isna(column) else str(column)
    explanation = _explain(check) + (_allowed(table, col) if check == "isin" else "")
    head = f"column '{col}', check '{check}' ({explanation})"
    whole = group[group["row"].isna()]
    values = sorted({str(v) for v in whole["value"].dropna()} - {col})
    if len(whole):
        head += f" for the whole column{': ' + ', '.join(values) if values else ''}"
    rows = group[group["row"].notna()]
    if rows.empty:
        return head
    id_name = _id_name(table)
    cells = []
    for row, value, record_id in (
        rows[["row", "value", "record_id"]].head(MAX_ROWS_SHOWN).itertuples(index=False)
    ):
        rid = "" if _isna(record_id) or col == id_name else f" ({id_name}={record_id})"
        cells.append(f"row {row}{rid}: {value!s:.60}")
    more = len(rows) - MAX_ROWS_SHOWN
    tail = f"; ... and {more} more row(s)" if more > 0 else ""
    return f"{head}; {len(rows)} row(s): " + "; ".join(cells) + tail


def _id_name(table: str) -> str | None:
    return _id_column(TABLES[table].to_schema()) if table in TABLES else None


def _summary_by_check(failures: pd.DataFrame) -> str:
    counts = failures.groupby(["column", "check"], sort=False).size()
    return ", ".join(f"{c}/{k}: {n}" for (c, k), n in counts.items())


def _reject_frame(
    bad: pd.DataFrame,
    failures: pd.DataFrame,
    shared: Mapping[int, tuple[int, ...]] | None = None,
    witnesses: Mapping[str, object] | None = None,
) -> pd.DataFrame:
    """Rejected rows as text, with every reason and the source row number.

    ``shared`` maps a duplicate-id row to all rows with its id when they are not all in
    ``failures`` (a chunk of a table); by default they are found in ``failures``.
    ``witnesses``: per timestamp column, the table's finest rejected value (see :func:`_as_text`).
    """
    out = bad.astype("string")
    for column, witness in (witnesses or {}).items():
        out[column] = _as_text(bad[column], witness)
    out["reject_reason"] = pd.Series(pd.NA, index=bad.index, dtype="string")
    if len(failures):
        f = failures.reset_index(drop=True)
        explained = f["check"].map({k: _explain(k) for k in f["check"].unique()})
        reason = (
            f["table"]
            + "."
            + f["column"]
            + ": "
            + f["check"]
            + " ("
            + explained
            + "); value="
            + f["value"].fillna("<null>")
        )
        dupes = f["check"].eq("field_uniqueness")
        if dupes.any():
            if shared is None:
                sharing = (
                    f[dupes]
                    .groupby(["column", "value"], dropna=False)["row"]
                    .transform(lambda rows: _preview(int(r) for r in rows))
                )
            else:
                sharing = f.loc[dupes, "row"].map(lambda r: _preview(shared.get(int(r), (int(r),))))
            reason[dupes] = reason[dupes] + "; shared by rows " + sharing + ", every copy rejected"
        by_row: dict[int, list[str]] = {}
        for row, text in zip(f["row"].astype("int64").tolist(), reason.tolist(), strict=True):
            by_row.setdefault(row, []).append(text)
        out["reject_reason"] = pd.array(
            [" | ".join(by_row.get(row, [])) for row in bad.index], dtype="string"
        )
    out["source_row"] = pd.array(bad.index, dtype="int64")
    return out.reset_index(drop=True)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------
# Chunked validation (validate_raw with chunk_rows): memory bounded by the chunk
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Counts:
    """What the manifest and the report need of a table validated chunk by chunk."""

    source: str | None
    n_accepted: int
    n_rejected: int


#: Referenced (table, column) pairs whose accepted keys are kept for the reference check.
_REFERENCED: frozenset[tuple[str, str]] = frozenset((t, c) for _, _, t, c in REFERENCES)


def _validate_raw_chunked(
    catalog: Catalog, quarantine: bool, chunk_rows: int, memory_limit: str
) -> dict[str, dict[str, Any]]:
    """:func:`validate_raw` table by table, chunk by chunk, into a staging directory.

    Tables are validated in ``TABLES`` order, so the customers and offers are known before the
    tables that reference them; every table is still validated before anything raises.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    raw_dir = catalog.raw_dir
    quarantine_dir = catalog.rejects_dir if quarantine else None
    target = catalog.validated_dir
    try:
        names = list(TABLES)
        missing = [n for n in names if not any((raw_dir / f"{n}{s}").is_file() for s in SUFFIXES)]
        if missing:
            raise FileNotFoundError(
                f"raw tables not found in {raw_dir} (want <table>.parquet or <table>.csv): "
                f"{missing}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".validated."))
        try:
            counts: dict[str, _Counts] = {}
            errors: list[RawDataError] = []
            keys: dict[tuple[str, str], pd.Index] = {}
            orphans: dict[tuple[str, str], list[pd.DataFrame]] = {}
            for name in names:
                try:
                    counts[name] = _stream_table(
                        name,
                        find_table_file(name, raw_dir),
                        staging / catalog.path(name).name,
                        quarantine_dir,
                        chunk_rows,
                        memory_limit,
                        keys,
                        orphans,
                    )
                except RawDataError as exc:
                    errors.append(exc)
            _raise_collected(errors)
            _raise_on_orphans(orphans, raw_dir)
            manifest = {
                "tables": {
                    name: {"source": c.source, "accepted": c.n_accepted, "rejected": c.n_rejected}
                    for name, c in counts.items()
                }
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            _swap_in(staging, target)
        except BaseException:
            _remove_tree(staging)
            raise
    except (RawDataError, FileNotFoundError):
        _remove_tree(target)
        raise
    return _report(catalog, counts, quarantine)


def _stream_table(
    name: str,
    path: Path,
    out_path: Path,
    quarantine_dir: Path | None,
    chunk_rows: int,
    memory_limit: str,
    keys: dict[tuple[str, str], pd.Index],
    orphans: dict[tuple[str, str], list[pd.DataFrame]],
) -> _Counts:
    """Validate one raw file into ``out_path``; a file of one chunk is validated as a whole."""
    source = str(path)
    chunks = _iter_chunks(name, path, chunk_rows)
    first, second = next(chunks, None), next(chunks, None)
    if second is None:  # fits one chunk: exactly the in-memory path
        raw = first if first is not None else read_table_file(name, path)
        result = validate_frame(raw, name, quarantine=quarantine_dir is not None, source=source)
        _quarantine(result, quarantine_dir)
        sink = _TableSink(name, out_path, keys, orphans)
        sink.add(result)
        sink.close()
        return _Counts(source, result.n_accepted, result.n_rejected)

    assert first is not None
    schema = _schema_model(name).to_schema()
    id_column = _id_column(schema)
    unique = [c for c, col in schema.columns.items() if col.unique and c in first.columns]
    shared: dict[int, tuple[int, ...]] = {}
    for column in unique:
        shared.update(
            _duplicate_rows(
                name, path, column, schema.columns[column].dtype, chunk_rows, memory_limit
            )
        )
    chunk_schema = schema.update_columns({c: {"unique": False} for c in unique})
    dup_rows = np.array(sorted(shared), dtype="int64")
    dup_column = unique[0] if unique else None

    # Pass 1: validate every chunk and write its accepted rows; failures are kept (their rows
    # and reasons are the report), rejects wait for pass 2, which renders timestamps as the
    # whole table would (see _as_text).
    sink = _TableSink(name, out_path, keys, orphans)
    failures_seen: list[pd.DataFrame] = []
    bounds: list[tuple[int, int]] = []  # (offset, rows) of each chunk
    fail_witness: dict[str, tuple[int, object] | None] = {}
    reject_witness: dict[str, tuple[int, object] | None] = {}
    offset = 0
    try:
        for raw in itertools.chain([first, second], chunks):
            n = len(raw)
            bounds.append((offset, n))
            in_chunk = dup_rows[(dup_rows >= offset) & (dup_rows < offset + n)] - offset
            known = _concat(
                [
                    pd.DataFrame(
                        {
                            "column": dup_column,
                            "check": "field_uniqueness",
                            "row": pd.array(in_chunk, dtype="Int64"),
                        }
                    )
                ]
            )
            accepted, failures, fatal = _check(raw, name, chunk_schema, id_column, known)
            if not fatal.empty:
                every = pd.concat(
                    [_shift_rows(fatal, offset), *failures_seen, _shift_rows(failures, offset)],
                    ignore_index=True,
                )
                raise RawDataError(format_failures(every, source=source), every)
            if len(failures):
                bad_local = sorted(set(failures["row"].astype(int)))
                for column in raw.columns:
                    reject_witness[column] = _finest(
                        raw[column].iloc[bad_local], reject_witness.get(column)
                    )
                    rows = failures.loc[failures["column"] == column, "row"].astype(int)
                    fail_witness[column] = _finest(
                        raw[column].iloc[rows.to_numpy()], fail_witness.get(column)
                    )
                failures_seen.append(_shift_rows(failures, offset))
            if quarantine_dir is None and failures_seen:
                offset += n  # doomed: keep collecting every failure, write nothing more
                continue
            n_bad = len(set(failures["row"].astype(int)))
            if len(accepted) + n_bad != n:  # the contract of this module; never expected
                raise AssertionError(f"{name}: {len(accepted)} + {n_bad} != {n} rows at {offset}")
            sink.add(
                LoadResult(
                    table=name,
                    data=accepted.reset_index(drop=True),
                    rejects=pd.DataFrame(index=pd.RangeIndex(n_bad)),
                    failures=failures,
                    source=source,
                    source_rows=accepted.index.to_numpy(dtype="int64") + offset,
                )
            )
            offset += n
        sink.close()
    except BaseException:
        sink.close()
        raise
    witnesses = {c: w[1] for c, w in fail_witness.items() if w is not None}
    reject_witnesses = {c: w[1] for c, w in reject_witness.items() if w is not None}
    every = _pass_two(
        name,
        path,
        chunk_rows,
        bounds,
        failures_seen,
        shared,
        witnesses,
        reject_witnesses,
        quarantine_dir,
    )
    if quarantine_dir is None:
        if not every.empty:
            raise RawDataError(format_failures(every, source=source), every)
        return _Counts(source, sink.n_accepted, 0)
    logger.info(
        "%s: %d input rows, %d accepted, %d rejected -> %s (%s-row chunks)",
        name,
        offset,
        sink.n_accepted,
        sink.n_rejected,
        quarantine_dir / f"{name}{REJECT_SUFFIX}",
        chunk_rows,
    )
    if sink.n_rejected:
        logger.warning(
            "%s: %d row(s) quarantined: %s", name, sink.n_rejected, _summary_by_check(every)
        )
    return _Counts(source, sink.n_accepted, sink.n_rejected)


def _pass_two(
    name: str,
    path: Path,
    chunk_rows: int,
    bounds: list[tuple[int, int]],
    failures_seen: list[pd.DataFrame],
    shared: Mapping[int, tuple[int, ...]],
    witnesses: Mapping[str, object],
    reject_witnesses: Mapping[str, object],
    quarantine_dir: Path | None,
) -> pd.DataFrame:
    """Every failure of a chunked table with its value rendered as in a whole-table run, and
    (quarantine) the reject file: the chunks holding failures are read again, the rest skipped.
    Returns the failures, sorted by row as :func:`validate_frame` reports them."""
    every = pd.concat(failures_seen, ignore_index=True) if failures_seen else _empty_failures()
    rerender = bool(every["column"].isin(list(witnesses)).any())
    if quarantine_dir is None and not rerender:
        return every
    id_column = _id_column(TABLES[name].to_schema())
    rejects = None
    if quarantine_dir is not None:
        quarantine_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=quarantine_dir, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        rejects = _ParquetAppender(Path(tmp))
    rows = every["row"].astype("int64").to_numpy()
    fixed: list[pd.DataFrame] = []
    try:
        for (offset, n), raw in zip(bounds, _iter_chunks(name, path, chunk_rows), strict=True):
            lo, hi = np.searchsorted(rows, [offset, offset + n])
            if lo == hi and (rejects is None or rejects.writer is not None):
                continue  # nothing failed here (a reject file needs its first, empty, frame)
            local = _shift_rows(every.iloc[lo:hi].reset_index(drop=True), -offset)
            if rerender and len(local):
                local = _with_values(
                    local[["column", "check", "row"]], raw, name, id_column, witnesses
                )
            chunk = _shift_rows(local, offset)
            fixed.append(chunk)
            if rejects is not None:
                bad = raw.loc[sorted(set(local["row"].astype(int)))]
                bad.index = bad.index + offset
                rejects.write(_reject_frame(bad, chunk, shared, reject_witnesses))
        if rejects is not None:
            rejects.close()
            assert quarantine_dir is not None
            os.replace(rejects.path, quarantine_dir / f"{name}{REJECT_SUFFIX}")
    except BaseException:
        if rejects is not None:
            rejects.close()
            rejects.path.unlink(missing_ok=True)
        raise
    return pd.concat(fixed, ignore_index=True) if fixed else every


def _shift_rows(failures: pd.DataFrame, offset: int) -> pd.DataFrame:
    """Chunk row numbers -> file row numbers."""
    if offset and len(failures):
        failures = failures.assign(row=failures["row"] + offset)
    return failures


class _TableSink:
    """Appends the accepted rows of a table's chunks to its Parquet file and keeps what the
    reference check needs: accepted keys of referenced tables, orphan rows of the others."""

    def __init__(
        self,
        name: str,
        data_path: Path,
        keys: dict[tuple[str, str], pd.Index],
        orphans: dict[tuple[str, str], list[pd.DataFrame]],
    ) -> None:
        self.name = name
        self.data = _ParquetAppender(data_path)
        self.keys = keys
        self.orphans = orphans
        self.id_column = _id_column(TABLES[name].to_schema())
        self.key_parts: dict[str, list[pd.Series]] = {c: [] for t, c in _REFERENCED if t == name}
        self.n_accepted = 0
        self.n_rejected = 0

    def add(self, result: LoadResult) -> None:
        data = result.data
        self.data.write(_with_microsecond_timestamps(data))
        self.n_accepted += result.n_accepted
        self.n_rejected += result.n_rejected
        for column, parts in self.key_parts.items():
            parts.append(data[column])
        for table, column, ref_table, ref_column in REFERENCES:
            known = self.keys.get((ref_table, ref_column))
            if table != self.name or known is None or column not in data.columns:
                continue
            values = data[column]
            orphan = (values.notna() & (known.get_indexer(values) == -1)).to_numpy(bool)
            if orphan.any():
                self.orphans.setdefault((table, column), []).append(
                    pd.DataFrame(
                        {
                            "table": table,
                            "column": column,
                            "check": f"references {ref_table}.{ref_column}",
                            "row": result.source_rows[orphan],
                            "value": values[orphan].astype("string").fillna("<null>").to_numpy(),
                            "record_id": (
                                data.loc[orphan, self.id_column]
                                .astype("string")
                                .fillna("<null>")
                                .to_numpy()
                                if self.id_column
                                else None
                            ),
                        }
                    )
                )

    def close(self) -> None:
        self.data.close()
        for column, parts in self.key_parts.items():
            values = pd.concat(parts, ignore_index=True) if parts else pd.Series(dtype="string")
            self.keys[(self.name, column)] = pd.Index(pd.unique(values.dropna()))
            parts.clear()


class _ParquetAppender:
    """One Parquet file written frame by frame; the first frame's schema is the file's."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, df: pd.DataFrame) -> None:
        table = pa_arrow.Table.from_pandas(df, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            table = table.cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _iter_chunks(
    name: str, path: Path, chunk_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """The raw file in frames of at most ``chunk_rows`` rows (each with a fresh RangeIndex),
    read as :func:`read_table_file` reads the whole file."""
    try:
        if path.suffix == ".parquet":
            reader = pq.ParquetFile(path)
            for batch in reader.iter_batches(batch_size=chunk_rows, columns=columns):
                yield pa_arrow.Table.from_batches([batch]).to_pandas().reset_index(drop=True)
        elif path.suffix == ".csv":
            with pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8-sig",
                usecols=columns,
                chunksize=chunk_rows,
            ) as frames:
                for frame in frames:
                    yield frame.reset_index(drop=True)
        else:
            raise RawDataError(
                f"table '{name}': unsupported file type {path.name!r} (want .parquet or .csv)",
                _table_failure(name, None, "file_type", path.name),
            )
    except (RawDataError, FileNotFoundError):
        raise
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise RawDataError(
            f"table '{name}': cannot read {path}: {exc}",
            _table_failure(name, None, "read_file", str(exc)),
        ) from exc


def _duplicate_rows(
    name: str, path: Path, column: str, dtype: object, chunk_rows: int, memory_limit: str
) -> dict[int, tuple[int, ...]]:
    """Rows whose (typed, non-null) ``column`` value occurs more than once in the whole file,
    each mapped to all rows sharing it. The keys go, chunk by chunk, into an on-disk DuckDB
    table: memory stays within ``memory_limit`` however long the table is."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="nextoffer-unique-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "keys.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{tmp}'")
            con.execute("SET preserve_insertion_order = false")
            with contextlib.suppress(duckdb.InvalidInputException):
                con.execute("SET enable_progress_bar = false")
            offset = 0
            for chunk in _iter_chunks(name, path, chunk_rows, columns=[column]):
                values = chunk[column]
                parsed = _parse_cells(values, dtype)
                typed = values if parsed is None else parsed
                if pd.api.types.is_integer_dtype(typed.dtype):
                    key = pa_arrow.array(typed.astype("Int64"), type=pa_arrow.int64())
                else:
                    key = pa_arrow.array(typed.astype("string"), type=pa_arrow.large_string())
                rows = pa_arrow.array(np.arange(offset, offset + len(chunk), dtype="int64"))
                batch = pa_arrow.table({"row": rows, "key": key})  # noqa: F841 (read by DuckDB)
                verb = "CREATE TABLE keys AS" if offset == 0 else "INSERT INTO keys"
                con.execute(f"{verb} SELECT * FROM batch")
                offset += len(chunk)
            if offset == 0:
                return {}
            dups = con.execute(
                "SELECT row, key FROM keys WHERE key IN "
                "(SELECT key FROM keys WHERE key IS NOT NULL GROUP BY key HAVING count(*) > 1) "
                "ORDER BY row"
            ).fetch_df()
        finally:
            con.close()
    shared: dict[int, tuple[int, ...]] = {}
    for rows in dups.groupby("key", sort=False)["row"]:
        group = tuple(int(r) for r in rows[1])
        shared.update(dict.fromkeys(group, group))
    return shared


def _raise_on_orphans(orphans: Mapping[tuple[str, str], list[pd.DataFrame]], raw_dir: Path) -> None:
    """Raise the references problems of a chunked run as :func:`_raise_on_references` does."""
    parts = [
        pd.concat(orphans[(t, c)], ignore_index=True)
        for t, c, _, _ in REFERENCES
        if orphans.get((t, c))
    ]
    if not parts:
        return
    failures = _normalise_failure_dtypes(pd.concat(parts, ignore_index=True))
    raise RawDataError(
        f"raw data in {raw_dir}: {len(parts)} referential problem(s)\n" + format_failures(failures),
        failures,
    )
