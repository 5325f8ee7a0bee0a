"""The customer view's data dictionary as a document: every column with its meaning, window,
source table and unit, exported as Markdown or HTML (``nextoffer data-dictionary``).

Nothing here lists columns by hand. The columns, dtypes and meanings come from
:func:`~src.features.customer_view.data_dictionary` (itself rendered from the SQL templates'
constants); window, source and unit are read off the column-name patterns those templates
generate (``<stem>_<N>d`` for N in ``WINDOWS``, ``pv_<page group>``, ``txn_<code>_amt_krw`` ...).
A column that no pattern claims fails :func:`dictionary_rows` loudly, so a new feature cannot
ship undocumented.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass

from src.features.customer_view import data_dictionary
from src.features.sql_templates import template_context


@dataclass(frozen=True)
class ColumnDoc:
    """One view column as the dictionary documents it."""

    column: str
    dtype: str
    meaning: str
    window: str  # "last N days before T" for windowed columns, else what the value is as of
    source: str  # raw table(s) the value is computed from
    unit: str


CUSTOMER_COLUMNS = (
    "customer_id",
    "age",
    "gender",
    "life_stage",
    "income_band",
    "region",
    "tenure_days",
    "consent_push",
    "consent_sms",
    "consent_messenger",
    "consent_email",
    "is_accident_reported",
    "is_closed",
)
"""The customer-table columns (one row per customer; no window)."""

CLICKS = "clickstream (stitched via identity_map/session_map)"
TXNS = "transactions"
HOLDINGS = "holdings"

# (pattern on the column name with its window suffix removed, source, unit); first match wins.
_STEM_RULES: tuple[tuple[str, str, str], ...] = (
    (r"n_currencies", TXNS, "count (distinct currencies)"),
    (r"n_\w+", HOLDINGS, "count (holdings)"),
    (r"balance_\w+", HOLDINGS, "KRW"),
    (r"days_to_\w+", HOLDINGS, "days"),
    (r"fund_return_pct_avg", HOLDINGS, "percent"),
    (r"sessions", CLICKS, "count (sessions)"),
    (r"app_share", CLICKS, "share 0..1"),
    (r"page_views|pv_\w+|long_views_\w+", CLICKS, "count (page views)"),
    (r"dwell_seconds", CLICKS, "seconds"),
    (r"logins", CLICKS, "count (logins)"),
    (r"days_since_last_session", CLICKS, "days"),
    (r"txn_\w+_cnt", TXNS, "count (transactions)"),
    (r"txn_\w+_amt_krw", f"{TXNS} + fx_rates", "KRW"),
    (r"signups_\w+", TXNS, "count (signups)"),
    (r"days_since_last_txn", TXNS, "days"),
)

_CUSTOMER_UNITS = {"customer_id": "key", "age": "years", "tenure_days": "days"}


def _window_suffix(windows: tuple[int, ...]) -> re.Pattern[str]:
    return re.compile(r"^(?P<stem>.+)_(?P<days>" + "|".join(str(w) for w in windows) + r")d$")


def dictionary_rows() -> list[ColumnDoc]:
    """Every view column, in the view's order, with window, source and unit filled in."""
    windows = tuple(template_context()["windows"])
    suffix = _window_suffix(windows)
    rows = []
    for column, (dtype, meaning) in data_dictionary().items():
        stem, window = column, ""
        m = suffix.match(column)
        if m:
            stem, window = m["stem"], f"last {m['days']} days before T"
        if column in CUSTOMER_COLUMNS:
            source = "customers"
            unit = _CUSTOMER_UNITS.get(column, _dtype_unit(dtype))
            meaning = _spell_out_vocabulary(meaning)
            window = "at T"
        else:
            found = next((r for r in _STEM_RULES if re.fullmatch(r[0], stem)), None)
            if found is None:
                raise ValueError(f"no data-dictionary rule for view column {column!r}")
            _, source, unit = found
            if not window:
                window = "at T (open holdings)" if source == HOLDINGS else "all history before T"
        rows.append(ColumnDoc(column, dtype, meaning, window, source, unit))
    return rows


def _spell_out_vocabulary(meaning: str) -> str:
    """ "schemas.REGIONS" -> "one of: A, B, ... (schemas.REGIONS)": the values from the schema."""
    from src.data import schemas

    m = re.fullmatch(r"schemas\.(\w+)", meaning)
    values = getattr(schemas, m[1], None) if m else None
    if not values:
        return meaning
    return f"one of: {', '.join(map(str, values))} ({meaning})"


def _dtype_unit(dtype: str) -> str:
    return {"bool": "flag", "str": "category"}.get(dtype, "")


HEADER = ("column", "dtype", "meaning", "window", "source", "unit")

INTRO = (
    "One row per customer as of T (only events strictly before T, holdings open at T). "
    "Counts and amounts are 0 when there is nothing to count; `days` columns are null when "
    "the thing does not exist. Generated from the SQL templates' constants "
    "(`nextoffer data-dictionary`); do not edit by hand."
)


def to_markdown(rows: list[ColumnDoc] | None = None) -> str:
    """The dictionary as a Markdown document with one table row per column."""
    rows = dictionary_rows() if rows is None else rows

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Customer view data dictionary",
        "",
        INTRO,
        "",
        f"{len(rows)} columns.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for r in rows:
        values = asdict(r)
        lines.append(
            "| "
            + " | ".join(
                f"`{cell(values[h])}`" if h == "column" else cell(values[h]) for h in HEADER
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def to_html(rows: list[ColumnDoc] | None = None) -> str:
    """The dictionary as a standalone HTML page with one table row per column."""
    rows = dictionary_rows() if rows is None else rows
    head = "".join(f"<th>{h}</th>" for h in HEADER)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(asdict(r)[h])}</td>" for h in HEADER) + "</tr>"
        for r in rows
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        "<title>Customer view data dictionary</title>"
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:left;font:13px sans-serif}</style></head><body>\n"
        f"<h1>Customer view data dictionary</h1>\n<p>{html.escape(INTRO)}</p>\n"
        f"<p>{len(rows)} columns.</p>\n"
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n"
        "</body></html>\n"
    )


def render(fmt: str = "md") -> str:
    """The dictionary in ``fmt`` ("md" or "html")."""
    if fmt == "md":
        return to_markdown()
    if fmt == "html":
        return to_html()
    raise ValueError(f"format must be md or html, got {fmt!r}")
