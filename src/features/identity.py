"""Identity stitching: attribute anonymous web/app events to customers, point in time.

The logic lives in SQL files under ``src/features/sql/`` (DuckDB dialect, written against the
table names ``customers``, ``holdings``, ``clickstream``, ``transactions`` so the same text runs
on Spark once transpiled, see :mod:`src.features.spark`). This module only wires DuckDB to the
raw Parquet files and runs the stages in order:

``session_keys`` (one scan of the clickstream, down to session grain, with the additive
activity counts the customer view needs) -> ``identity_map`` (device/cookie -> customer)
-> ``session_map`` (session -> customer) -> ``stitched_clicks`` -> ``stitched_events`` (the
``StitchedEvents`` contract). The customer view stops at ``session_map``: it sums the session
counts of ``session_keys`` per attributed customer and never stitches single events.

Every stage takes the cut-off ``as_of``: only events strictly before it are used, so the view
as of T never learns from a login at or after T. ``as_of=None`` means all history.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from importlib import resources
from pathlib import Path

import duckdb
import pandas as pd

from src.data.catalog import Catalog
from src.features.sql_templates import render_template

RAW_TABLES: tuple[str, ...] = ("customers", "holdings", "clickstream", "transactions")
"""Raw tables the feature SQL reads, registered as views with these names."""

IDENTITY_TABLES: tuple[str, ...] = ("clickstream", "transactions")
"""Raw tables stitching reads."""

IDENTITY_STAGES: tuple[str, ...] = (
    "session_keys",
    "identity_map",
    "session_map",
    "stitched_clicks",
    "fx_rates",
    "stitched_events",
)
"""SQL files (and the view each defines), in dependency order."""

MATERIALIZED: frozenset[str] = frozenset({"session_keys", "identity_map", "session_map"})
"""Stages read several times downstream: DuckDB stores them as temp tables instead of
re-scanning the clickstream Parquet for every reference (a view is inlined at each use).
``session_keys`` is ~1/4 of the clickstream's rows, the other two ~1/8 and less."""

ALL_HISTORY = "9999-12-31 23:59:59"
"""Cut-off used for ``as_of=None``: later than any event."""

_AS_OF = re.compile(r"\$as_of\b")

Source = Catalog | duckdb.DuckDBPyConnection


def sql_source(name: str) -> str:
    """Text of ``src/features/sql/<name>.sql`` as written (shipped as package data): a Jinja
    template whose repeated column blocks are loops (:mod:`src.features.sql_templates`)."""
    return (resources.files("src.features") / "sql" / f"{name}.sql").read_text(encoding="utf-8")


def load_sql(name: str) -> str:
    """The SQL of ``<name>.sql`` with its loops expanded from the current constants: plain
    DuckDB SQL, ``$as_of`` left for :func:`render_sql`."""
    return render_template(sql_source(name))


def sql_files() -> list[str]:
    """Names (without ``.sql``) of every SQL file shipped with the features package."""
    folder = resources.files("src.features") / "sql"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".sql"))


def as_of_literal(as_of: datetime | date | str | None) -> str:
    """``TIMESTAMP '...'`` literal for the cut-off (validated through pandas, so never raw text)."""
    if as_of is None:
        return f"TIMESTAMP '{ALL_HISTORY}'"
    ts = pd.Timestamp(as_of)
    if ts.tzinfo is not None:
        raise ValueError("as_of must be naive local time, like the raw timestamps")
    return f"TIMESTAMP '{ts.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def render_sql(sql: str, as_of: datetime | date | str | None) -> str:
    """Bind ``$as_of`` as a literal.

    Why not a prepared parameter: DuckDB refuses parameters in ``CREATE VIEW``, and a literal
    lets DuckDB push the ``ts < as_of`` filter into the Parquet scan. ``--`` comments are left
    as written (the SQL files use no ``--`` inside string literals).
    """
    literal = as_of_literal(as_of)
    lines = []
    for line in sql.splitlines():
        code, dashes, comment = line.partition("--")
        lines.append(_AS_OF.sub(literal, code) + dashes + comment)
    return "\n".join(lines)


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect_tables(
    catalog: Catalog,
    con: duckdb.DuckDBPyConnection | None = None,
    tables: tuple[str, ...] = RAW_TABLES,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the catalog's validated source tables as views named after them.

    The SQL stages read the contract's tables by name; only rows validation accepted are there.
    """
    return catalog.connect(tables, con)


def register_stages(
    con: duckdb.DuckDBPyConnection,
    stages: tuple[str, ...],
    as_of: datetime | date | str | None,
) -> None:
    """One temp object per SQL stage, bound to ``as_of``: a lazy view, or a temp table for the
    :data:`MATERIALIZED` stages (computed here, once)."""
    for stage in stages:
        sql = render_sql(load_sql(stage), as_of)
        _drop_temp_object(con, stage)  # re-binding on the same connection (another as_of)
        kind = "TABLE" if stage in MATERIALIZED else "VIEW"
        con.execute(f"CREATE TEMP {kind} {stage} AS {sql}")


def _drop_temp_object(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a temp view or table of that name, whichever it is (DuckDB refuses the wrong kind)."""
    for kind, catalog in (("VIEW", "duckdb_views()"), ("TABLE", "duckdb_tables()")):
        found = con.execute(
            f"SELECT count(*) FROM {catalog} WHERE temporary AND {kind.lower()}_name = ?", [name]
        ).fetchall()[0][0]
        if found:
            con.execute(f"DROP {kind} {name}")


def _connection(source: Source) -> duckdb.DuckDBPyConnection:
    if isinstance(source, duckdb.DuckDBPyConnection):
        return source  # raw views are expected to be registered already
    return connect_tables(source, tables=IDENTITY_TABLES)


def _stage_frame(source: Source, stage: str, as_of: datetime | date | str | None) -> pd.DataFrame:
    con = _connection(source)
    register_stages(con, IDENTITY_STAGES[: IDENTITY_STAGES.index(stage) + 1], as_of)
    return con.sql(f"SELECT * FROM {stage}").df()


def identity_map(source: Source, as_of: datetime | date | str | None = None) -> pd.DataFrame:
    """Device and cookie -> customer map from logins before ``as_of``; shared ones flagged.

    ``source`` is the catalog or a DuckDB connection with the source views registered.
    """
    return _stage_frame(source, "identity_map", as_of).sort_values(
        ["identifier_type", "identifier"], ignore_index=True
    )


def session_map(source: Source, as_of: datetime | date | str | None = None) -> pd.DataFrame:
    """Session -> customer with how it was resolved (``resolution``), from events before ``as_of``."""
    return _stage_frame(source, "session_map", as_of).sort_values("session_id", ignore_index=True)


def stitched_events(source: Source, as_of: datetime | date | str | None = None) -> pd.DataFrame:
    """The ``StitchedEvents`` stream before ``as_of``, ordered by customer, ts, event_id."""
    df = _stage_frame(source, "stitched_events", as_of)
    df["session_id"] = df["session_id"].astype("Int64")
    return df


def write_identity(
    catalog: Catalog,
    as_of: datetime | date | str | None = None,
) -> dict[str, Path]:
    """Write the catalog's ``identity_map``, ``session_map`` and ``stitched_events`` as Parquet.

    DuckDB streams straight to Parquet (no pandas round trip), so this scales to the full bank.
    """
    catalog.features_dir.mkdir(parents=True, exist_ok=True)
    con = connect_tables(catalog, tables=IDENTITY_TABLES)
    register_stages(con, IDENTITY_STAGES, as_of)
    written: dict[str, Path] = {}
    for name, order in (
        ("identity_map", "identifier_type, identifier"),
        ("session_map", "session_id"),
        ("stitched_events", None),  # already ordered by its SQL
    ):
        path = catalog.path(name)
        query = f"SELECT * FROM {name}" + (f" ORDER BY {order}" if order else "")
        con.execute(f"COPY ({query}) TO {_quote(path)} (FORMAT parquet)")
        written[name] = path
    con.close()
    return written
