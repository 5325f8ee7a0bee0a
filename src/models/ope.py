"""Off-policy evaluation: what would a policy have earned on traffic another policy served?

From a log of (context, candidates, chosen action, probability it was chosen with, reward):

- **IPS**  mean of w_i r_i, w_i = pi(a_i | x_i) / p_i. Unbiased; variance grows with the weights.
- **SNIPS** sum(w r) / sum(w). Slightly biased, much steadier when weights are large.
- **DM**   mean over x of sum_a pi(a | x) q(x, a) with a reward model q. Low variance, biased by q.
- **DR**   DM + w_i (r_i - q(x_i, a_i)). Unbiased if either the probabilities or q are right.

Confidence intervals: normal approximation on the per-decision terms (SNIPS by the delta
method), optionally a bootstrap over decisions. The reward model is cross-fitted (each
decision's q comes from a model that did not see it), so DR keeps its unbiasedness.

Target policies are matrices ``(n, K)``: row i is the policy's distribution over row i's
candidates (padded with zeros to the widest candidate set).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

ESTIMATORS = ("ips", "snips", "dm", "dr")
LOG_COLUMNS = ("action", "prob", "reward")
_NOT_CONTEXT = {
    "decision_id",
    "ts",
    "customer_id",
    "action",
    "prob",
    "reward",
    "candidates",
    "click",
    "convert",
    "value",
    "offer_id",
    "request_id",
    "context",
    "seen",
    "responses",
}

PolicyFn = Callable[[pd.DataFrame, list[list[str]]], Any]


class LogError(ValueError):
    """A decision log, candidates file or context column that cannot be evaluated as given;
    the message names the file, the field and the record."""


class PolicyError(ValueError):
    """A target policy that cannot be evaluated as given (an offer id that is no candidate, a
    probability file that misses decisions or does not sum to 1); the message names it."""


def _terms(
    action: np.ndarray,
    prob: np.ndarray,
    reward: np.ndarray,
    target: np.ndarray,
    q: np.ndarray | None,
) -> dict[str, np.ndarray]:
    rows = np.arange(len(action))
    w = target[rows, action] / prob
    out = {"ips": w * reward, "weights": w}
    if q is not None:
        dm = (target * q).sum(axis=1)
        out["dm"] = dm
        out["dr"] = dm + w * (reward - q[rows, action])
    return out


def _point(name: str, t: dict[str, np.ndarray], reward: np.ndarray) -> float:
    if name == "snips":
        return float((t["weights"] * reward).sum() / t["weights"].sum())
    return float(t[name].mean())


def _standard_error(influence: np.ndarray, groups: np.ndarray | None) -> float:
    """Standard error of the mean of ``influence``; with ``groups`` (the customer of each
    decision) cluster-robust: one customer's decisions share their hidden need, so treating them
    as independent makes the interval too narrow. Equals the i.i.d. formula for singleton groups."""
    n = len(influence)
    if groups is None:
        return float(influence.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    sums = np.bincount(groups, weights=influence - influence.mean())
    g = len(sums)
    return float(np.sqrt(g / (g - 1) * (sums**2).sum()) / n) if g > 1 else float("nan")


def estimate(
    action: np.ndarray,
    prob: np.ndarray,
    reward: np.ndarray,
    target: np.ndarray,
    q: np.ndarray | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 0,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> pd.DataFrame:
    """IPS, SNIPS (and DM, DR with a reward model ``q``) with (1 - alpha) confidence intervals.

    ``action``: index of the logged choice in its row's candidates; ``prob``: the logging
    policy's probability of it; ``target``: (n, K) target-policy probabilities; ``q``: (n, K)
    predicted rewards; ``groups``: who each decision was for (customer id), so the intervals
    and the bootstrap treat a customer's decisions as one correlated cluster. Returns one row
    per estimator: value, se, ci_low, ci_high (normal) and, with ``n_bootstrap``, boot_low /
    boot_high (percentile).
    """
    action = np.asarray(action, dtype=int)
    prob = np.asarray(prob, dtype=float)
    reward = np.asarray(reward, dtype=float)
    target = np.asarray(target, dtype=float)
    n = len(action)
    if n == 0:
        raise ValueError("the log is empty")
    if not (len(prob) == len(reward) == target.shape[0] == n):
        raise ValueError("action, prob, reward and target must have one row per decision")
    if ((prob <= 0) | (prob > 1)).any():
        raise ValueError("logged probabilities must be in (0, 1]")
    if (action < 0).any() or (action >= target.shape[1]).any():
        raise ValueError("an action index falls outside its candidate set")
    codes = None
    if groups is not None:
        if len(groups) != n:
            raise ValueError("groups must have one entry per decision")
        codes = pd.factorize(pd.Series(groups, dtype=object))[0]
        if (codes < 0).any():
            raise ValueError(
                f"groups has an empty value at row {int(np.flatnonzero(codes < 0)[0])}"
            )
    t = _terms(action, prob, reward, target, q)
    z = stats.norm.isf(alpha / 2)
    names = [e for e in ESTIMATORS if e in ("ips", "snips") or q is not None]
    rows = []
    for name in names:
        value = _point(name, t, reward)
        if name == "snips":
            influence = t["weights"] * (reward - value) / t["weights"].mean()
        else:
            influence = t[name]
        se = _standard_error(influence, codes)
        rows.append(
            {
                "estimator": name,
                "value": value,
                "se": se,
                "ci_low": value - z * se,
                "ci_high": value + z * se,
                "n": n,
                "mean_weight": float(t["weights"].mean()),
            }
        )
    frame = pd.DataFrame(rows)
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        boots = {name: np.empty(n_bootstrap) for name in names}
        members = None
        if codes is not None:  # resample whole customers
            order = np.argsort(codes, kind="stable")
            members = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
        for b in range(n_bootstrap):
            if members is None:
                idx = rng.integers(0, n, n)
            else:
                idx = np.concatenate(
                    [members[g] for g in rng.integers(0, len(members), len(members))]
                )
            tb = {k: v[idx] for k, v in t.items()}
            for name in names:
                boots[name][b] = _point(name, tb, reward[idx])
        frame["boot_low"] = [np.quantile(boots[nm], alpha / 2) for nm in names]
        frame["boot_high"] = [np.quantile(boots[nm], 1 - alpha / 2) for nm in names]
    return frame


# --- reward model (direct method) -------------------------------------------------------


def context_frame(contexts: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Context as a model matrix: numbers and booleans as is, categories one-hot."""
    frame = contexts.copy() if isinstance(contexts, pd.DataFrame) else pd.DataFrame(list(contexts))
    frame = frame.drop(columns=[c for c in frame.columns if c in _NOT_CONTEXT], errors="ignore")
    frame = frame.reset_index(drop=True)
    categorical = [
        c
        for c in frame.columns
        if frame[c].dtype == object
        or isinstance(frame[c].dtype, (pd.StringDtype, pd.CategoricalDtype))
    ]
    numeric = frame.drop(columns=categorical)
    numeric = numeric.apply(pd.to_numeric, errors="coerce").astype(float)
    dummies = (
        pd.get_dummies(frame[categorical].astype("object"), dtype=float) if categorical else None
    )
    return pd.concat([numeric, dummies], axis=1) if dummies is not None else numeric


def fit_reward_model(
    X: pd.DataFrame,
    candidates: list[list[str]],
    action: np.ndarray,
    reward: np.ndarray,
    seen: Sequence[Mapping[str, int]] | None = None,
    folds: int = 2,
    seed: int = 0,
    threads: int | None = 1,
    offer_features: Mapping[str, np.ndarray] | None = None,
    segment: Sequence[Any] | None = None,
) -> np.ndarray:
    """Cross-fitted q(x, a) for every row's candidates: (n, K), zero-padded.

    Gradient-boosted trees on (context, offer one-hot, times this offer was seen recently and,
    given ``offer_features`` (offer_id -> (n, f) array), features of the row *about that offer*,
    e.g. the customer's page views and past clicks for the offer's product). Trees find offer x
    context interactions only by splitting on both; aligned features hand them over directly,
    which is what keeps q from shrinking every offer toward the average — the bias that makes a
    direct-method estimate of a good (selective) policy too low. For the same reason the offer's
    in-fold mean reward, overall and within the row's ``segment`` (e.g. life stage), is a column
    of its own. Binary rewards get a classifier
    (q = P(reward = 1)), others a regressor. ``threads`` caps OpenMP threads (one by default:
    oversubscribed cores make OpenMP crawl).
    """
    import sklearn.ensemble  # noqa: F401  (load its OpenMP runtime first: threadpoolctl limits loaded ones)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return _fit_reward_model(
            X, candidates, action, reward, seen, folds, seed, offer_features, segment
        )


def _fit_reward_model(
    X, candidates, action, reward, seen, folds, seed, offer_features=None, segment=None
) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    n = len(action)
    offers = sorted({o for c in candidates for o in c})
    col = {o: j for j, o in enumerate(offers)}
    width = max(len(c) for c in candidates)
    base = X.to_numpy(dtype=float)
    seen = seen if seen is not None else [{}] * n
    n_aligned = next(iter(offer_features.values())).shape[1] if offer_features else 0
    seg = (
        pd.factorize(pd.Series(list(segment), dtype=object).fillna("_"))[0]
        if segment is not None
        else np.zeros(n, dtype=int)
    )
    n_seg = int(seg.max()) + 1 if n else 1

    def design(
        rows: np.ndarray, offer_ids: list[str], rate: np.ndarray, seg_rate: np.ndarray
    ) -> np.ndarray:
        codes = np.array([col[o] for o in offer_ids])
        onehot = np.zeros((len(rows), len(offers)))
        onehot[np.arange(len(rows)), codes] = 1.0
        seen_n = np.array(
            [float((seen[i] or {}).get(o, 0)) for i, o in zip(rows, offer_ids, strict=False)]
        )
        parts = [
            base[rows],
            onehot,
            rate[codes][:, None],
            seg_rate[codes, seg[rows]][:, None],
            seen_n[:, None],
        ]
        if n_aligned:
            aligned = np.zeros((len(rows), n_aligned))
            ids = np.asarray(offer_ids, dtype=object)
            for o in set(offer_ids):
                at = np.flatnonzero(ids == o)
                aligned[at] = offer_features[o][rows[at]]
            parts.append(aligned)
        return np.hstack(parts)

    params = {
        "max_iter": 150,
        "learning_rate": 0.1,
        "max_leaf_nodes": 16,
        "max_bins": 64,
        "min_samples_leaf": 50,
        "l2_regularization": 1.0,
        "early_stopping": False,
        "random_state": seed,
    }
    binary = set(np.unique(reward)) <= {0.0, 1.0}
    fold = np.random.default_rng(seed).integers(0, folds, n)
    q = np.zeros((n, width))
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(test) == 0:
            continue
        chosen = [candidates[i][action[i]] for i in train]
        y = reward[train]
        # the offer's own mean reward in the training fold (shrunk to the overall mean): boosting
        # stopped early leaves one-hot offer effects half learned and pulls every offer toward
        # the average; one numeric column ranks the offers in a single split
        codes = np.array([col[o] for o in chosen])
        counts = np.bincount(codes, minlength=len(offers))
        rate = (np.bincount(codes, weights=y, minlength=len(offers)) + 20 * y.mean()) / (
            counts + 20
        )
        cell = codes * n_seg + seg[train]
        cell_n = np.bincount(cell, minlength=len(offers) * n_seg).reshape(len(offers), n_seg)
        cell_y = np.bincount(cell, weights=y, minlength=len(offers) * n_seg).reshape(
            len(offers), n_seg
        )
        seg_rate = (cell_y + 20 * rate[:, None]) / (cell_n + 20)
        X_train = design(train, chosen, rate, seg_rate)
        if binary and len(np.unique(y)) == 2:
            model = HistGradientBoostingClassifier(**params).fit(X_train, y)
            predict = model.predict_proba
        else:
            model = HistGradientBoostingRegressor(**params).fit(X_train, y)
            predict = model.predict
        rows = np.concatenate([np.full(len(candidates[i]), i) for i in test])
        ids = [o for i in test for o in candidates[i]]
        k = np.concatenate([np.arange(len(candidates[i])) for i in test])
        pred = predict(design(rows, ids, rate, seg_rate))
        q[rows, k] = pred[:, 1] if pred.ndim == 2 else pred
    return q


def product_features(
    contexts: Sequence[Mapping[str, Any]], offer_product: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Per offer, the row's features about that offer's product: page views (7 / 30 days),
    holdings, and the customer's past clicks and ignored offers of the product (``responses``).

    The same columns for every offer, so one tree split ("viewed the offer's product often")
    serves all offers: the reward model sees need-like evidence aligned with the action.
    """
    products = sorted(set(offer_product.values()))
    per_product = {}
    for p in products:
        rows = []
        for c in contexts:
            shown, clicked = (c.get("responses") or {}).get(p, (0, 0))
            rows.append(
                [
                    _f(c.get(f"pv_{p}_7d")),
                    _f(c.get(f"pv_{p}_30d")),
                    _f(c.get(f"n_{p}")),
                    float(clicked),
                    float(shown - clicked),
                ]
            )
        per_product[p] = np.array(rows, dtype=float).reshape(len(contexts), 5)
    return {o: per_product[p] for o, p in offer_product.items()}


def _f(value: Any) -> float:
    """A count as float; missing counts as 0 (the view leaves a count null when nothing happened)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if np.isnan(v) else v


# --- policies as (n, K) matrices ----------------------------------------------------------


def uniform_policy(log: pd.DataFrame, candidates: list[list[str]]) -> np.ndarray:
    width = max(len(c) for c in candidates)
    out = np.zeros((len(candidates), width))
    for i, c in enumerate(candidates):
        out[i, : len(c)] = 1.0 / len(c)
    return out


def constant_policy(preferred: Sequence[str]) -> PolicyFn:
    """Always the first of ``preferred`` that is a candidate (e.g. each slot's A/B winner).

    A row with none of them is an error naming it: evaluating it as uniform under the
    constant's name would report a different policy's value."""
    preferred = [str(p) for p in preferred]

    def policy(log: pd.DataFrame, candidates: list[list[str]]) -> np.ndarray:
        out = np.zeros((len(candidates), max(len(c) for c in candidates)))
        for i, c in enumerate(candidates):
            hit = next((p for p in preferred if p in c), None)
            if hit is None:
                raise PolicyError(
                    f"constant:{','.join(preferred)}: none of these offers is a candidate at "
                    f"row {i} (candidates {c[:10]})"
                )
            out[i, c.index(hit)] = 1.0
        return out

    return policy


def pyfunc_policy(model_uri: str) -> PolicyFn:
    """An MLflow bandit pyfunc as a target policy (its PMF per row)."""

    def policy(log: pd.DataFrame, candidates: list[list[str]]) -> np.ndarray:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(model_uri)
        rows = log.drop(columns=[c for c in ("candidates",) if c in log.columns]).copy()
        rows["candidates"] = [",".join(c) for c in candidates]
        pred = model.predict(rows)
        width = max(len(c) for c in candidates)
        out = np.zeros((len(candidates), width))
        for i, (c, pmf) in enumerate(zip(candidates, pred["pmf"], strict=False)):
            p = json.loads(pmf)
            out[i, : len(c)] = [p[o] for o in c]
        return out

    return policy


def parse_policy(spec: str | PolicyFn) -> PolicyFn:
    """``uniform`` | ``constant:OF03,OF11,OF19`` | ``model:<mlflow uri>`` | a callable."""
    if callable(spec):
        return spec
    if spec == "uniform":
        return uniform_policy
    if spec.startswith("constant:"):
        return constant_policy([s.strip() for s in spec.split(":", 1)[1].split(",") if s.strip()])
    if spec.startswith("model:"):
        return pyfunc_policy(spec.split(":", 1)[1])
    raise ValueError(
        f"unknown policy {spec!r}: use 'uniform', 'constant:<offer ids>' or 'model:<uri>'"
    )


# --- from a file --------------------------------------------------------------------------


def read_log(path: Path | str) -> pd.DataFrame:
    """A decision log from Parquet or CSV, validated (:func:`validate_log`)."""
    path = Path(path)
    if not path.exists():
        raise LogError(f"no decision log at {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        log = pd.read_parquet(path)
    elif path.suffix.lower() == ".csv":
        log = pd.read_csv(path)
    else:
        raise LogError(f"{path.name}: the log must be .parquet or .csv")
    return validate_log(log, path.name)


def validate_log(log: pd.DataFrame, name: str = "log") -> pd.DataFrame:
    """``action``, ``prob`` in (0, 1], numeric ``reward``; optional ``customer_id`` without
    gaps. Errors name the column, how many rows and the first one."""
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing:
        raise LogError(f"{name}: missing column(s) {missing}; a log needs {list(LOG_COLUMNS)}")
    if log.empty:
        raise LogError(f"{name}: the log has no rows")
    log = log.reset_index(drop=True).copy()
    for field in ("prob", "reward"):
        values = pd.to_numeric(log[field], errors="coerce")
        bad = values.isna()
        if bad.any():
            raise LogError(
                f"{name}: column '{field}' has non-numeric or empty values in "
                f"{int(bad.sum())} row(s), first at row {int(np.flatnonzero(bad)[0])}"
            )
        log[field] = values.astype(float)
    bad = (log["prob"] <= 0) | (log["prob"] > 1)
    if bad.any():
        raise LogError(
            f"{name}: column 'prob' must be in (0, 1]; {int(bad.sum())} row(s) are not, "
            f"first at row {int(np.flatnonzero(bad)[0])}"
        )
    if log["action"].isna().any():
        raise LogError(
            f"{name}: column 'action' has empty values, first at row "
            f"{int(np.flatnonzero(log['action'].isna())[0])}"
        )
    log["action"] = log["action"].astype(str)
    if "customer_id" in log.columns:  # optional; clusters the intervals by customer
        bad = log["customer_id"].isna()
        if bad.any():
            raise LogError(
                f"{name}: column 'customer_id' has empty values in {int(bad.sum())} row(s), "
                f"first at row {int(np.flatnonzero(bad)[0])}"
            )
        log["customer_id"] = log["customer_id"].astype(str)
    return log


def log_candidates(log: pd.DataFrame) -> list[list[str]]:
    """Each row's candidate set (see :func:`read_log`), the logged action always included."""
    if "candidates" in log.columns:
        cands = [[s.strip() for s in str(c).split(",") if s.strip()] for c in log["candidates"]]
    elif "slot" in log.columns:
        per_slot = {s: sorted(g["action"].unique()) for s, g in log.groupby("slot")}
        cands = [per_slot[s] for s in log["slot"]]
    else:
        everything = sorted(log["action"].unique())
        cands = [everything] * len(log)
    for i, (a, c) in enumerate(zip(log["action"], cands, strict=False)):
        if a not in c:
            raise ValueError(f"row {i}: action {a!r} is not among its candidates {c}")
    return cands


# --- against a known truth (tests; src.evaluation.policies on the simulator) -----------


def true_value(target: np.ndarray, truth: np.ndarray) -> float:
    """A policy's true value on the logged contexts: mean of sum_a pi(a | x) E[r | x, a]."""
    return float((target * truth).sum(axis=1).mean())
