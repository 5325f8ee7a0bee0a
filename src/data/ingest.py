"""Bring your own bank: reshape a bank's export into the raw tables of the data contract.

A bank's export never matches the contract's column names and codes. A YAML mapping says, per
contract table: which file to read and how (CSV delimiter and encoding, or Parquet), which
source column becomes which contract column, which constants fill a column the export lacks, how
the bank's codes translate into the contract's vocabularies, how its timestamps are written and
in which time zone, and which numbers need scaling. :func:`apply_mapping` does that to one frame
(pure); :func:`ingest` reads every source, maps it and writes ``<raw_dir>/<table>.parquet``.

Nothing is silently dropped or nulled. A value that is neither in its column's value map nor
already a contract code, a timestamp that does not match its format, a number that does not
parse: each is a *problem*, reported with its count and first source rows. By default a problem
fails the ingest before anything is written; ``allow_unmapped`` keeps such values as they are,
so validation then rejects (or quarantines) them where everyone can see them. A source column
the mapping does not mention is an error unless the mapping drops it by name (``drop``) or
drops every unmentioned column (``keep_unmapped_columns: false``).

Row numbers are 0-based data rows of the source file, header excluded (CSV line = row + 2), as
in :mod:`src.data.loaders`. Output timestamps are naive local time in Asia/Seoul, as the
contract says.
"""

from __future__ import annotations

import codecs
import os
import tempfile
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from src.data.catalog import Catalog
from src.data.schemas import TABLES

__all__ = [
    "CONTRACT_TIMEZONE",
    "REPORT_COLUMNS",
    "IngestResult",
    "MappingError",
    "SourceFormat",
    "TableMapping",
    "TimestampFormat",
    "UnmappedValuesError",
    "BankMapping",
    "apply_mapping",
    "format_report",
    "ingest",
    "load_mapping",
    "read_source",
]

CONTRACT_TIMEZONE = "Asia/Seoul"
#: Columns of the problem report (one row per table, column, problem and distinct value).
REPORT_COLUMNS: tuple[str, ...] = (
    "table",
    "column",
    "source_column",
    "problem",
    "value",
    "count",
    "rows",
)
MAX_ROWS_LISTED = 5  # first source rows kept per reported value
Scalar = str | int | float | bool | None
# Spellings the loader reads as booleans (src.data.loaders parses them case-insensitively).
_BOOL_TEXT = frozenset({"true", "false", "t", "f", "yes", "no", "1", "0"})
_PROBLEM_TEXT = {
    "unmapped_value": "not in the value map and not a contract code",
    "unknown_code": "not a contract code (the column has no value map)",
    "bad_timestamp": "does not match the timestamp format",
    "invalid_local_time": "does not exist (or is ambiguous) in the source time zone",
    "not_a_number": "cannot be read as a number to scale",
}


class MappingError(ValueError):
    """The mapping file, or an export's shape, does not fit: names the table and the field."""


class UnmappedValuesError(MappingError):
    """Values the mapping does not cover; ``report`` has :data:`REPORT_COLUMNS`."""

    def __init__(self, message: str, report: pd.DataFrame) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------
# The contract, as the mapping needs to know it
# --------------------------------------------------------------------------------------


@cache
def _schema_columns(table: str) -> dict[str, Any]:
    return dict(TABLES[table].to_schema().columns)


def contract_columns(table: str) -> tuple[str, ...]:
    """The contract's columns of ``table``, in contract order."""
    return tuple(_schema_columns(table))


def vocabulary(table: str, column: str) -> frozenset[str] | None:
    """Allowed values of a coded column (booleans: the spellings the loader reads), else None."""
    col = _schema_columns(table)[column]
    for check in col.checks:
        allowed = (check.statistics or {}).get("allowed_values")
        if allowed is not None:
            return frozenset(str(v) for v in allowed)
    if str(col.dtype) == "bool":
        return _BOOL_TEXT
    return None


def _column_kind(table: str, column: str) -> str:
    dtype = str(_schema_columns(table)[column].dtype).lower()
    if dtype.startswith("datetime"):
        return "timestamp"
    if dtype.startswith(("int", "float", "uint")):
        return "number"
    return "bool" if dtype == "bool" else "text"


# --------------------------------------------------------------------------------------
# The mapping file
# --------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(name: str | None) -> str | None:
    if name is not None:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (want an IANA name like 'UTC')") from None
    return name


class SourceFormat(_Strict):
    """How to read a source file; CSV options are ignored for Parquet."""

    kind: Literal["csv", "parquet"] | None = None  # default: from the file's suffix
    delimiter: str = ","
    # utf-8-sig reads UTF-8 with or without a byte-order mark; Korean exports are often cp949
    encoding: str = "utf-8-sig"
    na_values: tuple[str, ...] = ()  # besides the empty cell, which is always null
    strip: bool = False  # strip surrounding blanks off text cells (fixed-width legacy exports)

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError(f"delimiter must be one character, got {value!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value


class TimestampFormat(_Strict):
    """How one timestamp column is written, and in which zone its wall clock is.

    ``format``: a strptime format (``%Y/%m/%d %H:%M:%S``; with ``%z`` the text carries its own
    offset and ``timezone`` is not used), ``ISO8601``, ``unix_s`` or ``unix_ms`` (epoch
    seconds/milliseconds, UTC by definition); None: ISO text. A column that already holds
    timestamps (Parquet) is not parsed; naive ones are taken as wall clock in ``timezone``.
    """

    format: str | None = None
    timezone: str | None = None  # default: the table's, else the mapping's

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _check_timezone(value)


class TableMapping(_Strict):
    """How one contract table is made from one source file."""

    table: str
    source: Path | None = None  # relative to the mapping file; or given on the command line
    format: SourceFormat = SourceFormat()
    columns: dict[str, str] = {}  # source column -> contract column
    drop: tuple[str, ...] = ()  # source columns left out on purpose
    keep_unmapped_columns: bool = True  # False: drop every source column not mentioned
    constants: dict[str, Scalar] = {}  # contract column the export lacks -> its value
    values: dict[str, dict[str, Scalar]] = {}  # contract column -> {source value: contract value}
    timestamps: dict[str, TimestampFormat] = {}
    scale: dict[str, float] = {}  # contract column -> factor (amounts in thousands: 1000)
    timezone: str = CONTRACT_TIMEZONE  # source zone of timestamps that do not name one

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _check_timezone(value)

    @field_validator("values", mode="before")
    @classmethod
    def _text_keys(cls, values: Any) -> Any:
        """Source values are matched as text: YAML's ``1:`` means the code "1"."""
        if not isinstance(values, MappingABC):
            return values
        out = {}
        for column, vmap in values.items():
            if isinstance(vmap, MappingABC):
                for key in vmap:
                    if key is None or isinstance(key, bool):
                        raise ValueError(
                            f"values.{column}: key {key!r} is YAML's null/boolean, "
                            "not a code; quote it ('Y', 'yes', 'null')"
                        )
                vmap = {_key(k): v for k, v in vmap.items()}
            out[column] = vmap
        return out

    @model_validator(mode="after")
    def _fits_the_contract(self) -> TableMapping:
        if self.table not in TABLES:
            raise ValueError(f"unknown table {self.table!r}; the contract has {sorted(TABLES)}")
        contract = contract_columns(self.table)

        def known(where: str, names: Any) -> None:
            unknown = sorted(set(names) - set(contract))
            if unknown:
                raise ValueError(
                    f"{where}: {unknown} not column(s) of contract table {self.table!r} "
                    f"(it has {list(contract)})"
                )

        known("columns (targets)", self.columns.values())
        targets = list(self.columns.values())
        twice = sorted({t for t in targets if targets.count(t) > 1})
        if twice:
            sources = {t: [s for s, x in self.columns.items() if x == t] for t in twice}
            raise ValueError(f"columns: several source columns renamed to one column: {sources}")
        renamed_and_dropped = sorted(set(self.columns) & set(self.drop))
        if renamed_and_dropped:
            raise ValueError(f"{renamed_and_dropped} both renamed (columns) and dropped (drop)")
        for where in ("constants", "values", "timestamps", "scale"):
            known(where, getattr(self, where))
        clash = sorted(set(self.constants) & set(targets))
        if clash:
            raise ValueError(f"constants: {clash} also come from a source column (columns)")
        parts: dict[str, set[str]] = {
            "values": set(self.values),
            "timestamps": set(self.timestamps),
            "scale": set(self.scale),
        }
        for a, b in (("values", "timestamps"), ("values", "scale"), ("timestamps", "scale")):
            both = sorted(parts[a] & parts[b])
            if both:
                raise ValueError(f"{both} in both {a} and {b}: give each column one treatment")
        for column, vmap in self.values.items():
            vocab = vocabulary(self.table, column)
            if vocab is None:
                continue
            bad = {
                k: v
                for k, v in vmap.items()
                if v is not None and not _valid(v, vocab, bool_column=vocab is _BOOL_TEXT)
            }
            if bad:
                raise ValueError(
                    f"values.{column}: target(s) {bad} are not contract values "
                    f"{sorted(vocab)} of {self.table}.{column}"
                )
        for column in self.timestamps:
            if _column_kind(self.table, column) != "timestamp":
                raise ValueError(f"timestamps: {self.table}.{column} is not a timestamp column")
        for column, factor in self.scale.items():
            if _column_kind(self.table, column) != "number":
                raise ValueError(f"scale: {self.table}.{column} is not a numeric column")
            if factor == 0:
                raise ValueError(f"scale.{column}: factor 0 would erase every value")
        return self

    def zone_of(self, column: str) -> str:
        spec = self.timestamps.get(column)
        return (spec.timezone if spec and spec.timezone else None) or self.timezone


class BankMapping(_Strict):
    """A bank's whole export: a default source time zone and one mapping per contract table."""

    timezone: str = CONTRACT_TIMEZONE
    tables: dict[str, TableMapping]
    shared: dict[str, Any] = {}  # a place for YAML anchors (code lists several tables reuse)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return _check_timezone(value)

    @model_validator(mode="before")
    @classmethod
    def _name_tables(cls, data: Any) -> Any:
        """Each table mapping learns its table name (the key) and the default time zone."""
        if not isinstance(data, MappingABC) or not isinstance(data.get("tables"), MappingABC):
            return data
        zone = data.get("timezone", CONTRACT_TIMEZONE)
        tables = {}
        for name, spec in data["tables"].items():
            if isinstance(spec, MappingABC):
                spec = {"table": name, "timezone": zone, **spec}
                if spec["table"] != name:
                    raise ValueError(f"tables.{name}: 'table' says {spec['table']!r}")
            tables[name] = spec
        return {**data, "tables": tables}


def load_mapping(path: Path | str) -> BankMapping:
    """Read a mapping YAML; sources are resolved against the file's folder.

    Raises :class:`MappingError` naming the file and the field (``tables.transactions.values``).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise MappingError(f"mapping {path}: cannot read it: {error}") from error
    if not isinstance(data, MappingABC):
        raise MappingError(f"mapping {path}: want a YAML mapping with 'tables', got {data!r:.80}")
    try:
        mapping = BankMapping.model_validate(data)
    except ValidationError as error:
        raise MappingError(f"mapping {path}: {error}") from error
    base = path.resolve().parent
    return mapping.model_copy(
        update={
            "tables": {
                name: t.model_copy(update={"source": base / t.source}) if t.source else t
                for name, t in mapping.tables.items()
            }
        }
    )


# --------------------------------------------------------------------------------------
# Reading a source and mapping one frame (pure)
# --------------------------------------------------------------------------------------


def read_source(path: Path, fmt: SourceFormat, table: str) -> pd.DataFrame:
    """A source file as read: CSV cells as text (empty = null), rows numbered 0..n-1."""
    path = Path(path)
    kind = fmt.kind or {".csv": "csv", ".txt": "csv", ".parquet": "parquet"}.get(
        path.suffix.lower()
    )
    if kind is None:
        raise MappingError(
            f"table '{table}': cannot tell the format of {path.name!r}; "
            "set format.kind to csv or parquet"
        )
    if not path.is_file():
        raise MappingError(f"table '{table}': source file {path} not found")
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                sep=fmt.delimiter,
                encoding=fmt.encoding,
                dtype=str,
                keep_default_na=False,
                na_values=["", *fmt.na_values],
            )
    except UnicodeDecodeError as error:
        raise MappingError(
            f"table '{table}': {path.name} is not {fmt.encoding} text ({error}); "
            "set format.encoding (Korean exports are often cp949)"
        ) from error
    except (ValueError, OSError) as error:
        raise MappingError(f"table '{table}': cannot read {path}: {error}") from error
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class ColumnPlan:
    """Which source columns are renamed, passed through, or dropped."""

    rename: dict[str, str]
    dropped: tuple[str, ...]


def plan_columns(source_columns: list[str], mapping: TableMapping) -> ColumnPlan:
    """Check the export's columns against the mapping; errors name every offending column."""
    table, contract = mapping.table, contract_columns(mapping.table)
    present = list(source_columns)
    missing = [s for s in mapping.columns if s not in present]
    if missing:
        raise MappingError(
            f"table '{table}': source column(s) {missing} named in the mapping "
            f"(columns) are not in the export; it has {present}"
        )
    renamed = set(mapping.columns.values())
    clash = [
        c for c in present if c in renamed and c not in mapping.columns and c not in mapping.drop
    ]
    if clash:
        raise MappingError(
            f"table '{table}': source column(s) {clash} already carry the name another column "
            "is renamed to; drop one of them (drop)"
        )
    unmentioned = [
        c
        for c in present
        if c not in mapping.columns and c not in mapping.drop and c not in contract
    ]
    if unmentioned and mapping.keep_unmapped_columns:
        raise MappingError(
            f"table '{table}': source column(s) {unmentioned} are not in the mapping: rename "
            "them to a contract column (columns), list them under drop, or set "
            "keep_unmapped_columns: false to drop every column the mapping does not mention"
        )
    dropped = tuple(c for c in present if c in mapping.drop or c in unmentioned)
    return ColumnPlan({s: t for s, t in mapping.columns.items()}, dropped)


def apply_mapping(frame: pd.DataFrame, mapping: TableMapping) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``frame`` (one source file as read) reshaped to the contract table, plus the problem report.

    Values the mapping cannot translate are kept as they are and reported
    (:data:`REPORT_COLUMNS`); the caller decides whether that fails. Raises
    :class:`MappingError` for an export whose columns do not fit the mapping.
    """
    table = mapping.table
    contract = contract_columns(table)
    df = frame.reset_index(drop=True)
    if mapping.format.strip:
        df = df.apply(_strip)
    plan = plan_columns(list(df.columns), mapping)
    source_of = {t: s for s, t in plan.rename.items()}
    out = df.drop(columns=list(plan.dropped)).rename(columns=plan.rename)
    for column, value in mapping.constants.items():
        if column in out.columns:
            raise MappingError(
                f"table '{table}': constant for column '{column}', but the export has that "
                "column; remove the constant or drop the source column"
            )
        out[column] = value
    # an optional contract column (added to the contract later: consent_night, timezone) the
    # mapping does not name stays absent, as validation allows: older mappings keep working
    optional = {c for c, col in _schema_columns(table).items() if not col.required}
    contract = tuple(c for c in contract if c in out.columns or c not in optional)
    absent = [c for c in contract if c not in out.columns]
    if absent:
        raise MappingError(
            f"table '{table}': contract column(s) {absent} missing: no source column is renamed "
            f"to them (columns) and no constant is given (constants); the export has "
            f"{list(df.columns)}"
        )
    out = out[list(contract)].copy()
    problems: list[pd.DataFrame] = []

    def report(column: str, problem: str, original: pd.Series, bad: pd.Series) -> None:
        if bad.any():
            problems.append(_report(table, column, source_of.get(column), problem, original, bad))

    for column in contract:
        vocab = vocabulary(table, column)
        vmap = mapping.values.get(column)
        if vmap is None and vocab is None:
            continue
        original = out[column]
        out[column], bad = _map_values(original, vmap, vocab)
        report(column, "unknown_code" if vmap is None else "unmapped_value", original, bad)
    for column, spec in mapping.timestamps.items():
        original = out[column]
        out[column], bad, invalid = _parse_timestamps(original, spec, mapping.zone_of(column))
        report(column, "bad_timestamp", original, bad)
        report(column, "invalid_local_time", original, invalid)
    for column, factor in mapping.scale.items():
        original = out[column]
        out[column], bad = _scale(original, factor)
        report(column, "not_a_number", original, bad)
    result = (
        pd.concat(problems, ignore_index=True)
        if problems
        else pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})
    )
    return out, result


def _key(value: Any) -> str:
    """The text a source value is matched by (1.0 from a Parquet float column matches '1')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _valid(value: Any, vocab: frozenset[str], bool_column: bool) -> bool:
    if bool_column:
        return isinstance(value, bool) or str(value).strip().lower() in vocab
    return isinstance(value, str) and value in vocab


def _map_values(
    series: pd.Series, vmap: dict[str, Scalar] | None, vocab: frozenset[str] | None
) -> tuple[pd.Series, pd.Series]:
    """(translated column, mask of values neither mapped nor valid); unknown values unchanged."""
    values = series.astype(object)
    notna = values.notna()
    keys = values.where(~notna, values.map(_key, na_action="ignore"))
    in_map = notna & keys.isin(list(vmap)) if vmap else pd.Series(False, index=values.index)
    out = values.copy()
    if in_map.any():
        assert vmap is not None
        out[in_map] = [vmap[k] for k in keys[in_map]]
    if vocab is None:
        valid = pd.Series(False, index=values.index)
    else:
        bool_column = vocab is _BOOL_TEXT
        valid = values.map(lambda v: _valid(v, vocab, bool_column), na_action="ignore").astype(
            "boolean"
        )
        valid = valid.fillna(False).astype(bool)
    bad = notna & ~in_map & ~valid
    return out, bad


def _parse_timestamps(
    series: pd.Series, spec: TimestampFormat, zone: str
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(naive Asia/Seoul timestamps, mask not parsed, mask not a valid local time in ``zone``).

    If any value fails, the column is returned as text: ISO for the parsed values, the source
    text for the others, so validation sees (and names) exactly those cells.
    """
    notna = series.notna()
    fmt = spec.format
    if pd.api.types.is_datetime64_any_dtype(series):  # Parquet timestamps: no text to parse
        parsed = series
    elif fmt in ("unix_s", "unix_ms"):
        numbers = pd.to_numeric(series, errors="coerce")
        parsed = pd.to_datetime(numbers, unit={"unix_s": "s", "unix_ms": "ms"}[fmt], utc=True)
    else:
        text = series.astype(object).where(~notna, series.astype(str))
        aware = fmt is not None and ("%z" in fmt or "%Z" in fmt)
        parsed = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=aware)
    bad = notna & parsed.isna()
    invalid = pd.Series(False, index=series.index)
    if parsed.dt.tz is None and zone != CONTRACT_TIMEZONE:
        local = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        invalid = notna & ~bad & local.isna()
        parsed = local
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_convert(CONTRACT_TIMEZONE).dt.tz_localize(None)
    failed = bad | invalid
    if failed.any():
        text_out = parsed.dt.strftime("%Y-%m-%dT%H:%M:%S.%f").astype(object)
        text_out[failed] = series[failed].astype(str)
        return text_out.where(notna, None), bad, invalid
    return parsed, bad, invalid


def _scale(series: pd.Series, factor: float) -> tuple[pd.Series, pd.Series]:
    numbers = pd.to_numeric(series, errors="coerce")
    bad = series.notna() & numbers.isna()
    scaled = numbers.astype(float) * factor
    if bad.any():
        out = scaled.astype(object)
        out[bad] = series[bad]
        return out, bad
    return scaled, bad


def _strip(column: pd.Series) -> pd.Series:
    if pd.api.types.is_string_dtype(column) or column.dtype == object:
        return column.map(lambda v: v.strip() if isinstance(v, str) else v)
    return column


def _report(
    table: str,
    column: str,
    source_column: str | None,
    problem: str,
    original: pd.Series,
    bad: pd.Series,
) -> pd.DataFrame:
    values = original[bad].astype(object).map(str)
    rows = []
    for value, index in values.groupby(values, sort=False).groups.items():
        positions = sorted(int(i) for i in index)
        rows.append(
            {
                "table": table,
                "column": column,
                "source_column": source_column if source_column is not None else column,
                "problem": problem,
                "value": str(value),
                "count": len(positions),
                "rows": tuple(positions[:MAX_ROWS_LISTED]),
            }
        )
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS)).sort_values(
        "count", ascending=False, kind="stable"
    )


def format_report(report: pd.DataFrame) -> str:
    """One line per reported value: table.column (source), problem, value, count, first rows."""
    if report.empty:
        return "every value mapped"
    lines = []
    for r in report.itertuples(index=False):
        rows = ", ".join(str(i) for i in r.rows)
        more = ", ..." if r.count > len(r.rows) else ""
        lines.append(
            f"table '{r.table}', column '{r.column}' (source '{r.source_column}'): "
            f"value {r.value!r} x {r.count} row(s) [{rows}{more}]: {_PROBLEM_TEXT[r.problem]}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The whole export into the raw layer
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    """What an ingest wrote, and what it could not map (kept as is with ``allow_unmapped``)."""

    paths: dict[str, Path]
    rows: dict[str, int]
    sources: dict[str, Path]
    report: pd.DataFrame  # REPORT_COLUMNS
    dropped_columns: dict[str, tuple[str, ...]]
    contract_rejects: dict[str, int] = field(default_factory=dict)
    """Rows per table the contract will reject (``nextoffer validate`` names them)."""
    notes: tuple[str, ...] = ()


def ingest(
    mapping: BankMapping | Path | str,
    catalog: Catalog,
    *,
    allow_unmapped: bool = False,
    sources: MappingABC[str, Path] | None = None,
) -> IngestResult:
    """Read every source of ``mapping``, map it, write ``<raw_dir>/<table>.parquet``.

    All tables are mapped before anything is written, and each file is replaced atomically, so
    a failed ingest leaves the raw layer as it was. ``sources`` overrides a table's file.
    Raises :class:`UnmappedValuesError` listing *every* problem unless ``allow_unmapped``.

    A table the contract accepts whole is written typed (what the contract's coercion makes of
    it); otherwise as mapped, and ``contract_rejects`` counts the rows validation will refuse.
    Validation is not skipped either way: ``nextoffer validate`` still reads the raw layer.
    """
    from src.data.loaders import RawDataError, validate_frame

    if not isinstance(mapping, BankMapping):
        mapping = load_mapping(mapping)
    sources = dict(sources or {})
    unknown = sorted(set(sources) - set(mapping.tables))
    if unknown:
        raise MappingError(
            f"source given for table(s) {unknown} the mapping does not map "
            f"(it maps {sorted(mapping.tables)})"
        )
    frames: dict[str, pd.DataFrame] = {}
    used: dict[str, Path] = {}
    dropped: dict[str, tuple[str, ...]] = {}
    reports = []
    for name, table_mapping in mapping.tables.items():
        path = sources.get(name) or table_mapping.source
        if path is None:
            raise MappingError(
                f"table '{name}': no source file: set 'source' in the mapping or pass "
                f"--source {name}=FILE"
            )
        raw = read_source(Path(path), table_mapping.format, name)
        dropped[name] = plan_columns(list(raw.columns), table_mapping).dropped
        frames[name], report = apply_mapping(raw, table_mapping)
        used[name] = Path(path)
        reports.append(report)
    report = pd.concat(reports, ignore_index=True)
    if not report.empty and not allow_unmapped:
        raise UnmappedValuesError(
            f"{len(report)} value(s) in {report['table'].nunique()} table(s) the mapping does "
            f"not cover ({int(report['count'].sum())} row(s)); nothing was written. Add them "
            "to the mapping, or pass --allow-unmapped to keep them as they are for validation "
            "to reject:\n" + format_report(report),
            report,
        )
    typed: dict[str, pd.DataFrame] = {}
    rejects: dict[str, int] = {}
    for name, frame in frames.items():
        # typed Parquet when the contract accepts every row; else the mapped values as they
        # are (text where types are mixed), so validation reports each bad cell itself
        try:
            result = validate_frame(frame, name, quarantine=True, source=str(used[name]))
        except RawDataError:
            result = None
        if result is not None and result.n_rejected == 0:
            typed[name] = result.data
        else:
            typed[name] = _parquet_safe(frame)
            rejects[name] = len(frame) if result is None else result.n_rejected
    paths = _write_all(typed, catalog.raw_dir)
    notes = tuple(
        f"{catalog.raw_dir / f'{name}.csv'} also exists; validation reads the Parquet file"
        for name in typed
        if (catalog.raw_dir / f"{name}.csv").exists()
    )
    return IngestResult(
        paths=paths,
        rows={name: len(frame) for name, frame in typed.items()},
        sources=used,
        report=report,
        dropped_columns=dropped,
        contract_rejects=rejects,
        notes=notes,
    )


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing Python types (a kept unmapped 'X' among booleans) become text."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype != object:
            continue
        kinds = {type(v) for v in out[column].dropna()}
        if len(kinds) > 1:
            out[column] = out[column].map(_key, na_action="ignore").astype(object)
    return out


def _write_all(frames: dict[str, pd.DataFrame], raw_dir: Path) -> dict[str, Path]:
    """Every table to a temporary file first, then each renamed into place."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    staged: dict[str, tuple[str, Path]] = {}
    try:
        for name, frame in frames.items():
            path = raw_dir / f"{name}.parquet"
            fd, tmp = tempfile.mkstemp(dir=raw_dir, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            staged[name] = (tmp, path)
            frame.to_parquet(tmp, index=False)
        for tmp, path in staged.values():
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged.values():
            Path(tmp).unlink(missing_ok=True)
    return {name: path for name, (_, path) in staged.items()}
