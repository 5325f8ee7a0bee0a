"""deploy/spark/: the scripts parse, and entry.py refuses a master given to nextoffer.

The submit path itself (wheel + spark-submit on local[2] + parity with DuckDB) takes minutes:
it is ``deploy/spark/try_local.sh``, with its recorded output in deploy/spark/README.md.
"""

from __future__ import annotations

import runpy
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "spark"


@pytest.mark.parametrize("script", ["submit.sh", "try_local.sh"])
def test_scripts_parse_and_are_executable(script: str) -> None:
    path = DEPLOY / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_submit_without_a_command_prints_usage() -> None:
    result = subprocess.run(["bash", str(DEPLOY / "submit.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_entry_refuses_a_master_under_spark_submit() -> None:
    entry = runpy.run_path(str(DEPLOY / "entry.py"))
    with pytest.raises(SystemExit, match="give the master to spark-submit"):
        entry["main"](["build-view", "--engine", "spark", "--master", "local[2]"])
