"""Identity stitching: who each anonymous click belongs to, and when we may know it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.harness.customer_view_pandas import identity_map_pandas, session_map_pandas
from src.data.catalog import Catalog
from src.data.schemas import StitchedEvents
from src.features import identity

CLICK_COLUMNS = [
    "event_id",
    "ts",
    "channel",
    "device_id",
    "cookie_id",
    "customer_id",
    "session_id",
    "page",
    "action",
    "dwell_seconds",
    "referrer",
]
TXN_COLUMNS = [
    "event_id",
    "ts",
    "customer_id",
    "code",
    "channel",
    "amount",
    "currency",
    "product",
    "session_id",
]
T = pd.Timestamp("2026-03-10")


def click(
    event_id,
    ts,
    session_id,
    device,
    customer=None,
    cookie=None,
    page="home",
    action="view",
    channel=None,
):
    """One clickstream row; web when it has a cookie, app otherwise."""
    return {
        "event_id": event_id,
        "ts": pd.Timestamp(ts),
        "channel": channel or ("web" if cookie else "app"),
        "device_id": device,
        "cookie_id": cookie,
        "customer_id": customer,
        "session_id": session_id,
        "page": page,
        "action": action,
        "dwell_seconds": 1.0,
        "referrer": "direct",
    }


def write_raw(tmp: Path, clicks: list[dict], txns: list[dict] | None = None) -> Catalog:
    """Tiny validated layer: clickstream and transactions with the schemas.py dtypes.

    Written straight to the catalog's validated layer: these are stitching cases, some of them
    deliberately outside the contract's vocabularies, so they skip validation on purpose.
    """
    c = pd.DataFrame(clicks, columns=CLICK_COLUMNS).astype(
        {
            "event_id": "int64",
            "session_id": "int64",
            "dwell_seconds": "float64",
            "cookie_id": "str",
            "customer_id": "str",
            "ts": "datetime64[us]",
        }
    )
    t = pd.DataFrame(txns or [], columns=TXN_COLUMNS).astype(
        {
            "event_id": "int64",
            "session_id": "Int64",
            "amount": "float64",
            "customer_id": "str",
            "code": "str",
            "channel": "str",
            "currency": "str",
            "product": "str",
            "ts": "datetime64[us]",
        }
    )
    catalog = Catalog(tmp)
    catalog.validated_dir.mkdir(parents=True, exist_ok=True)
    c.to_parquet(catalog.path("clickstream"), index=False)
    t.to_parquet(catalog.path("transactions"), index=False)
    return catalog


# The scenario every test below reads from:
#   s1  web, device dA, cookie cA: anonymous view, then A logs in        -> all A (login)
#   s2  app, device dA, no login                                          -> A via device
#   s3  web, new device dZ, cookie cA, no login                           -> A via cookie
#   s4/s5  device dS: B logs in, later C logs in                          -> dS shared
#   s6  device dS, no login                                               -> unattributed (shared)
#   s7  device dM: E logs in, then F logs in, same session; anon before   -> multi_login
#   s8  device dX, no login, before T; s9 A logs in on dX exactly at T    -> only resolved w/o T
#   s10 app, device dG: G logs in; s11 web, device dG + cookie cA, no login -> ambiguous
CLICKS = [
    click(1, "2026-03-01 10:00", 1, "dA", cookie="cA"),
    click(2, "2026-03-01 10:01", 1, "dA", "A", cookie="cA", page="login", action="login"),
    click(3, "2026-03-01 10:02", 1, "dA", "A", cookie="cA", page="loan_main"),
    click(4, "2026-03-02 09:00", 2, "dA", page="fx_main"),
    click(5, "2026-03-03 09:00", 3, "dZ", cookie="cA", page="savings_list"),
    click(6, "2026-03-01 08:00", 4, "dS", "B"),
    click(7, "2026-03-02 08:00", 5, "dS", "C"),
    click(8, "2026-03-04 08:00", 6, "dS", page="fund_list"),
    click(9, "2026-03-05 08:00", 7, "dM", page="card_benefits"),
    click(10, "2026-03-05 08:01", 7, "dM", "E", page="login", action="login"),
    click(11, "2026-03-05 08:05", 7, "dM", "F", page="login", action="login"),
    click(12, "2026-03-06 08:00", 8, "dX", page="pension_main"),
    click(13, "2026-03-10 00:00", 9, "dX", "A", page="login", action="login"),
    click(14, "2026-03-07 07:00", 10, "dG", "G", channel="app"),
    click(15, "2026-03-07 08:00", 11, "dG", cookie="cA", channel="web"),
]
TXNS = [
    {
        "event_id": 100,
        "ts": pd.Timestamp("2026-03-01 10:05"),
        "customer_id": "A",
        "code": "TRANSFER",
        "channel": "app",
        "amount": 5000.0,
        "currency": "KRW",
        "product": None,
        "session_id": 1,
    },
    {
        "event_id": 101,
        "ts": T,
        "customer_id": "A",
        "code": "DEPOSIT",
        "channel": "atm",
        "amount": 1.0,
        "currency": "KRW",
        "product": None,
        "session_id": None,
    },
]


@pytest.fixture
def raw(tmp_path: Path) -> Catalog:
    return write_raw(tmp_path, CLICKS, TXNS)


def _customer_of(events: pd.DataFrame, event_id: int):
    value = events.loc[events["event_id"] == event_id, "customer_id"].item()
    return None if pd.isna(value) else value


def _resolution(sessions: pd.DataFrame, session_id: int) -> str:
    return sessions.loc[sessions["session_id"] == session_id, "resolution"].item()


def test_anonymous_events_before_login_belong_to_the_customer(raw: Catalog) -> None:
    events = identity.stitched_events(raw, T)
    assert _customer_of(events, 1) == "A"  # anonymous, before A logged in
    assert _resolution(identity.session_map(raw, T), 1) == "login"


def test_device_and_cookie_link_sessions_without_login(raw: Catalog) -> None:
    events = identity.stitched_events(raw, T)
    sessions = identity.session_map(raw, T)
    assert _customer_of(events, 4) == "A" and _resolution(sessions, 2) == "device"
    assert _customer_of(events, 5) == "A" and _resolution(sessions, 3) == "cookie"
    ids = identity.identity_map(raw, T).set_index(["identifier_type", "identifier"])
    row = ids.loc[("device", "dA")]
    assert row["customer_id"] == "A" and row["n_logins"] == 1 and not row["is_shared"]
    assert row["first_login_ts"] == pd.Timestamp("2026-03-01 10:01")
    assert row["last_login_ts"] == pd.Timestamp("2026-03-01 10:02")
    assert ids.loc[("cookie", "cA"), "customer_id"] == "A"


def test_shared_device_does_not_merge_customers(raw: Catalog) -> None:
    ids = identity.identity_map(raw, T).set_index(["identifier_type", "identifier"])
    shared = ids.loc[("device", "dS")]
    assert shared["is_shared"] and shared["n_customers"] == 2 and shared["n_logins"] == 2
    assert pd.isna(shared["customer_id"])
    events = identity.stitched_events(raw, T)
    assert _customer_of(events, 6) == "B" and _customer_of(events, 7) == "C"
    assert _customer_of(events, 8) is None
    assert _resolution(identity.session_map(raw, T), 6) == "shared_identifier"


def test_session_with_two_logins_is_not_merged(raw: Catalog) -> None:
    events = identity.stitched_events(raw, T)
    assert _customer_of(events, 10) == "E" and _customer_of(events, 11) == "F"
    assert _customer_of(events, 9) is None  # anonymous: could be either
    sessions = identity.session_map(raw, T).set_index("session_id")
    assert sessions.loc[7, "resolution"] == "multi_login"
    assert sessions.loc[7, "n_login_customers"] == 2 and pd.isna(sessions.loc[7, "customer_id"])
    ids = identity.identity_map(raw, T).set_index(["identifier_type", "identifier"])
    assert ids.loc[("device", "dM"), "is_shared"]


def test_device_and_cookie_pointing_to_different_customers_stay_apart(raw: Catalog) -> None:
    assert _resolution(identity.session_map(raw, T), 11) == "ambiguous"
    assert _customer_of(identity.stitched_events(raw, T), 15) is None


def test_login_at_or_after_as_of_attributes_nothing(raw: Catalog) -> None:
    as_of_t = identity.stitched_events(raw, T)
    assert _customer_of(as_of_t, 12) is None  # dX only logs in at T
    assert 13 not in set(as_of_t["event_id"]) and 101 not in set(as_of_t["event_id"])
    assert _resolution(identity.session_map(raw, T), 8) == "unknown"
    assert ("device", "dX") not in set(
        identity.identity_map(raw, T)[["identifier_type", "identifier"]].itertuples(index=False)
    )
    everything = identity.stitched_events(raw)  # as_of=None: all history
    assert _customer_of(everything, 12) == "A"
    assert {13, 101} <= set(everything["event_id"])


def test_stitched_events_follow_the_contract_and_order(raw: Catalog) -> None:
    events = identity.stitched_events(raw, T)
    StitchedEvents.validate(events)
    assert list(events.columns) == list(StitchedEvents.to_schema().columns)
    assert len(events) == 14 + 1  # 14 clicks before T + one transaction before T
    txn = events[events["source"] == "txn"].iloc[0]
    assert txn["code"] == "TRANSFER" and txn["amount"] == 5000.0 and pd.isna(txn["page"])
    key = events[["customer_id", "ts", "event_id"]].assign(
        unresolved=events["customer_id"].isna(), customer_id=events["customer_id"].fillna("")
    )
    expected = key.sort_values(["unresolved", "customer_id", "ts", "event_id"])
    assert list(events.index) == list(expected.index)


def test_write_identity_writes_three_tables(raw: Catalog, tmp_path: Path) -> None:
    written = identity.write_identity(raw, as_of=T)
    assert set(written) == {"identity_map", "session_map", "stitched_events"}
    stream = pd.read_parquet(written["stitched_events"])
    assert len(stream) == 15 and stream["event_id"].is_unique
    shared = pd.read_parquet(written["identity_map"]).query("is_shared")
    assert set(shared["identifier"]) == {"dS", "dM"}


@pytest.mark.parametrize("as_of", [T, None])
def test_pandas_stitching_matches_sql(raw: Catalog, as_of) -> None:
    clicks = raw.read("clickstream")
    sql_ids = identity.identity_map(raw, as_of)
    pd_ids = identity_map_pandas(clicks, as_of).sort_values(
        ["identifier_type", "identifier"], ignore_index=True
    )
    pd.testing.assert_frame_equal(sql_ids, pd_ids, check_dtype=False)
    sql_sessions = identity.session_map(raw, as_of)
    pd_sessions = session_map_pandas(clicks, as_of).sort_values("session_id", ignore_index=True)
    pd.testing.assert_frame_equal(sql_sessions, pd_sessions, check_dtype=False)


def test_as_of_must_be_naive() -> None:
    with pytest.raises(ValueError):
        identity.as_of_literal(pd.Timestamp("2026-03-10", tz="Asia/Seoul"))


def test_one_connection_serves_several_as_of_dates(raw: Catalog) -> None:
    """A notebook re-stages on one connection: the materialized stages are replaced, not kept."""
    con = identity.connect_tables(raw, tables=identity.IDENTITY_TABLES)
    late = identity.session_map(con, as_of=None)
    early_id_map = identity.identity_map(con, as_of="2026-01-01 00:00:00")
    late_again = identity.session_map(con, as_of=None)
    pd.testing.assert_frame_equal(late, late_again)
    assert len(early_id_map) < len(identity.identity_map(raw, as_of=None))
