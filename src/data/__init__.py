"""Raw data: the contract (``schemas``), the catalog of named tables (``catalog``) and the only
way in (``loaders``).

Kept light on purpose: importing ``src.data`` (and so ``src.data.catalog`` from the settings)
loads neither pandas nor the simulator (``src.data.synthetic``); the names below are resolved on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LOADERS = (
    "FAILURE_COLUMNS",
    "REFERENCES",
    "LoadResult",
    "RawDataError",
    "ReferenceProblem",
    "check_references",
    "find_table_file",
    "format_failures",
    "load_raw",
    "load_table",
    "load_table_result",
    "read_table_file",
    "validate_frame",
    "validate_raw",
    "write_table",
)
_SCHEMAS = (
    "TABLES",
    "Clickstream",
    "Customers",
    "Exposures",
    "Holdings",
    "Offers",
    "StitchedEvents",
    "Transactions",
)

__all__ = [*_LOADERS, *_SCHEMAS]


def __getattr__(name: str) -> Any:
    if name in _LOADERS:
        return getattr(importlib.import_module("src.data.loaders"), name)
    if name in _SCHEMAS:
        return getattr(importlib.import_module("src.data.schemas"), name)
    if name in ("loaders", "schemas", "catalog"):
        return importlib.import_module(f"src.data.{name}")
    raise AttributeError(f"module 'src.data' has no attribute {name!r}")
