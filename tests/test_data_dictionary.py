"""The customer view's data dictionary document: complete, windowed, rendered, on the CLI."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from src.cli import app
from src.features.customer_view import data_dictionary
from src.features.data_dictionary import HEADER, dictionary_rows, to_html, to_markdown
from src.features.sql_templates import WINDOWS


def test_every_view_column_once_with_meaning_source_unit_and_window():
    rows = dictionary_rows()
    assert [r.column for r in rows] == list(data_dictionary())
    assert max(Counter(r.column for r in rows).values()) == 1
    for r in rows:
        assert r.meaning.strip() and r.source and r.window, r
        m = re.fullmatch(r".+_(\d+)d", r.column)
        if m and int(m[1]) in WINDOWS:
            assert r.window == f"last {m[1]} days before T", r
        else:
            assert "days before T" not in r.window, r
    by_name = {r.column: r for r in rows}
    assert by_name[f"dwell_seconds_{WINDOWS[0]}d"].unit == "seconds"
    assert by_name[f"txn_transfer_amt_krw_{WINDOWS[-1]}d"].unit == "KRW"
    assert by_name["n_account"].source == "holdings"
    assert "seoul" in by_name["region"].meaning  # the vocabulary spelled out from schemas


def test_markdown_is_one_table_row_per_column():
    text = to_markdown()
    lines = text.splitlines()
    header = "| " + " | ".join(HEADER) + " |"
    start = lines.index(header)
    assert set(lines[start + 1]) <= set("|-")
    table = [ln for ln in lines[start + 2 :] if ln.startswith("| ")]
    columns = list(data_dictionary())
    assert len(table) == len(columns)
    for line, column in zip(table, columns, strict=True):
        assert line.startswith(f"| `{column}` |")
        # escaped pipes inside cells keep the column count
        assert len(re.split(r"(?<!\\)\|", line)) == len(HEADER) + 2
    assert to_html().count("<tr>") == len(columns) + 1


def test_cli_writes_markdown_and_html(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "dict.md"
    result = runner.invoke(app, ["data-dictionary", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| `customer_id` |" in out.read_text()
    result = runner.invoke(app, ["data-dictionary", "--format", "html"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("<!DOCTYPE html>") and "customer_id" in result.output
    assert runner.invoke(app, ["data-dictionary", "--format", "pdf"]).exit_code != 0
