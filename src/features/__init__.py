"""Features: identity stitching and the point-in-time customer view.

``identity`` (device/cookie/session -> customer), ``customer_view`` (one row per customer as of
T, DuckDB SQL under ``sql/``), ``customer_view_pandas`` (the same aggregates in plain pandas:
baseline and cross-check) and ``spark`` (the SQL transpiled to Spark SQL).
"""
