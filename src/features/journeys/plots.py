"""Plots for journey analysis: a Sankey of paths, funnel bars, top-path bars.

Plotting libraries are imported inside the functions so importing the package stays cheap and
headless code (scoring, tests) never touches a display backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from src.features.journeys.paths import SEP

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _step_columns(paths_df: pd.DataFrame) -> tuple[list[str], list[str]] | None:
    """Wide step columns of :func:`paths_around` output in order, with their step numbers."""
    before = sorted(
        (c for c in paths_df.columns if re.fullmatch(r"before_\d+", c)),
        key=lambda c: -int(c.split("_")[1]),
    )
    after = sorted(
        (c for c in paths_df.columns if re.fullmatch(r"after_\d+", c)),
        key=lambda c: int(c.split("_")[1]),
    )
    if "target" not in paths_df.columns:
        return None
    cols = [*before, "target", *after]
    labels = (
        [f"-{c.split('_')[1]}" for c in before] + ["0"] + [f"+{c.split('_')[1]}" for c in after]
    )
    return cols, labels


def sankey_links(
    paths_df: pd.DataFrame, max_steps: int = 6, weight: str | None = None
) -> pd.DataFrame:
    """Links between consecutive steps (``source``, ``target`` node labels, ``value``).

    Takes :func:`paths_around` output (steps -N..+N around the target) or any frame with a
    ``' > '`` path column (steps 1..``max_steps`` from the start, e.g. :func:`top_paths` or
    :func:`start_to_end_paths` output, weighted by their ``count``). Nodes are labelled
    ``"step k: page"`` so the same page at two positions stays two nodes.
    """
    found = _step_columns(paths_df)
    if found is not None:
        cols, steps = found
        wide = paths_df[cols].astype("object")
        w = paths_df[weight].to_numpy(dtype=float) if weight else np.ones(len(paths_df))
    else:
        if "path" not in paths_df.columns:
            raise ValueError("need paths_around output or a 'path' column")
        weight = weight or ("count" if "count" in paths_df.columns else None)
        w = paths_df[weight].to_numpy(dtype=float) if weight else np.ones(len(paths_df))
        split = paths_df["path"].astype("str").str.split(SEP, expand=True, n=max_steps)
        split = split.iloc[:, :max_steps].astype("object")
        wide = split.replace({"": None})
        cols = list(wide.columns)
        steps = [str(i + 1) for i in range(len(cols))]
    frames = []
    for i in range(len(cols) - 1):
        a, b = wide.iloc[:, i], wide.iloc[:, i + 1]
        ok = (a.notna() & b.notna()).to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    "source": ("step " + steps[i] + ": " + a[ok].astype(str)).to_numpy(),
                    "target": ("step " + steps[i + 1] + ": " + b[ok].astype(str)).to_numpy(),
                    "value": w[ok],
                }
            )
        )
    if not frames:
        return pd.DataFrame({"source": [], "target": [], "value": []})
    links = pd.concat(frames, ignore_index=True)
    return links.groupby(["source", "target"], as_index=False, sort=True)["value"].sum()


def sankey_figure(
    paths_df: pd.DataFrame,
    max_steps: int = 6,
    weight: str | None = None,
    min_value: float = 0,
    title: str | None = None,
) -> Any:
    """A plotly Sankey of paths (see :func:`sankey_links` for accepted inputs).

    Links carrying ``min_value`` or less are dropped to keep busy diagrams readable. Returns a
    ``plotly.graph_objects.Figure`` (show it in a notebook or ``write_html`` it).
    """
    import plotly.graph_objects as go

    links = sankey_links(paths_df, max_steps=max_steps, weight=weight)
    links = links.loc[links["value"] > min_value]
    nodes = sorted(
        set(links["source"]) | set(links["target"]),
        key=lambda s: (int(s.split(":")[0].split()[1]), s),
    )
    index = {n: i for i, n in enumerate(nodes)}
    fig = go.Figure(
        go.Sankey(
            arrangement="snap",
            node={"label": nodes, "pad": 12, "thickness": 14},
            link={
                "source": [index[s] for s in links["source"]],
                "target": [index[t] for t in links["target"]],
                "value": links["value"].tolist(),
            },
        )
    )
    if title:
        fig.update_layout(title_text=title)
    return fig


def plot_funnel(
    funnel_df: pd.DataFrame,
    ax: Axes | None = None,
    value: str = "count",
    title: str | None = "Funnel by segment",
) -> Figure:
    """Horizontal funnel bars, one series per segment, labelled with conversion.

    ``value="count"`` draws units reaching each step; ``"conv_from_first"`` draws the share of
    step 1, which compares segments of different sizes. Labels show ``% of first (% of prev)``.
    """
    import matplotlib.pyplot as plt

    own = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 1 + 0.6 * funnel_df["step_no"].nunique()))
    fig = cast("Figure", ax.figure)
    segments = list(dict.fromkeys(funnel_df["segment"]))
    steps = funnel_df.drop_duplicates("step_no").sort_values("step_no")
    height = 0.8 / max(len(segments), 1)
    y0 = np.arange(len(steps))
    for i, seg in enumerate(segments):
        d = funnel_df.loc[funnel_df["segment"] == seg].sort_values("step_no")
        y = y0 + (i - (len(segments) - 1) / 2) * height
        vals = d[value].fillna(0).to_numpy(dtype=float)
        bars = ax.barh(y, vals, height=height, label=str(seg))
        labels = [
            "" if pd.isna(f) else f"{f:.0%}" + ("" if n == 1 or pd.isna(p) else f" ({p:.0%})")
            for f, p, n in zip(d["conv_from_first"], d["conv_from_prev"], d["step_no"], strict=True)
        ]
        ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.set_yticks(y0, [f"{n}. {s}" for n, s in zip(steps["step_no"], steps["step"], strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel(
        "share of step 1"
        if value == "conv_from_first"
        else "units reaching the step"
        if value == "count"
        else value
    )
    ax.set_ylabel("step")
    if title:
        ax.set_title(title)
    ax.margins(x=0.15)
    if len(segments) > 1:
        ax.legend(title="segment", fontsize=8)
    if own:
        fig.tight_layout()
    return fig


def _elide_middle(path: str, max_label: int) -> str:
    """Whole steps from both ends around ``…`` (the first step and as many of the last as fit);
    characters from both ends if even that is too long."""
    steps = path.split(SEP)
    if len(steps) > 2:
        for k in range(len(steps) - 2, 0, -1):
            label = SEP.join([steps[0], "…", *steps[-k:]])
            if len(label) <= max_label:
                return label
    keep = max(max_label - 1, 2)
    head = keep // 3
    return path[:head] + "…" + path[len(path) - (keep - head) :]


def shorten_paths(paths: Sequence[str], max_label: int = 70) -> list[str]:
    """Labels of at most ``max_label`` characters that keep distinct paths distinct.

    A long path keeps both ends (where it starts and the part nearest the target or exit) and
    loses its middle to ``…``. If two shortened labels still coincide, every label is numbered
    (``#1 ...``) by its position so no two bars read the same.
    """
    out = []
    for p in paths:
        out.append(p if len(p) <= max_label else _elide_middle(p, max_label))
    if len(set(out)) < len(out):
        out = [f"#{i} {label}" for i, label in enumerate(out, start=1)]
    return out


def plot_top_paths(
    top_df: pd.DataFrame,
    ax: Axes | None = None,
    max_label: int = 70,
    title: str | None = "Most frequent paths",
) -> Figure:
    """Horizontal bars of :func:`top_paths`-like output (``path``, ``count``, ``share``).

    The most frequent path is on top; long paths lose their middle (see :func:`shorten_paths`),
    so the start and the end of each path stay readable and distinct paths stay distinct.
    """
    import matplotlib.pyplot as plt

    own = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * len(top_df)))
    fig = cast("Figure", ax.figure)
    labels = shorten_paths(top_df["path"].astype(str).tolist(), max_label)
    y = np.arange(len(top_df))
    bars = ax.barh(y, top_df["count"].to_numpy(dtype=float))
    if "share" in top_df.columns:
        ax.bar_label(bars, labels=[f"{s:.1%}" for s in top_df["share"]], padding=3, fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("count (label: share)" if "share" in top_df.columns else "count")
    ax.set_ylabel("path")
    if title:
        ax.set_title(title)
    ax.margins(x=0.12)
    if own:
        fig.tight_layout()
    return fig


def sankey_static(
    paths_df: pd.DataFrame,
    max_steps: int = 6,
    weight: str | None = None,
    min_value: float = 0,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The flows of :func:`sankey_figure` drawn with matplotlib (a static image for exports).

    One column of nodes per step, node height proportional to the units through it, one band
    per link with width proportional to its value. Same inputs and link filter as
    :func:`sankey_figure`, so both show the same flows.
    """
    import matplotlib.pyplot as plt

    links = sankey_links(paths_df, max_steps=max_steps, weight=weight)
    links = links.loc[links["value"] > min_value].reset_index(drop=True)

    def step_of(node: str) -> str:
        return node.split(":", 1)[0].removeprefix("step ")

    def page_of(node: str) -> str:
        return node.split(": ", 1)[1] if ": " in node else node

    nodes = sorted(
        set(links["source"]) | set(links["target"]),
        key=lambda s: (int(step_of(s)), s),
    )
    steps = sorted({int(step_of(n)) for n in nodes})
    own = ax is None
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8, 2.2 * len(steps)), 6))
    fig = cast("Figure", ax.figure)
    out_flow = links.groupby("source")["value"].sum()
    in_flow = links.groupby("target")["value"].sum()
    size = {n: max(float(out_flow.get(n, 0)), float(in_flow.get(n, 0))) for n in nodes}
    column = {s: [n for n in nodes if int(step_of(n)) == s] for s in steps}
    total = max((sum(size[n] for n in col) for col in column.values()), default=1.0) or 1.0
    gap = 0.02 * total
    width = 0.06
    top: dict[str, float] = {}
    for x, s in enumerate(steps):
        col = sorted(column[s], key=lambda n: -size[n])
        y = 0.0
        for n in col:
            top[n] = y
            ax.add_patch(plt.Rectangle((x - width / 2, -y - size[n]), width, size[n], color="0.35"))
            ax.text(x + width, -y - size[n] / 2, page_of(n), va="center", fontsize=7)
            y += size[n] + gap
    x_of = {n: steps.index(int(step_of(n))) for n in nodes}
    out_used = dict.fromkeys(nodes, 0.0)
    in_used = dict.fromkeys(nodes, 0.0)
    cmap = plt.get_cmap("tab20")
    t = np.linspace(0, 1, 30)
    smooth = (1 - np.cos(np.pi * t)) / 2
    for i, link in links.sort_values(["source", "value"], ascending=[True, False]).iterrows():
        s, d, v = link["source"], link["target"], float(link["value"])
        y0 = -top[s] - out_used[s]
        y1 = -top[d] - in_used[d]
        out_used[s] += v
        in_used[d] += v
        xs = x_of[s] + width / 2 + (x_of[d] - x_of[s] - width) * t
        upper = y0 + (y1 - y0) * smooth
        ax.fill_between(xs, upper, upper - v, color=cmap(i % 20), alpha=0.45, lw=0)
    ax.set_xticks(range(len(steps)), [f"step {s}" for s in steps])
    ax.set_xlim(-0.3, len(steps) - 0.4)
    ax.set_ylim(-(total + gap * (max(len(c) for c in column.values()) if column else 1)), gap)
    ax.set_yticks([])
    ax.set_xlabel("step (0 = target page)" if "target" in paths_df.columns else "step")
    ax.set_ylabel("units (band height ∝ count)")
    ax.set_title(title or "Paths between steps")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if own:
        fig.tight_layout()
    return fig
