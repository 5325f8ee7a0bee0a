"""Off-policy evaluation of any target policy on any decision log, with the diagnostics a careful
analyst asks for (``nextoffer evaluate-policy`` and :func:`evaluate` in notebooks).

Estimators (per-decision terms, ``w = pi(a | x) / p`` of the logged action ``a``):

- ``ips``   mean(w r); ``snips`` sum(w r) / sum(w)
- ``dm``    mean over x of sum_a pi(a | x) q(x, a), with a cross-fitted reward model q
- ``dr``    dm + w (r - q(x, a)); ``sndr`` dm + sum(w (r - q)) / sum(w) (self-normalized DR)
- ``dros``  DR with optimistic shrinkage (Su et al. 2020): w is replaced by
            lambda w / (w^2 + lambda), lambda chosen to minimise estimated variance + bias^2.
            (Switch-DR needs the logging policy's probability of *every* candidate, which a log
            of the chosen action's probability does not have; DR-OS needs only the logged one.)

Intervals stay honest when rewards are rare: IPS and SNIPS take the hull of the (customer-
clustered) normal interval and the Fay-Feuer gamma bound for weighted sums of counts (an exact-
style Poisson bound: with zero rewards it is [0, upper > 0], not a point); rewards below zero
switch it to an empirical-Bernstein bound. Every value and interval is clipped to the reward
range, with a ``clipped`` flag; with fewer than ``FEW_EVENTS`` rewarded decisions the model-based
estimators' intervals are widened to contain the SNIPS bound (a reward model fitted on a
handful of events cannot be more certain than the events). ``n_bootstrap`` adds Poisson-bootstrap
percentile intervals (per customer when the log has ``customer_id``).

Diagnostics per policy: max and mean weight, effective sample size (sum w)^2 / sum w^2, the share
of decisions where the target puts mass on candidates never logged in that slot (IPS cannot see
them), rewarded decisions the target would also take; warnings name what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from src.models.decision_log import (
    MAX_CATEGORIES,
    POSITION_MODES,
    DecisionLog,
    categorical_context,
    context_columns,
    load_log,
)
from src.models.ope import LogError, PolicyError, PolicyFn, read_log

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr", "dros")
FEW_EVENTS = 30
ESS_WARN_SHARE = 0.01
PolicySpec = str | PolicyFn


# --- target policies ----------------------------------------------------------------------


def _position_table(log: DecisionLog) -> np.ndarray:
    """(S, n_offers + 1): index of each offer within each candidate set, -1 if absent."""
    out = np.full((len(log.sets), len(log.offers) + 1), -1, dtype=np.int64)
    for s, (row, k) in enumerate(zip(log.sets, log.set_size, strict=True)):
        out[s, row[:k]] = np.arange(k)
    return out


def uniform_target(log: DecisionLog) -> np.ndarray:
    per_set = np.zeros((len(log.sets), log.width))
    for s, k in enumerate(log.set_size):
        per_set[s, :k] = 1.0 / k
    return per_set[log.set_id]


def constant_target(log: DecisionLog, preferred: Sequence[str]) -> np.ndarray:
    """Always the first of ``preferred`` among the row's candidates. An id that is no candidate
    anywhere, or a row with none of them, is an error (never a silent uniform)."""
    return _constant_sets(log, preferred)[log.set_id]


def _constant_sets(log: DecisionLog, preferred: Sequence[str]) -> np.ndarray:
    """:func:`constant_target` per candidate set (checks included)."""
    preferred = [str(p) for p in preferred]
    if not preferred:
        raise PolicyError("constant: needs at least one offer id, e.g. constant:OF07")
    known = set(log.offers.tolist())
    unknown = [p for p in preferred if p not in known]
    if unknown:
        sample = ", ".join(map(str, log.offers[:8]))
        raise PolicyError(
            f"constant:{','.join(preferred)}: offer id(s) {unknown} are not among the log's "
            f"candidates ({len(known)} offers, e.g. {sample})"
        )
    code = {o: j for j, o in enumerate(log.offers)}
    where = _position_table(log)
    per_set = np.zeros((len(log.sets), log.width))
    hit = np.zeros(len(log.sets), dtype=bool)
    for s in range(len(log.sets)):
        for p in preferred:
            k = where[s, code[p]]
            if k >= 0:
                per_set[s, k], hit[s] = 1.0, True
                break
    if not hit.all():
        rows = np.flatnonzero(~hit[log.set_id])
        if len(rows):
            raise PolicyError(
                f"constant:{','.join(preferred)}: none of these offers is a candidate for "
                f"{len(rows):,} decision(s), first {log.row_label(int(rows[0]))}; list an offer "
                "for every slot (e.g. constant:OF03,OF11)"
            )
    return per_set


def _from_long(log: DecisionLog, table: pd.DataFrame, name: str) -> np.ndarray:
    """Target probabilities from rows (decision_id, action, prob)."""
    keys = _keys(log, name)
    file_keys = _file_keys(log, table, name)
    row = pd.Index(keys).get_indexer(file_keys)
    unknown = np.flatnonzero(row < 0)
    if len(unknown):
        raise PolicyError(
            f"{name}: {len(unknown):,} row(s) name a decision that is not in the log, first "
            f"{file_keys[unknown[0]]!r} (file row {int(unknown[0])})"
        )
    absent = np.flatnonzero(np.bincount(row, minlength=log.n) == 0)
    if len(absent):
        raise PolicyError(
            f"{name}: no probabilities for {len(absent):,} decision(s) of the log, first "
            f"{log.row_label(int(absent[0]))}"
        )
    prob = pd.to_numeric(table["prob"], errors="coerce").to_numpy(float)
    bad = np.flatnonzero(np.isnan(prob) | (prob < 0) | (prob > 1))
    if len(bad):
        raise PolicyError(
            f"{name}: column 'prob' must be a number in [0, 1]; file row {int(bad[0])} is "
            f"{table['prob'].iloc[bad[0]]!r}"
        )
    code = {o: j for j, o in enumerate(log.offers)}
    act = table["action"].astype(str).map(code).fillna(len(log.offers)).to_numpy(np.int64)
    k = _position_table(log)[log.set_id[row], act]
    off = np.flatnonzero((k < 0) & (prob > 0))
    if len(off):
        i = int(off[0])
        raise PolicyError(
            f"{name}: {len(off):,} row(s) put probability on an offer that is not a candidate "
            f"of its decision, first {table['action'].iloc[i]!r} for "
            f"{log.row_label(int(row[i]))}"
        )
    target = np.zeros((log.n, log.width))
    ok = k >= 0
    np.add.at(target, (row[ok], k[ok]), prob[ok])
    return target


def _from_wide(log: DecisionLog, table: pd.DataFrame, name: str) -> np.ndarray:
    """Target probabilities from one row per decision, one column per offer id."""
    keys = _keys(log, name)
    file_keys = _file_keys(log, table, name)
    if pd.Index(file_keys).has_duplicates:
        dup = pd.Index(file_keys)[pd.Index(file_keys).duplicated()][0]
        raise PolicyError(f"{name}: decision {dup!r} has more than one row")
    key_cols = {"decision_id", "position"}
    offer_cols = [c for c in table.columns if c not in key_cols]
    known = set(log.offers.tolist())
    unknown = [c for c in offer_cols if str(c) not in known]
    if unknown:
        raise PolicyError(
            f"{name}: column(s) {unknown[:5]} are not offers among the log's candidates (a wide "
            "file has decision_id and one column per offer id)"
        )
    values = table[offer_cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    values = np.nan_to_num(values, nan=0.0)
    if (values < 0).any() or (values > 1).any():
        r, c = np.argwhere((values < 0) | (values > 1))[0]
        raise PolicyError(
            f"{name}: decision {file_keys[r]!r}, column {offer_cols[c]!r} not in [0, 1]"
        )
    at = pd.Index(file_keys).get_indexer(keys)
    missing = np.flatnonzero(at < 0)
    if len(missing):
        raise PolicyError(
            f"{name}: no probabilities for {len(missing):,} decision(s) of the log, first "
            f"{log.row_label(int(missing[0]))}"
        )
    col_of_offer = np.full(len(log.offers) + 1, -1, dtype=np.int64)
    code = {o: j for j, o in enumerate(log.offers)}
    for j, c in enumerate(offer_cols):
        col_of_offer[code[str(c)]] = j
    codes = log.codes()
    cols = col_of_offer[np.where(codes < 0, len(log.offers), codes)]
    padded = np.hstack([values, np.zeros((len(values), 1))])
    target = padded[at[:, None], np.where(cols < 0, values.shape[1], cols)]
    outside = padded[at].sum(axis=1) - target.sum(axis=1)
    bad = np.flatnonzero(outside > 1e-6)
    if len(bad):
        raise PolicyError(
            f"{name}: {len(bad):,} decision(s) put probability on offers that are not their "
            f"candidates, first {log.row_label(int(bad[0]))}"
        )
    return target


def _keys(log: DecisionLog, name: str) -> list[Any]:
    if "decision_id" not in log.frame.columns:
        raise LogError(
            f"{log.name}: a policy file ({name}) is keyed by decision id, but the log has no "
            "'decision_id' column"
        )
    ids = log.frame["decision_id"].astype(str)
    if "position" in log.frame.columns:
        ids = ids + "#" + log.frame["position"].astype(str)
    if ids.duplicated().any():
        raise LogError(
            f"{log.name}: decision id {ids[ids.duplicated()].iloc[0]!r} appears more than once "
            "(with a position column, once per position)"
        )
    return ids.tolist()


def _file_keys(log: DecisionLog, table: pd.DataFrame, name: str) -> list[Any]:
    if "decision_id" not in table.columns:
        raise PolicyError(f"{name}: missing column 'decision_id'")
    ids = table["decision_id"].astype(str)
    if "position" in log.frame.columns:
        if "position" not in table.columns:
            raise PolicyError(f"{name}: the log has positions; the file needs a 'position' column")
        ids = ids + "#" + table["position"].astype(str)
    return ids.tolist()


def file_target(log: DecisionLog, path: Path | str) -> np.ndarray:
    """Per-decision target probabilities from a file: long (``decision_id``, ``action``,
    ``prob``) or wide (``decision_id`` and one column per offer id)."""
    path = Path(path)
    name = path.name
    if not path.exists():
        raise PolicyError(f"no policy file at {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        table = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        table = pd.read_csv(path)
    else:
        raise PolicyError(f"{name}: a policy file must be .parquet or .csv")
    return table_target(log, table, name)


def table_target(log: DecisionLog, table: pd.DataFrame, name: str = "policy") -> np.ndarray:
    long = {"decision_id", "action", "prob"} <= set(table.columns)
    return _from_long(log, table, name) if long else _from_wide(log, table, name)


def model_target(log: DecisionLog, uri: str) -> np.ndarray:
    """An MLflow bandit pyfunc (its PMF per row) as the target."""
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(uri)
    candidates = log.candidates()
    rows = log.frame.drop(columns=[c for c in ("candidates",) if c in log.frame.columns]).copy()
    rows["candidates"] = [",".join(c) for c in candidates]
    pred = model.predict(rows)
    out = np.zeros((log.n, log.width))
    for i, (c, pmf) in enumerate(zip(candidates, pred["pmf"], strict=True)):
        p = json.loads(pmf) if isinstance(pmf, str) else dict(pmf)
        out[i, : len(c)] = [p.get(o, 0.0) for o in c]
    return out


def check_target(log: DecisionLog, target: Any, name: str) -> np.ndarray:
    """A target from a callable or file: (n, K), in [0, 1], zero on padding, rows summing to 1."""
    target = np.asarray(target, dtype=float)
    if target.shape != (log.n, log.width):
        raise PolicyError(
            f"{name}: returned shape {target.shape}, want ({log.n}, {log.width}) (one row per "
            "decision, one column per candidate in the row's order, zero-padded)"
        )
    bad = np.flatnonzero(~np.isfinite(target).all(axis=1) | (target < 0).any(axis=1))
    if len(bad):
        raise PolicyError(
            f"{name}: negative or missing probability at {log.row_label(int(bad[0]))}"
        )
    pad = np.arange(log.width)[None, :] >= log.n_candidates[:, None]
    bad = np.flatnonzero((target * pad).sum(axis=1) > 1e-9)
    if len(bad):
        raise PolicyError(
            f"{name}: probability beyond the candidates at {log.row_label(int(bad[0]))}"
        )
    bad = np.flatnonzero(np.abs(target.sum(axis=1) - 1) > 1e-6)
    if len(bad):
        raise PolicyError(
            f"{name}: probabilities sum to {target[bad[0]].sum():.6g}, not 1, for {len(bad):,} "
            f"decision(s), first {log.row_label(int(bad[0]))}"
        )
    return target


def target_of(log: DecisionLog, spec: PolicySpec, name: str) -> np.ndarray:
    """``uniform`` | ``constant:IDS`` | ``model:URI`` | ``file:PATH`` | a callable
    ``(frame, candidates) -> (n, K) array or a long (decision_id, action, prob) frame``."""
    if callable(spec):
        out = spec(log.frame, log.candidates())
        if isinstance(out, pd.DataFrame):
            return check_target(log, table_target(log, out, name), name)
        return check_target(log, out, name)
    if spec == "uniform":
        return uniform_target(log)
    if spec.startswith("constant:"):
        ids = [s.strip() for s in spec.split(":", 1)[1].split(",") if s.strip()]
        return constant_target(log, ids)
    if spec.startswith("model:"):
        return check_target(log, model_target(log, spec.split(":", 1)[1]), name)
    if spec.startswith("file:"):
        return check_target(log, file_target(log, spec.split(":", 1)[1]), name)
    raise PolicyError(
        f"unknown policy {spec!r}: use 'uniform', 'constant:<offer ids>', 'model:<uri>' or "
        "'file:<path>'"
    )


# --- reward model ---------------------------------------------------------------------------


def fit_q(
    log: DecisionLog,
    context: pd.DataFrame | None = None,
    categorical: Sequence[str] = (),
    folds: int = 2,
    seed: int = 0,
    threads: int | None = 1,
    chunk: int = 500_000,
    max_train: int = 300_000,
) -> np.ndarray:
    """Cross-fitted q(x, a) for every row's candidates, (n, K) float32, zero-padded.

    Gradient-boosted trees on the named context, the offer (a categorical feature, not a one-hot:
    80 offers x a million rows stay small), the offer's in-fold mean reward and the position;
    predicted once per distinct (context, position, candidate set) and candidate. Each decision's
    q comes from the fold that did not see it, so DR keeps its unbiasedness; each fold's model
    learns from at most ``max_train`` of the other rows.
    """
    import sklearn.ensemble  # noqa: F401  (load its OpenMP runtime first)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    n = log.n
    ctx = context.to_numpy(float) if context is not None and context.shape[1] else np.zeros((n, 0))
    cat_cols = (
        [i for i, c in enumerate(context.columns) if c in categorical]
        if context is not None
        else []
    )
    pos = (
        pd.to_numeric(log.frame["position"], errors="coerce").to_numpy(float)[:, None]
        if "position" in log.frame
        else np.zeros((n, 0))
    )
    n_offers = len(log.offers)
    offer_is_cat = n_offers <= 250
    chosen = log.sets[log.set_id, log.action]
    reward = log.reward
    binary = bool(np.isin(reward, (0.0, 1.0)).all())
    n_ctx = ctx.shape[1]
    cat_mask = np.zeros(n_ctx + 2 + pos.shape[1], dtype=bool)
    cat_mask[cat_cols] = True
    cat_mask[n_ctx] = offer_is_cat
    params: dict[str, Any] = {
        "max_iter": 100,
        "learning_rate": 0.1,
        "max_leaf_nodes": 16,
        "max_bins": 255 if offer_is_cat else 64,
        "min_samples_leaf": 50,
        "l2_regularization": 1.0,
        "early_stopping": False,
        "random_state": seed,
        "categorical_features": cat_mask if cat_mask.any() else None,
    }

    def design(rows: np.ndarray, offer: np.ndarray, rate: np.ndarray) -> np.ndarray:
        return np.hstack([ctx[rows], offer[:, None].astype(float), rate[offer][:, None], pos[rows]])

    fold = np.random.default_rng(seed).integers(0, folds, n)
    q = np.zeros((n, log.width), dtype=np.float32)
    with threadpool_limits(limits=threads):
        for f in range(folds):
            train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            if len(test) == 0 or len(train) == 0:
                continue
            if len(train) > max_train:  # enough to learn offer x context effects
                train = np.sort(np.random.default_rng(seed + f).choice(train, max_train, False))
            y = reward[train]
            counts = np.bincount(chosen[train], minlength=n_offers)
            sums = np.bincount(chosen[train], weights=y, minlength=n_offers)
            rate = (sums + 20 * y.mean()) / (counts + 20)
            X = design(train, chosen[train], rate)
            if len(np.unique(y)) < 2:
                q[test] = float(y[0])
                continue
            if binary:
                model: Any = HistGradientBoostingClassifier(**params).fit(X, y)

                def predict(X_: np.ndarray, m: Any = model) -> np.ndarray:
                    return m.predict_proba(X_)[:, 1]
            else:
                model = HistGradientBoostingRegressor(**params).fit(X, y)

                def predict(X_: np.ndarray, m: Any = model) -> np.ndarray:
                    return m.predict(X_)

            # one prediction per distinct (context, position, candidate set) in the fold: a
            # log's context is mostly categories, so a million rows are a few thousand contexts
            key = np.hstack([ctx[test], pos[test], log.set_id[test, None].astype(float)])
            _, first, inverse = np.unique(
                np.nan_to_num(key, nan=-1e300), axis=0, return_index=True, return_inverse=True
            )
            reps = test[first]
            q_unique = np.zeros((len(reps), log.width), dtype=np.float32)
            for k in range(log.width):
                at = np.flatnonzero(log.n_candidates[reps] > k)
                for start in range(0, len(at), chunk):
                    part = at[start : start + chunk]
                    offer = log.sets[log.set_id[reps[part]], k]
                    q_unique[part, k] = predict(design(reps[part], offer, rate))
            q[test] = q_unique[inverse.ravel()]
    return q


# --- estimators -----------------------------------------------------------------------------


def fay_feuer(terms: np.ndarray, unit: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """Fay-Feuer gamma interval of sum(terms) / n for non-negative ``terms = unit * x`` with
    counts ``x`` in [0, 1] (``unit``: each decision's weight times the reward range): exact-style,
    never a point, [0, >0] with no events at all."""
    y = terms.sum() / n
    v = (unit * terms).sum() / n**2
    um = unit.max() / n if len(unit) else 0.0
    low = 0.0 if y <= 0 or v <= 0 else v / (2 * y) * stats.chi2.ppf(alpha / 2, 2 * y**2 / v)
    high = (
        (v + um**2)
        / (2 * (y + um))
        * stats.chi2.ppf(1 - alpha / 2, 2 * (y + um) ** 2 / (v + um**2))
    )
    return float(low), float(high)


def empirical_bernstein(terms: np.ndarray, spread: float, alpha: float) -> float:
    """Half-width of the empirical-Bernstein bound (Maurer & Pontil) for a mean of ``terms``
    whose range is ``spread``, two-sided at level ``alpha``."""
    n = len(terms)
    if n < 2:
        return float("inf")
    log_term = np.log(4 / alpha)
    return float(
        np.sqrt(2 * terms.var(ddof=1) * log_term / n) + 7 * spread * log_term / (3 * (n - 1))
    )


def _se(influence: np.ndarray, groups: np.ndarray | None) -> float:
    n = len(influence)
    if groups is None:
        return float(influence.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    sums = np.bincount(groups, weights=influence - influence.mean())
    g = len(sums)
    return float(np.sqrt(g / (g - 1) * (sums**2).sum()) / n) if g > 1 else float("nan")


def _dros_lambda(w: np.ndarray, res: np.ndarray, dm: np.ndarray) -> float:
    """The shrinkage that minimises estimated variance + bias^2 (plain DR is lambda = inf)."""
    n = len(w)
    top = float(w.max()) ** 2 if len(w) else 1.0
    best, best_lam = np.inf, np.inf
    for lam in [np.inf] + [top * 10.0**-k for k in range(0, 9)]:
        shrunk = w if np.isinf(lam) else lam * w / (w**2 + lam)
        term = dm + shrunk * res
        gap = (w - shrunk) * res
        mse = term.var() / n + gap.mean() ** 2 + gap.var() / n
        if mse < best - 1e-15:
            best, best_lam = mse, lam
    return best_lam


@dataclass
class _Terms:
    w: np.ndarray
    r: np.ndarray
    dm: np.ndarray | None
    res: np.ndarray | None  # r - q(x, a)
    lam: float = np.inf

    def shrunk(self) -> np.ndarray:
        return self.w if np.isinf(self.lam) else self.lam * self.w / (self.w**2 + self.lam)

    def points(self, b: np.ndarray | None = None) -> dict[str, float]:
        """Every estimator, optionally with bootstrap weights ``b`` per decision."""
        b = np.ones_like(self.w) if b is None else b
        sb, wr = b.sum(), self.w * self.r
        out = {
            "ips": float((b * wr).sum() / sb),
            "snips": float((b * wr).sum() / max((b * self.w).sum(), 1e-300)),
        }
        if self.dm is not None and self.res is not None:
            dm = float((b * self.dm).sum() / sb)
            out["dm"] = dm
            out["dr"] = dm + float((b * self.w * self.res).sum() / sb)
            out["sndr"] = dm + float(
                (b * self.w * self.res).sum() / max((b * self.w).sum(), 1e-300)
            )
            out["dros"] = dm + float((b * self.shrunk() * self.res).sum() / sb)
        return out


def estimates(
    action: np.ndarray,
    prob: np.ndarray,
    reward: np.ndarray,
    target: np.ndarray,
    q: np.ndarray | None = None,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    reward_range: tuple[float, float] | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
    scale: float = 1.0,
) -> pd.DataFrame:
    """Every estimator with an honest (1 - alpha) interval (see the module docstring).

    ``scale`` multiplies values and intervals (the independent-position slate value: per-row
    terms summed over a decision's positions). Columns: estimator, value, se, ci_low, ci_high,
    interval (how it was made), clipped, and with ``n_bootstrap`` boot_low / boot_high.
    """
    action = np.asarray(action, dtype=int)
    prob, reward = np.asarray(prob, float), np.asarray(reward, float)
    n = len(action)
    rows = np.arange(n)
    w = target[rows, action] / prob
    lo, hi = reward_range if reward_range is not None else default_reward_range(reward)
    codes = None
    if groups is not None:
        codes = pd.factorize(pd.Series(np.asarray(groups), dtype=object))[0]
    dm = res = None
    if q is not None:
        dm = (target * q).sum(axis=1)
        res = reward - q[rows, action].astype(float)
    t = _Terms(w, reward, dm, res)
    if dm is not None and res is not None:
        t.lam = _dros_lambda(w, res, dm)
    z = stats.norm.isf(alpha / 2)
    points = t.points()
    mean_w = float(w.mean())
    wr = w * reward
    # the rare-event bound for IPS (and SNIPS divided by the mean weight)
    if lo >= 0:
        low, high = fay_feuer(wr, w * (hi if hi > 0 else 1.0), n, alpha)
        how = "normal + Fay-Feuer gamma bound"
    else:
        half = empirical_bernstein(wr, float(w.max()) * (hi - lo), alpha)
        low, high = points["ips"] - half, points["ips"] + half
        how = "normal + empirical-Bernstein bound"
    exact = {"ips": (low, high), "snips": (low / mean_w, high / mean_w)}
    events = int(((reward != 0) & (w > 0)).sum())
    influences = {"ips": wr, "snips": w * (reward - points["snips"]) / mean_w}
    if dm is not None and res is not None:
        influences["dm"] = dm
        influences["dr"] = dm + w * res
        c = points["sndr"] - points["dm"]
        influences["sndr"] = dm + w * (res - c) / mean_w
        influences["dros"] = dm + t.shrunk() * res
    out = []
    for name, influence in influences.items():
        value = points[name]
        se = _se(influence, codes)
        ci = (value - z * se, value + z * se)
        interval = "normal (customer-clustered)" if codes is not None else "normal"
        if name in exact:
            ci = (min(ci[0], exact[name][0]), max(ci[1], exact[name][1]))
            interval = how
        elif events < FEW_EVENTS:
            ci = (min(ci[0], exact["snips"][0]), max(ci[1], exact["snips"][1]))
            interval += f" widened to the SNIPS bound (< {FEW_EVENTS} rewarded decisions)"
        s_lo, s_hi = lo * scale, hi * scale
        v, a, b = value * scale, ci[0] * scale, ci[1] * scale
        clipped = bool(v < s_lo or v > s_hi or a < s_lo or b > s_hi)
        out.append(
            {
                "estimator": name,
                "value": float(np.clip(v, s_lo, s_hi)),
                "se": se * scale,
                "ci_low": float(np.clip(a, s_lo, s_hi)),
                "ci_high": float(np.clip(b, s_lo, s_hi)),
                "interval": interval,
                "clipped": clipped,
            }
        )
    frame = pd.DataFrame(out)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        names = list(influences)
        boots = np.empty((n_bootstrap, len(names)))
        n_groups = int(codes.max()) + 1 if codes is not None else n
        for i in range(n_bootstrap):
            b = rng.poisson(1.0, n_groups).astype(float)
            b = b[codes] if codes is not None else b
            if b.sum() == 0:
                b = np.ones(n)
            p = t.points(b)
            boots[i] = [p[nm] for nm in names]
        low_b = np.quantile(boots, alpha / 2, axis=0) * scale
        high_b = np.quantile(boots, 1 - alpha / 2, axis=0) * scale
        frame["boot_low"] = np.clip(low_b, lo * scale, hi * scale)
        frame["boot_high"] = np.clip(high_b, lo * scale, hi * scale)
    return frame


def default_reward_range(reward: np.ndarray) -> tuple[float, float]:
    """[min(0, min r), max(1, max r)]: a click log with no click still has the range [0, 1]."""
    reward = np.asarray(reward, float)
    return (min(0.0, float(reward.min())), max(1.0, float(reward.max())))


def diagnostics(
    log: DecisionLog, target: np.ndarray, logged: np.ndarray | None = None
) -> dict[str, float]:
    """Weights and support of a target on a log (see the module docstring)."""
    w = target[np.arange(log.n), log.action] / log.prob
    logged = log.logged_mask() if logged is None else logged
    unlogged = np.zeros(log.n) if logged.all() else np.where(logged, 0.0, target).sum(axis=1)
    return {
        "n": log.n,
        "max_weight": float(w.max()),
        "mean_weight": float(w.mean()),
        "ess": float(w.sum() ** 2 / max((w**2).sum(), 1e-300)),
        "ess_share": float(w.sum() ** 2 / max((w**2).sum(), 1e-300) / log.n),
        "unlogged_share": float((unlogged > 1e-9).mean()),
        "unlogged_mass": float(unlogged.mean()),
        "rewarded": int(((log.reward != 0) & (w > 0)).sum()),
    }


def diagnostic_warnings(policy: str, d: Mapping[str, float], where: str = "") -> list[str]:
    """What a careful analyst would flag, in words."""
    at = f"{policy}{where}"
    out = []
    if d["ess_share"] < ESS_WARN_SHARE:
        out.append(
            f"{at}: effective sample size {d['ess']:,.0f} is {100 * d['ess_share']:.2f}% of "
            f"{d['n']:,} decisions (< {100 * ESS_WARN_SHARE:.0f}%): the estimate rests on a few "
            f"decisions (max weight {d['max_weight']:,.1f})"
        )
    if d["unlogged_share"] > 0:
        out.append(
            f"{at}: in {100 * d['unlogged_share']:.1f}% of decisions the target puts mass "
            f"({d['unlogged_mass']:.3f} on average) on candidates never logged in that slot; "
            "IPS/SNIPS cannot see that part, DM/DR rely on the reward model there"
        )
    if d["rewarded"] < FEW_EVENTS:
        out.append(
            f"{at}: only {d['rewarded']} rewarded decision(s) where the target agrees with the "
            "log: intervals are wide by necessity"
        )
    return out


# --- the report -----------------------------------------------------------------------------


@dataclass
class OPEReport:
    """Estimates, diagnostics and warnings of one evaluation (``to_text`` prints them)."""

    estimates: pd.DataFrame
    diagnostics: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.info.items()]
        with pd.option_context("display.width", 200, "display.max_columns", 30):
            est = self.estimates.drop(columns=["interval"]).round(6)
            lines += ["", "estimates:", est.to_string(index=False)]
            lines += ["", "diagnostics:", self.diagnostics.round(4).to_string(index=False)]
        methods = self.estimates.drop_duplicates("estimator")[["estimator", "interval"]]
        lines += ["", "intervals:"] + [f"  {e}: {i}" for e, i in methods.itertuples(index=False)]
        lines += [""] + [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines).rstrip()


def _policies(
    policies: PolicySpec | Sequence[PolicySpec] | Mapping[str, PolicySpec],
) -> dict[str, PolicySpec]:
    if isinstance(policies, Mapping):
        return dict(policies)
    if isinstance(policies, str) or callable(policies):
        policies = [policies]
    out: dict[str, PolicySpec] = {}
    for i, p in enumerate(policies):
        out[p if isinstance(p, str) else getattr(p, "__name__", f"policy{i}")] = p
    return out


def _precheck(log: DecisionLog, specs: Mapping[str, PolicySpec]) -> None:
    """The cheap checks of every policy spec (syntax, constant ids, the file's existence)."""
    for spec in specs.values():
        if callable(spec) or spec == "uniform" or spec.startswith("model:"):
            continue
        if spec.startswith("constant:"):
            _constant_sets(log, [s.strip() for s in spec.split(":", 1)[1].split(",") if s.strip()])
        elif spec.startswith("file:"):
            if not Path(spec.split(":", 1)[1]).exists():
                raise PolicyError(f"no policy file at {spec.split(':', 1)[1]}")
        else:
            target_of(log, spec, spec)  # raises: unknown policy


def evaluate(
    log: pd.DataFrame | Path | str | DecisionLog,
    policies: PolicySpec | Sequence[PolicySpec] | Mapping[str, PolicySpec] = "uniform",
    *,
    candidates: Mapping[str, list[str]] | Path | str | None = None,
    context: Sequence[str] = (),
    reward_model: bool = True,
    positions: str = "per-position",
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
    reward_range: tuple[float, float] | None = None,
    max_categories: int = MAX_CATEGORIES,
    estimators: Sequence[str] = ESTIMATORS,
) -> OPEReport:
    """Estimate every policy's value on one log, with diagnostics (``nextoffer evaluate-policy``).

    ``log``: a frame or a Parquet/CSV path (``action``, ``prob``, ``reward``; see
    :mod:`src.models.decision_log`); ``policies``: a spec, a list or ``{name: spec}`` with specs
    ``uniform``, ``constant:IDS``, ``model:URI``, ``file:PATH`` or a Python callable
    ``(frame, candidates) -> (n, K) array`` (row i: probabilities of row i's candidates, in
    order) or a long ``(decision_id, action, prob)`` frame. ``context``: the reward model's
    features (none by default: the model then knows the offer and position only). ``positions``:
    with a ``position`` column, ``per-position`` (one estimate per position) or ``independent``
    (the slate's value as the sum over positions, rewards at a position depending only on the
    offer there).
    """
    if positions not in POSITION_MODES:
        raise LogError(f"--positions {positions!r}: one of {list(POSITION_MODES)}")
    dlog = (
        log
        if isinstance(log, DecisionLog)
        else load_log(
            log, candidates=dict(candidates) if isinstance(candidates, Mapping) else candidates
        )
    )
    specs = _policies(policies)
    reward = dlog.reward
    lo_hi: tuple[float, float] = (
        (float(reward_range[0]), float(reward_range[1]))
        if reward_range is not None
        else default_reward_range(reward)
    )
    if lo_hi[0] >= lo_hi[1] or reward.min() < lo_hi[0] or reward.max() > lo_hi[1]:
        raise LogError(
            f"reward range {list(lo_hi)}: rewards run from {reward.min():g} to {reward.max():g}"
        )
    ctx_cols = [c.strip() for col in context for c in str(col).split(",") if c.strip()]
    ctx = context_columns(dlog.frame, ctx_cols, max_categories) if ctx_cols else None
    _precheck(dlog, specs)  # a typo in a policy fails before the reward model is fitted
    q = None
    if reward_model:
        q = fit_q(dlog, ctx, categorical_context(dlog.frame, ctx_cols), seed=seed)
    has_pos = "position" in dlog.frame.columns
    if has_pos:
        pos_values = dlog.frame["position"].to_numpy()
        if positions == "per-position":
            parts = [
                (p, np.flatnonzero(pos_values == p), 1.0) for p in sorted(pd.unique(pos_values))
            ]
        else:
            if "decision_id" not in dlog.frame and "customer_id" not in dlog.frame:
                raise LogError(
                    f"{dlog.name}: --positions independent sums a decision's positions: the log "
                    "needs a 'decision_id' column"
                )
            n_dec = dlog.frame["decision_id"].nunique() if "decision_id" in dlog.frame else dlog.n
            parts = [(None, np.arange(dlog.n), dlog.n / n_dec)]
    else:
        parts = [(None, np.arange(dlog.n), 1.0)]
    logged = dlog.logged_mask()
    frames, diags, warnings = [], [], list(dlog.warnings)
    for name, spec in specs.items():
        target = target_of(dlog, spec, name)  # one (n, K) matrix at a time
        for position, rows, scale in parts:
            whole = len(rows) == dlog.n
            sub = dlog if whole else dlog.subset(rows)
            groups = sub.groups()
            if has_pos and positions == "independent" and groups is None:
                groups = sub.frame["decision_id"].to_numpy()
            frame = estimates(
                sub.action,
                sub.prob,
                sub.reward,
                target if whole else target[rows],
                (q if whole else q[rows]) if q is not None else None,
                groups=groups,
                reward_range=lo_hi,
                alpha=alpha,
                n_bootstrap=n_bootstrap,
                seed=seed,
                scale=scale,
            )
            frame = frame[frame["estimator"].isin(estimators)].reset_index(drop=True)
            frame.insert(0, "policy", name)
            d: dict[str, Any] = dict(
                diagnostics(
                    sub, target if whole else target[rows], logged if whole else logged[rows]
                )
            )
            d = {"policy": name, **d}
            if position is not None:
                frame.insert(1, "position", position)
                d = {
                    "policy": name,
                    "position": position,
                    **{k: v for k, v in d.items() if k != "policy"},
                }
            frames.append(frame)
            diags.append(d)
            where = f" at position {position}" if position is not None else ""
            warnings += diagnostic_warnings(name, d, where)
            if frame["clipped"].any():
                which = ", ".join(frame.loc[frame["clipped"], "estimator"])
                warnings.append(f"{name}{where}: {which} clipped to the reward range {list(lo_hi)}")
    info = {
        "log": f"{dlog.name}: {dlog.n:,} rows, {len(dlog.offers)} offers, up to {dlog.width} "
        "candidates per decision",
        "candidates": {
            "column": "from the log's 'candidates' column",
            "file": "from the candidates file (offers eligible per slot)",
            "derived": "derived from the logged actions (see warning)",
        }[dlog.candidate_source],
        "reward model": (
            f"cross-fitted gradient boosting on offer{', position' if has_pos else ''}"
            f"{' + context ' + ', '.join(ctx_cols) if ctx_cols else ' only (no --context)'}"
            if reward_model
            else "none (--no-reward-model: IPS and SNIPS only)"
        ),
        "reward range": list(lo_hi),
        "positions": (
            ("per position" if positions == "per-position" else "independent-position assumption")
            if has_pos
            else "no position column"
        ),
        "confidence": f"{100 * (1 - alpha):g}%",
    }
    if "customer_id" in dlog.frame:
        info["clusters"] = "intervals clustered by customer_id"
    return OPEReport(
        estimates=pd.concat(frames, ignore_index=True),
        diagnostics=pd.DataFrame(diags),
        warnings=warnings,
        info=info,
    )


def evaluate_callable(fn: Callable[..., Any], log: pd.DataFrame, **kwargs: Any) -> OPEReport:
    """Shorthand for notebooks: one Python policy ``fn(frame, candidates)`` on one log."""
    return evaluate(log, {getattr(fn, "__name__", "policy"): fn}, **kwargs)


def evaluate_log(
    log: pd.DataFrame,
    policies: Mapping[str, str | PolicyFn],
    *,
    reward_model: bool = True,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """Every estimator for every policy on one log: the estimates table of :func:`evaluate`
    (which also gives diagnostics and warnings)."""
    return evaluate(
        log,
        dict(policies),
        reward_model=reward_model,
        alpha=alpha,
        n_bootstrap=n_bootstrap,
        seed=seed,
    ).estimates


def evaluate_policy_file(
    path: Path | str,
    policy: str | PolicyFn | Mapping[str, str | PolicyFn] = "uniform",
    *,
    reward_model: bool = True,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> pd.DataFrame:
    """A log file (Parquet/CSV) and ``uniform``, ``constant:<offer ids>``, ``model:<uri>``,
    ``file:<path>``, a callable, or a mapping of several by name -> the estimates table."""
    policies = (
        dict(policy)
        if isinstance(policy, Mapping)
        else {str(policy) if isinstance(policy, str) else "policy": policy}
    )
    return evaluate_log(
        read_log(path),
        policies,
        reward_model=reward_model,
        alpha=alpha,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
