"""Journey analysis on the stitched event stream.

Sessions (inactivity gap, channel switch) -> page visits -> paths around / leading to a page,
top and start-to-end paths, ordered funnels by segment, and their plots. Every function takes
the ``StitchedEvents`` frame, raw or already passed through :func:`sessionize` (pass it
sessionized to choose the gap or channel rule and to avoid doing it twice).
"""

from src.features.journeys.funnel import funnel
from src.features.journeys.paths import (
    SESSION_START,
    paths_around,
    paths_to,
    start_to_end_paths,
    top_paths,
)
from src.features.journeys.plots import (
    plot_funnel,
    plot_top_paths,
    sankey_figure,
    sankey_links,
    sankey_static,
    shorten_paths,
)
from src.features.journeys.sessions import (
    attribution_summary,
    customer_journey,
    ensure_sessionized,
    page_visits,
    session_table,
    sessionize,
)

__all__ = [
    "SESSION_START",
    "attribution_summary",
    "customer_journey",
    "ensure_sessionized",
    "funnel",
    "page_visits",
    "paths_around",
    "paths_to",
    "plot_funnel",
    "plot_top_paths",
    "sankey_figure",
    "sankey_links",
    "sankey_static",
    "shorten_paths",
    "session_table",
    "sessionize",
    "start_to_end_paths",
    "top_paths",
]
