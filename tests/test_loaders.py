"""Loaders: clean input round-trips; every kind of bad input is named, or quarantined."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_valid_table, make_valid_tables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.data import (
    FAILURE_COLUMNS,
    TABLES,
    RawDataError,
    check_references,
    load_raw,
    load_table,
    load_table_result,
    validate_frame,
    validate_raw,
    write_table,
)
from src.data.catalog import Catalog

FORMATS = ["csv", "parquet"]


def write_raw(df: pd.DataFrame, name: str, raw_dir: Path, fmt: str) -> Path:
    """Write ``df`` as is (no validation), the way a bank's export would arrive."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / f"{name}.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


def as_text(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Columns as text (nulls kept), so a test can put any cell value in them."""
    out = df.copy()
    for c in columns:
        out[c] = pd.Series(
            [None if pd.isna(v) else str(v) for v in out[c]], dtype=object, index=out.index
        )
    return out


def transactions(n: int = 8) -> pd.DataFrame:
    """``n`` valid transactions with distinct event ids 100.. (repeating the factory rows)."""
    base = make_valid_table("transactions")
    df = pd.concat([base] * (n // len(base) + 1), ignore_index=True).head(n)
    df["event_id"] = np.arange(100, 100 + n)
    return df


def expect_error(path: Path, name: str) -> RawDataError:
    with pytest.raises(RawDataError) as info:
        load_table(name, path)
    return info.value


def assert_names(err: RawDataError, table: str, column: str, check: str, rows, values) -> None:
    """The message names table, column, check, each offending row and value; so does .failures."""
    msg = str(err)
    assert f"'{table}'" in msg
    assert f"column '{column}'" in msg
    assert check in msg
    for row, value in zip(rows, values, strict=True):
        assert f"row {row}" in msg
        assert str(value) in msg
    got = err.failures[
        (err.failures["column"] == column) & err.failures["check"].str.contains(check, regex=False)
    ]
    assert sorted(got["row"].dropna().astype(int)) == sorted(rows)
    assert set(got["table"]) == {table}


# --------------------------------------------------------------------------------------
# Clean input
# --------------------------------------------------------------------------------------


def test_clean_round_trip_csv_equals_parquet(tmp_path: Path) -> None:
    tables = make_valid_tables()
    for name, df in tables.items():
        write_raw(df, name, tmp_path / "csv", "csv")
        write_table(df, name, tmp_path / "parquet")
    from_csv = load_raw(tmp_path / "csv")
    from_parquet = load_raw(tmp_path / "parquet")
    assert set(from_csv) == set(TABLES)
    for name in TABLES:
        pd.testing.assert_frame_equal(from_csv[name], from_parquet[name])
        assert list(from_csv[name].columns) == list(TABLES[name].to_schema().columns)
        assert len(from_csv[name]) == len(tables[name])
    # Values survive, including nulls in nullable columns and exact floats.
    holdings = from_csv["holdings"]
    assert holdings["card_payment_day"].dtype == "Int64"
    assert holdings["card_payment_day"].isna().sum() == 3
    assert holdings.loc[3, "fund_return_pct"] == -3.25
    customers = from_csv["customers"]
    assert customers["joined_at"].dtype == "datetime64[ns]"
    assert customers.loc[3, "joined_at"] == pd.Timestamp("2010-12-31 23:59:59")
    assert customers["consent_push"].tolist() == [True, True, False, True]
    assert check_references(from_csv) == []


def test_factories_are_valid_and_fresh() -> None:
    a, b = make_valid_tables(), make_valid_tables()
    a["customers"].loc[0, "gender"] = "X"
    assert b["customers"].loc[0, "gender"] == "F"
    for name, df in b.items():
        TABLES[name].validate(df)


def test_csv_accepts_iso_variants_and_bool_spellings(tmp_path: Path) -> None:
    df = as_text(make_valid_table("customers"), "joined_at", "consent_push")
    df["joined_at"] = ["2015-03-01", "2019-07-15T14:30:00", "2024-02-29 00:00:00.000", "2010-12-31"]
    df["consent_push"] = ["TRUE", "false", "1", "0"]
    out = load_table("customers", write_raw(df, "customers", tmp_path, "csv"))
    assert out["consent_push"].tolist() == [True, False, True, False]
    assert out.loc[1, "joined_at"] == pd.Timestamp("2019-07-15 14:30:00")


def test_csv_with_byte_order_mark_and_blank_nullable_cells(tmp_path: Path) -> None:
    path = tmp_path / "offers.csv"
    make_valid_table("offers").to_csv(path, index=False, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_table("offers", path)["offer_id"].tolist() == ["O-LOAN-1", "O-SAV-1", "O-FX-1"]


def test_load_table_finds_file_in_directory(tmp_path: Path) -> None:
    write_raw(make_valid_table("offers"), "offers", tmp_path, "csv")
    assert len(load_table("offers", tmp_path)) == 3
    with pytest.raises(FileNotFoundError, match="exposures"):
        load_table("exposures", tmp_path)
    with pytest.raises(FileNotFoundError, match="customers"):
        load_raw(tmp_path, tables=["offers", "customers"])
    with pytest.raises(KeyError, match="unknown table"):
        load_table("offerz", tmp_path)


# --------------------------------------------------------------------------------------
# Bad input raises, naming table, column, check, rows and values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_column(tmp_path: Path, fmt: str) -> None:
    path = write_raw(transactions().drop(columns="currency"), "transactions", tmp_path, fmt)
    err = expect_error(path, "transactions")
    assert "'transactions'" in str(err)
    assert "column 'currency'" in str(err) and "missing column" in str(err)
    row = err.failures[err.failures["column"] == "currency"]
    assert row["check"].tolist() == ["column_in_dataframe"] and row["row"].isna().all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_unexpected_column(tmp_path: Path, fmt: str) -> None:
    path = write_raw(transactions().assign(memo="x"), "transactions", tmp_path, fmt)
    err = expect_error(path, "transactions")
    assert "column 'memo'" in str(err) and "unexpected column" in str(err)
    assert err.failures["check"].tolist() == ["column_in_schema"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_type(tmp_path: Path, fmt: str) -> None:
    df = as_text(make_valid_table("customers"), "birth_year", "consent_sms")
    df.loc[1, "birth_year"] = "19x0"
    df.loc[2, "consent_sms"] = "maybe"
    err = expect_error(write_raw(df, "customers", tmp_path, fmt), "customers")
    assert_names(err, "customers", "birth_year", "coerce_dtype('int64')", [1], ["19x0"])
    assert_names(err, "customers", "consent_sms", "coerce_dtype('bool')", [2], ["maybe"])
    assert "customer_id=C0002" in str(err)  # the record id of row 1
    assert "wrong type" in str(err)


def test_wrong_type_typed_parquet_is_not_truncated(tmp_path: Path) -> None:
    """pandera alone would silently turn 101.5 into 101; a float id is a type error."""
    df = transactions(4).astype({"event_id": "float64"})
    df.loc[1, "event_id"] = 101.5
    err = expect_error(write_raw(df, "transactions", tmp_path, "parquet"), "transactions")
    assert_names(err, "transactions", "event_id", "coerce_dtype('int64')", [1], ["101.5"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_code(tmp_path: Path, fmt: str) -> None:
    df = transactions()
    df.loc[2, "code"] = "BOGUS"
    df.loc[5, "currency"] = "XYZ"
    err = expect_error(write_raw(df, "transactions", tmp_path, fmt), "transactions")
    assert_names(err, "transactions", "code", "isin", [2], ["BOGUS"])
    assert_names(err, "transactions", "currency", "isin", [5], ["XYZ"])
    assert "event_id=102" in str(err) and "unknown code" in str(err)
    assert "TRANSFER" in str(err)  # the allowed vocabulary is shown (abbreviated)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_event_id(tmp_path: Path, fmt: str) -> None:
    df = transactions()
    df.loc[6, "event_id"] = 103
    err = expect_error(write_raw(df, "transactions", tmp_path, fmt), "transactions")
    assert_names(err, "transactions", "event_id", "field_uniqueness", [3, 6], [103, 103])
    assert "duplicate" in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_timestamp_that_does_not_parse(tmp_path: Path, fmt: str) -> None:
    df = as_text(transactions(), "ts")
    df.loc[4, "ts"] = "2026-13-45 25:00"
    df.loc[7, "ts"] = "2026-01-01T09:00:00+09:00"  # not naive local time
    err = expect_error(write_raw(df, "transactions", tmp_path, fmt), "transactions")
    assert_names(
        err,
        "transactions",
        "ts",
        "coerce_dtype('datetime64[ns]')",
        [4, 7],
        ["2026-13-45 25:00", "2026-01-01T09:00:00+09:00"],
    )
    assert "event_id=104" in str(err) and "not a timestamp" in str(err)
    # The bad cell is a type problem, not also reported as a null.
    assert "not_nullable" not in set(err.failures["check"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_negative_amount(tmp_path: Path, fmt: str) -> None:
    df = transactions()
    df.loc[1, "amount"] = -5.5
    err = expect_error(write_raw(df, "transactions", tmp_path, fmt), "transactions")
    assert_names(err, "transactions", "amount", "greater_than_or_equal_to(0)", [1], ["-5.5"])
    assert "event_id=101" in str(err)


@pytest.mark.parametrize("fmt", FORMATS)
def test_null_where_none_may_be(tmp_path: Path, fmt: str) -> None:
    df = transactions()
    df.loc[5, "customer_id"] = None
    customers = make_valid_table("customers")
    customers["consent_email"] = pd.array([True, None, False, True], dtype="boolean")
    customers["birth_year"] = pd.array([1980, 1990, None, 1970], dtype="Int64")
    err = expect_error(write_raw(df, "transactions", tmp_path, fmt), "transactions")
    assert_names(err, "transactions", "customer_id", "not_nullable", [5], ["<null>"])
    assert "event_id=105" in str(err)
    err = expect_error(write_raw(customers, "customers", tmp_path, fmt), "customers")
    assert_names(err, "customers", "consent_email", "not_nullable", [1], ["<null>"])
    assert_names(err, "customers", "birth_year", "not_nullable", [2], ["<null>"])
    # A null int/bool is a null problem, not also a type problem.
    assert not err.failures["check"].str.startswith("coerce_dtype").any()


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    """A type failure in a column does not hide a range failure in another row of it."""
    df = as_text(transactions(), "amount")
    df.loc[2, "amount"] = "abc"
    df.loc[5, "amount"] = "-1"
    err = expect_error(write_raw(df, "transactions", tmp_path, "csv"), "transactions")
    assert_names(err, "transactions", "amount", "coerce_dtype('float64')", [2], ["abc"])
    assert_names(err, "transactions", "amount", "greater_than_or_equal_to(0)", [5], ["-1"])
    assert list(err.failures.columns) == list(FAILURE_COLUMNS)


def test_message_is_truncated_but_failures_are_complete(tmp_path: Path) -> None:
    df = transactions(3000)
    df.loc[df.index % 2 == 0, "amount"] = -1.0
    err = expect_error(write_raw(df, "transactions", tmp_path, "parquet"), "transactions")
    assert len(err.failures) == 1500
    assert "1500 row(s)" in str(err) and "... and 1495 more row(s)" in str(err)
    assert "row 0 (event_id=100)" in str(err)
    assert len(str(err)) < 2000


def test_column_of_wrong_type_is_table_level(tmp_path: Path) -> None:
    df = transactions(4).assign(amount=pd.Timestamp("2026-01-01"))
    with pytest.raises(RawDataError, match="amount") as info:
        load_table_result(
            "transactions",
            write_raw(df, "transactions", tmp_path, "parquet"),
            quarantine_dir=tmp_path / "rejects",
        )
    assert info.value.failures["row"].isna().any()


def test_malformed_csv_is_a_raw_data_error(tmp_path: Path) -> None:
    path = tmp_path / "offers.csv"
    path.write_text("offer_id,slot\nO1,home_banner,extra,cells\n")
    with pytest.raises(RawDataError, match="offers"):
        load_table("offers", path)
    path.write_text("")
    with pytest.raises(RawDataError, match="offers"):
        load_table("offers", path)


def test_load_raw_reports_every_bad_table(tmp_path: Path) -> None:
    tables = make_valid_tables()
    tables["offers"].loc[1, "slot"] = "sidebar"
    tables["exposures"].loc[0, "logged_prob"] = 0.0
    for name, df in tables.items():
        write_raw(df, name, tmp_path, "csv")
    with pytest.raises(RawDataError) as info:
        load_raw(tmp_path)
    assert set(info.value.tables) == {"offers", "exposures"}
    assert "sidebar" in str(info.value) and "logged_prob" in str(info.value)


# --------------------------------------------------------------------------------------
# Quarantine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_quarantine_writes_rejects_and_loads_the_rest(
    tmp_path: Path, fmt: str, caplog: pytest.LogCaptureFixture
) -> None:
    df = as_text(transactions(10), "ts")
    df.loc[1, "amount"] = -5.0
    df.loc[2, "code"] = "BOGUS"
    df.loc[3, "ts"] = "yesterday"
    df.loc[4, "customer_id"] = None
    df.loc[8, "event_id"] = 105  # duplicates row 5: both copies rejected
    df.loc[9, ["amount", "currency"]] = [-1.0, "XYZ"]  # two reasons, one reject row
    path = write_raw(df, "transactions", tmp_path / "raw", fmt)
    qdir = tmp_path / "rejects"

    with caplog.at_level(logging.INFO, logger="src.data.loaders"):
        result = load_table_result("transactions", path, quarantine_dir=qdir)

    assert result.n_accepted + result.n_rejected == len(df) == result.n_input
    assert result.n_rejected == 7
    assert result.source_rows.tolist() == [0, 6, 7]
    TABLES["transactions"].validate(result.data)  # what is returned is valid
    assert result.data["event_id"].tolist() == [100, 106, 107]

    rejects = pd.read_parquet(qdir / "transactions.rejects.parquet")
    pd.testing.assert_frame_equal(rejects, result.rejects)
    assert rejects["source_row"].tolist() == [1, 2, 3, 4, 5, 8, 9]
    assert list(rejects.columns) == [*df.columns, "reject_reason", "source_row"]
    assert all(pd.api.types.is_string_dtype(rejects[c]) for c in df.columns)
    reason = dict(zip(rejects["source_row"], rejects["reject_reason"], strict=True))
    assert "transactions.amount" in reason[1] and "-5.0" in reason[1]
    assert "transactions.code: isin" in reason[2] and "BOGUS" in reason[2]
    assert "transactions.ts" in reason[3] and "yesterday" in reason[3]
    assert "transactions.customer_id: not_nullable" in reason[4]
    assert "field_uniqueness" in reason[5] and "rows [5, 8]" in reason[8]
    assert "transactions.amount" in reason[9] and "transactions.currency" in reason[9]
    assert rejects.loc[rejects["source_row"] == 3, "ts"].item() == "yesterday"
    assert any("7 rejected" in r.getMessage() for r in caplog.records)


def test_quarantine_rejects_duplicate_of_a_row_that_fails_otherwise() -> None:
    """Row 4 is bad twice (timestamp, duplicate id); its twin row 0 must not slip through."""
    df = as_text(transactions(), "ts")
    df.loc[4, ["ts", "event_id"]] = ["not a time", 100]
    result = validate_frame(df, "transactions", quarantine=True)
    assert result.rejects["source_row"].tolist() == [0, 4]
    assert "not a time" in result.rejects["reject_reason"][1]
    assert "field_uniqueness" in result.rejects["reject_reason"][1]
    assert 100 not in set(result.data["event_id"])


def test_quarantine_of_clean_table_writes_empty_reject_file(tmp_path: Path) -> None:
    path = write_raw(make_valid_table("offers"), "offers", tmp_path / "raw", "csv")
    out = load_table("offers", path, quarantine_dir=tmp_path / "rejects")
    assert len(out) == 3
    rejects = pd.read_parquet(tmp_path / "rejects" / "offers.rejects.parquet")
    assert rejects.empty and "reject_reason" in rejects.columns


def test_quarantine_still_raises_on_missing_column(tmp_path: Path) -> None:
    path = write_raw(transactions().drop(columns="ts"), "transactions", tmp_path, "csv")
    with pytest.raises(RawDataError, match="column 'ts'"):
        load_table("transactions", path, quarantine_dir=tmp_path / "rejects")
    assert not (tmp_path / "rejects" / "transactions.rejects.parquet").exists()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=st.sets(st.integers(0, 19), max_size=20))
def test_quarantine_never_drops_rows_silently(bad: set[int]) -> None:
    df = transactions(20)
    df.loc[sorted(bad), "amount"] = -1.0
    result = validate_frame(df, "transactions", quarantine=True)
    assert result.n_accepted + result.n_rejected == 20
    assert set(result.rejects["source_row"]) == bad
    assert set(result.data["event_id"]) == {100 + i for i in range(20) if i not in bad}


# --------------------------------------------------------------------------------------
# References, validate_raw, write_table
# --------------------------------------------------------------------------------------


def test_check_references_finds_orphans() -> None:
    tables = make_valid_tables()
    tables["transactions"].loc[2, "customer_id"] = "C9999"
    tables["exposures"].loc[1, "offer_id"] = "O-GONE"
    tables["holdings"].loc[0, "customer_id"] = "C0404"
    problems = check_references(tables)
    found = {(p.table, p.column, p.rows, p.missing) for p in problems}
    assert found == {
        ("transactions", "customer_id", (2,), ("C9999",)),
        ("exposures", "offer_id", (1,), ("O-GONE",)),
        ("holdings", "customer_id", (0,), ("C0404",)),
    }
    assert "C9999" in str(problems[[p.table for p in problems].index("transactions")])


def test_check_references_ignores_null_and_absent_tables() -> None:
    tables = make_valid_tables()  # clickstream has anonymous (null customer) rows
    assert tables["clickstream"]["customer_id"].isna().any()
    assert check_references(tables) == []
    assert check_references({"transactions": tables["transactions"]}) == []


def test_validate_raw_counts_and_reference_errors(tmp_path: Path) -> None:
    tables = make_valid_tables()
    tables["offers"].loc[0, "cost_krw"] = -1.0  # offer O-LOAN-1 gets quarantined ...
    for name, df in tables.items():
        write_raw(df, name, tmp_path / "raw", "parquet")
    catalog = Catalog(tmp_path)
    with pytest.raises(RawDataError, match="cost_krw"):
        validate_raw(catalog)
    assert not catalog.validated_dir.exists()  # a failed run publishes nothing
    # ... so exposure X1, which shows it, now points nowhere: that is reported, not dropped.
    with pytest.raises(RawDataError) as info:
        validate_raw(catalog, quarantine=True)
    msg = str(info.value)
    assert "'exposures'" in msg and "column 'offer_id'" in msg and "O-LOAN-1" in msg
    assert info.value.failures["record_id"].tolist() == ["X1"]
    assert info.value.failures["row"].tolist() == [0]

    write_raw(make_valid_table("offers"), "offers", tmp_path / "raw", "parquet")
    report = validate_raw(catalog, quarantine=True)
    assert report["accepted"] == {n: len(df) for n, df in make_valid_tables().items()}
    assert report["rejected"] == dict.fromkeys(TABLES, 0)
    assert report["reject_files"] == {}
    for name, df in make_valid_tables().items():  # the validated layer holds every accepted row
        assert len(catalog.read(name)) == len(df)
    assert catalog.manifest()["tables"]["offers"]["accepted"] == len(make_valid_table("offers"))


def test_write_table_validates_before_writing(tmp_path: Path) -> None:
    bad = make_valid_table("offers")
    bad.loc[2, "product"] = "crypto"
    with pytest.raises(RawDataError, match="crypto"):
        write_table(bad, "offers", tmp_path)
    assert not (tmp_path / "offers.parquet").exists()
    path = write_table(make_valid_table("offers"), "offers", tmp_path)
    assert path == tmp_path / "offers.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offers.parquet"]  # no temp files left
