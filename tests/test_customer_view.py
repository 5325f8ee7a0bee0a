"""The customer view as of T: hand-computed values, point-in-time safety, pandas parity, Spark."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import sqlglot
from factories import validated_catalog

from benchmarks.harness.customer_view_pandas import build_customer_view_pandas, load_tables
from src.data import schemas
from src.data.catalog import Catalog
from src.features import customer_view as cv
from src.features.identity import load_sql, sql_files
from src.features.spark import spark_stages, to_spark_sql

T = pd.Timestamp("2026-03-10")
DTYPES = {
    "customers": {
        "birth_year": "int64",
        "joined_at": "datetime64[us]",
        "accident_reported_at": "datetime64[us]",
        "closed_at": "datetime64[us]",
    },
    "holdings": {
        "opened_at": "datetime64[us]",
        "closed_at": "datetime64[us]",
        "balance": "float64",
        "card_payment_day": "Int64",
        "maturity_date": "datetime64[us]",
        "loan_interest_day": "Int64",
        "auto_transfer_end_date": "datetime64[us]",
        "fund_return_pct": "float64",
    },
    "clickstream": {
        "event_id": "int64",
        "ts": "datetime64[us]",
        "cookie_id": "str",
        "customer_id": "str",
        "session_id": "int64",
        "dwell_seconds": "float64",
    },
    "transactions": {
        "event_id": "int64",
        "ts": "datetime64[us]",
        "amount": "float64",
        "product": "str",
        "session_id": "Int64",
    },
}


def frame(table: str, rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with exactly the schemas.py columns of ``table``."""
    columns = list(schemas.TABLES[table].to_schema().columns)
    return pd.DataFrame(rows, columns=columns).astype(DTYPES[table])


def customer(cid, birth_year, joined, accident=None, closed=None, **kw) -> dict:
    return {
        "customer_id": cid,
        "birth_year": birth_year,
        "gender": kw.get("gender", "F"),
        "life_stage": kw.get("life_stage", "first_job"),
        "income_band": "mid",
        "region": kw.get("region", "seoul"),
        "joined_at": pd.Timestamp(joined),
        "consent_push": True,
        "consent_sms": False,
        "consent_messenger": True,
        "consent_email": False,
        "accident_reported_at": accident and pd.Timestamp(accident),
        "closed_at": closed and pd.Timestamp(closed),
    }


def holding(hid, cid, htype, opened, closed=None, balance=None, **kw) -> dict:
    return {
        "holding_id": hid,
        "customer_id": cid,
        "holding_type": htype,
        "product_code": "P",
        "opened_at": pd.Timestamp(opened),
        "closed_at": closed and pd.Timestamp(closed),
        "balance": balance,
        "card_payment_day": kw.get("card_day"),
        "maturity_date": kw.get("maturity"),
        "loan_interest_day": kw.get("interest_day"),
        "auto_transfer_end_date": kw.get("at_end"),
        "fund_return_pct": kw.get("ret"),
    }


def click(eid, ts, sid, device, cid=None, page="home", action="view", dwell=1.0, app=False):
    return {
        "event_id": eid,
        "ts": pd.Timestamp(ts),
        "channel": "app" if app else "web",
        "device_id": device,
        "cookie_id": None if app else f"c-{device}",
        "customer_id": cid,
        "session_id": sid,
        "page": page,
        "action": action,
        "dwell_seconds": dwell,
        "referrer": "direct",
    }


def txn(eid, ts, cid, code, amount, currency="KRW") -> dict:
    return {
        "event_id": eid,
        "ts": pd.Timestamp(ts),
        "customer_id": cid,
        "code": code,
        "channel": "app",
        "amount": amount,
        "currency": currency,
        "product": None,
        "session_id": None,
    }


def tiny_bank() -> dict[str, pd.DataFrame]:
    """Four customers; every expected value in test_hand_computed_view is worked out below."""
    customers = [
        customer("A", 1990, "2025-03-10"),
        customer(
            "B",
            1960,
            "2020-01-01",
            accident="2026-02-01",
            closed="2026-03-05",
            gender="M",
            life_stage="retiree",
            region="busan",
        ),
        customer("C", 1985, "2026-03-10"),  # joins exactly at T: not in the view
        customer("D", 2000, "2026-01-01", accident="2026-03-10", closed="2026-04-01"),
    ]
    holdings = [
        holding("h1", "A", "account", "2025-03-10", balance=1_000_000.0),
        holding("h2", "A", "account", "2025-06-01", balance=500_000.0),
        holding("h3", "A", "card", "2025-04-01", card_day=25),  # Mar 25: 15 days
        holding("h4", "A", "card", "2025-04-01", card_day=5),  # Apr 5: 26 days
        holding("h5", "A", "loan", "2025-05-01", balance=10_000_000.0, interest_day=31),  # 21
        holding(
            "h6",
            "A",
            "savings",
            "2025-04-09",
            balance=2_000_000.0,
            maturity=pd.Timestamp("2026-04-09"),
        ),  # 30 days
        holding(
            "h7",
            "A",
            "savings",
            "2025-03-01",
            balance=1_000_000.0,
            maturity=pd.Timestamp("2026-03-01"),
        ),  # matured, still open: no "days to"
        holding("h8", "A", "fund", "2025-07-01", balance=100_000.0, ret=5.0),
        holding("h9", "A", "fund", "2025-07-01", closed="2026-03-01", balance=9e9, ret=-10.0),
        holding("h10", "A", "auto_transfer", "2025-07-01", at_end=pd.Timestamp("2026-03-10")),
        holding("h11", "A", "pension", "2026-03-10", balance=7e7),  # opened at T: not yet
        holding("h12", "A", "fund", "2026-01-01", closed="2026-03-10", balance=50_000.0, ret=3.0),
        holding("h13", "D", "card", "2026-01-02", card_day=10),  # due on T's date: 0
        holding("h14", "D", "loan", "2026-01-02", balance=1.0, interest_day=9),  # Apr 9: 30
    ]
    clicks = [
        # A, s1 web on dA: anonymous view, login, loan page (7d)
        click(1, "2026-03-09 10:00", 1, "dA", dwell=10.0),
        click(2, "2026-03-09 10:01", 1, "dA", "A", page="login", action="login", dwell=5.0),
        click(3, "2026-03-09 10:02", 1, "dA", "A", page="loan_main", dwell=20.0),
        # A, s2 app, logged in, 18 days before T (30d): two fx views and a click
        click(4, "2026-02-20 09:00", 2, "dA2", "A", page="fx_main", app=True),
        click(5, "2026-02-20 09:01", 2, "dA2", "A", page="fx_rates", dwell=2.0, app=True),
        click(
            6,
            "2026-02-20 09:02",
            2,
            "dA2",
            "A",
            page="fx_remit_input",
            action="click",
            dwell=3.0,
            app=True,
        ),
        # A via device dA, no login (7d)
        click(7, "2026-03-08 12:00", 3, "dA", page="savings_list", dwell=7.0),
        click(8, "2026-03-09 23:59:59", 4, "dA", page="error", dwell=4.0),
        # A, 64 days before T (90d only) and 129 days before (outside every window)
        click(9, "2026-01-05 12:00", 7, "dA", "A", page="card_benefits", dwell=8.0),
        click(10, "2025-11-01 12:00", 8, "dA", "A", page="pension_main", dwell=9.0),
        # anonymous session on dX; A logs in on dX only at T: not A's as of T
        click(11, "2026-03-09 08:00", 5, "dX", page="signup_step1", dwell=100.0),
        # D browses anonymously on a device nobody logged into
        click(12, "2026-03-09 08:00", 6, "dD", page="fund_list", dwell=50.0),
    ]
    txns = [
        txn(100, "2026-03-09 12:00", "A", "TRANSFER", 50_000.0),
        txn(101, "2026-03-05 12:00", "A", "TRANSFER", 30_000.0),
        txn(102, "2026-02-15 12:00", "A", "FX_REMIT", 1_000.0, "JPY"),  # 9,500 KRW
        txn(103, "2025-12-20 12:00", "A", "CARD_PAYMENT", 20_000.0),
        txn(104, "2026-03-01 12:00", "B", "FX_REMIT", 100.0, "USD"),  # 140,000 KRW
    ]
    return {
        "customers": frame("customers", customers),
        "holdings": frame("holdings", holdings),
        "clickstream": frame("clickstream", clicks),
        "transactions": frame("transactions", txns),
    }


def future_rows() -> dict[str, pd.DataFrame]:
    """Rows at or after T: none of them may change the view as of T."""
    return {
        "customers": frame("customers", [customer("E", 1999, "2026-03-11")]),
        "holdings": frame(
            "holdings",
            [
                holding("f1", "A", "pension", "2026-03-10 00:00", balance=1e6),
                holding(
                    "f2",
                    "D",
                    "savings",
                    "2026-03-12",
                    balance=1e6,
                    maturity=pd.Timestamp("2026-03-20"),
                ),
            ],
        ),
        "clickstream": frame(
            "clickstream",
            [
                click(900, "2026-03-10 00:00", 5, "dX", "A", page="login", action="login"),
                click(901, "2026-03-10 00:00", 900, "dD", "D", page="login", action="login"),
                click(902, "2026-03-11 09:00", 901, "dA", "A", page="loan_main"),
                click(903, "2026-03-12 09:00", 902, "dA", page="fx_main"),
            ],
        ),
        "transactions": frame(
            "transactions",
            [
                txn(950, "2026-03-10 00:00", "A", "TRANSFER", 1e6),
                txn(951, "2026-03-15 00:00", "B", "FX_REMIT", 5.0, "EUR"),
            ],
        ),
    }


def write_bank(tables: dict[str, pd.DataFrame], data_dir: Path) -> Catalog:
    return validated_catalog(tables, data_dir)


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return write_bank(tiny_bank(), tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def view(bank: Catalog) -> pd.DataFrame:
    return cv.build_customer_view(bank, T).set_index("customer_id")


def test_one_row_per_customer_joined_before_t(view: pd.DataFrame) -> None:
    assert list(view.index) == ["A", "B", "D"]


def test_columns_follow_the_data_dictionary(view: pd.DataFrame) -> None:
    dictionary = cv.data_dictionary()
    assert ["customer_id", *view.columns] == list(dictionary)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", c) for c in dictionary)
    assert all(meaning for _, meaning in dictionary.values())
    flat = view.reset_index()
    assert {c: str(flat[c].dtype) for c in flat} == {c: d for c, (d, _) in dictionary.items()}


def test_demographics_consent_and_exclusions(view: pd.DataFrame) -> None:
    a, b, d = view.loc["A"], view.loc["B"], view.loc["D"]
    assert (a["age"], b["age"], d["age"]) == (36, 66, 26)
    assert (a["tenure_days"], b["tenure_days"], d["tenure_days"]) == (365, 2260, 68)
    assert (b["gender"], b["life_stage"], b["region"]) == ("M", "retiree", "busan")
    assert a["consent_push"] and not a["consent_sms"]
    # accident before T and closed before T: B stays in the view, flagged
    assert b["is_accident_reported"] and b["is_closed"]
    # D's accident is reported exactly at T and the close is after T: not yet
    assert not d["is_accident_reported"] and not d["is_closed"]


def test_holdings_as_of_t(view: pd.DataFrame) -> None:
    a = view.loc["A"]
    assert (a["n_account"], a["n_card"], a["n_loan"], a["n_savings"]) == (2, 2, 1, 2)
    assert (a["n_fund"], a["n_auto_transfer"], a["n_pension"]) == (2, 1, 0)  # h9 closed, h11 new
    assert a["balance_account"] == 1_500_000.0 and a["balance_savings"] == 3_000_000.0
    assert a["balance_fund"] == 150_000.0 and a["balance_card"] == 0.0
    assert a["balance_pension"] == 0.0 and a["balance_loan"] == 10_000_000.0
    assert a["days_to_card_payment"] == 15
    assert a["days_to_loan_interest"] == 21
    assert a["days_to_savings_maturity"] == 30
    assert a["days_to_auto_transfer_end"] == 0
    assert a["fund_return_pct_avg"] == pytest.approx(4.0)
    d = view.loc["D"]
    assert d["days_to_card_payment"] == 0 and d["days_to_loan_interest"] == 30
    assert pd.isna(d["days_to_savings_maturity"]) and pd.isna(d["fund_return_pct_avg"])
    assert view.loc["B", "n_account"] == 0 and pd.isna(view.loc["B", "days_to_card_payment"])


def test_activity_windows(view: pd.DataFrame) -> None:
    a = view.loc["A"]
    got = {
        c: a[c]
        for c in (
            "sessions_7d",
            "sessions_30d",
            "sessions_90d",
            "page_views_7d",
            "page_views_30d",
            "page_views_90d",
            "logins_7d",
            "logins_90d",
            "pv_loan_7d",
            "pv_savings_7d",
            "pv_error_7d",
            "pv_fx_7d",
            "pv_fx_30d",
            "pv_card_30d",
            "pv_card_90d",
            "pv_pension_90d",
            "pv_signup_90d",
            "pv_fund_90d",
            "days_since_last_session",
        )
    }
    assert got == {
        "sessions_7d": 3,
        "sessions_30d": 4,
        "sessions_90d": 5,
        "page_views_7d": 4,
        "page_views_30d": 6,
        "page_views_90d": 7,
        "logins_7d": 1,
        "logins_90d": 1,
        "pv_loan_7d": 1,
        "pv_savings_7d": 1,
        "pv_error_7d": 1,
        "pv_fx_7d": 0,
        "pv_fx_30d": 2,
        "pv_card_30d": 0,
        "pv_card_90d": 1,
        "pv_pension_90d": 0,
        "pv_signup_90d": 0,
        "pv_fund_90d": 0,
        "days_since_last_session": 1,
    }
    assert (a["dwell_seconds_7d"], a["dwell_seconds_30d"], a["dwell_seconds_90d"]) == (46, 52, 60)
    assert (a["app_share_7d"], a["app_share_30d"], a["app_share_90d"]) == (0.0, 0.25, 0.2)
    # D's anonymous browsing cannot be attributed; B has no web/app activity at all
    for cid in ("B", "D"):
        row = view.loc[cid]
        assert row["sessions_90d"] == 0 and row["dwell_seconds_90d"] == 0.0
        assert pd.isna(row["app_share_90d"]) and pd.isna(row["days_since_last_session"])


def test_transactions_by_code(view: pd.DataFrame) -> None:
    a, b = view.loc["A"], view.loc["B"]

    def windows(stem, row):
        return tuple(row[f"{stem}_{w}d"] for w in cv.WINDOWS)

    assert windows("txn_transfer_cnt", a) == (2, 2, 2)
    assert windows("txn_transfer_amt_krw", a) == (80_000.0, 80_000.0, 80_000.0)
    assert windows("txn_fx_remit_cnt", a) == (0, 1, 1)
    assert windows("txn_fx_remit_amt_krw", a) == (0.0, 9_500.0, 9_500.0)
    assert windows("txn_card_payment_cnt", a) == (0, 0, 1)
    assert windows("n_currencies", a) == (1, 2, 2)
    assert a["days_since_last_txn"] == 1
    assert windows("txn_fx_remit_amt_krw", b) == (0.0, 140_000.0, 140_000.0)
    assert b["days_since_last_txn"] == 9 and pd.isna(view.loc["D", "days_since_last_txn"])
    assert view.loc["D", "txn_transfer_cnt_90d"] == 0


def test_long_reads_and_signups_by_product(tmp_path: Path) -> None:
    """A view of >= LONG_READ_SECONDS on a product page is a long read of that product (a
    stitched anonymous one too); a PRODUCT_SIGNUP counts for its own product only."""
    tables = tiny_bank()
    more_clicks = [
        click(
            50,
            "2026-03-09 11:00",
            9,
            "dA",
            "A",
            page="loan_main",
            dwell=float(cv.LONG_READ_SECONDS),
        ),
        click(
            51,
            "2026-03-09 11:05",
            9,
            "dA",
            "A",
            page="loan_limit_result",
            dwell=cv.LONG_READ_SECONDS - 0.1,
        ),
        click(
            52, "2026-02-20 10:00", 10, "dA", page="fund_detail", dwell=400.0
        ),  # anonymous, dA is A's
        click(53, "2026-03-09 11:06", 9, "dA", "A", page="home", dwell=500.0),  # not a product page
        click(
            54, "2026-03-09 11:07", 9, "dA", "A", page="fund_detail", action="click", dwell=500.0
        ),
    ]

    def signup(eid, when, product):
        return {
            **txn(eid, when, "A", "PRODUCT_SIGNUP", 1.0),
            "product": product,
        }

    more_txns = [
        signup(200, "2026-03-08 09:00", "fund"),
        signup(201, "2026-01-20 09:00", "fund"),
        signup(202, "2026-02-25 09:00", "card"),
        signup(203, "2026-03-10 00:00", "loan"),
    ]  # at T
    tables["clickstream"] = pd.concat(
        [tables["clickstream"], frame("clickstream", more_clicks)], ignore_index=True
    )
    tables["transactions"] = pd.concat(
        [tables["transactions"], frame("transactions", more_txns)], ignore_index=True
    )
    raw = write_bank(tables, tmp_path)
    view = cv.build_customer_view(raw, T).set_index("customer_id")
    a = view.loc["A"]

    def windows(stem):
        return tuple(int(a[f"{stem}_{w}d"]) for w in cv.WINDOWS)

    assert windows("long_views_loan") == (1, 1, 1)
    assert windows("long_views_fund") == (0, 1, 1)
    assert windows("signups_fund") == (1, 1, 2)
    assert windows("signups_card") == (0, 1, 1)
    assert windows("signups_loan") == (0, 0, 0)
    assert a["txn_product_signup_cnt_90d"] == 3
    assert view.filter(like="long_views_").drop(index="A").to_numpy().sum() == 0
    pd.testing.assert_frame_equal(
        view.reset_index(),
        build_customer_view_pandas(load_tables(raw.validated_dir), T),
        check_exact=False,
        rtol=1e-9,
    )


def test_view_as_of_t_ignores_everything_at_or_after_t(bank: Catalog, tmp_path: Path) -> None:
    base, later = tiny_bank(), future_rows()
    grown = {name: pd.concat([df, later[name]], ignore_index=True) for name, df in base.items()}
    # a holding closed after T was open at T: closing it later must not change the view either
    grown["holdings"].loc[grown["holdings"]["holding_id"] == "h8", "closed_at"] = T
    grown_dir = write_bank(grown, tmp_path / "grown")
    before = cv.build_customer_view(bank, T)
    after = cv.build_customer_view(grown_dir, T)
    pd.testing.assert_frame_equal(before, after)
    # ...whereas a later as_of does see them (so the test can tell the difference)
    later_view = cv.build_customer_view(grown_dir, "2026-03-13").set_index("customer_id")
    assert later_view.loc["D", "sessions_7d"] >= 1  # D's login on dD now resolves session 6
    assert later_view.loc["A", "n_pension"] == 2  # h11 and f1, both opened at T


def test_pandas_view_matches_hand_bank(bank: Catalog) -> None:
    pd.testing.assert_frame_equal(
        build_customer_view_pandas(load_tables(bank.validated_dir), T),
        cv.build_customer_view(bank, T),
    )


def random_bank(seed: int, n_customers: int = 30, days: int = 120) -> dict[str, pd.DataFrame]:
    """A small random bank with shared devices, multi-login sessions and foreign currencies."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01")
    ids = [f"C{i:03d}" for i in range(n_customers)]

    def pick(values, n):
        return rng.choice(np.array(values, dtype=object), n)

    def ts(n):
        return start + pd.to_timedelta(rng.integers(0, days * 86400, n), unit="s")

    def null_some(arr, p):
        return np.where(rng.random(len(arr)) < p, None, arr)

    customers = pd.DataFrame(
        {
            "customer_id": ids,
            "birth_year": rng.integers(1950, 2005, n_customers),
            "gender": pick(["F", "M"], n_customers),
            "life_stage": pick(schemas.LIFE_STAGES, n_customers),
            "income_band": pick(schemas.INCOME_BANDS, n_customers),
            "region": pick(schemas.REGIONS, n_customers),
            "joined_at": ts(n_customers),
            **{
                f"consent_{c}": rng.random(n_customers) < 0.5
                for c in ("push", "sms", "messenger", "email")
            },
            "accident_reported_at": null_some(ts(n_customers), 0.7),
            "closed_at": null_some(ts(n_customers), 0.7),
        }
    )
    nh = 4 * n_customers
    htype = pick(schemas.HOLDING_TYPES, nh)
    opened = ts(nh)
    holdings = pd.DataFrame(
        {
            "holding_id": [f"H{i}" for i in range(nh)],
            "customer_id": pick(ids, nh),
            "holding_type": htype,
            "product_code": "P",
            "opened_at": opened,
            "closed_at": null_some(
                opened + pd.to_timedelta(rng.integers(1, 90, nh), unit="D"), 0.6
            ),
            "balance": np.where(rng.random(nh) < 0.2, np.nan, rng.integers(0, 10**7, nh)),
            "card_payment_day": pd.array(
                np.where(htype == "card", rng.integers(1, 32, nh), None), dtype="Int64"
            ),
            "maturity_date": null_some(ts(nh) + pd.Timedelta(days=60), 0.3),
            "loan_interest_day": pd.array(
                np.where(htype == "loan", rng.integers(1, 32, nh), None), dtype="Int64"
            ),
            "auto_transfer_end_date": null_some(ts(nh) + pd.Timedelta(days=60), 0.3),
            "fund_return_pct": np.where(htype == "fund", rng.normal(0, 5, nh), np.nan),
        }
    )
    # sessions: a device per session (few devices, so some get shared), a login or not
    ns = 12 * n_customers
    devices = [f"d{i}" for i in range(n_customers)]
    s_device = pick(devices, ns)
    s_web = rng.random(ns) < 0.5
    s_owner = np.array([f"C{int(d[1:]) % n_customers:03d}" for d in s_device], dtype=object)
    s_owner = np.where(rng.random(ns) < 0.15, pick(ids, ns), s_owner)  # borrowed devices
    s_login = rng.random(ns) < 0.5
    rows = []
    event_id = 0
    for s in range(ns):
        t0 = ts(1)[0]
        n = int(rng.integers(1, 7))
        login_at = int(rng.integers(0, n)) if s_login[s] else n
        second = rng.random() < 0.05  # someone else logs in later in the session
        for k in range(n):
            cid = s_owner[s] if k >= login_at else None
            if second and k == n - 1 and s_login[s]:
                cid = pick(ids, 1)[0]
            rows.append(
                {
                    "event_id": event_id,
                    "ts": t0 + pd.Timedelta(minutes=k),
                    "channel": "web" if s_web[s] else "app",
                    "device_id": s_device[s],
                    "cookie_id": f"k{s_device[s]}" if s_web[s] else None,
                    "customer_id": cid,
                    "session_id": s,
                    "page": pick(schemas.PAGES, 1)[0],
                    "action": "login" if k == login_at else pick(["view", "view", "click"], 1)[0],
                    "dwell_seconds": float(rng.integers(0, 300)),
                    "referrer": "direct",  # some long reads
                }
            )
            event_id += 1
    clicks = pd.DataFrame(rows)
    nt = 15 * n_customers
    transactions = pd.DataFrame(
        {
            "event_id": np.arange(event_id, event_id + nt),
            "ts": ts(nt),
            "customer_id": pick(ids, nt),
            "code": pick(schemas.TXN_CODES, nt),
            "channel": pick(schemas.TXN_CHANNELS, nt),
            "amount": rng.integers(1, 10**6, nt).astype(float),
            "currency": np.where(rng.random(nt) < 0.8, "KRW", pick(schemas.CURRENCIES, nt)),
            "product": None,
            "session_id": pd.array([None] * nt, dtype="Int64"),
        }
    )
    signup = transactions["code"] == "PRODUCT_SIGNUP"
    transactions["product"] = np.where(signup, pick(schemas.PRODUCTS, nt), None)
    tables = {
        "customers": customers,
        "holdings": holdings,
        "clickstream": clicks,
        "transactions": transactions,
    }
    return {name: frame(name, df.to_dict("records")) for name, df in tables.items()}


@pytest.mark.parametrize("seed", [1, 2])
def test_duckdb_and_pandas_views_agree_on_a_random_bank(seed: int, tmp_path: Path) -> None:
    tables = random_bank(seed)
    for name, df in tables.items():
        schemas.TABLES[name].validate(df)
    raw = write_bank(tables, tmp_path)
    as_of = pd.Timestamp("2026-04-01 06:30")
    sql_view = cv.build_customer_view(raw, as_of)
    pandas_view = build_customer_view_pandas(load_tables(raw.validated_dir), as_of)
    assert len(sql_view) > 10 and sql_view["sessions_90d"].sum() > 0
    assert sql_view["txn_fx_remit_amt_krw_90d"].sum() > 0
    assert sql_view.filter(like="long_views_").to_numpy().sum() > 0
    assert sql_view.filter(like="signups_").to_numpy().sum() > 0
    pd.testing.assert_frame_equal(sql_view, pandas_view, check_exact=False, rtol=1e-9)


def test_fx_rates_sql_matches_python_constants() -> None:
    rates = duckdb.sql(load_sql("fx_rates")).fetchall()
    assert dict(rates) == cv.KRW_REFERENCE_RATES
    assert set(cv.KRW_REFERENCE_RATES) == set(schemas.CURRENCIES)


def test_day_of_month_dues_clamp_to_month_end(tmp_path: Path) -> None:
    tables = tiny_bank()
    tables["holdings"] = frame(
        "holdings",
        [
            holding("x1", "A", "card", "2025-01-01", card_day=30),  # Jan 30 passed -> Feb 28
            holding("x2", "D", "loan", "2025-01-01", interest_day=31),  # Jan 31 = T's date -> 0
        ],
    )
    raw = write_bank(tables, tmp_path)
    as_of = pd.Timestamp("2026-01-31 12:00")
    view = cv.build_customer_view(raw, as_of).set_index("customer_id")
    assert view.loc["A", "days_to_card_payment"] == 28
    assert view.loc["D", "days_to_loan_interest"] == 0
    pandas_view = build_customer_view_pandas(load_tables(raw.validated_dir), as_of).set_index(
        "customer_id"
    )
    assert pandas_view.loc["A", "days_to_card_payment"] == 28


@pytest.mark.parametrize("name", sql_files())
def test_every_sql_file_transpiles_to_spark(name: str) -> None:
    sql = load_sql(name)
    spark = to_spark_sql(sql)  # raises on anything unsupported
    assert "read_parquet" not in spark.lower()
    if "$as_of" in re.sub(r"--.*", "", sql):
        assert ":as_of" in spark
    bound = to_spark_sql(sql, as_of=T)
    assert ":as_of" not in bound and "$as_of" not in re.sub(
        r"/\*.*?\*/", "", bound, flags=re.DOTALL
    )


def test_spark_stages_cover_the_view_in_order() -> None:
    stages = spark_stages(T)
    assert [name for name, _ in stages] == list(cv.VIEW_STAGES)
    assert all(sqlglot.parse_one(sql, read="spark") for _, sql in stages)


@pytest.mark.parametrize(
    "duckdb_only",
    [
        "SELECT list_reduce([1, 2], (x, y) -> x + y) FROM customers",
        "SELECT * FROM clickstream AS c ASOF JOIN transactions AS t ON c.ts >= t.ts",
    ],
)
def test_transpile_refuses_what_sqlglot_would_copy_blindly(duckdb_only: str) -> None:
    with pytest.raises(sqlglot.errors.UnsupportedError):
        to_spark_sql(duckdb_only)
