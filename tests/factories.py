"""Small, valid raw tables that satisfy the contract and each other's references.

Tests break one thing at a time on top of these, so any failure is the one the test made.
Frames are built fresh on every call (no shared state between tests).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.data.catalog import Catalog
from src.data.loaders import write_table
from src.data.schemas import TABLES

N_CUSTOMERS = 4


def _ts(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), format="ISO8601"), dtype="datetime64[ns]")


def make_customers() -> pd.DataFrame:
    """Four customers; one has an accident report, one has closed."""
    return pd.DataFrame(
        {
            "customer_id": ["C0001", "C0002", "C0003", "C0004"],
            "birth_year": [1961, 1988, 2001, 1975],
            "gender": ["F", "M", "F", "M"],
            "life_stage": ["retiree", "family", "student", "mid_career"],
            "income_band": ["mid", "upper_mid", "low", "high"],
            "region": ["seoul", "busan", "gyeonggi", "other"],
            "joined_at": _ts(
                "2015-03-01 09:00:00",
                "2019-07-15 14:30:00",
                "2024-02-29 00:00:00",
                "2010-12-31 23:59:59",
            ),
            "consent_push": [True, True, False, True],
            "consent_sms": [False, True, True, True],
            "consent_messenger": [True, False, False, True],
            "consent_email": [False, False, True, True],
            "consent_night": [True, False, False, True],
            "accident_reported_at": _ts("NaT", "2025-11-02 10:00:00", "NaT", "NaT"),
            "closed_at": _ts("NaT", "NaT", "NaT", "2025-12-01 00:00:00"),
            "timezone": pd.array([None, "Europe/London", None, None], dtype="str"),
        }
    )


def make_holdings() -> pd.DataFrame:
    """A loan, a card, a savings account with a maturity date and a fund."""
    return pd.DataFrame(
        {
            "holding_id": ["H001", "H002", "H003", "H004"],
            "customer_id": ["C0001", "C0001", "C0002", "C0003"],
            "holding_type": ["loan", "card", "savings", "fund"],
            "product_code": ["LN-CREDIT", "CD-BASIC", "SV-12M", "FD-GLOBAL"],
            "opened_at": _ts("2023-01-10", "2020-05-05", "2025-02-01", "2025-06-30 12:00:00"),
            "closed_at": _ts("NaT", "NaT", "NaT", "NaT"),
            "balance": [12_500_000.0, None, 3_000_000.0, 1_234_567.5],
            "card_payment_day": pd.array([None, 25, None, None], dtype="Int64"),
            "maturity_date": _ts("NaT", "NaT", "2026-02-01", "NaT"),
            "loan_interest_day": pd.array([15, None, None, None], dtype="Int64"),
            "auto_transfer_end_date": _ts("NaT", "NaT", "NaT", "NaT"),
            "fund_return_pct": [None, None, None, -3.25],
        }
    )


def make_clickstream() -> pd.DataFrame:
    """One anonymous web visit and one logged-in app session."""
    return pd.DataFrame(
        {
            "event_id": [1, 2, 3, 4, 5],
            "ts": _ts(
                "2026-01-02 08:00:00",
                "2026-01-02 08:00:30",
                "2026-01-03 21:10:00",
                "2026-01-03 21:10:05",
                "2026-01-03 21:11:00",
            ),
            "channel": ["web", "web", "app", "app", "app"],
            "device_id": ["D-web-1", "D-web-1", "D-app-9", "D-app-9", "D-app-9"],
            "cookie_id": ["ck-1", "ck-1", None, None, None],
            "customer_id": [None, None, "C0002", "C0002", "C0002"],
            "session_id": [100, 100, 200, 200, 200],
            "page": ["home", "loan_main", "login", "loan_limit_inquiry", "loan_limit_result"],
            "action": ["view", "click", "login", "submit", "view"],
            "dwell_seconds": [12.5, 40.0, 3.0, 55.25, 0.0],
            "referrer": ["search", "direct", "push", "direct", "direct"],
        }
    )


def make_transactions() -> pd.DataFrame:
    """Event ids continue after the clickstream's: they are unique across both tables."""
    return pd.DataFrame(
        {
            "event_id": [101, 102, 103, 104],
            "ts": _ts(
                "2026-01-03 21:11:30",
                "2026-01-04 10:00:00",
                "2026-01-05 00:00:00",
                "2026-01-06 13:45:10",
            ),
            "customer_id": ["C0002", "C0001", "C0003", "C0004"],
            "code": ["LOAN_LIMIT_INQUIRY", "CARD_PAYMENT", "FX_REMIT", "DEPOSIT"],
            "channel": ["app", "web", "app", "branch"],
            "amount": [0.0, 45_000.0, 1_500.75, 2_000_000.0],
            "currency": ["KRW", "KRW", "USD", "KRW"],
            "product": ["loan", "card", "fx", None],
            "session_id": pd.array([200, None, None, None], dtype="Int64"),
        }
    )


def make_offers() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "offer_id": ["O-LOAN-1", "O-SAV-1", "O-FX-1"],
            "slot": ["home_banner", "account_message", "events_for_me"],
            "product": ["loan", "savings", "fx"],
            "creative": ["Check your limit in 1 minute", "12-month savings 3.5%", "FX fee 90% off"],
            "value_krw": [120_000.0, 30_000.0, 8_000.0],
            "cost_krw": [10.0, 5.0, 0.0],
        }
    )


def make_exposures() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "decision_id": ["X1", "X2", "X3"],
            "ts": _ts("2026-01-03 21:10:01", "2026-01-04 09:00:00", "2026-01-05 12:00:00"),
            "customer_id": ["C0002", "C0001", "C0003"],
            "slot": ["home_banner", "account_message", "events_for_me"],
            "channel": ["app", "web", "app"],
            "offer_id": ["O-LOAN-1", "O-SAV-1", "O-FX-1"],
            "logged_prob": [0.5, 0.25, 1.0],
            "click": [True, False, True],
            "convert": [True, False, False],
        }
    )


_MAKERS = {
    "customers": make_customers,
    "holdings": make_holdings,
    "clickstream": make_clickstream,
    "transactions": make_transactions,
    "offers": make_offers,
    "exposures": make_exposures,
}


def make_valid_table(name: str) -> pd.DataFrame:
    """One valid raw table by name (same columns, same order as the contract)."""
    df = _MAKERS[name]()
    return df[list(TABLES[name].to_schema().columns)]


def make_valid_tables() -> dict[str, pd.DataFrame]:
    """Every table in ``TABLES``: valid on its own and referentially consistent."""
    return {name: make_valid_table(name) for name in TABLES}


def validated_catalog(tables: dict[str, pd.DataFrame], data_dir: Path) -> Catalog:
    """A catalog whose validated layer holds ``tables``, each checked against the contract.

    For tests of what comes after validation (views, stitching, labels): every frame still goes
    through ``write_table``'s validation, but the tables need not form a complete bank.
    """
    catalog = Catalog(Path(data_dir))
    for name, df in tables.items():
        write_table(df, name, catalog.validated_dir)
    return catalog
