"""Bring your own bank: a mapping turns a bank's export into the contract's raw tables.

Unit tests of :func:`apply_mapping` (renames, value maps, constants, timestamps and zones,
scaling, what is reported and what fails), reading sources (BOM, cp949), the mapping file's
errors, the ``ingest`` command, and the shipped example end to end: ingest -> validate ->
customer view -> propensity training -> a decision from the endpoint.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.data.ingest import (
    REPORT_COLUMNS,
    MappingError,
    SourceFormat,
    TableMapping,
    UnmappedValuesError,
    apply_mapping,
    format_report,
    ingest,
    load_mapping,
    read_source,
)
from src.settings import Settings

EXAMPLE = Settings().root / "examples" / "bank_export"
EXAMPLE_AS_OF = "2026-03-01"  # the day after the example's last day

TXN_MAPPING = {
    "table": "transactions",
    "columns": {
        "TRX_SEQ": "event_id",
        "TRX_DT": "ts",
        "CUST_NO": "customer_id",
        "TRX_CD": "code",
        "CHNL_CD": "channel",
        "TRX_AMT": "amount",
        "CRNC_CD": "currency",
        "PRD_CD": "product",
    },
    "constants": {"session_id": None},
    "values": {
        "code": {"당행이체": "TRANSFER", "타행이체": "TRANSFER", "신규가입": "PRODUCT_SIGNUP"},
        "channel": {"모바일앱": "app", "영업점": "branch"},
        "currency": {"원": "KRW", "달러": "USD"},
        "product": {"SAV-12M": "savings", "NONE": None},
    },
    "timestamps": {"ts": {"format": "%Y/%m/%d %H:%M:%S"}},
    "scale": {"amount": 1000},
}


def txn_export(**changes: list) -> pd.DataFrame:
    rows = {
        "TRX_SEQ": ["1", "2", "3", "4"],
        "TRX_DT": [
            "2026/01/05 09:12:33",
            "2026/01/05 23:59:59",
            "2026/01/06 00:00:00",
            "2026/02/01 12:00:00",
        ],
        "CUST_NO": ["0042", "0042", "0043", "0044"],
        "TRX_CD": ["당행이체", "타행이체", "신규가입", "TRANSFER"],
        "CHNL_CD": ["모바일앱", "영업점", "app", "모바일앱"],
        "TRX_AMT": ["1", "2.5", "0", "10"],
        "CRNC_CD": ["원", "달러", "원", "KRW"],
        "PRD_CD": [None, None, "SAV-12M", "NONE"],
    }
    rows.update(changes)
    return pd.DataFrame(rows)


def iso(values: list[str]) -> list[pd.Timestamp]:
    return pd.to_datetime(values, format="ISO8601").tolist()


def mapping(**changes: object) -> TableMapping:
    return TableMapping.model_validate({**TXN_MAPPING, **changes})


# --- apply_mapping -----------------------------------------------------------------------------


def test_renames_value_maps_constants_and_scaling():
    out, report = apply_mapping(txn_export(), mapping())
    assert report.empty and list(report.columns) == list(REPORT_COLUMNS)
    assert list(out.columns) == [
        "event_id",
        "ts",
        "customer_id",
        "code",
        "channel",
        "amount",
        "currency",
        "product",
        "session_id",
    ]  # contract order
    assert out["code"].tolist() == ["TRANSFER", "TRANSFER", "PRODUCT_SIGNUP", "TRANSFER"]
    assert out["channel"].tolist() == ["app", "branch", "app", "app"]  # 'app' is already a code
    assert out["currency"].tolist() == ["KRW", "USD", "KRW", "KRW"]
    assert out["product"].isna().tolist() == [True, True, False, True]  # NONE -> null on purpose
    assert out.loc[2, "product"] == "savings"
    assert out["amount"].tolist() == [1000.0, 2500.0, 0.0, 10000.0]
    assert out["session_id"].isna().all()
    assert out["customer_id"].tolist() == ["0042", "0042", "0043", "0044"]  # text stays text
    local = ["2026-01-05 09:12:33", "2026-01-05 23:59:59", "2026-01-06", "2026-02-01 12:00"]
    assert out["ts"].tolist() == iso(local)  # local time in Asia/Seoul: unchanged


@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        (  # the web log in UTC: nine hours later in Seoul, across midnight
            {"format": "%Y%m%d%H%M%S", "timezone": "UTC"},
            ["20260105001233", "20260105160000"],
            ["2026-01-05 09:12:33", "2026-01-06 01:00:00"],
        ),
        (  # text with its own offset
            {"format": "%Y-%m-%dT%H:%M:%S%z"},
            ["2026-01-05T00:12:33Z", "2026-01-05T09:12:33+09:00"],
            ["2026-01-05 09:12:33", "2026-01-05 09:12:33"],
        ),
        (  # New York wall clock, winter and summer time
            {"format": "%Y-%m-%d %H:%M", "timezone": "America/New_York"},
            ["2026-01-05 19:00", "2026-07-05 20:00"],
            ["2026-01-06 09:00:00", "2026-07-06 09:00:00"],
        ),
        ({"format": "unix_s"}, ["1767571953", "0"], ["2026-01-05 09:12:33", "1970-01-01 09:00"]),
        ({"format": "unix_ms"}, ["1767571953250"], ["2026-01-05 09:12:33.250"]),
        (
            {"format": "ISO8601"},
            ["2026-01-05T09:12:33", "2026-01-05"],
            ["2026-01-05 09:12:33", "2026-01-05"],
        ),
    ],
)
def test_timestamp_formats_and_zones_end_in_naive_seoul_time(spec, values, expected):
    frame = pd.DataFrame(
        {"ts": values, "customer_id": "C1", "decision_id": ["D1", "D2"][: len(values)]}
    )
    table = _exposure_mapping(timestamps={"ts": spec})
    out, report = apply_mapping(_exposure_frame(frame), table)
    assert report.empty, format_report(report)
    assert out["ts"].tolist() == iso(expected)
    assert out["ts"].dt.tz is None


def test_parquet_timestamps_aware_or_naive_are_converted():
    aware = pd.Series(pd.to_datetime(["2026-01-05 00:12:33"]).tz_localize("UTC"))
    naive = pd.Series(pd.to_datetime(["2026-01-05 00:12:33"]))
    for series, zone, expected in (
        (aware, None, "2026-01-05 09:12:33"),  # an aware column carries its zone
        (naive, "UTC", "2026-01-05 09:12:33"),
        (naive, None, "2026-01-05 00:12:33"),  # naive and no zone: already Seoul time
    ):
        frame = _exposure_frame(
            pd.DataFrame({"ts": series, "customer_id": "C1", "decision_id": "D1"})
        )
        out, report = apply_mapping(frame, _exposure_mapping(timestamps={"ts": {"timezone": zone}}))
        assert report.empty
        assert out.loc[0, "ts"] == pd.Timestamp(expected)


def test_bad_and_impossible_timestamps_are_reported_and_kept_as_text():
    frame = _exposure_frame(
        pd.DataFrame(
            {
                "ts": ["2026-03-08 02:30", "2026-03-08 01:30", "8 March", None],
                "customer_id": "C1",
                "decision_id": ["D1", "D2", "D3", "D4"],
            }
        )
    )
    spec = {"format": "%Y-%m-%d %H:%M", "timezone": "America/New_York"}
    out, report = apply_mapping(frame, _exposure_mapping(timestamps={"ts": spec}))
    got = report.set_index("problem")
    assert got.loc["invalid_local_time", "value"] == "2026-03-08 02:30"  # skipped by DST
    assert got.loc["invalid_local_time", "rows"] == (0,)
    assert got.loc["bad_timestamp", "value"] == "8 March"
    assert got.loc["bad_timestamp", "rows"] == (2,)
    # nothing nulled: the failed cells keep their text, the parsed one is ISO, null stays null
    assert out["ts"].tolist() == ["2026-03-08 02:30", "2026-03-08T15:30:00.000000", "8 March", None]


def test_unmapped_codes_are_reported_with_counts_and_rows_and_kept():
    export = txn_export(
        TRX_CD=["적금해지", "당행이체", "적금해지", "수수료"],
        CRNC_CD=["원", "파운드", "원", "원"],
    )
    out, report = apply_mapping(export, mapping())
    rows = {(r.column, r.value): r for r in report.itertuples()}
    assert set(rows) == {("code", "적금해지"), ("code", "수수료"), ("currency", "파운드")}
    cancel = rows[("code", "적금해지")]
    assert (cancel.table, cancel.source_column, cancel.problem) == (
        "transactions",
        "TRX_CD",
        "unmapped_value",
    )
    assert (cancel.count, cancel.rows) == (2, (0, 2))
    assert rows[("currency", "파운드")].rows == (1,)
    assert out["code"].tolist() == ["적금해지", "TRANSFER", "적금해지", "수수료"]  # never nulled
    text = format_report(report)
    assert (
        "table 'transactions', column 'code' (source 'TRX_CD'): value '적금해지' x 2 row(s) [0, 2]"
        in text
    )


def test_coded_columns_without_a_value_map_are_checked_too():
    values = {k: v for k, v in TXN_MAPPING["values"].items() if k != "channel"}
    out, report = apply_mapping(txn_export(), mapping(values=values))
    assert report[["column", "problem", "value", "count"]].values.tolist() == [
        ["channel", "unknown_code", "모바일앱", 2],
        ["channel", "unknown_code", "영업점", 1],
    ]


def test_numbers_that_do_not_parse_are_reported():
    out, report = apply_mapping(txn_export(TRX_AMT=["1", "1,000", None, "x"]), mapping())
    assert report[["column", "problem", "value", "rows"]].values.tolist() == [
        ["amount", "not_a_number", "1,000", (1,)],
        ["amount", "not_a_number", "x", (3,)],
    ]
    assert out["amount"].tolist()[:2] == [1000.0, "1,000"] and pd.isna(out.loc[2, "amount"])


def test_a_missing_source_column_is_named():
    with pytest.raises(MappingError, match=r"transactions.*\['CRNC_CD'\].*not in the export"):
        apply_mapping(txn_export().drop(columns="CRNC_CD"), mapping())


def test_a_contract_column_nobody_fills_is_named():
    with pytest.raises(MappingError, match=r"contract column\(s\) \['session_id'\] missing"):
        apply_mapping(txn_export(), mapping(constants={}))


def test_extra_source_columns_fail_unless_dropped():
    export = txn_export(BRNCH_CD=["B1", None, None, None], MEMO=["", "", "", ""])
    with pytest.raises(MappingError, match=r"\['BRNCH_CD', 'MEMO'\] are not in the mapping"):
        apply_mapping(export, mapping())
    with pytest.raises(MappingError, match=r"\['MEMO'\] are not in the mapping"):
        apply_mapping(export, mapping(drop=["BRNCH_CD"]))
    out, _ = apply_mapping(export, mapping(keep_unmapped_columns=False))
    assert "BRNCH_CD" not in out and "MEMO" not in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"values": {"code": {"이체": "TRANSFR"}}},
            r"values.code: target\(s\) \{'이체': 'TRANSFR'\}",
        ),
        ({"columns": {"TRX_CD": "txn_code"}}, r"\['txn_code'\] not column\(s\) of contract table"),
        ({"columns": {"A": "code", "B": "code"}}, r"several source columns renamed to one"),
        ({"constants": {"code": "TRANSFER"}}, r"constants: \['code'\] also come from a source"),
        ({"drop": ["TRX_CD"]}, r"\['TRX_CD'\] both renamed \(columns\) and dropped"),
        ({"timestamps": {"customer_id": {}}}, r"transactions.customer_id is not a timestamp"),
        ({"timezone": "Mars/Olympus"}, r"unknown time zone 'Mars/Olympus'"),
        ({"scale": {"customer_id": 10}}, r"transactions.customer_id is not a numeric"),
        ({"values": {"code": {True: "TRANSFER"}}}, r"YAML's null/boolean"),
        ({"table": "trades"}, r"unknown table 'trades'"),
        ({"colums": {}}, r"colums"),
    ],
)
def test_mapping_mistakes_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        mapping(**change)


def test_mapping_file_errors_name_the_file_and_field(tmp_path: Path):
    path = tmp_path / "mapping.yaml"
    path.write_text(
        "tables:\n  transactions:\n    source: x.csv\n    values: {code: {이체: WIRE}}\n"
    )
    with pytest.raises(MappingError) as error:
        load_mapping(path)
    assert str(path) in str(error.value) and "tables.transactions" in str(error.value)
    assert "WIRE" in str(error.value)


# --- reading sources ---------------------------------------------------------------------------


def test_bom_and_cp949_csv_are_read(tmp_path: Path):
    text = "CUST_NO,SEX_CD\n0042,남\n0043,여\n"
    bom, legacy = tmp_path / "bom.csv", tmp_path / "legacy.csv"
    bom.write_text(text, encoding="utf-8-sig")
    legacy.write_text(text, encoding="cp949")
    assert bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    for path, fmt in ((bom, SourceFormat()), (legacy, SourceFormat(encoding="cp949"))):
        frame = read_source(path, fmt, "customers")
        assert list(frame.columns) == ["CUST_NO", "SEX_CD"]  # no '\ufeff' glued to the name
        assert frame["CUST_NO"].tolist() == ["0042", "0043"]  # leading zeros kept
        assert frame["SEX_CD"].tolist() == ["남", "여"]
    with pytest.raises(MappingError, match=r"legacy.csv is not utf-8-sig.*cp949"):
        read_source(legacy, SourceFormat(), "customers")


def test_the_example_files_are_what_the_generator_writes(tmp_path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_export", EXAMPLE / "make_export.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_export", module)  # dataclasses look themselves up
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for made in sorted(tmp_path.iterdir()):
        shipped = EXAMPLE / made.name
        if made.suffix == ".csv":
            assert made.read_bytes() == shipped.read_bytes(), made.name
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(made), pd.read_parquet(shipped))
    total = sum(p.stat().st_size for p in EXAMPLE.iterdir())
    assert total < 1_000_000


# --- the command -------------------------------------------------------------------------------


def _with_unknown_codes(tmp_path: Path) -> Path:
    """The example's transactions plus three rows coded as the mapping does not know."""
    path = tmp_path / "TRX_HIST_more.csv"
    lines = (EXAMPLE / "TRX_HIST.csv").read_text(encoding="utf-8-sig").splitlines()
    extra = [
        "799001|2026/02/27 10:00:00|100000001|적금해지|모바일앱|1000|원||",
        "799002|2026/02/27 11:00:00|100000008|적금해지|영업점|1000|원||B101",
        "799003|2026/02/27 12:00:00|100000008|당행이체|텔레뱅킹|1000|원||",
    ]
    path.write_text("\n".join([*lines, *extra]) + "\n", encoding="utf-8-sig")
    return path


def test_ingest_fails_naming_unmapped_codes_and_writes_nothing(tmp_path: Path):
    source = _with_unknown_codes(tmp_path)
    args = ["ingest", "--mapping", str(EXAMPLE / "mapping.yaml"), "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--source", f"transactions={source}"])
    assert result.exit_code == 1, result.output
    assert "nothing was written" in result.output
    assert (
        "table 'transactions', column 'code' (source 'TRX_CD'): value '적금해지' x 2 row(s)"
        in result.output
    )
    assert "column 'channel' (source 'CHNL_CD'): value '텔레뱅킹' x 1 row(s)" in result.output
    assert not (tmp_path / "raw").exists()


def test_allow_unmapped_keeps_codes_for_validation_to_reject(tmp_path: Path):
    source = _with_unknown_codes(tmp_path)
    args = ["ingest", "--mapping", str(EXAMPLE / "mapping.yaml"), "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(
        app, [*args, "--allow-unmapped", "--source", f"transactions={source}"]
    )
    assert result.exit_code == 0, result.output
    assert "unmapped values kept as they are (3 row(s))" in result.output
    assert "transactions: 3 row(s) break the contract" in result.output
    raw = pd.read_parquet(tmp_path / "raw" / "transactions.parquet")
    assert raw["code"].value_counts()["적금해지"] == 2  # kept, not dropped or nulled

    strict = CliRunner().invoke(app, ["validate", "--data-dir", str(tmp_path)])
    assert strict.exit_code == 1 and "적금해지" in strict.output
    lenient = CliRunner().invoke(app, ["validate", "--quarantine", "--data-dir", str(tmp_path)])
    assert lenient.exit_code == 0, lenient.output
    rejects = pd.read_parquet(tmp_path / "rejects" / "transactions.rejects.parquet")
    assert sorted(rejects["event_id"]) == ["799001", "799002", "799003"]


def test_ingest_error_object_carries_the_report(tmp_path: Path):
    with pytest.raises(UnmappedValuesError) as error:
        ingest(
            EXAMPLE / "mapping.yaml",
            Settings(data_dir=tmp_path).catalog,
            sources={"transactions": _with_unknown_codes(tmp_path)},
        )
    report = error.value.report
    assert report[["column", "value", "count"]].values.tolist() == [
        ["code", "적금해지", 2],
        ["channel", "텔레뱅킹", 1],
    ]


# --- the shipped example, end to end ----------------------------------------------------------


def test_example_ingest_maps_every_feature(tmp_path: Path):
    result = CliRunner().invoke(
        app, ["ingest", "--mapping", str(EXAMPLE / "mapping.yaml"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "unmapped values: none" in result.output
    assert "dropped: CUST_NM" in result.output and "dropped: APP_VER, OS_NM" in result.output
    raw = tmp_path / "raw"
    customers = pd.read_parquet(raw / "customers.parquet")
    assert customers["customer_id"].iloc[0] == "100000001"  # the BOM is not in the header
    assert set(customers["gender"]) == {"F", "M"} and customers["consent_push"].dtype == bool
    holdings = pd.read_parquet(raw / "holdings.parquet")
    source = pd.read_csv(EXAMPLE / "ACCT_HOLD.csv", encoding="cp949", dtype=str)
    assert holdings["balance"].iloc[0] == 1000 * float(source["BAL_AMT_THOU"].iloc[0])
    assert holdings["fund_return_pct"].isna().all()  # the constant: explicitly unknown
    clicks = pd.read_parquet(raw / "clickstream.parquet")
    web_log = pd.read_parquet(EXAMPLE / "WEB_LOG.parquet")
    first = web_log.iloc[0]
    got = clicks.set_index("event_id").loc[first["LOG_SEQ"]]
    utc = pd.to_datetime(first["LOG_TS_UTC"], format="%Y%m%d%H%M%S")
    assert got["ts"] == utc + pd.Timedelta(hours=9)  # the web log's UTC -> Seoul time
    txns = pd.read_parquet(raw / "transactions.parquet")
    assert set(txns["code"]) >= {"TRANSFER", "PRODUCT_SIGNUP", "FX_REMIT", "DEPOSIT"}
    assert set(txns["currency"]) == {"KRW", "USD", "JPY", "EUR", "CNY", "VND"}
    assert txns["session_id"].isna().all()
    exposures = pd.read_parquet(raw / "exposures.parquet")
    resp = pd.read_csv(EXAMPLE / "CAMPAIGN_RESP.csv", dtype=str).iloc[0]
    got = exposures.set_index("decision_id").loc[resp["RESP_ID"]]
    assert got["ts"] == pd.Timestamp(resp["EXPO_DTM"]).tz_convert("Asia/Seoul").tz_localize(None)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_example_bank_end_to_end(tmp_path: Path):
    """ingest -> validate -> customer view -> propensity model -> a decision from the endpoint."""
    from fastapi.testclient import TestClient

    from src.models.train import run_propensity_training
    from src.serving.app import create_app
    from src.serving.config import ServingSettings

    data = tmp_path / "data"
    runner = CliRunner()
    steps = [
        ["ingest", "--mapping", str(EXAMPLE / "mapping.yaml"), "--data-dir", str(data)],
        ["validate", "--data-dir", str(data)],
        ["build-view", "--as-of", EXAMPLE_AS_OF, "--data-dir", str(data)],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{args[0]}: {result.output}"
    view_path = data / "features" / f"customer_view_{EXAMPLE_AS_OF}.parquet"
    view = pd.read_parquet(view_path)
    assert len(view) == 40

    settings = Settings(data_dir=data).model_copy(
        update={
            "mlruns_dir": tmp_path / "mlruns",
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
    )
    run = run_propensity_training(settings, progress=False)  # 150 days: a real time split
    assert run.plan.window_days == 30 and len(run.plan.train) == 3
    assert set(run.model.products) == {"loan", "savings", "fund", "card", "fx", "pension"}
    assert run.promotion is not None and run.promotion.promoted

    serving = ServingSettings(
        view_path=view_path,
        log_path=tmp_path / "log.sqlite",
        seed=1,
        bandit_model=None,
        internal_api_key="internal",  # an internal caller: cold_start is disclosed
    )
    open_ = view.loc[~view["is_closed"] & ~view["is_accident_reported"], "customer_id"]
    with TestClient(create_app(settings, serving), headers={"X-API-Key": "internal"}) as client:
        for customer_id in [*open_.head(3), "NEW-CUSTOMER"]:
            r = client.post(
                "/v1/decisions",
                json={
                    "customer_id": customer_id,
                    "slot": "home_banner",
                    "context": {"channel": "app", "time": "2026-03-01T10:00:00+09:00"},
                },
            )
            assert r.status_code == 200, r.text
            decision = r.json()
            assert decision["model_versions"] == {"propensity": "1"} and not decision["fallback"]
            assert decision["cold_start"] == (customer_id == "NEW-CUSTOMER")
            offered = decision["offer"]["offer_id"] if decision["offer"] else None
            assert offered is None or offered.startswith("EV-")


# --- helpers -----------------------------------------------------------------------------------


def _exposure_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """An exposures export around the given ts/customer/decision columns."""
    n = len(frame)
    return frame.assign(
        slot=["home_banner"] * n,
        channel=["app"] * n,
        offer_id=["OF1"] * n,
        logged_prob=[0.5] * n,
        click=["N"] * n,
        convert=["N"] * n,
    )


def _exposure_mapping(**changes: object) -> TableMapping:
    yes_no = {"Y": True, "N": False}
    return TableMapping.model_validate(
        {
            "table": "exposures",
            "values": {"click": yes_no, "convert": yes_no},
            **changes,
        }
    )
