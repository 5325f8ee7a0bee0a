"""The feature SQL as Jinja templates: rendered plain, driven by the constants that name the
columns (one edit adds a window), and the ``to-spark-sql`` command."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pandas as pd
import pytest
import sqlglot
from test_customer_view import T, random_bank, write_bank
from typer.testing import CliRunner

from benchmarks.harness import customer_view_pandas as cvp
from benchmarks.harness.customer_view_pandas import build_customer_view_pandas, load_tables
from src.cli import app
from src.data.catalog import Catalog
from src.features import customer_view as cv
from src.features import sql_templates
from src.features.identity import load_sql, register_stages, render_sql, sql_files, sql_source

JINJA = re.compile(r"\{[{%#]|[}%#]\}")


@pytest.mark.parametrize("name", sql_files())
def test_rendered_sql_is_plain_duckdb_sql(name: str) -> None:
    sql = load_sql(name)
    assert not JINJA.search(sql)
    assert len(sqlglot.parse(sql, read="duckdb")) == 1  # $as_of still a placeholder
    assert len(sqlglot.parse(render_sql(sql, T), read="duckdb")) == 1


def test_no_window_is_written_by_hand() -> None:
    """Windows, page groups, products and codes are loops: the template is about half the query."""
    for name in sql_files():
        assert not re.search(r"INTERVAL \d+ DAY|_\d+d\b|<= \d+\b", sql_source(name)), name
    template = sql_source("customer_view").splitlines()
    rendered = load_sql("customer_view").splitlines()
    assert len(template) < 0.55 * len(rendered)  # 280 template lines render 554


def test_undefined_names_fail_loudly() -> None:
    with pytest.raises(jinja2.UndefinedError):
        sql_templates.render_template("SELECT {{ windowz }}")


def test_windows_must_increase(monkeypatch: pytest.MonkeyPatch) -> None:
    """``window_days`` is the smallest window an event is in: the CASE needs increasing windows."""
    monkeypatch.setattr(sql_templates, "WINDOWS", (30, 7))
    with pytest.raises(ValueError, match="increasing"):
        load_sql("customer_view")


def _view_columns(raw: Catalog, as_of: pd.Timestamp) -> list[str]:
    """Columns of the customer_view stage in the order its SQL returns them."""
    con = raw.connect(("customers", "holdings", "clickstream", "transactions"))
    register_stages(con, cv.VIEW_STAGES, as_of)
    return [row[0] for row in con.execute("DESCRIBE customer_view").fetchall()]


def test_one_edit_adds_a_window(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A 14-day window set in one constant reaches the SQL (session_keys and the view) and the
    data dictionary alike; its values agree with the pandas twin given the same windows."""
    windows = (7, 14, 30, 90)
    monkeypatch.setattr(sql_templates, "WINDOWS", windows)
    monkeypatch.setattr(cvp, "WINDOWS", windows)  # the twin binds the name at import
    dictionary = list(cv.data_dictionary())
    new = {c for c in dictionary if c.endswith("_14d")}
    assert new == {c[: -len("_7d")] + "_14d" for c in dictionary if c.endswith("_7d")}
    assert len(new) == 52 and "signups_pension_14d" in new  # every windowed feature

    raw = write_bank(random_bank(1), tmp_path)
    as_of = pd.Timestamp("2026-04-01 06:30")
    assert _view_columns(raw, as_of) == dictionary
    sql_view = cv.build_customer_view(raw, as_of)
    assert sql_view["sessions_14d"].sum() > 0 and sql_view["txn_transfer_cnt_14d"].sum() > 0
    assert (sql_view["sessions_7d"] <= sql_view["sessions_14d"]).all()
    assert (sql_view["sessions_14d"] <= sql_view["sessions_30d"]).all()
    pandas_view = build_customer_view_pandas(load_tables(raw.validated_dir), as_of)
    pd.testing.assert_frame_equal(sql_view, pandas_view, check_exact=False, rtol=1e-9)


def test_to_spark_sql_command_prints_spark_sql() -> None:
    result = CliRunner().invoke(app, ["to-spark-sql", "customer_view"])
    assert result.exit_code == 0, result.output
    spark = result.stdout
    code = re.sub(r"/\*.*?\*/", "", spark, flags=re.DOTALL)  # comments may say $as_of
    assert "SELECT" in code and ":as_of" in code  # Spark's named parameter
    assert "$as_of" not in code and not JINJA.search(spark)
    assert sqlglot.parse_one(spark, read="spark")
    unknown = CliRunner().invoke(app, ["to-spark-sql", "no_such_stage"])
    assert unknown.exit_code != 0 and "no_such_stage" in unknown.output
