"""Jinja2 rendering of the feature SQL, driven by the constants that name the view's columns.

The customer view repeats blocks per look-back window x page group / transaction code /
product. The SQL files write each block once, as a loop over :func:`template_context`; the
data dictionary (:func:`src.features.customer_view.data_dictionary`) loops over the same
constants, so adding a window, page group or product is one edit and SQL and dictionary
cannot drift apart. Rendering yields plain DuckDB SQL (``$as_of`` still a placeholder, bound
afterwards by :func:`src.features.identity.render_sql`) that sqlglot transpiles to Spark.

Every file under ``sql/`` goes through Jinja; one without tags renders to itself. The constants
live here, not in ``customer_view.py`` (which re-exports them), because the identity stages
render ``session_keys.sql`` too and ``customer_view`` imports ``identity``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypedDict

import jinja2

from src.data import schemas

WINDOWS: tuple[int, ...] = (7, 30, 90)
"""Look-back windows in days: [T - N days, T). Increasing: an event's ``window_days`` is the
smallest window it falls in, and "in the last N days" is ``window_days <= N``."""

PAGE_GROUPS: dict[str, tuple[str, ...]] = {
    # group -> page-name prefixes (schemas.PAGES); "error" is the error page itself
    "loan": ("loan",),
    "fx": ("fx",),
    "fund": ("fund",),
    "savings": ("savings",),
    "card": ("card",),
    "signup": ("signup",),
    "pension": ("pension",),
    "error": ("error",),
}
"""Page groups counted as ``pv_<group>_<N>d``: views of pages starting with one of the prefixes."""

LONG_READ_SECONDS = 180
"""Dwell (s) from which a page view counts as a long read (``long_views_*``; session_keys.sql)."""

_NAME = re.compile(r"[A-Za-z0-9_]+")


class TemplateContext(TypedDict):
    """What the SQL templates loop over; :func:`~src.features.customer_view.data_dictionary`
    loops over the same values to name the columns."""

    windows: tuple[int, ...]
    page_groups: dict[str, tuple[str, ...]]
    products: tuple[str, ...]
    holding_types: tuple[str, ...]
    txn_codes: tuple[str, ...]
    krw_rates: dict[str, float]
    long_read_seconds: int


def template_context() -> TemplateContext:
    """The constants, read when called (not at import): what renders is what the data
    dictionary lists, even when a test swaps a constant.

    Names are checked to be plain words: they are pasted into column names and SQL strings.
    """
    context = TemplateContext(
        windows=tuple(WINDOWS),
        page_groups=dict(PAGE_GROUPS),
        products=tuple(schemas.PRODUCTS),
        holding_types=tuple(schemas.HOLDING_TYPES),
        txn_codes=tuple(schemas.TXN_CODES),
        krw_rates=dict(schemas.KRW_REFERENCE_RATES),
        long_read_seconds=LONG_READ_SECONDS,
    )
    windows = context["windows"]
    if not windows or list(windows) != sorted(set(windows)) or windows[0] <= 0:
        raise ValueError(f"WINDOWS must be increasing positive day counts, got {windows}")
    words = [
        *context["page_groups"],
        *(p for prefixes in context["page_groups"].values() for p in prefixes),
        *context["products"],
        *context["holding_types"],
        *context["txn_codes"],
        *context["krw_rates"],
    ]
    bad = [w for w in words if not _NAME.fullmatch(w)]
    if bad:
        raise ValueError(f"names used in SQL must be letters, digits and _: {bad}")
    return context


def environment() -> jinja2.Environment:
    """A Jinja environment for SQL: undefined names raise, block tags leave no blank lines."""
    return jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(text: str, context: Mapping[str, object] | None = None) -> str:
    """The SQL ``text`` with its Jinja loops expanded (``context`` defaults to the constants)."""
    if context is None:
        context = template_context()
    return environment().from_string(text).render(context)


__all__ = [
    "LONG_READ_SECONDS",
    "PAGE_GROUPS",
    "WINDOWS",
    "TemplateContext",
    "environment",
    "render_template",
    "template_context",
]
