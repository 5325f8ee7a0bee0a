"""Customer rows and scores published once and served by every replica, switched atomically.

``nextoffer publish-view --as-of D`` publishes the customer view as of ``D`` (and the
``scores_D`` table when it exists) and writes a *manifest*: which as_of is served, where its
rows live, which scores version comes with them. Replicas poll the manifest
(:class:`ViewSource`) and, when it changes, open the new snapshot beside the old one and swap it
in as a whole (``src.serving.app``), as they do with model aliases.

Two places for the rows:

* **PostgreSQL** (``serving.customer_store_url``), for several replicas and a bank's size: one
  table per publication (``pos`` primary key, ``customer_id`` unique, the row as a JSON array
  in the manifest's column order, the scores as a JSON object), loaded with ``COPY`` and made
  current by inserting its manifest row *in the same transaction*, so a replica sees either
  the old or the new publication, never half of one. PostgreSQL rather than Redis: a million
  rows of 190 columns are about 1.5 GB; in PostgreSQL that is disk plus the buffer cache, in
  Redis it is RAM on the server that also holds the contact caps (which must never be evicted
  or refused for memory), and a publication is one transaction instead of a key-by-key switch.
  A lookup by primary key over a local connection takes a fraction of a millisecond
  (``benchmarks/bench_customer_store.py``), and each replica keeps recently read rows (a
  publication is immutable, so a cached row is never stale).
* **Files** (default, one process): the catalog's ``customer_view_D.parquet`` (and
  ``scores_D.parquet``) named by ``features/_published_view.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from cachetools import FIFOCache
from pydantic_core import from_json, to_json

from src.data.catalog import Catalog, as_of_stamp
from src.serving.customers import CustomerStore, _as_list
from src.serving.models import PropensityScores

log = logging.getLogger(__name__)

PUBLISHED_VIEW_FILE = "_published_view.json"  # in the catalog's features directory
MANIFEST_TABLE = "view_manifest"
ROWS_TABLE_PREFIX = "customer_rows_"
KEEP_PUBLICATIONS = 3  # tables kept: replicas still switching read the previous one
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def sql_ident(name: str) -> str:
    """A schema or table name safe to put in SQL (lower-case identifier), else ValueError."""
    if not _IDENT.match(name):
        raise ValueError(f"customer_store_schema: {name!r} is not a lower-case SQL identifier")
    return name


@dataclass(frozen=True)
class ViewManifest:
    """One publication: the as_of served, where its rows are, and the scores that come with it.

    ``location``: the view's Parquet path (files) or table name (PostgreSQL);
    ``scores_version``: the model version of the published scores (None: no scores table)."""

    as_of: str
    location: str
    customers: int
    columns: tuple[str, ...] = ()
    scores_location: str | None = None
    scores_version: str | None = None
    products: tuple[str, ...] = ()
    prior: tuple[float, ...] = ()
    published_at: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What identifies a publication (republishing the same as_of is a new one)."""
        return (self.as_of, self.location, self.published_at)

    def age_days(self, now: datetime) -> float | None:
        """Days from the as_of to ``now`` (naive local), None if the as_of is not a date."""
        for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H%M%S"):
            try:
                as_of = datetime.strptime(self.as_of, fmt)
            except ValueError:
                continue
            return (now - as_of).total_seconds() / 86_400
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewManifest:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("columns", "products", "prior"):
            known[name] = tuple(known.get(name) or ())
        return cls(**known)


# --- scores ---------------------------------------------------------------------------------


def scores_matrix(
    scores: pd.DataFrame, customer_ids: Iterable[str]
) -> tuple[str, tuple[str, ...], np.ndarray, np.ndarray]:
    """(model version, products, matrix aligned to ``customer_ids``, prior) of a ``scores_D``
    table (customer_id, product, score, model_version). Customers without scores get the prior
    (the mean over scored customers); a bad record is an error naming it."""
    missing = {"customer_id", "product", "score", "model_version"} - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks column(s) {sorted(missing)}")
    versions = scores["model_version"].astype(str).unique()
    if len(versions) != 1:
        raise ValueError(
            f"scores table: model_version must be one value, got {sorted(versions)[:5]}"
        )
    values = pd.to_numeric(scores["score"], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=float)) | (values < 0) | (values > 1)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"scores table: score of customer {scores['customer_id'].iloc[i]!r}, product "
            f"{scores['product'].iloc[i]!r} is {scores['score'].iloc[i]!r}, not in [0, 1]"
        )
    dup = scores.duplicated(["customer_id", "product"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise ValueError(
            f"scores table: customer {scores['customer_id'].iloc[i]!r}, product "
            f"{scores['product'].iloc[i]!r} appears twice"
        )
    wide = scores.assign(customer_id=scores["customer_id"].astype(str)).pivot(
        index="customer_id", columns="product", values="score"
    )
    products = tuple(str(p) for p in wide.columns)
    prior = wide.mean(axis=0).fillna(0.0).to_numpy(dtype=float)
    aligned = wide.reindex([str(c) for c in customer_ids]).to_numpy(dtype=float)
    aligned = np.where(np.isnan(aligned), prior, aligned)
    return str(versions[0]), products, aligned, prior


def _read_scores(catalog: Catalog, as_of: str) -> pd.DataFrame | None:
    path = catalog.path("scores", as_of)
    return catalog.read("scores", as_of) if path.exists() else None


# --- the in-process store, by manifest --------------------------------------------------------


def open_file_view(manifest: ViewManifest) -> CustomerStore:
    """The view file of a manifest in memory, with its scores (if any) aligned to its rows."""
    store = CustomerStore.from_parquet(Path(manifest.location))
    store.as_of = manifest.as_of
    if manifest.scores_location:
        version, products, matrix, prior = scores_matrix(
            pd.read_parquet(manifest.scores_location), store.frame["customer_id"].astype(str)
        )
        store.published_scores = PropensityScores(version, products, matrix, prior)
    return store


def publish_to_file(catalog: Catalog, as_of: datetime | date | str) -> ViewManifest:
    """Make ``customer_view_<as_of>`` (and ``scores_<as_of>`` if present) the served view of
    every process following the catalog: ``features/_published_view.json``, replaced atomically."""
    view_path = catalog.path("customer_view", as_of)
    if not view_path.exists():
        raise FileNotFoundError(f"as_of {as_of}: no customer view at {view_path}: run build-view")
    view = pd.read_parquet(view_path, columns=["customer_id"])
    scores_path = catalog.path("scores", as_of)
    scores = pd.read_parquet(scores_path) if scores_path.exists() else None
    version = products = None
    if scores is not None:  # validated now: a bad table must fail the publish, not the replicas
        version, products, _, _ = scores_matrix(scores, view["customer_id"].astype(str))
    manifest = ViewManifest(
        as_of=as_of_stamp(as_of),
        location=str(view_path),
        customers=len(view),
        scores_location=str(scores_path) if scores is not None else None,
        scores_version=version,
        products=products or (),
        published_at=_now(),
    )
    target = catalog.features_dir / PUBLISHED_VIEW_FILE
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, target)
    return manifest


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --- sources: where a replica learns what to serve ---------------------------------------------


class ViewSource(Protocol):
    """The current publication and how to open it (polled from a worker thread)."""

    def manifest(self) -> ViewManifest | None:
        """The publication to serve now (None: nothing published); raises if unreachable."""

    def open(self, manifest: ViewManifest) -> CustomerStore:
        """The store of that publication, ready to serve."""


class PinnedView:
    """One view file, never switched (``serving.view_path`` given, or nothing published)."""

    def __init__(self, path: Path) -> None:
        match = re.search(r"customer_view_(\d{4}-\d{2}-\d{2}(?:T\d{6})?)", Path(path).name)
        self._manifest = ViewManifest(
            as_of=match.group(1) if match else "", location=str(path), customers=-1
        )

    def manifest(self) -> ViewManifest:
        return self._manifest

    def open(self, manifest: ViewManifest) -> CustomerStore:
        store = CustomerStore.from_parquet(Path(manifest.location))
        return store


class FileViewSource:
    """The catalog's ``_published_view.json``; before anything is published, ``fallback``."""

    def __init__(self, catalog: Catalog, fallback: Path | None) -> None:
        self.path = catalog.features_dir / PUBLISHED_VIEW_FILE
        self.fallback = PinnedView(fallback) if fallback is not None else None

    def manifest(self) -> ViewManifest | None:
        if self.path.exists():
            return ViewManifest.from_dict(json.loads(self.path.read_text()))
        return self.fallback.manifest() if self.fallback else None

    def open(self, manifest: ViewManifest) -> CustomerStore:
        if manifest.customers < 0:  # the fallback
            return PinnedView(Path(manifest.location)).open(manifest)
        return open_file_view(manifest)


# --- PostgreSQL ------------------------------------------------------------------------------


def pg_connect(url: str, timeout_s: int = 5) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=timeout_s)


_MISSING = object()
UNREACHABLE = -1  # the position of a customer while the store cannot be read (see position)
LOOKUP_TIMEOUT_S = 2  # connect and query, seconds: then the decision fails closed
RETRY_AFTER_S = 1.0  # after a failure, lookups fail at once for this long (no connect per request)


class StoreUnavailable(RuntimeError):
    """The published store cannot be read right now."""


def _ensure_manifest_table(cur: Any, schema: str) -> None:
    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.{MANIFEST_TABLE} ("
        " id bigserial PRIMARY KEY, as_of text NOT NULL, table_name text NOT NULL,"
        " manifest jsonb NOT NULL, published_at timestamptz NOT NULL DEFAULT now())"
    )


def json_rows(part: pd.DataFrame, columns: list[str]) -> list[str]:
    """Each row of ``part`` as a JSON array of ``columns``, values as :class:`CustomerStore`
    holds them (numbers as floats, NaN as null). Built by DuckDB (vectorized, about 3x faster
    than per-row Python); Python if DuckDB cannot read a column."""
    import duckdb

    def expr(c: str) -> str:
        q = '"' + c.replace('"', '""') + '"'
        dtype = part[c].dtype
        if pd.api.types.is_bool_dtype(dtype):
            return q
        if pd.api.types.is_numeric_dtype(dtype):
            return f"CASE WHEN isnan(CAST({q} AS DOUBLE)) THEN NULL ELSE CAST({q} AS DOUBLE) END"
        return q

    try:
        con = duckdb.connect()
        con.register("part", part.assign(__pos=np.arange(len(part))))
        sql = (
            f"SELECT CAST(json_array({', '.join(expr(c) for c in columns)}) AS VARCHAR) "
            "FROM part ORDER BY __pos"
        )
        return [r[0] for r in con.execute(sql).fetchall()]
    except (duckdb.Error, ValueError, TypeError):
        lists = [_as_list(part[c]) for c in columns]
        return [to_json(values).decode() for values in zip(*lists, strict=True)]


def view_rows(
    view: pd.DataFrame,
    columns: list[str],
    scores: np.ndarray | None,
    products: tuple[str, ...],
    chunk: int = 50_000,
) -> Iterator[tuple[int, str, str, str | None]]:
    """(pos, customer_id, row as a JSON array in ``columns`` order, scores as JSON) per
    customer. In chunks: a million rows as Python objects at once would take gigabytes."""
    for lo in range(0, len(view), chunk):
        part = view.iloc[lo : lo + chunk]
        rows = json_rows(part, columns)
        ids = part["customer_id"].astype(str).tolist()
        for i, (cid, row) in enumerate(zip(ids, rows, strict=True)):
            pos = lo + i
            sc = (
                None
                if scores is None
                else to_json(dict(zip(products, scores[pos].tolist(), strict=True))).decode()
            )
            yield pos, cid, row, sc


def publish_to_postgres(
    url: str,
    schema: str,
    view: pd.DataFrame,
    as_of: datetime | date | str,
    scores: pd.DataFrame | None = None,
    *,
    keep: int = KEEP_PUBLICATIONS,
    progress: bool = False,
) -> ViewManifest:
    """Load the view's rows (and scores) into a new table and make it current, in one
    transaction; drop publications older than the last ``keep``."""
    schema = sql_ident(schema)
    if "customer_id" not in view.columns:
        raise ValueError("the customer view has no customer_id column")
    ids = view["customer_id"].astype(str)
    if ids.duplicated().any():
        raise ValueError(f"customer view: customer_id {ids[ids.duplicated()].iloc[0]!r} twice")
    view = view.reset_index(drop=True)
    columns = [str(c) for c in view.columns]
    version = None
    products: tuple[str, ...] = ()
    matrix = prior = None
    if scores is not None:
        version, products, matrix, prior = scores_matrix(scores, ids)
    stamp = as_of_stamp(as_of)
    table = sql_ident(f"{ROWS_TABLE_PREFIX}{stamp.replace('-', '').lower()}_{uuid.uuid4().hex[:8]}")
    manifest = ViewManifest(
        as_of=stamp,
        location=table,
        customers=len(view),
        columns=tuple(columns),
        scores_version=version,
        products=products,
        prior=tuple(float(p) for p in prior) if prior is not None else (),
        published_at=_now(),
    )
    rows: Iterable[tuple[int, str, str, str | None]] = view_rows(view, columns, matrix, products)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, total=len(view), desc="publish rows", unit="row")
    with pg_connect(url) as conn:
        with conn.transaction(), conn.cursor() as cur:
            _ensure_manifest_table(cur, schema)
            cur.execute(
                f"CREATE TABLE {schema}.{table} (pos integer PRIMARY KEY,"
                " customer_id text NOT NULL, row text NOT NULL, scores text)"
            )
            with cur.copy(
                f"COPY {schema}.{table} (pos, customer_id, row, scores) FROM STDIN"
            ) as cp:
                for record in rows:
                    cp.write_row(record)
            cur.execute(f"CREATE UNIQUE INDEX ON {schema}.{table} (customer_id)")
            cur.execute(f"ANALYZE {schema}.{table}")
            cur.execute(
                f"INSERT INTO {schema}.{MANIFEST_TABLE} (as_of, table_name, manifest)"
                " VALUES (%s, %s, %s)",
                (stamp, table, manifest.to_json()),
            )
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                f"SELECT table_name FROM {schema}.{MANIFEST_TABLE} ORDER BY id DESC OFFSET %s",
                (keep,),
            )
            for (old,) in cur.fetchall():
                cur.execute(f"DROP TABLE IF EXISTS {schema}.{sql_ident(old)}")
    return manifest


@dataclass
class _Cached:
    customer_id: str
    row: str
    scores: str | None
    decoded: list[Any] | None = field(default=None)


class PgCustomerStore(CustomerStore):
    """A published table read by primary key, with a bounded cache of the rows read.

    Positions are the publication's row numbers (``pos``), so everything that indexes a view by
    position (the engine's caches, the model probe) works unchanged; the frame is empty."""

    def __init__(self, url: str, schema: str, manifest: ViewManifest, cache_size: int) -> None:
        super().__init__(pd.DataFrame(columns=list(manifest.columns)), manifest.as_of)
        self.url = url
        self.schema = sql_ident(schema)
        self.table = sql_ident(manifest.location)
        self.manifest = manifest
        self.cache_size = cache_size
        self._at = {c: i for i, c in enumerate(manifest.columns)}
        # oldest out, one at a time: clearing a full cache at once freed 20,000 decoded rows in
        # one go and stalled the event loop ~50 ms (every request waiting behind it)
        self._by_pos: FIFOCache[int, _Cached] = FIFOCache(cache_size)
        self._by_id: FIFOCache[str, int | None] = FIFOCache(cache_size)
        self._conn: Any = None
        self._db = threading.Lock()
        self._aconn: Any = None  # the event loop's connection (prefetch)
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aconnect = asyncio.Lock()  # one connect at a time
        self._down_until = 0.0
        if manifest.scores_version is not None:
            self.published_scores = PublishedScores(
                manifest.scores_version,
                manifest.products,
                np.empty((0, len(manifest.products))),
                np.asarray(manifest.prior, dtype=float),
                store=self,
            )

    def __len__(self) -> int:
        return self.manifest.customers

    def _query(self, where: str, value: Any) -> tuple[int, str, str, str | None] | None:
        sql = f"SELECT pos, customer_id, row, scores FROM {self.schema}.{self.table} WHERE {where} = %s"
        import psycopg

        with self._db:
            if time.monotonic() < self._down_until:
                raise StoreUnavailable("the customer store failed a moment ago")
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = pg_connect(self.url, timeout_s=LOOKUP_TIMEOUT_S)
                found = self._conn.execute(sql, (value,)).fetchone()
            except psycopg.Error as error:
                if self._conn is not None:
                    self._conn.close()  # reconnect on a later lookup
                self._down_until = time.monotonic() + RETRY_AFTER_S
                raise StoreUnavailable(f"{type(error).__name__}: {error}") from error
        return found

    def _remember(self, found: tuple[int, str, str, str | None]) -> _Cached:
        pos, cid, row, scores = found
        entry = self._by_pos[pos] = _Cached(cid, row, scores)
        self._by_id[cid] = pos
        return entry

    def position(self, customer_id: str) -> int | None:
        """The customer's row number; None if not in the view (a cold start). While the store
        cannot be read: :data:`UNREACHABLE`, whose row raises — the decision then fails
        closed (shows nothing), and is never taken for a cold start's (which would skip the
        customer's exclusions)."""
        known = self._by_id.get(customer_id, _MISSING)  # one lookup: a prefetch may evict it
        if known is not _MISSING:
            return known  # type: ignore[return-value]
        try:
            found = self._query("customer_id", customer_id)
        except StoreUnavailable:
            return UNREACHABLE
        if found is None:
            self._by_id[customer_id] = None
            return None
        self._remember(found)
        return found[0]

    async def prefetch(self, customer_id: str) -> None:
        """Read the customer's row (a cache miss) before the decision reads it, on the event
        loop with psycopg's async connection: a blocking round trip on the loop would stall
        every other request of the process, and a worker thread (``asyncio.to_thread``) cost
        twice the CPU of the async query here (132 against 67 us a lookup) plus the GIL
        hand-offs between the threads. A failure makes :meth:`position` answer
        :data:`UNREACHABLE` at once (no second attempt on the loop)."""
        if self._by_id.get(customer_id, _MISSING) is not _MISSING:
            return
        if time.monotonic() < self._down_until:
            return
        try:
            found = await self._aquery(customer_id)
        except StoreUnavailable:
            return
        if self._by_id.get(customer_id, _MISSING) is not _MISSING:
            return  # a concurrent request for the same customer was first
        if found is None:
            self._by_id[customer_id] = None
        else:
            self._remember(found)

    async def _aquery(self, customer_id: str) -> tuple[int, str, str, str | None] | None:
        import psycopg

        sql = f"SELECT pos, customer_id, row, scores FROM {self.schema}.{self.table} WHERE customer_id = %s"
        if self._aloop is not None and self._aloop is not asyncio.get_running_loop():
            self._aconn, self._aloop, self._aconnect = None, None, asyncio.Lock()  # a new loop
        try:
            async with self._aconnect:
                conn = self._aconn
                if conn is None or conn.closed:
                    conn = self._aconn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=LOOKUP_TIMEOUT_S
                    )
                    self._aloop = asyncio.get_running_loop()
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):  # no task per lookup (wait_for)
                cursor = await conn.execute(sql, (customer_id,))
                return await cursor.fetchone()
        except (psycopg.Error, OSError, TimeoutError) as error:
            conn, self._aconn = self._aconn, None
            if conn is not None:
                await conn.close()  # reconnect on a later lookup
            self._down_until = time.monotonic() + RETRY_AFTER_S
            raise StoreUnavailable(f"{type(error).__name__}: {error}") from error

    def _entry(self, position: int) -> _Cached:
        entry = self._by_pos.get(position)
        if entry is None:
            if position == UNREACHABLE:
                raise StoreUnavailable("the customer store cannot be read")
            found = self._query("pos", position)
            if found is None:
                raise KeyError(f"no customer at position {position} of {self.table}")
            entry = self._remember(found)
        return entry

    def row(self, position: int, columns: Iterable[str]) -> dict[str, Any]:
        entry = self._entry(position)
        values = entry.decoded
        if values is None:
            values = entry.decoded = from_json(entry.row)
        at = self._at
        return {c: values[at[c]] for c in columns if c in at}

    def scores_at(self, position: int) -> dict[str, float] | None:
        raw = self._entry(position).scores
        return None if raw is None else from_json(raw)

    def column(self, name: str) -> list[Any]:
        raise NotImplementedError("a published PostgreSQL view is read by row, not by column")

    def warm(self, columns: Iterable[str]) -> None:
        """Nothing to build: rows are read when a customer is first asked for."""

    def close(self) -> None:
        with self._db:
            if self._conn is not None:
                self._conn.close()
        conn, loop, self._aconn = self._aconn, self._aloop, None
        if conn is not None and loop is not None and loop.is_running():
            # closed from a worker thread (a view switch) while requests that began on this
            # view may still be querying it: close it on its own loop once they are done
            loop.call_soon_threadsafe(
                lambda: loop.call_later(LOOKUP_TIMEOUT_S, lambda: loop.create_task(conn.close()))
            )


@dataclass(frozen=True)
class PublishedScores(PropensityScores):
    """Scores published with the rows: read with the customer's row, prior for the rest."""

    store: PgCustomerStore | None = None

    def for_position(self, position: int | None) -> dict[str, float]:
        found = None
        if position is not None and self.store is not None:
            found = self.store.scores_at(position)
        if not found:
            return {p: float(v) for p, v in zip(self.products, self.prior.tolist(), strict=True)}
        return {p: float(found[p]) for p in self.products}


class PostgresViewSource:
    """The newest manifest row of ``<schema>.view_manifest``; opens :class:`PgCustomerStore`."""

    def __init__(self, url: str, schema: str, cache_size: int = 20_000) -> None:
        self.url = url
        self.schema = sql_ident(schema)
        self.cache_size = cache_size

    def manifest(self) -> ViewManifest | None:
        with pg_connect(self.url) as conn:
            try:
                found = conn.execute(
                    f"SELECT manifest FROM {self.schema}.{MANIFEST_TABLE} ORDER BY id DESC LIMIT 1"
                ).fetchone()
            except Exception as error:  # no table yet: nothing published
                if type(error).__name__ in ("UndefinedTable", "InvalidSchemaName"):
                    return None
                raise
        if found is None:
            return None
        data = found[0] if isinstance(found[0], dict) else json.loads(found[0])
        return ViewManifest.from_dict(data)

    def open(self, manifest: ViewManifest) -> CustomerStore:
        store = PgCustomerStore(self.url, self.schema, manifest, self.cache_size)
        if len(store):
            store.row(0, store.columns[:1])  # reachable and readable before it is swapped in
        return store
