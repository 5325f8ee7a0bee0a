"""The training table of the models: one row per (customer, as_of), features before, labels after.

Features are the customer view as of the date (every column computed from events strictly
before ``as_of``) plus, optionally, extra point-in-time features such as the detection rules'
(:func:`detection_rule_features`). Labels come from the window ``[as_of, as_of + window_days)``:
``label_<product>`` is true if the customer has a ``PRODUCT_SIGNUP`` transaction for that
product in the window. Keeping both in one function is what makes leakage testable: moving or
adding events after ``as_of`` must change labels and never features (tests/test_feature_table.py).

The time split (:func:`plan_as_of_dates`) puts validation and test dates after training dates.
With ``embargo`` (default) every training and validation label window closes by the test date
— what a model retrained on the test date could really have seen. Without it, training windows
overlap the test window and the same customers' future signups are labels on both sides:
measured on a 20k-customer bank, that let LightGBM "beat" the oracle on the test date (it
memorised customers) while losing 0.1 AUC on customers it never trained on. ``embargo=False``
is kept only to show that effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from src.data.catalog import Catalog
from src.data.schemas import INCOME_BANDS, LIFE_STAGES, PRODUCTS, REGIONS
from src.features.customer_view import build_customer_view, data_dictionary

DateLike: TypeAlias = datetime | date | str | pd.Timestamp
ExtraFeatures = Callable[[Catalog, pd.Timestamp, pd.Series], pd.DataFrame]
"""(catalog, as_of, customer_ids) -> frame keyed by ``customer_id``; columns joined as features."""

KEYS: tuple[str, ...] = ("customer_id", "as_of")
CATEGORICAL: dict[str, tuple[str, ...]] = {
    "gender": ("F", "M"),
    "life_stage": LIFE_STAGES,
    "income_band": INCOME_BANDS,
    "region": REGIONS,
}
"""Categorical view columns and their closed vocabularies (one-hot in the model matrix)."""
NOT_FEATURES: tuple[str, ...] = ("customer_id", "is_closed")


class TooShortForTimeSplit(ValueError):
    """The data period cannot hold training, validation and test windows after enough history."""


def label_column(product: str) -> str:
    return f"label_{product}"


@dataclass(frozen=True)
class AsOfPlan:
    """Which as_of dates train, validate (early stopping, calibration) and test."""

    train: tuple[pd.Timestamp, ...]
    val: tuple[pd.Timestamp, ...]
    test: tuple[pd.Timestamp, ...]
    window_days: int

    def split_of(self, as_of: pd.Timestamp) -> str:
        for name in ("train", "val", "test"):
            if pd.Timestamp(as_of) in getattr(self, name):
                return name
        raise KeyError(as_of)

    @property
    def dates(self) -> tuple[pd.Timestamp, ...]:
        return self.train + self.val + self.test

    def as_dict(self) -> dict[str, object]:
        """Plain strings, for MLflow params and JSON."""

        def fmt(ds):
            return [f"{d:%Y-%m-%d}" for d in ds]

        return {
            "train": fmt(self.train),
            "val": fmt(self.val),
            "test": fmt(self.test),
            "window_days": self.window_days,
        }


def data_period(catalog: Catalog) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(first day, last day) of the transactions: the span labels can come from.

    The last calendar day is treated as incomplete (a session running past midnight of the
    final simulated day leaves a few events there), so ``end`` is its midnight."""
    con = catalog.connect(("transactions",))
    lo, hi = con.execute("SELECT min(ts), max(ts) FROM transactions").fetchall()[0]
    con.close()
    return pd.Timestamp(lo).normalize(), pd.Timestamp(hi).normalize()


def plan_as_of_dates(
    start: DateLike,
    end: DateLike,
    window_days: int = 30,
    n_train: int = 3,
    step_days: int = 7,
    min_history_days: int = 28,
    embargo: bool = True,
    shrink_window: bool = True,
) -> AsOfPlan:
    """A time split over the period [start, end).

    test = the last date whose label window fits (end - window); val = test - window with
    ``embargo`` (its labels are complete on the test date), else test - step; train = val - k
    x step, k = 1..n_train, keeping only dates with ``min_history_days`` of history. A bank too
    short for that gets a shorter window, and then asks for no more history than the window,
    if ``shrink_window`` (else ValueError) — so the same code runs on a 35-day test bank and a
    90-day one.
    """
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    day = pd.Timedelta(days=1)
    for w in range(window_days, 0, -1):
        test = end - w * day
        val = test - (w if embargo else step_days) * day
        train = [val - k * step_days * day for k in range(n_train, 0, -1)]
        train = [t for t in train if t >= start + min(min_history_days, w) * day]
        if train:
            return AsOfPlan(tuple(train), (val,), (test,), w)
        if not shrink_window:
            break
    raise TooShortForTimeSplit(
        f"period {start:%Y-%m-%d}..{end:%Y-%m-%d} too short for a time split "
        f"(window {window_days}d, step {step_days}d, history {min_history_days}d)"
    )


def signup_labels(
    catalog: Catalog,
    as_of: DateLike,
    window_days: int,
    customer_ids: Iterable[str],
    products: Sequence[str] = PRODUCTS,
) -> pd.DataFrame:
    """``label_<product>`` per customer: a PRODUCT_SIGNUP of it in [as_of, as_of + window)."""
    as_of = pd.Timestamp(as_of)
    txn = catalog.read(
        "transactions",
        columns=["ts", "customer_id", "code", "product"],
        filters=[
            ("code", "==", "PRODUCT_SIGNUP"),
            ("ts", ">=", as_of),
            ("ts", "<", as_of + pd.Timedelta(days=window_days)),
        ],
    )
    hit = set(zip(txn["customer_id"].astype(str), txn["product"].astype(str), strict=False))
    ids = pd.Index(pd.Series(list(customer_ids), dtype="str"), name="customer_id")
    out = pd.DataFrame(index=ids)
    for p in products:
        out[label_column(p)] = [(c, p) in hit for c in ids]
    return out.reset_index()


def detection_rule_features(rules_path: Path | str | None = None) -> ExtraFeatures:
    """Rule features (count_7d, count_30d, days_since_last, flag_7d per rule) as an extra.

    Stitching and detection both run as of the date, so an anonymous event is attributed only
    through logins before ``as_of`` and a timeout fires only if its deadline passed before it.
    """
    from src.features.detection import detect, load_rules, rule_features
    from src.features.identity import stitched_events

    rules = load_rules(rules_path)

    def extra(catalog: Catalog, as_of: pd.Timestamp, customer_ids: pd.Series) -> pd.DataFrame:
        events = stitched_events(catalog, as_of)
        detections = detect(events, rules, until=as_of)
        wide = rule_features(detections, as_of, customer_ids, rules=rules, wide=True)
        flags = [c for c in wide.columns if c.endswith("__flag_7d")]
        wide[flags] = wide[flags].astype(bool)
        return wide.rename(columns={c: f"rule_{c}" for c in wide.columns if c != "customer_id"})

    return extra


def build_feature_table(
    catalog: Catalog,
    as_of_dates: Iterable[DateLike],
    window_days: int = 30,
    products: Sequence[str] = PRODUCTS,
    extra: ExtraFeatures | None = None,
    drop_closed: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Rows (customer, as_of) for every date: customer view + extras + ``label_<product>``.

    Customers closed before ``as_of`` are dropped (they are never offered anything).
    """
    from tqdm.auto import tqdm

    parts = []
    for as_of in tqdm(list(as_of_dates), desc="feature table", disable=not progress):
        as_of = pd.Timestamp(as_of)
        view = build_customer_view(catalog, as_of)
        if drop_closed:
            view = view.loc[~view["is_closed"]]
        if extra is not None:
            more = extra(catalog, as_of, view["customer_id"])
            view = view.merge(more, on="customer_id", how="left", validate="one_to_one")
        labels = signup_labels(catalog, as_of, window_days, view["customer_id"], products)
        part = view.merge(labels, on="customer_id", how="left", validate="one_to_one")
        part.insert(1, "as_of", as_of)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def feature_columns(table: pd.DataFrame) -> list[str]:
    """Raw feature columns a model takes: everything but keys, labels and exclusion flags."""
    return [
        c
        for c in table.columns
        if c not in KEYS and c not in NOT_FEATURES and not c.startswith("label_")
    ]


def view_feature_columns() -> list[str]:
    """The customer-view part of :func:`feature_columns` (the raw input of the logged model)."""
    return [c for c in data_dictionary() if c not in NOT_FEATURES]


RATE_WINDOWS: tuple[int, ...] = (7, 30, 90)


def derived_features(X: pd.DataFrame) -> dict[str, pd.Series]:
    """Per-product rates a tree cannot form from counts by itself, from view columns present.

    Why: how often a customer browses a product scales with the need *and* with how often they
    log in at all (digital affinity, a nuisance here); the share of a product's page views that
    are long reads does not depend on activity. ``pv_rate_<p>_<w>d`` = product page views per
    login, ``long_share_<p>_<w>d`` = long reads per product page view, ``pv_share_<p>_<w>d`` =
    the product's share of all page views. Missing inputs (an old view): nothing derived.
    """
    out: dict[str, pd.Series] = {}
    for p in PRODUCTS:
        for w in RATE_WINDOWS:
            pv, logins, views = f"pv_{p}_{w}d", f"logins_{w}d", f"page_views_{w}d"
            long_reads = f"long_views_{p}_{w}d"
            if pv in X and logins in X:
                out[f"pv_rate_{p}_{w}d"] = X[pv] / X[logins].clip(lower=1)
            if pv in X and views in X:
                out[f"pv_share_{p}_{w}d"] = X[pv] / X[views].clip(lower=1)
            if long_reads in X and pv in X:
                out[f"long_share_{p}_{w}d"] = X[long_reads] / X[pv].clip(lower=1)
    return out


def model_matrix(rows: pd.DataFrame, columns: Sequence[str], derived: bool = True) -> pd.DataFrame:
    """Raw feature rows -> all-float matrix: one-hot categoricals (closed vocabularies, so the
    same columns at training and serving time), bools as 0/1, nullable ints with NaN, then
    (``derived``) the per-product rates of :func:`derived_features` — computed here, from the
    raw columns, so serving needs nothing but the view."""
    out = {}
    for c in columns:
        s = rows[c]
        if c in CATEGORICAL:
            for v in CATEGORICAL[c]:
                out[f"{c}={v}"] = (s.astype("string") == v).fillna(False).astype("float64")
        elif (
            pd.api.types.is_bool_dtype(s)
            or s.dtype == object
            and s.dropna().isin([True, False]).all()
        ):
            out[c] = s.astype("float64")
        else:
            out[c] = pd.to_numeric(s, errors="coerce").astype("float64")
    X = pd.DataFrame(out, index=rows.index)
    if derived:
        more = derived_features(X)
        if more:
            X = pd.concat([X, pd.DataFrame(more, index=rows.index)], axis=1)
    return X
