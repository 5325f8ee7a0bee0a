"""Production code stays apart from the simulator, its truth and the test/benchmark helpers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from src.settings import PACKAGE_ROOT

PRODUCTION = ("features", "models", "serving")


def _sources(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (PACKAGE_ROOT / "src" / pkg).rglob("*.py"))


def test_production_code_never_reads_the_truth():
    """Only src.evaluation (and the simulator, the pipeline's demo) may touch data/truth."""
    offenders = [
        f"{path.relative_to(PACKAGE_ROOT)}:{n}"
        for path in _sources(*PRODUCTION)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"truth_dir|[\"']truth[\"']", line)
    ]
    assert not offenders, offenders


def test_nothing_in_src_imports_tests_or_benchmarks():
    pattern = re.compile(r"^\s*(from|import)\s+(benchmarks|tests|conftest|factories)\b")
    offenders = [
        str(path.relative_to(PACKAGE_ROOT))
        for path in _sources(".")
        if any(pattern.match(line) for line in path.read_text().splitlines())
    ]
    assert not offenders, offenders


def test_import_contracts_hold():
    """The import-linter contracts in pyproject.toml (also run by `make lint`)."""
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed")
    result = subprocess.run(
        [str(linter), "--no-cache"], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
