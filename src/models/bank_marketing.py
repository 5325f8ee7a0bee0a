"""The propensity pipeline on real data: the UCI Bank Marketing campaign (Moro et al., 2014).

41,188 phone contacts of a Portuguese bank, in date order, outcome ``y`` (subscribed a term
deposit). ``duration`` (call length) is known only after the call and leaks the outcome, so
it is dropped. The same model as for the simulated bank — LightGBM early-stopped on a
validation slice and calibrated there, next to a logistic regression — is scored two ways:
5-fold stratified cross-validation (closest to the paper's ~0.80 AUC) and a time split
(train on the earlier rows, validate on the next, test on the latest), where the positive rate
shifts strongly — the difference between the two is the finding.

Why the time split with every column scores below 0.5 (measured on the full file, issue 4):
the five social/economic context columns (``MACRO``: euribor3m, nr.employed, emp.var.rate,
cons.price.idx, cons.conf.idx) are national indicators, i.e. a clock. In the training rows
(May 2008 - early 2009) they barely move and a higher euribor goes with slightly *more*
subscriptions (AUC of euribor3m alone 0.55); in the test rows (mid 2010, after the ECB cuts)
the same column ranks the other way (0.30), and nr.employed likewise (0.55 -> 0.28). The
booster splits on them first, so its ranking inside the test period is backwards, and early
stopping on the validation slice (positive rate 4.8 % -> 11 %) stops after one tree. Without
``MACRO`` the same time split scores ~0.67; random cross-validation inside the test period
scores ~0.79 — the rows there are as predictable as anywhere, the context columns just do not
carry a relation that holds across regimes. ``time_by_features`` and ``macro_drift`` report it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from src.models.metrics import binary_metrics
from src.models.propensity import PropensityConfig, fit_product

LEAKING = ("duration",)
TARGET = "y"
MACRO = ("emp.var.rate", "cons.price.idx", "cons.conf.idx", "euribor3m", "nr.employed")
"""Social/economic context: one value per period for everyone, so a time split extrapolates them."""


def load_bank_marketing(path: Path | str) -> pd.DataFrame:
    """The CSV as published (``;``-separated), ``y`` as 0/1, rows kept in their (date) order."""
    df = pd.read_csv(path, sep=";")
    df[TARGET] = (df[TARGET] == "yes").astype(int)
    return df


def bank_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """All inputs but ``duration``: numeric as float, categoricals one-hot (``unknown`` kept as a
    level — it is informative), ``pdays`` 999 ("never contacted") split into a flag."""
    X = df.drop(columns=[TARGET, *LEAKING], errors="ignore").copy()
    X["never_contacted"] = (X["pdays"] == 999).astype(float)
    X["pdays"] = X["pdays"].where(X["pdays"] != 999)
    cats = [c for c in X.columns if X[c].dtype == object or pd.api.types.is_string_dtype(X[c])]
    X = pd.get_dummies(X, columns=cats, dtype=float)
    X.columns = [str(c).replace(".", "_") for c in X.columns]
    return X.astype(float)


def _fit_score(
    X: pd.DataFrame,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    config: PropensityConfig,
) -> dict[str, dict[str, float]]:
    m = fit_product("term_deposit", X.iloc[train], y[train], X.iloc[val], y[val], config)
    Xt = X.iloc[test]
    return {
        "model": binary_metrics(y[test], m.predict(Xt)),
        "logreg": binary_metrics(y[test], m.predict_baseline(Xt)),
        "best_iteration": {"value": float(m.best_iteration)},
    }


def evaluate_bank_marketing(
    path: Path | str,
    n_folds: int = 5,
    time_split: tuple[float, float] = (0.6, 0.8),
    config: PropensityConfig | None = None,
    sample: int | None = None,
    seed: int = 7,
) -> dict[str, pd.DataFrame]:
    """Held-out metrics: ``cv`` (per fold, model and logreg; inside each training fold the last
    20 % validates) and ``time`` (first 60 % train, next 20 % validate, last 20 % test).

    ``sample`` keeps every k-th row (order preserved) for a quick run.
    """
    config = config or PropensityConfig(min_child_samples=50, num_leaves=15)
    df = load_bank_marketing(path)
    if sample and sample < len(df):
        df = df.iloc[np.linspace(0, len(df) - 1, sample).astype(int)].reset_index(drop=True)
    X, y = bank_matrix(df), df[TARGET].to_numpy(int)

    rows = []
    folds = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    rng = np.random.default_rng(seed)
    for k, (train_all, test) in enumerate(folds.split(X, y)):
        train_all = rng.permutation(train_all)
        cut = int(0.8 * len(train_all))
        res = _fit_score(X, y, np.sort(train_all[:cut]), np.sort(train_all[cut:]), test, config)
        for scorer in ("model", "logreg"):
            rows.append({"fold": k, "scorer": scorer, **res[scorer]})
    cv = pd.DataFrame(rows)

    n = len(df)
    a, b = int(time_split[0] * n), int(time_split[1] * n)
    res = _fit_score(X, y, np.arange(a), np.arange(a, b), np.arange(b, n), config)
    time_rows = pd.DataFrame([{"scorer": s, **res[s]} for s in ("model", "logreg")])
    rates = pd.Series(
        {"train": y[:a].mean(), "val": y[a:b].mean(), "test": y[b:].mean()}, name="positive_rate"
    )
    no_macro = [c for c in X.columns if c not in set(macro_columns(X))]
    res_nm = _fit_score(X[no_macro], y, np.arange(a), np.arange(a, b), np.arange(b, n), config)
    by_features = pd.DataFrame(
        [{"features": "all", "scorer": s, "auc": res[s]["auc"]} for s in ("model", "logreg")]
        + [
            {"features": "without_macro", "scorer": s, "auc": res_nm[s]["auc"]}
            for s in ("model", "logreg")
        ]
    ).set_index(["features", "scorer"])
    return {
        "cv": cv,
        "cv_mean": cv.groupby("scorer").mean(numeric_only=True).drop(columns="fold"),
        "time": time_rows.set_index("scorer"),
        "time_rates": rates.to_frame(),
        "time_by_features": by_features,
        "time_best_iteration": pd.Series(
            {
                "all": res["best_iteration"]["value"],
                "without_macro": res_nm["best_iteration"]["value"],
            }
        ),
        "macro_drift": macro_drift(X, y, a, b),
    }


def macro_columns(X: pd.DataFrame) -> list[str]:
    """The model-matrix columns of :data:`MACRO` (``bank_matrix`` spells ``.`` as ``_``)."""
    names = {m.replace(".", "_") for m in MACRO}
    return [c for c in X.columns if c in names]


def macro_drift(X: pd.DataFrame, y: np.ndarray, a: int, b: int) -> pd.DataFrame:
    """AUC of each context column on its own, in the training rows and in the test rows: a sign
    flip (one side above 0.5, the other below) is a relation that does not survive the split."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for c in macro_columns(X):
        out[c] = {
            "auc_train": roc_auc_score(y[:a], X[c].iloc[:a]) if 0 < y[:a].sum() < a else np.nan,
            "auc_test": roc_auc_score(y[b:], X[c].iloc[b:])
            if 0 < y[b:].sum() < len(y) - b
            else np.nan,
            "mean_train": float(X[c].iloc[:a].mean()),
            "mean_test": float(X[c].iloc[b:].mean()),
        }
    return pd.DataFrame(out).T
