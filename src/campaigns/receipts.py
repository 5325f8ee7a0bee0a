"""Delivery receipts from a provider's file: the other half of "marked sent on the provider's
acknowledgement": the acknowledgement says the provider took the message, the receipt says
what became of it (delivered, failed, opened, clicked).

A file is CSV (header ``message_id,status,ts``) or JSON Lines (one object with those keys a
line). Every row is checked: an unknown message id, a status outside
:data:`RECEIPT_STATUSES` or a time that does not parse is a problem naming the file's line; by
default one problem rejects the whole file (nothing written, every problem listed), and with
``allow_invalid`` the valid rows are written and the rest reported, never silently dropped.
Ingesting is idempotent: a receipt already stored (same message and status) is counted as a
duplicate and left as it was (its first time stands), so a provider's re-sent file changes
nothing. Receipts are ``campaign_events`` rows, the same the waves and the report read.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from src.campaigns.state import CampaignDB

RECEIPT_STATUSES = ("delivered", "failed", "opened", "clicked", "converted")
FIELDS = ("message_id", "status", "ts")
MAX_LISTED = 20


class ReceiptError(ValueError):
    """A receipt file with invalid rows (each named by its line) or that cannot be read."""


@dataclass(frozen=True)
class ReceiptResult:
    """What an ingest did: rows read, written now, already stored, rejected (with why), and
    receipts for messages the outbox never marked sent (a crash between the provider's
    acknowledgement and the mark: reconciled in the report)."""

    path: str
    rows: int
    recorded: int
    duplicates: int
    rejected: int
    not_marked_sent: int
    problems: list[str] = field(default_factory=list)


def read_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(line number, record) of every row; CSV by header, JSONL one object a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ReceiptError(f"{path}: {error}") from error
    rows: list[tuple[int, dict[str, object]]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append((i, {"__error__": f"not JSON ({error.msg})"}))
                continue
            rows.append((i, value if isinstance(value, dict) else {"__error__": "not an object"}))
        return rows
    reader = csv.DictReader(text.splitlines())
    missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
    if missing:
        raise ReceiptError(f"{path}: line 1: header lacks {', '.join(missing)}")
    for i, row in enumerate(reader, start=2):
        rows.append((i, dict(row)))
    return rows


def _time(value: object, tz: ZoneInfo) -> datetime:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError("a number, not an ISO time")
    t = datetime.fromisoformat(str(value).strip())
    if t.tzinfo is not None:  # outbox times are naive local time of the campaign's zone
        t = t.astimezone(tz).replace(tzinfo=None)
    return t


def ingest_receipts(
    db: CampaignDB,
    path: Path | str,
    allow_invalid: bool = False,
    timezone: str = "Asia/Seoul",
) -> ReceiptResult:
    """Check every row of a receipt file and store the valid ones (see the module doc)."""
    path = Path(path)
    rows = read_rows(path)
    tz = ZoneInfo(timezone)
    ids = sorted({str(r.get("message_id", "")).strip() for _, r in rows})
    status = _outbox_status(db, ids)
    problems: list[str] = []
    valid: list[tuple[str, str, str, str]] = []
    unsent = 0
    for line, row in rows:
        where = f"{path.name}: line {line}"
        if "__error__" in row:
            problems.append(f"{where}: {row['__error__']}")
            continue
        mid = str(row.get("message_id") or "").strip()
        event = str(row.get("status") or "").strip().lower()
        if not mid:
            problems.append(f"{where}: message_id: missing")
            continue
        if mid not in status:
            problems.append(f"{where}: message_id: {mid!r} is not in the outbox")
            continue
        if event not in RECEIPT_STATUSES:
            problems.append(
                f"{where}: status: {row.get('status')!r} is not one of "
                f"{', '.join(RECEIPT_STATUSES)}"
            )
            continue
        try:
            at = _time(row.get("ts"), tz)
        except (ValueError, TypeError) as error:
            problems.append(f"{where}: ts: {row.get('ts')!r} is not an ISO time ({error})")
            continue
        unsent += status[mid] != "sent"
        valid.append((mid, event, at.isoformat(), path.name))
    if problems and not allow_invalid:
        listed = problems[:MAX_LISTED]
        more = len(problems) - len(listed)
        raise ReceiptError(
            f"{path}: {len(problems)} invalid row(s), nothing recorded (--allow-invalid "
            "records the valid ones): " + "; ".join(listed) + (f"; ... {more} more" if more else "")
        )
    recorded = _record(db, valid)
    return ReceiptResult(
        str(path),
        len(rows),
        recorded,
        len(valid) - recorded,
        len(problems),
        unsent,
        problems,
    )


def _outbox_status(db: CampaignDB, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with db.store.transaction() as tx:
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out |= {
                str(m): str(s)
                for m, s in tx.fetchall(
                    f"SELECT message_id, status FROM campaign_outbox WHERE message_id IN ({marks})",
                    chunk,
                )
            }
    return out


def _record(db: CampaignDB, rows: list[tuple[str, str, str, str]]) -> int:
    """Insert the receipts not stored yet (first per message and status wins); returns how
    many were new."""
    first: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    for r in rows:
        first.setdefault((r[0], r[1]), r)
    new = 0
    with db.store.transaction() as tx:
        keys = list(first)
        for i in range(0, len(keys), 400):
            chunk = keys[i : i + 400]
            marks = ",".join("(?, ?)" for _ in chunk)
            flat = [v for k in chunk for v in k]
            known = {
                (str(m), str(e))
                for m, e in tx.fetchall(
                    "SELECT message_id, event FROM campaign_events "
                    f"WHERE (message_id, event) IN (VALUES {marks})",
                    flat,
                )
            }
            todo = [first[k] for k in chunk if k not in known]
            if todo:
                tx.executemany(
                    "INSERT INTO campaign_events (message_id, event, at, source) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (message_id, event) DO NOTHING",
                    todo,
                )
            new += len(todo)
    return new
