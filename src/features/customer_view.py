"""The unified customer view as of T: one row per customer, every feature point-in-time correct.

The view is ``sql/customer_view.sql`` run by DuckDB over the raw Parquet files, on top of the
identity stitching stages (anonymous events count for the customer their session resolves to).
T is a parameter; only events strictly before T, holdings open at T and customers who joined
before T enter. :func:`data_dictionary` documents every column in the order the SQL returns it;
``benchmarks/harness/customer_view_pandas.py`` computes the same table with plain pandas (baseline and cross-check).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import duckdb
import pandas as pd

from src.data.catalog import Catalog
from src.data.schemas import KRW_REFERENCE_RATES
from src.features.identity import connect_tables, register_stages
from src.features.sql_templates import LONG_READ_SECONDS, PAGE_GROUPS, WINDOWS, template_context

__all__ = [
    "KRW_REFERENCE_RATES",
    "LONG_READ_SECONDS",
    "PAGE_GROUPS",
    "VIEW_STAGES",
    "WINDOWS",
    "build_customer_view",
    "coerce_view",
    "data_dictionary",
    "write_customer_view",
]  # KRW_REFERENCE_RATES (schemas.py) renders sql/fx_rates.sql. WINDOWS, PAGE_GROUPS and
# LONG_READ_SECONDS live in sql_templates.py: identity.py renders session_keys.sql from them too

VIEW_STAGES: tuple[str, ...] = (
    "session_keys",
    "identity_map",
    "session_map",
    "fx_rates",
    "customer_view",
)
"""SQL stages the view needs, in dependency order (each registered as a view of that name).
No ``stitched_clicks``: the view sums ``session_keys``' per-session counts through
``session_map`` instead of stitching tens of millions of single events."""

DUE_FEATURES: dict[str, str] = {
    "days_to_card_payment": "days from T's date to the next card payment day of an open card "
    "(0 = due on T's date; day clamped to month end); null without a card",
    "days_to_savings_maturity": "days to the nearest maturity date (on/after T's date) of open "
    "savings; null if none",
    "days_to_loan_interest": "days to the next loan interest day of an open loan; null without",
    "days_to_auto_transfer_end": "days to the nearest end date (on/after T's date) of an open "
    "auto-transfer; null if none",
}


def data_dictionary() -> dict[str, tuple[str, str]]:
    """Every view column -> (pandas dtype, meaning), in the order the view returns them.

    Counts and amounts are 0 when there is nothing to count; "days" features are null when
    the thing does not exist. Windows are the last N days before T, T excluded. The loops run
    over :func:`~src.features.sql_templates.template_context`, the values the SQL is rendered
    from, so a new window, page group or product is one edit of a constant.
    """
    shape = template_context()
    d: dict[str, tuple[str, str]] = {
        "customer_id": ("str", "customer key"),
        "age": ("int64", "year(T) - birth_year"),
        "gender": ("str", "F | M"),
        "life_stage": ("str", "schemas.LIFE_STAGES"),
        "income_band": ("str", "schemas.INCOME_BANDS"),
        "region": ("str", "schemas.REGIONS"),
        "tenure_days": ("int64", "days from the join date to T's date"),
        "consent_push": ("bool", "may be contacted by push"),
        "consent_sms": ("bool", "may be contacted by SMS"),
        "consent_messenger": ("bool", "may be contacted by messenger"),
        "consent_email": ("bool", "may be contacted by email"),
        "is_accident_reported": ("bool", "an accident (fraud/loss) was reported before T: exclude"),
        "is_closed": ("bool", "the customer closed the relationship before T: exclude"),
    }
    for t in shape["holding_types"]:
        d[f"n_{t}"] = ("int64", f"open {t} holdings at T (opened before T, not closed before T)")
    for t in shape["holding_types"]:
        d[f"balance_{t}"] = ("float64", f"sum of balances of open {t} holdings (null balance = 0)")
    for name, meaning in DUE_FEATURES.items():
        d[name] = ("Int64", meaning)
    d["fund_return_pct_avg"] = ("float64", "mean return (%) of open funds; null without a fund")

    def windowed(stem: str, dtype: str, meaning: str) -> None:
        for w in shape["windows"]:
            d[f"{stem}_{w}d"] = (dtype, f"{meaning}, last {w} days")

    scope = "stitched web+app events (anonymous ones included once resolved)"
    windowed("sessions", "int64", f"sessions with an event in the window, {scope}")
    windowed("app_share", "float64", "share of those sessions with an app event; null if none")
    windowed("page_views", "int64", f"page views (action 'view'), {scope}")
    windowed("dwell_seconds", "float64", f"total dwell seconds over all events, {scope}")
    for group, prefixes in shape["page_groups"].items():
        windowed(f"pv_{group}", "int64", f"page views on {'/'.join(prefixes)}* pages")
    windowed("logins", "int64", "login events (action 'login')")
    d["days_since_last_session"] = ("Int64", "days from the last session's date to T's date")
    for code in shape["txn_codes"]:
        windowed(f"txn_{code.lower()}_cnt", "int64", f"{code} transactions")
        windowed(
            f"txn_{code.lower()}_amt_krw",
            "float64",
            f"{code} amount in KRW (foreign currency at KRW_REFERENCE_RATES)",
        )
    windowed("n_currencies", "int64", "distinct transaction currencies")
    d["days_since_last_txn"] = ("Int64", "days from the last transaction's date to T's date")
    # Per-product need signals (appended, so earlier columns keep their positions): a long read
    # (>= LONG_READ_SECONDS on a product page) and a past signup of the product are the two
    # behaviours whose rate rises most steeply with the latent need (measured in issue 4).
    for product in shape["products"]:
        windowed(
            f"long_views_{product}",
            "int64",
            f"views of {product}* pages with dwell >= {shape['long_read_seconds']} s, {scope}",
        )
    for product in shape["products"]:
        windowed(f"signups_{product}", "int64", f"PRODUCT_SIGNUP transactions for {product}")
    return d


def coerce_view(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of :func:`data_dictionary`, so both engines hand back one shape."""
    dictionary = data_dictionary()
    missing = set(dictionary) - set(df.columns)
    extra = set(df.columns) - set(dictionary)
    if missing or extra:
        raise ValueError(f"view columns differ from the data dictionary: {missing=} {extra=}")
    out = df[list(dictionary)].astype({c: dtype for c, (dtype, _) in dictionary.items()})
    return out.reset_index(drop=True).copy()  # copy: one block per dtype, not one per column


def build_customer_view(
    catalog: Catalog,
    as_of: datetime | date | str,
    con: duckdb.DuckDBPyConnection | None = None,
) -> pd.DataFrame:
    """The customer view as of ``as_of`` from the catalog's validated tables, by customer.

    Pass ``con`` to reuse a connection (its source views are (re)registered from the catalog).
    """
    if as_of is None:
        raise ValueError("the customer view needs an as_of date")
    con = connect_tables(catalog, con)
    register_stages(con, VIEW_STAGES, as_of)
    return coerce_view(con.sql("SELECT * FROM customer_view").df())


def write_customer_view(catalog: Catalog, as_of: datetime | date | str) -> Path:
    """Write the catalog's ``customer_view`` for ``as_of`` straight from DuckDB to Parquet."""
    path = catalog.path("customer_view", as_of)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect_tables(catalog)
    register_stages(con, VIEW_STAGES, as_of)
    quoted = "'" + str(path).replace("'", "''") + "'"
    con.execute(f"COPY (SELECT * FROM customer_view) TO {quoted} (FORMAT parquet)")
    con.close()
    return path
