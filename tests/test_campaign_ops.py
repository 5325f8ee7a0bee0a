"""Campaign operations: missed cron occurrences (``when.catch_up``), delivery receipts from a
provider's file (validated row by row, idempotent, reconciled in the report) and schema
migrations of a campaign store written by the release before versioning."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from test_campaigns_more import make_spec, seed_run

from src.campaigns.receipts import ReceiptError, ingest_receipts
from src.campaigns.report import step_table
from src.campaigns.schedule import due_occurrences
from src.campaigns.state import DDL, MIGRATIONS, CampaignDB, SchemaError, schema_version
from src.contact.store_sql import SQLContactStore


# -- missed cron occurrences ----------------------------------------------------------------
def _daily(**when: object):
    return make_spec(when={"cron": "0 12 * * *", **when})


def test_catch_up_latest_all_none() -> None:
    at = datetime(2026, 2, 8, 12, 30)  # daily at noon; the 6th, 7th and 8th are due
    assert due_occurrences(_daily(), at) == ["2026-02-08T12:00:00"]  # the default: latest
    assert due_occurrences(_daily(catch_up="all", catch_up_hours=60), at) == [
        "2026-02-06T12:00:00",
        "2026-02-07T12:00:00",
        "2026-02-08T12:00:00",
    ]
    assert due_occurrences(_daily(catch_up="none"), at) == []  # 30 min late > 15 min grace
    assert due_occurrences(_daily(catch_up="none"), datetime(2026, 2, 8, 12, 10)) == [
        "2026-02-08T12:00:00"
    ]
    # nothing older than catch_up_hours, whatever the mode
    assert due_occurrences(_daily(catch_up_hours=12), datetime(2026, 2, 9, 11, 0)) == []
    assert due_occurrences(_daily(catch_up="all", catch_up_hours=1), at) == ["2026-02-08T12:00:00"]
    with pytest.raises(ValueError, match="catch_up"):
        _daily(catch_up="sometimes")


# -- receipts -------------------------------------------------------------------------------
@pytest.fixture
def sent(tmp_path: Path) -> tuple[CampaignDB, dict[str, str]]:
    db = CampaignDB(SQLContactStore(tmp_path / "c.sqlite"))
    arms = {f"u{i}": "treatment" for i in range(4)} | {"u9": "control"}
    return db, seed_run(db, make_spec(), arms)


def test_receipts_validated_row_by_row_idempotent_and_reconciled(
    sent: tuple[CampaignDB, dict[str, str]], tmp_path: Path
) -> None:
    db, mids = sent
    good = [
        (mids["u0"], "delivered", "2026-02-05T12:01:00"),
        (mids["u1"], "delivered", "2026-02-05T03:02:00+00:00"),  # UTC: 12:02 in Seoul
        (mids["u1"], "opened", "2026-02-05T12:30:00"),
        (mids["u2"], "failed", "2026-02-05T12:01:00"),
    ]
    bad = [
        ("nope", "delivered", "2026-02-05T12:01:00"),
        (mids["u3"], "bounced", "2026-02-05T12:01:00"),
        (mids["u3"], "delivered", "yesterday"),
    ]
    path = tmp_path / "receipts.csv"
    path.write_text("message_id,status,ts\n" + "".join(f"{m},{s},{t}\n" for m, s, t in good + bad))
    with pytest.raises(ReceiptError) as error:
        ingest_receipts(db, path)
    message = str(error.value)
    assert "3 invalid row(s), nothing recorded" in message
    assert "line 6: message_id: 'nope' is not in the outbox" in message
    assert "line 7: status: 'bounced'" in message and "line 8: ts: 'yesterday'" in message
    assert db.events("c1").empty  # nothing written
    r = ingest_receipts(db, path, allow_invalid=True)
    assert (r.rows, r.recorded, r.duplicates, r.rejected, r.not_marked_sent) == (7, 4, 0, 3, 0)
    ev = db.events("c1").set_index(["customer_id", "event"])["at"]
    assert ev[("u1", "delivered")] == "2026-02-05T12:02:00"
    # the same file again (as JSONL, say): nothing new, the first times stand
    jsonl = tmp_path / "receipts.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"message_id": m, "status": s, "ts": "2026-02-06T00:00:00"}) + "\n"
            for m, s, _ in good
        )
    )
    again = ingest_receipts(db, jsonl)
    assert (again.recorded, again.duplicates) == (0, 4)
    assert db.events("c1").set_index(["customer_id", "event"])["at"].equals(ev)
    row = step_table(make_spec(), db).iloc[0]
    assert (row["sent"], row["delivered"], row["opened"], row["failed"]) == (4, 2, 1, 1)
    assert row["sent_without_receipt"] == 1  # u3: acknowledged, never receipted
    assert row["receipt_not_sent"] == 0
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"message_id": 1\n[1]\n')
    with pytest.raises(ReceiptError, match=r"line 1: not JSON.*line 2: not an object"):
        ingest_receipts(db, bad_json)
    no_header = tmp_path / "h.csv"
    no_header.write_text("id,status\n")
    with pytest.raises(ReceiptError, match="header lacks message_id, ts"):
        ingest_receipts(db, no_header)


# -- schema migrations ----------------------------------------------------------------------
def _old_store(store: SQLContactStore) -> None:
    """The campaign tables as the release before versioning created them, with a message."""
    store.ensure(DDL)
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO campaign_outbox (message_id, campaign_id, step_id, customer_id, "
            "channel, offer_id, content, send_at, status) "
            "VALUES ('m1', 'c1', 's1', 'u1', 'push', 'OF02', '', '2026-02-05T12:00', 'sent')"
        )
        tx.execute("INSERT INTO campaign_events VALUES ('m1', 'delivered', '2026-02-05T12:01')")


def _check_upgrade(store: SQLContactStore) -> None:
    _old_store(store)
    db = CampaignDB(store)
    latest = MIGRATIONS[-1][0]
    assert db.migrated == [v for v, _, _ in MIGRATIONS] and schema_version(store) == latest
    # the old rows are kept and the new columns and tables are there
    out = db.frame("SELECT message_id, detection_id FROM campaign_outbox", (), ["m", "d"])
    assert out.values.tolist() == [["m1", None]]
    assert db.events("c1")["event"].tolist() == ["delivered"]
    with store.transaction() as tx:
        tx.execute("INSERT INTO campaign_trigger_cursors VALUES ('c1', 5, 'now')")
    assert CampaignDB(store).migrated == []  # opening again applies nothing
    with store.transaction() as tx:
        tx.execute("INSERT INTO campaign_schema VALUES (?, 'future', 'now')", (latest + 1,))
    with pytest.raises(SchemaError, match="newer than this code"):
        CampaignDB(store)


def test_an_old_sqlite_store_opens_and_upgrades(tmp_path: Path) -> None:
    store = SQLContactStore(tmp_path / "old.sqlite")
    _check_upgrade(store)
    fresh = CampaignDB(SQLContactStore(tmp_path / "new.sqlite"))
    assert fresh.migrated == [1, 2, 3]


@pytest.fixture
def pg_store() -> Iterator[SQLContactStore]:
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    try:
        store = SQLContactStore("postgresql://postgres@127.0.0.1:5432/test", schema=schema)
    except Exception as error:  # noqa: BLE001 - any connection failure means no server
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL 127.0.0.1:5432 not available: {error}")
    try:
        yield store
    finally:
        store.drop_schema()
        store.close()


def test_an_old_postgres_store_opens_and_upgrades(pg_store: SQLContactStore) -> None:
    _check_upgrade(pg_store)


def test_fields_added_later_are_signed_only_when_set() -> None:
    """An approval given before catch_up existed still stands after the upgrade: the signed
    spec (and so the bundle hash) of a spec at the defaults is what the old code signed."""
    from src.campaigns.spec import LATER_FIELDS, sha256_json

    spec = _daily()
    old = spec.model_dump(mode="json")
    for section, names in LATER_FIELDS.items():
        if section == "who.model":  # model segments: test_campaign_targeting.py
            continue
        for name in names:
            del old[section][name]
    assert spec.signed_dump() == old and spec.content_hash() == sha256_json(old)
    assert _daily(catch_up="all").signed_dump()["when"]["catch_up"] == "all"
    assert _daily(catch_up="all").content_hash() != spec.content_hash()


def test_receipts_and_trigger_cursor_on_postgres(pg_store: SQLContactStore, tmp_path: Path) -> None:
    from src.campaigns.engine import _set_cursor, trigger_cursor

    db = CampaignDB(pg_store)
    mids = seed_run(db, make_spec(), {"u0": "treatment", "u1": "treatment"})
    path = tmp_path / "r.csv"
    path.write_text(
        f"message_id,status,ts\n{mids['u0']},delivered,2026-02-05T12:01:00\n"
        f"{mids['u1']},failed,2026-02-05T12:01:00\n"
    )
    assert ingest_receipts(db, path).recorded == 2
    assert (ingest_receipts(db, path).recorded, ingest_receipts(db, path).duplicates) == (0, 2)
    row = step_table(make_spec(), db).iloc[0]
    assert (row["delivered"], row["failed"], row["sent_without_receipt"]) == (1, 1, 0)
    _set_cursor(db, "c1", 7)
    _set_cursor(db, "c1", 9)
    assert trigger_cursor(db, "c1") == 9
