"""Features: identity stitching and the point-in-time customer view.

``identity`` (device/cookie/session -> customer), ``customer_view`` (one row per customer as of
T, DuckDB SQL under ``sql/``) and ``spark`` (the SQL transpiled to Spark SQL). The same
aggregates in plain pandas (baseline and cross-check) are test and benchmark code:
``benchmarks/harness/customer_view_pandas.py``.
"""
