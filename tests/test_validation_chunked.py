"""Chunked validation (``validate_raw(chunk_rows=...)``) gives what whole-table validation gives.

A bank's big tables are validated chunk by chunk so memory stays bounded; the outputs
(validated files, manifest, reject files, failures) must not depend on the chunk size, and
checks that span chunks (unique ids, references, row numbers) must still catch and name rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import make_valid_table, make_valid_tables

from src.data import TABLES, RawDataError, validate_raw
from src.data.catalog import MANIFEST, Catalog
from src.settings import Settings

TINY = 997  # rows per chunk: the small bank's event tables split into dozens of chunks


def _copy_raw(small_bank: Settings, data_dir: Path) -> Catalog:
    shutil.copytree(small_bank.raw_dir, data_dir / "raw")
    return Catalog(data_dir)


def _break(catalog: Catalog) -> None:
    """Defects in early and late chunks; transactions arrive as CSV (text cells)."""
    raw = catalog.raw_dir
    clicks = pd.read_parquet(raw / "clickstream.parquet")
    assert len(clicks) > 5 * TINY
    clicks.loc[len(clicks) - 1, "event_id"] = clicks.loc[3, "event_id"]  # first and last chunk
    clicks.loc[2 * TINY + 5, "page"] = "nowhere"
    clicks.loc[[4 * TINY - 1, 4 * TINY], "dwell_seconds"] = -1.0  # either side of a boundary
    clicks.to_parquet(raw / "clickstream.parquet", index=False)
    txns = pd.read_parquet(raw / "transactions.parquet").astype({"ts": "string"})
    txns.loc[7, "ts"] = "yesterday"
    txns.loc[len(txns) - 2, "amount"] = -3.0
    (raw / "transactions.parquet").unlink()
    txns.to_csv(raw / "transactions.csv", index=False)


def _outputs(catalog: Catalog) -> dict[str, object]:
    manifest = json.loads((catalog.validated_dir / MANIFEST).read_text())
    for entry in manifest["tables"].values():
        entry["source"] = Path(entry["source"]).name
    out: dict[str, object] = {"manifest": manifest}
    for name in TABLES:
        out[name] = pd.read_parquet(catalog.validated_dir / f"{name}.parquet")
        rejects = catalog.rejects_dir / f"{name}.rejects.parquet"
        out[f"{name}.rejects"] = pd.read_parquet(rejects) if rejects.exists() else None
    return out


def _assert_same(whole: dict[str, object], chunked: dict[str, object]) -> None:
    assert chunked["manifest"] == whole["manifest"]
    for key, frame in whole.items():
        if isinstance(frame, pd.DataFrame):
            pd.testing.assert_frame_equal(chunked[key], frame, check_exact=True, obj=key)
        else:
            assert chunked[key] == frame, key


@pytest.mark.parametrize("quarantine", [False, True], ids=["strict", "quarantine"])
def test_tiny_chunks_give_the_whole_table_outputs(
    small_bank: Settings, tmp_path: Path, quarantine: bool
) -> None:
    whole, chunked = _copy_raw(small_bank, tmp_path / "a"), _copy_raw(small_bank, tmp_path / "b")
    if quarantine:
        _break(whole)
        _break(chunked)
    report = validate_raw(whole, quarantine=quarantine)
    assert validate_raw(chunked, quarantine=quarantine, chunk_rows=TINY) == {
        **report,
        "reject_files": {
            t: p.replace(str(tmp_path / "a"), str(tmp_path / "b"))
            for t, p in report["reject_files"].items()
        },
    }
    a, b = _outputs(whole), _outputs(chunked)
    _assert_same(a, b)
    if quarantine:  # the defects really were spread over chunks and caught
        clicks = b["clickstream.rejects"]
        assert isinstance(clicks, pd.DataFrame)
        last = int(b["manifest"]["tables"]["clickstream"]["accepted"]) + len(clicks) - 1  # type: ignore[index]
        assert clicks["source_row"].tolist() == [3, 2 * TINY + 5, 4 * TINY - 1, 4 * TINY, last]
        assert f"shared by rows [3, {last}]" in clicks["reject_reason"].iloc[0]
        txns = b["transactions.rejects"]
        assert isinstance(txns, pd.DataFrame) and "yesterday" in txns["reject_reason"].iloc[0]


def test_strict_failures_match_across_chunks(small_bank: Settings, tmp_path: Path) -> None:
    """Without quarantine the error lists every failure of every chunk, as one table would."""
    whole, chunked = _copy_raw(small_bank, tmp_path / "a"), _copy_raw(small_bank, tmp_path / "b")
    _break(whole)
    _break(chunked)
    with pytest.raises(RawDataError) as a:
        validate_raw(whole)
    with pytest.raises(RawDataError) as b:
        validate_raw(chunked, chunk_rows=TINY)
    pd.testing.assert_frame_equal(b.value.failures, a.value.failures)
    assert str(b.value) == str(a.value).replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not chunked.validated_dir.exists()


def _factory_bank(catalog: Catalog, n: int = 12) -> None:
    tables = make_valid_tables()
    base = make_valid_table("transactions")
    txns = pd.concat([base] * (n // len(base) + 1), ignore_index=True).head(n)
    txns["event_id"] = np.arange(100, 100 + n)
    txns.loc[9, "event_id"] = 101  # twin of row 1: chunks 0 and 2 of 4 rows
    txns.loc[10, "customer_id"] = "C9999"  # no such customer, in the last chunk
    tables["transactions"] = txns
    catalog.raw_dir.mkdir(parents=True)
    for name, df in tables.items():
        df.to_parquet(catalog.raw_dir / f"{name}.parquet", index=False)


def test_duplicate_across_chunks_and_late_bad_reference_are_named(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    _factory_bank(catalog)

    with pytest.raises(RawDataError) as info:
        validate_raw(catalog, chunk_rows=4)
    dupes = info.value.failures
    assert dupes[["column", "check"]].drop_duplicates().values.tolist() == [
        ["event_id", "field_uniqueness"]
    ]
    assert dupes["row"].tolist() == [1, 9] and dupes["record_id"].tolist() == ["101", "101"]
    assert "column 'event_id'" in str(info.value) and "row 9" in str(info.value)
    assert not catalog.validated_dir.exists()

    with pytest.raises(RawDataError) as info:
        validate_raw(catalog, quarantine=True, chunk_rows=4)
    orphan = info.value.failures
    assert orphan.to_dict("records") == [
        {
            "table": "transactions",
            "column": "customer_id",
            "check": "references customers.customer_id",
            "row": 10,
            "value": "C9999",
            "record_id": "110",
        }
    ]
    assert "C9999" in str(info.value) and "row 10" in str(info.value)
    rejects = pd.read_parquet(catalog.rejects_dir / "transactions.rejects.parquet")
    assert rejects["source_row"].tolist() == [1, 9]
    assert all("shared by rows [1, 9]" in r for r in rejects["reject_reason"])

    # the same errors as validating the tables whole
    with pytest.raises(RawDataError) as whole:
        validate_raw(catalog, quarantine=True)
    pd.testing.assert_frame_equal(orphan, whole.value.failures)


def test_chunk_size_comes_from_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.pipeline import run_validation

    monkeypatch.setenv("NEXTOFFER_VALIDATION_CHUNK_ROWS", "4")
    settings = Settings(data_dir=tmp_path)
    assert settings.validation_chunk_rows == 4
    _factory_bank(settings.catalog)
    with pytest.raises(RawDataError, match="field_uniqueness"):  # a cross-chunk duplicate
        run_validation(settings)
