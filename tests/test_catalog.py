"""The data contract gates every read: validated layer, one catalog, no raw paths elsewhere."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.data.catalog import DATASETS, Catalog, TableNotValidated
from src.settings import PACKAGE_ROOT, Settings


def _copy_raw(bank: Settings, data_dir: Path) -> Catalog:
    catalog = Catalog(data_dir)
    shutil.copytree(bank.raw_dir, catalog.raw_dir)
    return catalog


def _cli(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


def test_a_rejected_row_never_reaches_any_output(small_bank: Settings, tmp_path: Path) -> None:
    """A transaction of -5e9 KRW is rejected by the contract: strict validation stops and
    publishes nothing; quarantine publishes the rest, and no view, stitched stream, detection or
    feature built afterwards carries the row — the view equals one built without it."""
    catalog = _copy_raw(small_bank, tmp_path / "bad")
    raw_txn = pd.read_parquet(catalog.raw_dir / "transactions.parquet")
    row = int(raw_txn.index[raw_txn["customer_id"].notna() & (raw_txn["currency"] == "KRW")][0])
    bad_event, bad_customer = int(raw_txn.at[row, "event_id"]), raw_txn.at[row, "customer_id"]
    poisoned = raw_txn.copy()
    poisoned.loc[row, "amount"] = -5e9
    poisoned.to_parquet(catalog.raw_dir / "transactions.parquet", index=False)

    strict = _cli("validate", "--data-dir", str(catalog.data_dir))
    assert strict.exit_code == 1
    for expected in ("transactions", "amount", str(row), str(bad_event), "nothing published"):
        assert expected in strict.output
    assert not catalog.validated_dir.exists()
    for command in ("build-view", "detect", "train-bandit"):  # one line that says what to run
        refused = _cli(command, "--data-dir", str(catalog.data_dir))
        assert refused.exit_code == 1 and "run `nextoffer validate`" in refused.output, command
        assert "Traceback" not in refused.output

    lenient = _cli("validate", "--quarantine", "--data-dir", str(catalog.data_dir))
    assert lenient.exit_code == 0, lenient.output
    reject_file = catalog.rejects_dir / "transactions.rejects.parquet"
    assert str(reject_file) in lenient.output
    assert pd.read_parquet(reject_file)["event_id"].tolist() == [str(bad_event)]
    assert catalog.manifest()["tables"]["transactions"]["rejected"] == 1
    built = _cli("build-view", "--data-dir", str(catalog.data_dir))
    assert built.exit_code == 0, built.output
    detected = _cli("detect", "--data-dir", str(catalog.data_dir))
    assert detected.exit_code == 0, detected.output

    clean = _copy_raw(small_bank, tmp_path / "clean")
    raw_txn.drop(index=row).to_parquet(clean.raw_dir / "transactions.parquet", index=False)
    assert _cli("validate", "--data-dir", str(clean.data_dir)).exit_code == 0
    assert _cli("build-view", "--data-dir", str(clean.data_dir)).exit_code == 0

    view, expected = (pd.read_parquet(c.latest("customer_view")) for c in (catalog, clean))
    pd.testing.assert_frame_equal(view, expected)
    amounts = view.filter(like="_amt_krw_")
    assert (amounts.fillna(0) >= 0).all().all()
    assert bad_customer in set(view["customer_id"])  # the customer stays; the row does not
    stream = pd.read_parquet(catalog.path("stitched_events"))
    assert bad_event not in set(stream.loc[stream["source"] == "transaction", "event_id"])
    detections = pd.read_parquet(catalog.latest("detections"))
    assert "amount" not in detections or not (detections["amount"] == -5e9).any()
    assert -5e9 not in set(catalog.read("transactions")["amount"])


def test_csv_exports_give_the_same_view_as_parquet(small_bank: Settings, tmp_path: Path) -> None:
    parquet = _copy_raw(small_bank, tmp_path / "parquet")
    csv = Catalog(tmp_path / "csv")
    csv.raw_dir.mkdir(parents=True)
    for path in parquet.raw_dir.glob("*.parquet"):
        pd.read_parquet(path).to_csv(csv.raw_dir / f"{path.stem}.csv", index=False)
    for catalog in (parquet, csv):
        result = _cli("validate", "--data-dir", str(catalog.data_dir))
        assert result.exit_code == 0, result.output
        result = _cli("build-view", "--data-dir", str(catalog.data_dir))
        assert result.exit_code == 0, result.output
    for name in ("customers", "transactions", "clickstream"):
        pd.testing.assert_frame_equal(parquet.read(name), csv.read(name), check_dtype=False)
    pd.testing.assert_frame_equal(
        pd.read_parquet(parquet.latest("customer_view")),
        pd.read_parquet(csv.latest("customer_view")),
    )


# --- no module reads a table outside the catalog ----------------------------------------------

#: Where table files may be named: the catalog itself, the loaders that fill its layers, the
#: simulator (it writes the raw export it simulates) and the evaluation (it reads the
#: simulator's truth beside that export).
ALLOWED = (
    "src/data/catalog.py",
    "src/data/loaders.py",
    "src/data/ingest.py",
    "src/data/synthetic/",
    "src/evaluation/",
)
FILE_NAME = re.compile(r"(^|[\w{}*/'-])\.(parquet|csv)\b", re.IGNORECASE)
"""A table file's name or suffix in a string (not the words "Parquet" or "CSV" in prose)."""
READERS = {"read_parquet", "read_csv", "read_table", "read_json", "parquet_scan", "ParquetFile"}
SQL_READ = re.compile(r"(read_parquet|read_csv\w*|parquet_scan)\s*\(\s*'[^']*\.(parquet|csv)", re.I)
LAYER_ATTRIBUTES = {"raw_dir", "truth_dir", "validated_dir"}
#: The app layer names the raw/truth directories only to tell the user where the simulator wrote.
ATTRIBUTE_ALLOWED = ("src/settings.py", "src/cli.py", "src/pipeline.py", *ALLOWED)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _names_a_table_file(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Constant) and isinstance(n.value, str) and FILE_NAME.search(n.value)
        for n in ast.walk(node)
    )


def _path_problems(path: Path, source: str) -> list[str]:
    """Reads of a table file named by hand, and the data layers' directories used directly."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    rel = path.relative_to(PACKAGE_ROOT).as_posix()
    problems = []
    for node in ast.walk(tree):
        line = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in READERS and any(_names_a_table_file(a) for a in node.args):
                problems.append(f"{line}: {name}() of a file named outside the catalog")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and SQL_READ.search(node.value)
        ):
            problems.append(f"{line}: SQL reads a file named outside the catalog")
        if (
            isinstance(node, ast.Attribute)
            and node.attr in LAYER_ATTRIBUTES
            and not rel.startswith(ATTRIBUTE_ALLOWED)
        ):
            problems.append(f"{line}: .{node.attr} used outside the catalog")
    return problems


def test_no_module_builds_a_table_path_outside_the_catalog() -> None:
    problems = []
    for path in sorted((PACKAGE_ROOT / "src").rglob("*.py")):
        rel = path.relative_to(PACKAGE_ROOT).as_posix()
        if rel.startswith(ALLOWED):
            continue
        problems += _path_problems(path, path.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "snippet",
    [
        'pd.read_parquet(settings.raw_dir / "exposures.parquet")',
        "pd.read_parquet(Path(d) / f'{name}.parquet')",
        "duckdb.sql(\"SELECT * FROM read_parquet('data/raw/transactions.csv')\")",
    ],
)
def test_the_catalog_check_catches_raw_paths(snippet: str) -> None:
    """The check above would fail on the usual ways of reading a file by hand."""
    problems = _path_problems(PACKAGE_ROOT / "src" / "models" / "x.py", snippet)
    assert problems


def test_every_dataset_has_one_home(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    paths = [catalog.path(n, "2026-03-02") for n in DATASETS]
    assert len(set(paths)) == len(paths)
    with pytest.raises(TableNotValidated, match="nextoffer validate"):
        catalog.read("transactions")
    with pytest.raises(KeyError, match="no dataset 'nope'"):
        catalog.path("nope")
    with pytest.raises(ValueError, match="as_of"):
        catalog.path("customer_view")
