"""The propensity pipeline on any table: one file, one binary target, no dataset quirks built in.

What a data set needs beyond "these columns, this target" comes in as options
(:class:`TableSpec`): columns to drop (leakage such as the UCI call ``duration``), sentinel values
that mean "missing" (UCI ``pdays == 999``: never contacted), the column (or the row order) that
gives time, and the columns a drift diagnostic should look at. Every named column must exist:
a missing one is a :class:`TableError` naming it and listing the file's columns, before any
fitting starts.

The model is the one used for the simulated bank (:func:`src.models.propensity.fit_product`):
LightGBM early-stopped and Platt-calibrated on a validation slice, next to a logistic
regression on the same rows. It is scored two ways:

* stratified k-fold cross-validation (inside each training fold a random 20 % validates);
* a time split, when time is known: the earliest 60 % of rows train, the next 20 % validate,
  the latest 20 % test (cuts moved so one timestamp never sits on both sides).

Why both: on time-ordered data the positive rate and the meaning of context columns can shift
(UCI: the national economic columns act as a clock whose relation to the outcome flips between
2008-09 and 2010); the gap between the cross-validated and the time-split AUC is the finding.
``--drift-cols`` names such columns: each is scored on its own in the train and the test rows
(a sign flip is a relation that does not survive the split) and the time split is refitted
without them.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from src.models.metrics import binary_metrics
from src.models.propensity import ProductModel, PropensityConfig, fit_product

if TYPE_CHECKING:
    from src.models.registry import PromotionResult
    from src.settings import Settings

TimeOrder = Literal["rows"]
SCORERS = {"lightgbm": "predict", "logreg": "predict_baseline"}
"""Output name of each scorer -> the :class:`ProductModel` method that scores it."""

DEFAULT_CONFIG = PropensityConfig(min_child_samples=50, num_leaves=15)
"""Smaller leaves than the simulated bank's default: tens of thousands of rows, not 300k."""

_SEPARATORS = ",;\t|"
MAX_LEVELS = 1000
"""More distinct values than this in a text column: an id or free text, not a category."""


class TableError(ValueError):
    """Bad input to the tabular pipeline; the message names the column (and rows) at fault."""


@dataclass(frozen=True)
class TableSpec:
    """What to learn from a table. Nothing here is specific to one data set.

    ``positive``: the target value that counts as 1 (None: 0/1, booleans or yes/no).
    ``missing``: (column, value) pairs whose value means "missing": set to NaN, with an
    indicator column ``<column>_is_<value>``. ``time_col`` orders the rows for the time split
    and is not a feature; ``time_order="rows"`` says the file is already in time order.
    """

    target: str
    positive: str | None = None
    drop: tuple[str, ...] = ()
    missing: tuple[tuple[str, str], ...] = ()
    time_col: str | None = None
    time_order: TimeOrder | None = None
    drift_cols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.time_col and self.time_order:
            raise TableError("give either a time column or --time-order rows, not both")
        if self.drift_cols and not self.has_time:
            raise TableError(
                f"the drift diagnostic on {list(self.drift_cols)} compares earlier and later "
                "rows: give a time column (--time-col) or --time-order rows"
            )
        roles = {self.target: "target", **dict.fromkeys(self.drop, "drop")}
        if self.time_col:
            roles.setdefault(self.time_col, "time")
        clash = [c for c in (*self.drop, self.time_col) if c == self.target]
        if clash:
            raise TableError(f"the target column {self.target!r} cannot also be dropped or time")
        for option, cols in (("--drift-cols", self.drift_cols), ("--missing-value", self.missing)):
            for c in cols:
                c = c if isinstance(c, str) else c[0]
                if c in roles:
                    raise TableError(
                        f"{option} {c!r}: that is the {roles[c]} column, not a feature"
                    )

    @property
    def has_time(self) -> bool:
        return bool(self.time_col or self.time_order)

    def named_columns(self) -> dict[str, list[str]]:
        """Every column the options name, by the option that names it."""
        out = {
            "--target": [self.target],
            "--drop": list(self.drop),
            "--missing-value": [c for c, _ in self.missing],
            "--drift-cols": list(self.drift_cols),
        }
        if self.time_col:
            out["--time-col"] = [self.time_col]
        return out

    def as_params(self) -> dict[str, str]:
        """The options as MLflow params (strings; empty when not given)."""
        return {
            "target": self.target,
            "positive": self.positive or "auto",
            "drop": ",".join(self.drop),
            "missing_values": ",".join(f"{c}={v}" for c, v in self.missing),
            "time_col": self.time_col or "",
            "time_order": self.time_order or ("column" if self.time_col else "none"),
            "drift_cols": ",".join(self.drift_cols),
        }


def parse_missing(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["pdays=999", ...]`` -> ``(("pdays", "999"), ...)``; the value is everything after the
    first ``=`` (it may itself contain one)."""
    out = []
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column or value == "":
            raise TableError(f"--missing-value {item!r}: expected COLUMN=VALUE, e.g. pdays=999")
        out.append((column, value))
    return tuple(out)


def parse_columns(items: Sequence[str]) -> tuple[str, ...]:
    """Repeated and/or comma-separated column names, in order, without duplicates."""
    out: list[str] = []
    for item in items:
        for name in item.split(","):
            name = name.strip()
            if name and name not in out:
                out.append(name)
    return tuple(out)


# --- reading ---------------------------------------------------------------------------------


def sniff_separator(path: Path, sample_bytes: int = 64_000) -> str:
    """The CSV field separator among ``, ; tab |``, from the file's first lines."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        sample = f.read(sample_bytes)
    if not sample.strip():
        raise TableError(f"{path}: the file is empty")
    lines = sample.splitlines()
    sample = "\n".join(lines[:-1] if len(lines) > 1 else lines)  # the last line may be cut
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SEPARATORS).delimiter
    except csv.Error:
        header = lines[0]
        counts = {s: header.count(s) for s in _SEPARATORS}
        best = max(counts, key=counts.__getitem__)
        if counts[best] == 0:
            raise TableError(
                f"{path}: cannot tell the separator from the header {header[:120]!r}; "
                "give it with --sep"
            ) from None
        return best


def read_table(path: Path | str, sep: str | None = None) -> pd.DataFrame:
    """A CSV (separator sniffed unless given, ``\\t`` or ``tab`` for a tab; plain or ``.gz``;
    a UTF-8 BOM is ignored) or Parquet file, rows in file order."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"no file at {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    sep = {"\\t": "\t", "tab": "\t"}.get(sep or "", sep) or sniff_separator(path)
    return pd.read_csv(path, sep=sep, encoding="utf-8-sig", low_memory=False)


def check_columns(df: pd.DataFrame, spec: TableSpec, source: str = "the file") -> None:
    """Every column an option names exists; else one error naming them and listing the file's."""
    have = set(df.columns)
    missing = [
        f"{c!r} ({option})"
        for option, cols in spec.named_columns().items()
        for c in cols
        if c not in have
    ]
    if missing:
        raise TableError(
            f"{source} has no column {', '.join(missing)}; its columns are: "
            + ", ".join(map(str, df.columns))
        )


def _values_seen(s: pd.Series, limit: int = 10) -> str:
    counts = s.value_counts(dropna=False)
    shown = ", ".join(f"{v!r} ({n})" for v, n in counts.head(limit).items())
    return shown + (f", ... ({len(counts)} distinct)" if len(counts) > limit else "")


def _row_list(mask: pd.Series | np.ndarray, limit: int = 5) -> str:
    """Data-file line numbers (header = line 1) of the first rows where ``mask`` holds."""
    rows = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(str(r + 2) for r in rows[:limit])
    return shown + (f" ... ({len(rows)} rows)" if len(rows) > limit else "")


def target_vector(s: pd.Series, positive: str | None = None) -> np.ndarray:
    """The target as 0/1. ``positive`` given: rows equal to it (compared as text) are 1.
    Auto: booleans, 0/1 numbers or yes/no (any case). Anything else is an error naming the
    column and the values seen; so is a missing target or a target with one class."""
    name = s.name
    if s.isna().any():
        raise TableError(f"target {name!r} is missing on line(s) {_row_list(s.isna())}")
    if positive is not None:
        try:
            as_number = float(positive) if pd.api.types.is_numeric_dtype(s) else None
        except ValueError:
            as_number = None
        if as_number is not None:  # "1" matches 1.0 in a float column
            y = (s.astype("float64") == as_number).to_numpy(int)
        else:
            y = (s.astype(str).str.strip() == positive).to_numpy(int)
        if not y.any():
            raise TableError(
                f"target {name!r} never equals the positive value {positive!r}; "
                f"values seen: {_values_seen(s)}"
            )
    elif pd.api.types.is_numeric_dtype(s) and set(pd.unique(s)) <= {0, 1}:  # bools included
        y = s.to_numpy(int)
    else:
        text = s.astype(str).str.strip().str.lower()
        if not set(pd.unique(text)) <= {"yes", "no"}:
            raise TableError(
                f"target {name!r} is not 0/1, boolean or yes/no: values seen "
                f"{_values_seen(s)}; say which value is positive with --positive"
            )
        y = (text == "yes").to_numpy(int)
    if y.min() == y.max():
        raise TableError(f"target {name!r} has one class only: values seen {_values_seen(s)}")
    return y


# --- the model matrix ------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    """LightGBM rejects some characters in feature names; keep letters, digits, ``_ - =``."""
    return re.sub(r"[^0-9A-Za-z_\-=]", "_", str(name))


def _sentinel_mask(s: pd.Series, value: str) -> pd.Series:
    """Rows of ``s`` equal to the sentinel: numerically for a numeric column, else as text."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        try:
            number = float(value)
        except ValueError:
            raise TableError(
                f"--missing-value {s.name}={value}: {s.name!r} is numeric and {value!r} is not "
                "a number"
            ) from None
        return s.astype("float64") == number
    return s.astype("string").str.strip() == value


@dataclass
class TableEncoder:
    """Raw rows -> all-float matrix, fitted once so training and serving build the same columns.

    Numeric and boolean columns as float (in file order), then one indicator per sentinel,
    then one-hot columns per categorical (object/string/category dtype) level seen at fit,
    sorted. A missing, or at serving time unseen, category is all zeros in its block.
    """

    numeric: list[str]
    categorical: dict[str, list[str]]
    missing: list[tuple[str, str]]
    columns: list[str] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)
    """Raw column -> the matrix columns built from it (for dropping a raw column's block)."""

    @property
    def raw_columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @classmethod
    def fit(
        cls,
        rows: pd.DataFrame,
        missing: Sequence[tuple[str, str]] = (),
        max_levels: int = MAX_LEVELS,
    ) -> TableEncoder:
        """Column kinds by dtype; a date/time column or a categorical with more than
        ``max_levels`` levels (an id?) is an error naming it, not a silent blow-up."""
        rows = _with_sentinels(rows, missing)
        numeric, categorical = [], {}
        for c in rows.columns:
            s = rows[c]
            if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s):
                raise TableError(
                    f"column {c!r} holds dates/times: give it as --time-col or --drop it"
                )
            if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
                numeric.append(c)
                continue
            levels = sorted(s.dropna().astype(str).unique().tolist())
            if len(levels) > max_levels:
                raise TableError(
                    f"categorical column {c!r} has {len(levels)} distinct values (more than "
                    f"{max_levels}: an identifier or free text?): --drop it"
                )
            categorical[c] = levels
        encoder = cls(numeric, categorical, list(missing))
        encoder.columns, encoder.sources = encoder._layout()
        return encoder

    def _layout(self) -> tuple[list[str], dict[str, list[str]]]:
        sources: dict[str, list[str]] = {c: [_safe_name(c)] for c in self.numeric}
        for c, v in self.missing:
            sources.setdefault(c, []).append(_safe_name(f"{c}_is_{v}"))
        for c, levels in self.categorical.items():
            sources.setdefault(c, []).extend(_safe_name(f"{c}_{v}") for v in levels)
        columns = [
            *(_safe_name(c) for c in self.numeric),
            *(_safe_name(f"{c}_is_{v}") for c, v in self.missing),
            *(_safe_name(f"{c}_{v}") for c, ls in self.categorical.items() for v in ls),
        ]
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise TableError(
                f"feature name(s) {dupes} come out twice once characters LightGBM does not "
                "accept are replaced by '_': rename the columns"
            )
        return columns, sources

    def transform(self, rows: pd.DataFrame) -> pd.DataFrame:
        missing_cols = [c for c in self.raw_columns if c not in rows.columns]
        if missing_cols:
            raise ValueError(f"input rows lack column(s) {missing_cols}")
        rows = rows.reset_index(drop=True)
        flags = {
            _safe_name(f"{c}_is_{v}"): _sentinel_mask(rows[c], v).fillna(False).astype("float64")
            for c, v in self.missing
        }
        rows = _with_sentinels(rows, self.missing)
        out: dict[str, pd.Series] = {}
        for c in self.numeric:
            s = rows[c]
            if s.dtype == object:
                s = s.map(lambda v: float(v) if isinstance(v, bool) else v)
            values = pd.to_numeric(s, errors="coerce")
            bad = values.isna() & s.notna()
            if bad.any():
                raise ValueError(
                    f"column {c!r} is numeric but row(s) {np.flatnonzero(bad)[:5].tolist()} "
                    f"hold {s[bad].head(3).tolist()}"
                )
            out[_safe_name(c)] = values.astype("float64")
        out.update(flags)
        for c, levels in self.categorical.items():
            text = rows[c].astype("string")
            for v in levels:
                out[_safe_name(f"{c}_{v}")] = (text == v).fillna(False).astype("float64")
        return pd.DataFrame(out, columns=self.columns)


def _with_sentinels(rows: pd.DataFrame, missing: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """Sentinel values set to missing (a numeric column stays numeric)."""
    if not missing:
        return rows
    rows = rows.copy()
    for c, v in missing:
        mask = _sentinel_mask(rows[c], v).fillna(False)
        rows[c] = rows[c].mask(mask)
    return rows


@dataclass
class TabularModel:
    """The fitted encoder and model: raw rows -> calibrated probability of the positive class,
    as a one-column frame named after the target (the shape the propensity pyfunc returns)."""

    target: str
    encoder: TableEncoder
    model: ProductModel

    @property
    def raw_columns(self) -> list[str]:
        return self.encoder.raw_columns

    def predict_proba(self, rows: pd.DataFrame, kind: str = "calibrated") -> pd.DataFrame:
        X = self.encoder.transform(rows)
        fn = {
            "calibrated": self.model.predict,
            "raw": self.model.predict_uncalibrated,
            "baseline": self.model.predict_baseline,
        }[kind]
        return pd.DataFrame({self.target: fn(X)}, index=rows.index)


# --- evaluation ------------------------------------------------------------------------------


@dataclass
class TableData:
    """A table read and checked against its spec: features, 0/1 target, time order applied."""

    features: pd.DataFrame
    y: np.ndarray
    spec: TableSpec
    source: str
    sentinel_counts: dict[str, int]
    notes: list[str]
    times: np.ndarray | None = None
    """The time column's values in row order (sorted), when there is one."""


def prepare(
    df: pd.DataFrame,
    spec: TableSpec,
    source: str = "the file",
    sample: int | None = None,
) -> TableData:
    """Check the named columns, build the target, order rows by time, count sentinels.

    ``sample`` keeps that many evenly spaced rows (order preserved) for a quick run.
    """
    check_columns(df, spec, source)
    notes: list[str] = []
    if spec.time_col:
        t = df[spec.time_col]
        if t.isna().any():
            raise TableError(
                f"time column {spec.time_col!r} is missing on line(s) {_row_list(t.isna())}"
            )
        if not pd.api.types.is_numeric_dtype(t):
            parsed = pd.to_datetime(t, errors="coerce", format="mixed")
            if parsed.isna().any():
                raise TableError(
                    f"time column {spec.time_col!r} is not a date/time on line(s) "
                    f"{_row_list(parsed.isna())}: {t[parsed.isna()].head(3).tolist()}"
                )
            t = parsed
        order = np.argsort(t.to_numpy(), kind="stable")
        df = df.iloc[order].reset_index(drop=True)
        times = t.to_numpy()[order]
    else:
        times = None
    if sample and sample < len(df):
        keep = np.linspace(0, len(df) - 1, sample).astype(int)
        df = df.iloc[keep].reset_index(drop=True)
        times = None if times is None else times[keep]
    y = target_vector(df[spec.target], spec.positive)
    not_features = [spec.target, *spec.drop, *([spec.time_col] if spec.time_col else [])]
    features = df.drop(columns=not_features)
    if features.shape[1] == 0:
        raise TableError(f"{source}: no feature columns left after target, drop and time")
    counts = {}
    for c, v in spec.missing:
        n = int(_sentinel_mask(features[c], v).fillna(False).sum())
        counts[f"{c}={v}"] = n
        if n == 0:
            notes.append(f"--missing-value {c}={v}: the value never occurs in {c!r}")
    return TableData(features, y, spec, source, counts, notes, times)


@dataclass
class TableResult:
    """Held-out metrics of a table (see :func:`evaluate_table`) and the final model."""

    data: TableData
    encoder: TableEncoder
    cv: pd.DataFrame
    cv_mean: pd.DataFrame
    cv_std: pd.DataFrame
    time: pd.DataFrame | None = None
    time_rates: pd.DataFrame | None = None
    time_by_features: pd.DataFrame | None = None
    time_best_iteration: pd.Series | None = None
    drift: pd.DataFrame | None = None
    model: TabularModel | None = None

    def summary(self) -> dict[str, float]:
        """The headline figures as flat MLflow metrics."""
        out: dict[str, float] = {}
        for scorer in SCORERS:
            out[f"cv_auc.{scorer}.mean"] = float(self.cv_mean.loc[scorer, "auc"])
            out[f"cv_auc.{scorer}.std"] = float(self.cv_std.loc[scorer, "auc"])
            if self.time is not None:
                out[f"time_split_auc.{scorer}"] = float(self.time.loc[scorer, "auc"])
            if self.time_by_features is not None and self.data.spec.drift_cols:
                key = ("without_drift_cols", scorer)
                out[f"time_split_auc_without_drift.{scorer}"] = float(
                    self.time_by_features.loc[key, "auc"]
                )
        if self.time_best_iteration is not None:
            out["time_split_best_iteration"] = float(self.time_best_iteration["all"])
        return {k: v for k, v in out.items() if math.isfinite(v)}


def _fit_score(
    X: pd.DataFrame,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    config: PropensityConfig,
    name: str,
) -> tuple[dict[str, dict[str, float]], ProductModel]:
    m = fit_product(name, X.iloc[train], y[train], X.iloc[val], y[val], config)
    Xt = X.iloc[test]
    return {s: binary_metrics(y[test], getattr(m, fn)(Xt)) for s, fn in SCORERS.items()}, m


def _time_cut(position: int, times: np.ndarray | None) -> int:
    """Move a cut so rows sharing a timestamp stay on one side (the earlier one if possible)."""
    if times is None or position <= 0 or position >= len(times):
        return position
    first = int(np.searchsorted(times, times[position], side="left"))
    return first if first > 0 else int(np.searchsorted(times, times[position], side="right"))


def evaluate_table(
    data: TableData,
    n_folds: int = 5,
    time_split: tuple[float, float] = (0.6, 0.8),
    config: PropensityConfig | None = None,
    seed: int = 7,
    final_model: bool = True,
) -> TableResult:
    """Cross-validated metrics (``cv``: per fold and scorer), the time split (``time``) when
    time is known, the drift diagnostic when drift columns are given, and (``final_model``) the
    model fitted on all rows the same way as in a fold."""
    from sklearn.model_selection import StratifiedKFold

    config = config or DEFAULT_CONFIG
    spec, y = data.spec, data.y
    minority = int(min(y.sum(), len(y) - y.sum()))
    if n_folds < 2 or minority < n_folds:
        raise TableError(
            f"{n_folds}-fold cross-validation needs at least {max(n_folds, 2)} rows of each "
            f"class of {spec.target!r}; the smaller class has {minority}"
        )
    encoder = TableEncoder.fit(data.features, spec.missing)
    X = encoder.transform(data.features)
    name = spec.target

    rows = []
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    for k, (train_all, test) in enumerate(folds.split(X, y)):
        train_all = rng.permutation(train_all)
        cut = int(0.8 * len(train_all))
        train, val = np.sort(train_all[:cut]), np.sort(train_all[cut:])
        res, _ = _fit_score(X, y, train, val, test, config, name)
        for scorer in SCORERS:
            rows.append({"fold": k, "scorer": scorer, **res[scorer]})
    cv = pd.DataFrame(rows)
    by_scorer = cv.groupby("scorer", sort=False)
    result = TableResult(
        data,
        encoder,
        cv,
        by_scorer.mean(numeric_only=True).drop(columns="fold"),
        by_scorer.std(numeric_only=True).drop(columns="fold"),
    )

    if spec.has_time:
        _time_split(result, X, time_split, config)
    if final_model:
        everything = rng.permutation(len(y))
        cut = int(0.8 * len(y))
        m = fit_product(
            name,
            X.iloc[np.sort(everything[:cut])],
            y[np.sort(everything[:cut])],
            X.iloc[np.sort(everything[cut:])],
            y[np.sort(everything[cut:])],
            config,
        )
        result.model = TabularModel(spec.target, encoder, m)
    return result


def _time_split(
    result: TableResult,
    X: pd.DataFrame,
    time_split: tuple[float, float],
    config: PropensityConfig,
) -> None:
    data, spec, y = result.data, result.data.spec, result.data.y
    n = len(y)
    a = _time_cut(int(time_split[0] * n), data.times)
    b = _time_cut(int(time_split[1] * n), data.times)
    if not (0 < a < b < n):
        raise TableError(f"the time split of {n} rows leaves an empty part ({a}, {b})")
    train, val, test = np.arange(a), np.arange(a, b), np.arange(b, n)
    res, m = _fit_score(X, y, train, val, test, config, spec.target)
    result.time = pd.DataFrame([{"scorer": s, **res[s]} for s in SCORERS]).set_index("scorer")
    result.time_rates = pd.Series(
        {"train": y[:a].mean(), "val": y[a:b].mean(), "test": y[b:].mean()},
        name="positive_rate",
    ).to_frame()
    by = [{"features": "all", "scorer": s, "auc": res[s]["auc"]} for s in SCORERS]
    best = {"all": float(m.best_iteration)}
    if spec.drift_cols:
        drop = {c for raw in spec.drift_cols for c in result.encoder.sources.get(raw, [])}
        kept = [c for c in X.columns if c not in drop]
        res_nd, m_nd = _fit_score(X[kept], y, train, val, test, config, spec.target)
        by += [
            {"features": "without_drift_cols", "scorer": s, "auc": res_nd[s]["auc"]}
            for s in SCORERS
        ]
        best["without_drift_cols"] = float(m_nd.best_iteration)
        result.drift = drift_table(data.features, y, spec, a, b)
    result.time_by_features = pd.DataFrame(by).set_index(["features", "scorer"])
    result.time_best_iteration = pd.Series(best)


def drift_table(
    features: pd.DataFrame, y: np.ndarray, spec: TableSpec, a: int, b: int
) -> pd.DataFrame:
    """AUC of each drift column on its own in the training rows (``[:a]``) and the test rows
    (``[b:]``): one side above 0.5 and the other below is a relation that flips over time.

    A categorical column is scored by its positive rate per level in the training rows (levels
    unseen there get the overall rate); rows where the column is missing are left out of its
    AUC and counted in ``n_missing``.
    """
    from sklearn.metrics import roc_auc_score

    def auc(yy: np.ndarray, x: pd.Series) -> float:
        ok = x.notna().to_numpy()
        yy, xx = yy[ok], x.to_numpy(float)[ok]
        return float(roc_auc_score(yy, xx)) if 0 < yy.sum() < len(yy) else float("nan")

    rows = _with_sentinels(features, spec.missing)
    out = {}
    for c in spec.drift_cols:
        s = rows[c]
        numeric = pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
        if numeric:
            score = s.astype("float64")
        else:
            text = s.astype("string")
            rate = pd.Series(y[:a]).groupby(text.iloc[:a].to_numpy()).mean()
            score = text.map(rate).astype("float64")
            score = score.where(text.isna(), score.fillna(float(y[:a].mean())))
        out[c] = {
            "kind": "numeric" if numeric else "categorical (train positive rate per level)",
            "auc_train": auc(y[:a], score.iloc[:a]),
            "auc_test": auc(y[b:], score.iloc[b:]),
            "mean_train": float(score.iloc[:a].mean()),
            "mean_test": float(score.iloc[b:].mean()),
            "n_missing": int(s.isna().sum()),
        }
    return pd.DataFrame(out).T


# --- one tracked run -------------------------------------------------------------------------

EXPERIMENT = "tabular"


@dataclass
class TableRun:
    """The evaluation plus where it went in MLflow."""

    result: TableResult
    run_id: str | None = None
    model_uri: str | None = None
    promotion: PromotionResult | None = None


def file_sha256(path: Path | str) -> str:
    """Content hash of the data file: two runs are comparable only on the same bytes."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_table(
    path: Path | str,
    spec: TableSpec,
    *,
    sep: str | None = None,
    n_folds: int = 5,
    seed: int = 7,
    sample: int | None = None,
    config: PropensityConfig | None = None,
    settings: Settings | None = None,
    track: bool = True,
    register: str | None = None,
    experiment: str = EXPERIMENT,
) -> TableRun:
    """Read, check, evaluate and (``track``) log one table to MLflow: params (file, hash,
    options, rows, positive rate), metrics (CV AUC mean/std per scorer, time-split AUC), the
    tables as CSV and the final model as a pyfunc over raw rows; ``register`` names the
    registered model (challenger; champion if it beats the champion's CV AUC on the same file,
    target, folds, seed and sample — otherwise the runs are not comparable and a human decides).
    """
    path = Path(path)
    config = config or DEFAULT_CONFIG
    frame = read_table(path, sep)
    data = prepare(frame, spec, str(path), sample=sample)
    result = evaluate_table(data, n_folds, config=config, seed=seed, final_model=track)
    run = TableRun(result)
    if track:
        _track(run, path, len(frame), n_folds, seed, sample, config, settings, register, experiment)
    return run


def _track(
    run: TableRun,
    path: Path,
    file_rows: int,
    n_folds: int,
    seed: int,
    sample: int | None,
    config: PropensityConfig,
    settings: Settings | None,
    register: str | None,
    experiment: str,
) -> None:
    import mlflow

    from src.models.registry import register_and_promote
    from src.models.tracking import code_version, configure_mlflow, log_pyfunc
    from src.settings import Settings

    settings = settings or Settings()
    result, data = run.result, run.result.data
    assert result.model is not None
    experiment_id = configure_mlflow(settings, experiment)
    with mlflow.start_run(experiment_id=experiment_id) as active:
        comparable = {
            "file_sha256": file_sha256(path),
            "target": data.spec.target,
            "positive": data.spec.positive or "auto",
            "folds": str(n_folds),
            "seed": str(seed),
            "sample": str(sample or ""),
        }
        mlflow.log_params(
            {
                **config.model_dump(),
                **data.spec.as_params(),
                **comparable,
                "file": str(path.resolve()),
                "file_rows": file_rows,
                "rows": len(data.y),
                "positive_rate": round(float(data.y.mean()), 6),
                "n_features_raw": len(result.encoder.raw_columns),
                "n_features_matrix": len(result.encoder.columns),
                "missing_value_rows": ",".join(f"{k}:{n}" for k, n in data.sentinel_counts.items()),
            }
        )
        mlflow.set_tags(code_version(settings.root))
        metrics = result.summary()
        mlflow.log_metrics(metrics)
        mlflow.log_text(result.cv.to_csv(index=False), "tables/cv_folds.csv")
        mlflow.log_text(result.cv_mean.to_csv(), "tables/cv_mean.csv")
        for name in ("time", "time_rates", "time_by_features", "drift"):
            table = getattr(result, name)
            if table is not None:
                mlflow.log_text(table.to_csv(), f"tables/{name}.csv")
        if data.notes:
            mlflow.log_text("\n".join(data.notes) + "\n", "notes.txt")
        run.run_id = active.info.run_id
        run.model_uri = log_pyfunc(result.model, data.features, result.model.raw_columns)
        if register:
            metric = "cv_auc.lightgbm.mean"
            champion = _comparable_champion_score(register, comparable, metric, settings)
            run.promotion = register_and_promote(
                run.model_uri,
                register,
                metric=metric,
                candidate_score=metrics.get(metric, float("nan")),
                score_champion=None if champion is None else (lambda uri: champion),
                tracking_uri=settings.tracking_uri,
            )


def _comparable_champion_score(
    name: str, comparable: dict[str, str], metric: str, settings: Settings
) -> float | None:
    """The champion's ``metric`` if its run evaluated the same file the same way, else None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    if not version.run_id:
        return None
    champion_run = client.get_run(version.run_id)
    params = champion_run.data.params
    if any(params.get(k) != v for k, v in comparable.items()):
        return None
    return champion_run.data.metrics.get(metric)


def format_result(run: TableRun) -> str:
    """The short report the command prints: data, AUC table, drift, notes, MLflow."""
    result, data = run.result, run.result.data
    spec = data.spec
    lines = [
        f"{data.source}: {len(data.y):,} rows, {data.y.mean():.1%} positive ({spec.target!r}), "
        f"{len(result.encoder.raw_columns)} input columns -> {len(result.encoder.columns)} "
        "features" + (f"; dropped {', '.join(spec.drop)}" if spec.drop else ""),
    ]
    for key, n in data.sentinel_counts.items():
        lines.append(f"  missing value {key}: {n:,} rows set to missing (+ indicator)")
    folds = int(result.cv["fold"].max()) + 1
    header = f"{'AUC':<34}" + "".join(f"{s:>18}" for s in SCORERS)
    lines += ["", header]
    lines.append(
        f"{f'cv ({folds}-fold, stratified)':<34}"
        + "".join(
            f"{result.cv_mean.loc[s, 'auc']:>11.3f} ± {result.cv_std.loc[s, 'auc']:.3f}"
            for s in SCORERS
        )
    )
    if result.time is not None:
        how = f"by {spec.time_col!r}" if spec.time_col else "in row order"
        lines.append(
            f"{f'time split ({how})':<34}"
            + "".join(f"{result.time.loc[s, 'auc']:>18.3f}" for s in SCORERS)
        )
        if spec.drift_cols and result.time_by_features is not None:
            lines.append(
                f"{'time split without drift cols':<34}"
                + "".join(
                    f"{result.time_by_features.loc[('without_drift_cols', s), 'auc']:>18.3f}"
                    for s in SCORERS
                )
            )
        rates = result.time_rates["positive_rate"] if result.time_rates is not None else {}
        lines.append(
            "positive rate train/val/test: "
            + " / ".join(f"{rates[k]:.1%}" for k in ("train", "val", "test"))
        )
    if result.drift is not None:
        lines += ["", "drift columns, AUC alone (train rows -> test rows):"]
        for c, row in result.drift.iterrows():
            flip = " (flips)" if (row["auc_train"] - 0.5) * (row["auc_test"] - 0.5) < 0 else ""
            lines.append(f"  {c:<28} {row['auc_train']:.3f} -> {row['auc_test']:.3f}{flip}")
    for note in data.notes:
        lines.append(f"note: {note}")
    if run.run_id:
        lines += ["", f"mlflow run {run.run_id}, model {run.model_uri}"]
    if run.promotion is not None:
        p = run.promotion
        lines.append(f"registered {p.name} v{p.version}: {p.reason}")
    return "\n".join(lines)
