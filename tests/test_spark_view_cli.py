"""The ``--engine`` options of build-view and feature-table: bad values exit 2 naming the
option, before any Spark session (or JVM) is started. Parity itself: tests/test_spark_view.py."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from src.cli import app


@pytest.mark.parametrize("command", ["build-view", "feature-table"])
@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--engine", "polars"], "--engine"),
        (["--master", "local[2]"], "--master"),
        (["--engine", "spark", "--spark-conf", "spark.driver.memory"], "--spark-conf"),
    ],
)
def test_bad_engine_options_exit_2_naming_the_option(
    command: str, args: list[str], names: str, tmp_path
) -> None:
    result = CliRunner().invoke(app, [command, *args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert names in result.output
    assert not (tmp_path / "features").exists()


def test_feature_table_needs_validated_tables(tmp_path) -> None:
    """No validation manifest: the one-line "run nextoffer validate" error, exit 1."""
    result = CliRunner().invoke(
        app, ["feature-table", "--engine", "duckdb", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1 and "nextoffer validate" in result.output
