"""The customer view (and identity stitching) in plain pandas.

Two jobs: the baseline the DuckDB SQL is benchmarked against, and an independent
implementation to cross-check it (a test asserts both views are equal). It is written the way
a data scientist would write it in a notebook — filters, groupby, merge, unstack — not tuned
and not deliberately slow. The semantics are those of ``src/features/sql/*.sql``; see their
headers.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.schemas import HOLDING_TYPES, PRODUCTS, TXN_CODES
from src.features.customer_view import (
    KRW_REFERENCE_RATES,
    LONG_READ_SECONDS,
    PAGE_GROUPS,
    WINDOWS,
    coerce_view,
    data_dictionary,
)
from src.features.identity import RAW_TABLES


def load_tables(
    raw_dir: Path | str, tables: tuple[str, ...] = RAW_TABLES
) -> dict[str, pd.DataFrame]:
    """Read ``<raw_dir>/<table>.parquet`` for every table the view needs."""
    return {t: pd.read_parquet(Path(raw_dir) / f"{t}.parquet") for t in tables}


def _before(df: pd.DataFrame, as_of: pd.Timestamp | None) -> pd.DataFrame:
    return df if as_of is None else df[df["ts"] < as_of]


def identity_map_pandas(
    clickstream: pd.DataFrame, as_of: datetime | date | str | None = None
) -> pd.DataFrame:
    """Device/cookie -> customer from logged-in events before ``as_of`` (see identity_map.sql)."""
    as_of = None if as_of is None else pd.Timestamp(as_of)
    logged = _before(clickstream, as_of)
    logged = logged[logged["customer_id"].notna()]
    devices = logged.assign(identifier_type="device", identifier=logged["device_id"])
    cookies = logged[logged["cookie_id"].notna()]
    cookies = cookies.assign(identifier_type="cookie", identifier=cookies["cookie_id"])
    out = (
        pd.concat([devices, cookies])
        .groupby(["identifier_type", "identifier"])
        .agg(
            some_customer=("customer_id", "min"),
            n_customers=("customer_id", "nunique"),
            n_logins=("session_id", "nunique"),
            first_login_ts=("ts", "min"),
            last_login_ts=("ts", "max"),
        )
        .reset_index()
    )
    out["is_shared"] = out["n_customers"] > 1
    out["customer_id"] = out["some_customer"].where(~out["is_shared"])
    return out[
        [
            "identifier_type",
            "identifier",
            "customer_id",
            "n_customers",
            "n_logins",
            "first_login_ts",
            "last_login_ts",
            "is_shared",
        ]
    ]


def session_map_pandas(
    clickstream: pd.DataFrame, as_of: datetime | date | str | None = None
) -> pd.DataFrame:
    """Session -> customer and how it was resolved (see session_map.sql for the rules)."""
    as_of = None if as_of is None else pd.Timestamp(as_of)
    clicks = _before(clickstream, as_of)
    ids = identity_map_pandas(clickstream, as_of)

    sessions = clicks.groupby("session_id").agg(
        n_login_customers=("customer_id", "nunique"), login_customer_id=("customer_id", "min")
    )
    devices = clicks[["session_id", "device_id"]].drop_duplicates()
    devices = devices.rename(columns={"device_id": "identifier"}).assign(identifier_type="device")
    cookies = clicks.loc[clicks["cookie_id"].notna(), ["session_id", "cookie_id"]].drop_duplicates()
    cookies = cookies.rename(columns={"cookie_id": "identifier"}).assign(identifier_type="cookie")
    links = pd.concat([devices, cookies]).merge(
        ids, on=["identifier_type", "identifier"], how="left"
    )
    links["device_resolves"] = (links["identifier_type"] == "device") & links["customer_id"].notna()
    links["is_shared"] = links["is_shared"].fillna(False).astype(bool)
    candidates = links.groupby("session_id").agg(
        n_candidates=("customer_id", "nunique"),
        candidate_customer_id=("customer_id", "min"),
        any_shared=("is_shared", "any"),
        device_resolves=("device_resolves", "any"),
    )
    s = sessions.join(candidates).reset_index()

    inferred = (s["n_login_customers"] == 0) & ~s["any_shared"] & (s["n_candidates"] == 1)
    s["customer_id"] = np.where(
        s["n_login_customers"] == 1,
        s["login_customer_id"],
        np.where(inferred, s["candidate_customer_id"], None),
    )
    s["customer_id"] = s["customer_id"].astype("str").where(s["customer_id"].notna())
    s["resolution"] = np.select(
        [
            s["n_login_customers"] == 1,
            s["n_login_customers"] > 1,
            s["any_shared"],
            s["n_candidates"] > 1,
            (s["n_candidates"] == 1) & s["device_resolves"],
            s["n_candidates"] == 1,
        ],
        ["login", "multi_login", "shared_identifier", "ambiguous", "device", "cookie"],
        default="unknown",
    )
    return s[["session_id", "customer_id", "resolution", "n_login_customers"]]


def stitch_clicks_pandas(
    clickstream: pd.DataFrame, as_of: datetime | date | str | None = None
) -> pd.DataFrame:
    """Clicks before ``as_of``; anonymous ones take their session's customer (if resolved)."""
    as_of = None if as_of is None else pd.Timestamp(as_of)
    clicks = _before(clickstream, as_of)
    sessions = session_map_pandas(clickstream, as_of)
    out = clicks.merge(
        sessions[["session_id", "customer_id", "resolution"]].rename(
            columns={"customer_id": "session_customer_id"}
        ),
        on="session_id",
        how="left",
    )
    out["customer_id"] = out["customer_id"].fillna(out["session_customer_id"])
    return out.drop(columns="session_customer_id")


def _page_group(page: pd.Series) -> pd.Series:
    group = pd.Series(pd.NA, index=page.index, dtype="str")
    for name, prefixes in PAGE_GROUPS.items():
        group = group.mask(page.str.startswith(prefixes), name)
    return group


def _days_to_day_of_month(day: pd.Series, as_of_date: pd.Timestamp) -> pd.Series:
    """Days to the next ``day`` of month (this month if not past, else next; clamped)."""
    day = day.astype("float64")
    this_month = as_of_date + pd.to_timedelta(
        np.minimum(day, as_of_date.days_in_month) - as_of_date.day, unit="D"
    )
    next_month = (as_of_date + pd.DateOffset(months=1)).replace(day=1)
    next_due = next_month + pd.to_timedelta(np.minimum(day, next_month.days_in_month) - 1, unit="D")
    due = this_month.where(this_month >= as_of_date, next_due)
    return (due - as_of_date).dt.days


def _holding_features(holdings: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    as_of_date = as_of.normalize()
    open_ = holdings[
        (holdings["opened_at"] < as_of)
        & (holdings["closed_at"].isna() | (holdings["closed_at"] >= as_of))
    ].copy()
    by_type = open_.groupby(["customer_id", "holding_type"])
    counts = by_type.size().unstack().reindex(columns=list(HOLDING_TYPES)).add_prefix("n_")
    balances = (
        by_type["balance"]
        .sum()
        .unstack()
        .reindex(columns=list(HOLDING_TYPES))
        .add_prefix("balance_")
    )

    open_["days_to_card_payment"] = _days_to_day_of_month(open_["card_payment_day"], as_of_date)
    open_["days_to_loan_interest"] = _days_to_day_of_month(open_["loan_interest_day"], as_of_date)
    open_["days_to_savings_maturity"] = (open_["maturity_date"].dt.normalize() - as_of_date).dt.days
    open_["days_to_auto_transfer_end"] = (
        open_["auto_transfer_end_date"].dt.normalize() - as_of_date
    ).dt.days

    def future(col):
        return open_[col].where(open_[col] >= 0)

    dues = pd.DataFrame(
        {
            "customer_id": open_["customer_id"],
            "days_to_card_payment": open_["days_to_card_payment"].where(
                open_["holding_type"] == "card"
            ),
            "days_to_savings_maturity": future("days_to_savings_maturity").where(
                open_["holding_type"] == "savings"
            ),
            "days_to_loan_interest": open_["days_to_loan_interest"].where(
                open_["holding_type"] == "loan"
            ),
            "days_to_auto_transfer_end": future("days_to_auto_transfer_end").where(
                open_["holding_type"] == "auto_transfer"
            ),
            "fund_return_pct_avg": open_["fund_return_pct"].where(open_["holding_type"] == "fund"),
        }
    )
    dues = dues.groupby("customer_id").agg(
        days_to_card_payment=("days_to_card_payment", "min"),
        days_to_savings_maturity=("days_to_savings_maturity", "min"),
        days_to_loan_interest=("days_to_loan_interest", "min"),
        days_to_auto_transfer_end=("days_to_auto_transfer_end", "min"),
        fund_return_pct_avg=("fund_return_pct_avg", "mean"),
    )
    return counts.join(balances, how="outer").join(dues, how="outer")


def _activity_features(clicks: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    clicks = clicks[clicks["customer_id"].notna()].copy()
    clicks["page_group"] = _page_group(clicks["page"])
    parts = [clicks.groupby("customer_id")["ts"].max().rename("last_session_ts")]
    for w in WINDOWS:
        win = clicks[clicks["ts"] >= as_of - pd.Timedelta(days=w)]
        views = win[win["action"] == "view"]
        by_customer = win.groupby("customer_id")
        parts += [
            by_customer["session_id"].nunique().rename(f"sessions_{w}d"),
            win[win["channel"] == "app"]
            .groupby("customer_id")["session_id"]
            .nunique()
            .rename(f"app_sessions_{w}d"),
            views.groupby("customer_id").size().rename(f"page_views_{w}d"),
            by_customer["dwell_seconds"].sum().rename(f"dwell_seconds_{w}d"),
            win[win["action"] == "login"].groupby("customer_id").size().rename(f"logins_{w}d"),
            views.groupby(["customer_id", "page_group"])
            .size()
            .unstack()
            .reindex(columns=list(PAGE_GROUPS))
            .rename(columns=lambda g, w=w: f"pv_{g}_{w}d"),
        ]
        long_reads = views[views["dwell_seconds"] >= LONG_READ_SECONDS]
        for product in PRODUCTS:
            parts.append(
                long_reads[long_reads["page"].str.startswith(product)]
                .groupby("customer_id")
                .size()
                .rename(f"long_views_{product}_{w}d")
            )
    out = pd.concat(parts, axis=1)
    for w in WINDOWS:
        out[f"app_share_{w}d"] = out[f"app_sessions_{w}d"].fillna(0) / out[f"sessions_{w}d"]
    return out


def _transaction_features(transactions: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    txn = transactions[transactions["ts"] < as_of].copy()
    txn["amount_krw"] = txn["amount"] * txn["currency"].map(KRW_REFERENCE_RATES)
    parts = [txn.groupby("customer_id")["ts"].max().rename("last_txn_ts")]
    for w in WINDOWS:
        win = txn[txn["ts"] >= as_of - pd.Timedelta(days=w)]
        by_code = win.groupby(["customer_id", "code"])
        codes = list(TXN_CODES)
        parts += [
            by_code.size()
            .unstack()
            .reindex(columns=codes)
            .rename(columns=lambda c, w=w: f"txn_{c.lower()}_cnt_{w}d"),
            by_code["amount_krw"]
            .sum()
            .unstack()
            .reindex(columns=codes)
            .rename(columns=lambda c, w=w: f"txn_{c.lower()}_amt_krw_{w}d"),
            win.groupby("customer_id")["currency"].nunique().rename(f"n_currencies_{w}d"),
            win[win["code"] == "PRODUCT_SIGNUP"]
            .groupby(["customer_id", "product"])
            .size()
            .unstack()
            .reindex(columns=list(PRODUCTS))
            .rename(columns=lambda p, w=w: f"signups_{p}_{w}d"),
        ]
    return pd.concat(parts, axis=1)


def build_customer_view_pandas(
    tables: dict[str, pd.DataFrame], as_of: datetime | date | str
) -> pd.DataFrame:
    """The customer view as of ``as_of`` from in-memory raw tables (same columns as the SQL)."""
    as_of = pd.Timestamp(as_of)
    as_of_date = as_of.normalize()
    customers = tables["customers"]
    customers = customers[customers["joined_at"] < as_of]

    view = pd.DataFrame(
        {
            "customer_id": customers["customer_id"],
            "age": as_of.year - customers["birth_year"],
            "gender": customers["gender"],
            "life_stage": customers["life_stage"],
            "income_band": customers["income_band"],
            "region": customers["region"],
            "tenure_days": (as_of_date - customers["joined_at"].dt.normalize()).dt.days,
            "consent_push": customers["consent_push"],
            "consent_sms": customers["consent_sms"],
            "consent_messenger": customers["consent_messenger"],
            "consent_email": customers["consent_email"],
            "is_accident_reported": customers["accident_reported_at"] < as_of,
            "is_closed": customers["closed_at"] < as_of,
        }
    )
    clicks = stitch_clicks_pandas(tables["clickstream"], as_of)
    for features in (
        _holding_features(tables["holdings"], as_of),
        _activity_features(clicks, as_of),
        _transaction_features(tables["transactions"], as_of),
    ):
        view = view.merge(features, left_on="customer_id", right_index=True, how="left")

    view["days_since_last_session"] = (as_of_date - view["last_session_ts"].dt.normalize()).dt.days
    view["days_since_last_txn"] = (as_of_date - view["last_txn_ts"].dt.normalize()).dt.days
    zero_filled = [
        c
        for c, (dtype, _) in data_dictionary().items()
        if dtype in ("int64", "float64")
        and not c.startswith(("app_share", "fund_return", "age", "tenure"))
    ]
    view[zero_filled] = view[zero_filled].fillna(0)
    helpers = ["last_session_ts", "last_txn_ts", *(f"app_sessions_{w}d" for w in WINDOWS)]
    return coerce_view(view.drop(columns=helpers).sort_values("customer_id"))
