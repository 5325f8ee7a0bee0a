"""Raw data: the contract (``schemas``) and the only way in (``loaders``).

Kept light on purpose: the simulator (``src.data.synthetic``) is not imported here.
"""

from src.data.loaders import (
    FAILURE_COLUMNS,
    REFERENCES,
    LoadResult,
    RawDataError,
    ReferenceProblem,
    check_references,
    find_table_file,
    format_failures,
    load_raw,
    load_table,
    load_table_result,
    read_table_file,
    validate_frame,
    validate_raw,
    write_table,
)
from src.data.schemas import (
    TABLES,
    Clickstream,
    Customers,
    Exposures,
    Holdings,
    Offers,
    StitchedEvents,
    Transactions,
)

__all__ = [
    "FAILURE_COLUMNS",
    "REFERENCES",
    "TABLES",
    "Clickstream",
    "Customers",
    "Exposures",
    "Holdings",
    "LoadResult",
    "Offers",
    "RawDataError",
    "ReferenceProblem",
    "StitchedEvents",
    "Transactions",
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
]
