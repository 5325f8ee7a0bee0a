"""Check what a Spark job wrote under a data dir equals DuckDB's build for the same as_of.

    python deploy/spark/compare_engines.py DATA_DIR AS_OF

Builds the identity tables and the customer view with the embedded engine from DATA_DIR's
validated tables into a temp dir, then compares table by table with what is under
DATA_DIR/features: same columns and Arrow types, same rows in the same order, floats within
1e-9 relative. Exit 1 naming the first table and column that differ.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from src.data.catalog import Catalog
from src.features.customer_view import write_customer_view
from src.features.identity import write_identity


def main(data_dir: str, as_of: str) -> None:
    work = Path(tempfile.mkdtemp())
    shutil.copytree(Path(data_dir) / "validated", work / "validated")
    embedded = Catalog.at(work)
    paths = write_identity(embedded, as_of)
    paths["customer_view"] = write_customer_view(embedded, as_of)
    spark_built = Catalog.at(Path(data_dir))
    for name, path in paths.items():
        a, b = pq.read_table(path), pq.read_table(spark_built.path(name, as_of))
        if [(f.name, f.type) for f in a.schema] != [(f.name, f.type) for f in b.schema]:
            sys.exit(f"{name}: columns or types differ")
        if a.num_rows != b.num_rows:
            sys.exit(f"{name}: {b.num_rows} rows, DuckDB {a.num_rows}")
        x, y = a.to_pandas(), b.to_pandas()
        for col in x.columns:
            if x[col].dtype.kind == "f":
                same = np.allclose(y[col], x[col], rtol=1e-9, atol=0.0, equal_nan=True)
            else:
                same = x[col].isna().equals(y[col].isna()) and x[col].dropna().equals(
                    y[col].dropna()
                )
            if not same:
                sys.exit(f"{name}.{col}: values differ")
        print(f"{name:<16} {b.num_rows:>6} rows x {b.num_columns:>3} columns: equal to DuckDB's")
    shutil.rmtree(work)


if __name__ == "__main__":
    main(*sys.argv[1:3])
