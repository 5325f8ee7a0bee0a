"""Held-out evaluation of propensity scores against the oracle, and the plots saved with a run.

Scorers compared on the same test rows: ``model`` (calibrated LightGBM), ``lgbm_raw``
(before calibration), ``logreg`` (baseline), ``oracle`` (the simulator's true probability
for the label window, ``Oracle.true_signup_prob``) and ``need_frozen`` — the organic signup
probability from the true need on the day *before* as_of, frozen over the window. The last is
the best any model could do from perfect knowledge of the past: the gap oracle - need_frozen
is irreducible (needs moving inside the window, offers shown in it); need_frozen - model is
what better features or models could still win.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from src.features.feature_table import label_column
from src.models.metrics import binary_metrics, lift_by_decile

SCORERS = ("model", "lgbm_raw", "logreg", "oracle", "oracle_organic", "bayes_as_of", "need_frozen")


def oracle_scores(
    truth_dir: Path | str,
    raw_dir: Path | str,
    rows: pd.DataFrame,
    products: Sequence[str],
    window_days: int,
) -> dict[str, pd.DataFrame]:
    """``oracle`` and ``need_frozen`` probabilities for ``rows`` (customer_id, as_of), per product."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic.response import organic_signup_prob

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    cust = oracle.customer_idx(rows["customer_id"])
    day = ((pd.to_datetime(rows["as_of"]) - oracle.start).dt.days).to_numpy()
    prev = np.clip(day - 1, 0, oracle.days - 1)
    horizon = np.clip(np.minimum(day + window_days, oracle.days) - day, 0, None)
    true, frozen = {}, {}
    for p in products:
        true[p] = np.empty(len(rows))
        for d in np.unique(day):
            at = day == d
            true[p][at] = oracle.true_signup_prob(
                rows.loc[at, "customer_id"], p, rows.loc[at, "as_of"].iloc[0], window_days
            )
        need = np.asarray(oracle.needs[prev, cust, PRODUCTS.index(p)], dtype=float)
        frozen[p] = 1.0 - (1.0 - organic_signup_prob(need)) ** horizon
    return {
        "oracle": pd.DataFrame(true, index=rows.index),
        "need_frozen": pd.DataFrame(frozen, index=rows.index),
    }


def truth_state(truth_dir: Path | str, raw_dir: Path | str, last_day: int) -> dict[str, np.ndarray]:
    """The simulator's full need state at the end of ``last_day``, rebuilt from the truth files.

    need = sigmoid(static + walk + event + push) (``synthetic.needs``): static comes from the
    traits and the customer master, push from the due dates of the holdings held at the start;
    the rest of the stored logit is split into the AR(1) walk and the life-event term by
    replaying the days: an innovation of more than 1.25 logits (10 walk sigmas; a jump is 2.5)
    is an event. Customers in the traits' order.
    """
    from types import SimpleNamespace

    from src.data.schemas import INCOME_BANDS, LIFE_STAGES, PRODUCTS
    from src.data.synthetic import needs as N

    truth_dir, raw_dir = Path(truth_dir), Path(raw_dir)
    import json

    meta = json.loads((truth_dir / "meta.json").read_text())
    start = pd.Timestamp(meta["start_us"] * 1000)
    traits = pd.read_parquet(truth_dir / "customer_traits.parquet")
    ids = pd.Index(traits["customer_id"].astype(str))
    income = (
        pd.read_parquet(raw_dir / "customers.parquet", columns=["customer_id", "income_band"])
        .set_index("customer_id")["income_band"]
        .reindex(ids)
    )
    stage = traits["life_stage"].map({s: i for i, s in enumerate(LIFE_STAGES)}).to_numpy(np.int64)
    inc = income.map({s: i for i, s in enumerate(INCOME_BANDS)}).to_numpy(np.int64)
    holds = traits[[f"holds_{p}" for p in PRODUCTS]].to_numpy(float)
    offset = traits[[f"need_offset_{p}" for p in PRODUCTS]].to_numpy(np.float32)
    static = (N.STAGE_BASE[stage] + N.INCOME_EFFECT[inc] + N.HOLDS_EFFECT * holds + offset).astype(
        np.float32
    )
    holdings = pd.read_parquet(raw_dir / "holdings.parquet")
    holdings = holdings.loc[holdings["opened_at"] < start]
    due = {}
    for kind, col in (("savings", "maturity_date"), ("auto_transfer", "auto_transfer_end_date")):
        h = holdings.loc[holdings["holding_type"] == kind]
        days = np.full(len(ids), 1 << 30, dtype=np.int64)
        days[ids.get_indexer(h["customer_id"].astype(str))] = (h[col] - start).dt.days.to_numpy()
        due[kind] = days
    pop = SimpleNamespace(
        n=len(ids), savings_maturity_day=due["savings"], auto_transfer_end_day=due["auto_transfer"]
    )
    stored = np.load(truth_dir / "needs.npy", mmap_mode="r")
    walk = event = None
    for d in range(last_day + 1):
        need = np.clip(np.asarray(stored[d], np.float64), 1e-7, 1 - 1e-7)
        rest = np.log(need / (1 - need)) - static - N.push_logits(pop, d)
        if d == 0:
            walk, event = rest, np.zeros_like(rest)
            continue
        jump = rest - (N.WALK_RHO * walk + N.EVENT_DECAY * event) > 1.25
        event = N.EVENT_DECAY * event + N.EVENT_JUMP * jump
        walk = rest - event
    return {
        "customer_id": ids.to_numpy(),
        "stage": stage,
        "static": static,
        "walk": walk,
        "event": event,
        "pop": pop,
    }


def bayes_as_of(
    state: dict[str, np.ndarray],
    first_day: int,
    window_days: int,
    n_paths: int = 32,
    seed: int = 0,
    chunk: int = 8,
) -> np.ndarray:
    """E[P(organic signup in [first_day, first_day + window)) | full state the day before].

    Monte Carlo over the simulator's own dynamics (``needs.advance``: walk noise, life events;
    pushes are scheduled, so known). The honest ceiling for any model scoring on as_of: it knows
    everything a model could ever learn about the past (static offsets included) and averages
    over what has not happened yet. Offers shown inside the window are left out (organic
    hazard), so ``oracle_organic`` - ``bayes_as_of`` is the pure need drift. (customers, products).
    """
    from src.data.synthetic import needs as N
    from src.data.synthetic.response import organic_signup_prob

    rng = np.random.default_rng(seed)
    static, stage, pop = state["static"], state["stage"], state["pop"]
    n, k = static.shape
    pushes = [N.push_logits(pop, d) for d in range(first_day, first_day + window_days)]
    total = np.zeros((n, k))
    for lo in range(0, n_paths, chunk):
        m = min(chunk, n_paths - lo)
        walk = np.repeat(state["walk"][None].astype(np.float32), m, axis=0)
        event = np.repeat(state["event"][None].astype(np.float32), m, axis=0)
        log_none = np.zeros((m, n, k))
        for push in pushes:
            walk = N.WALK_RHO * walk + rng.normal(0.0, N.WALK_SIGMA, walk.shape).astype(np.float32)
            event = N.EVENT_DECAY * event
            path, cust = np.nonzero(rng.random((m, n)) < N.EVENT_RATE)
            if len(cust):
                cum = N.LIFE_EVENT_PRODUCT[stage[cust]].cumsum(axis=1)
                product = (rng.random(len(cust))[:, None] > cum).sum(axis=1).clip(0, k - 1)
                event[path, cust, product] += N.EVENT_JUMP
            need = 1.0 / (1.0 + np.exp(-(static[None] + walk + event + push[None])))
            log_none += np.log1p(-organic_signup_prob(need))
        total += (1.0 - np.exp(log_none)).sum(axis=0)
    return total / n_paths


def ceiling_scores(
    truth_dir: Path | str,
    raw_dir: Path | str,
    rows: pd.DataFrame,
    products: Sequence[str],
    window_days: int,
    n_paths: int = 32,
) -> dict[str, pd.DataFrame]:
    """``oracle_organic`` (true window probability without the offers' uplift), ``bayes_as_of``
    (:func:`bayes_as_of`) and ``static_only`` (the never-moving part of the need alone, frozen)
    for ``rows`` — the references that split the gap to the oracle (see module docstring)."""
    from src.data.schemas import PRODUCTS
    from src.data.synthetic import Oracle
    from src.data.synthetic.response import organic_signup_prob

    oracle = Oracle(Path(truth_dir), Path(raw_dir))
    day = ((pd.to_datetime(rows["as_of"]) - oracle.start).dt.days).to_numpy()
    organic = {p: np.empty(len(rows)) for p in products}
    bayes = {p: np.empty(len(rows)) for p in products}
    static_only = {p: np.empty(len(rows)) for p in products}
    for d in np.unique(day):
        at = np.flatnonzero(day == d)
        ids = rows["customer_id"].iloc[at]
        horizon = int(min(d + window_days, oracle.days) - d)
        state = truth_state(truth_dir, raw_dir, int(d) - 1)
        cust = pd.Index(state["customer_id"]).get_indexer(ids.astype(str))
        ceiling = bayes_as_of(state, int(d), horizon, n_paths=n_paths)
        for p in products:
            j = PRODUCTS.index(p)
            organic[p][at] = oracle.true_signup_prob(
                ids, p, rows["as_of"].iloc[at[0]], window_days, include_offers=False
            )
            bayes[p][at] = ceiling[cust, j]
            need = 1.0 / (1.0 + np.exp(-state["static"][cust, j].astype(float)))
            static_only[p][at] = 1.0 - (1.0 - organic_signup_prob(need)) ** horizon

    def frame(d):
        return pd.DataFrame(d, index=rows.index)

    return {
        "oracle_organic": frame(organic),
        "bayes_as_of": frame(bayes),
        "static_only": frame(static_only),
    }


def score_table(
    model,
    rows: pd.DataFrame,
    products: Sequence[str],
    reference: dict[str, pd.DataFrame] | None = None,
) -> dict[str, pd.DataFrame]:
    """Scorer -> (rows x products) probabilities."""
    scores = {
        "model": model.predict_proba(rows),
        "lgbm_raw": model.predict_proba(rows, "raw"),
        "logreg": model.predict_proba(rows, "baseline"),
    }
    scores.update(reference or {})
    return {k: v[list(products)] for k, v in scores.items()}


def metrics_table(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> pd.DataFrame:
    """(product, scorer) x metric on the rows' labels."""
    records = {}
    for p in products:
        y = rows[label_column(p)].to_numpy(int)
        for scorer, frame in scores.items():
            records[(p, scorer)] = binary_metrics(y, frame[p].to_numpy())
    out = pd.DataFrame.from_dict(records, orient="index")
    out.index = out.index.set_names(["product", "scorer"])
    return out


def gap_summary(metrics: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per product: model, baseline and reference values of ``metric`` and the gaps.

    ``gap_to_oracle`` = oracle - model. With ``bayes_as_of`` it splits exactly into
    ``gap_to_ceiling`` (bayes_as_of - model: what better features or models could still win),
    ``drift_gap`` (oracle_organic - bayes_as_of: the need moving inside the window) and
    ``offers_gap`` (oracle - oracle_organic: offers shown inside the window). The older split
    by ``need_frozen`` (learnable / irreducible) is kept for comparison with earlier runs.
    """
    wide = metrics[metric].unstack("scorer")
    refs = (
        "model",
        "logreg",
        "oracle",
        "oracle_organic",
        "bayes_as_of",
        "need_frozen",
        "static_only",
    )
    out = pd.DataFrame({c: wide[c] for c in refs if c in wide})
    if "oracle" in out:
        out["gap_to_oracle"] = out["oracle"] - out["model"]
        out["baseline_gap"] = out["oracle"] - out["logreg"]
    if "bayes_as_of" in out:
        out["gap_to_ceiling"] = out["bayes_as_of"] - out["model"]
        if "oracle_organic" in out:
            out["drift_gap"] = out["oracle_organic"] - out["bayes_as_of"]
            out["offers_gap"] = out["oracle"] - out["oracle_organic"]
    if "need_frozen" in out:
        out["learnable_gap"] = out["need_frozen"] - out["model"]
        out["irreducible_gap"] = out["oracle"] - out["need_frozen"]
    return out


def lift_table(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> pd.DataFrame:
    """(product, scorer) x decile lift."""
    return pd.DataFrame(
        {
            (p, s): lift_by_decile(rows[label_column(p)].to_numpy(int), f[p].to_numpy())
            for p in products
            for s, f in scores.items()
        }
    ).T.rename_axis(["product", "scorer"])


# --- plots -----------------------------------------------------------------------------------
PLOT_SCORERS = ("model", "logreg", "oracle", "need_frozen")


def _grid(n: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(3, n)
    rows_ = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.6 * rows_), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_roc(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        y = rows[label_column(p)].to_numpy(int)
        if 0 < y.sum() < len(y):
            for s in PLOT_SCORERS:
                if s in scores:
                    fpr, tpr, _ = roc_curve(y, scores[s][p])
                    ax.plot(fpr, tpr, label=s, lw=1.2)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=p, xlabel="false positive rate", ylabel="true positive rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("ROC on the test date")
    fig.tight_layout()
    return fig


def plot_calibration(
    rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str], bins: int = 10
) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        y = rows[label_column(p)].to_numpy(float)
        top = 0.0
        for s in ("model", "lgbm_raw", "logreg", "oracle"):
            if s not in scores:
                continue
            pr = scores[s][p].to_numpy()
            order = np.argsort(pr)
            chunks = [c for c in np.array_split(order, bins) if len(c)]
            xs, ys = [pr[c].mean() for c in chunks], [y[c].mean() for c in chunks]
            ax.plot(xs, ys, marker="o", ms=3, lw=1, label=s)
            top = max(top, max(xs + ys))
        ax.plot([0, top], [0, top], "k:", lw=0.8)
        ax.set(title=p, xlabel="mean predicted", ylabel="observed rate")
    axes[0].legend(fontsize=8)
    fig.suptitle("Calibration (equal-count bins)")
    fig.tight_layout()
    return fig


def plot_lift(lifts: pd.DataFrame, products: Sequence[str]) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        for s in PLOT_SCORERS:
            if (p, s) in lifts.index:
                ax.plot(
                    lifts.columns, lifts.loc[(p, s)].to_numpy(), marker="o", ms=3, lw=1, label=s
                )
        ax.axhline(1, color="k", ls=":", lw=0.8)
        ax.set(title=p, xlabel="score decile (1 = top)", ylabel="lift")
    axes[0].legend(fontsize=8)
    fig.suptitle("Lift by decile")
    fig.tight_layout()
    return fig


def plot_importance(model, products: Sequence[str], top: int = 15) -> plt.Figure:
    fig, axes = _grid(len(products))
    for ax, p in zip(axes, products, strict=False):
        imp = model.products[p].feature_importance().head(top)[::-1]
        ax.barh(imp.index, imp.to_numpy() / max(imp.sum(), 1e-12))
        ax.tick_params(axis="y", labelsize=7)
        ax.set(title=p, xlabel="share of split gain (top features)")
    fig.suptitle("LightGBM feature importance (gain)")
    fig.tight_layout()
    return fig


def propensity_figures(
    model, rows: pd.DataFrame, scores: dict[str, pd.DataFrame], products: Sequence[str]
) -> dict[str, plt.Figure]:
    """The four plots saved with every run."""
    return {
        "roc": plot_roc(rows, scores, products),
        "calibration": plot_calibration(rows, scores, products),
        "lift": plot_lift(lift_table(rows, scores, products), products),
        "feature_importance": plot_importance(model, products),
    }
