"""The README's cron line for retraining works on a fresh deploy (no reports/ folder yet)."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from datetime import date
from pathlib import Path

import pytest

from src.settings import PACKAGE_ROOT


def _cron_line() -> str:
    lines = [
        ln
        for ln in (PACKAGE_ROOT / "README.md").read_text().splitlines()
        if re.match(r"^[\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ [\d*/,-]+ .*nextoffer retrain", ln)
    ]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_readme_cron_line_runs_on_a_fresh_deploy(tmp_path: Path):
    """The command part as cron runs it (``\\%`` is a literal ``%`` to cron, the rest goes to
    ``sh``), in an empty deploy folder whose ``.venv/bin/nextoffer`` records its arguments."""
    fields = _cron_line().split(None, 5)
    command = fields[5].replace("\\%", "%")
    deploy = re.match(r"cd (\S+) &&", command)
    assert deploy, command
    command = command.replace(deploy.group(0), f"cd {tmp_path} &&", 1)
    fake = tmp_path / ".venv" / "bin" / "nextoffer"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "to stderr" >&2\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert not (tmp_path / "reports").exists()
    subprocess.run(["sh", "-c", command], check=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    log = (tmp_path / "reports" / "retrain.log").read_text()
    assert f"args: retrain --as-of {date.today():%Y-%m-%d}" in log  # date +%F, today
    assert "to stderr" in log  # errors land in the log too (2>&1)
