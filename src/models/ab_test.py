"""The A/B baseline: the seed practice of testing a slot's contents, then fixing the winner.

Traffic is split equally over a slot's candidate contents for the test period; the winner is
decided with a two-proportion test on the sample the period gives, then shown to everyone.

Multiplicity (a slot has 6-7 contents): first an omnibus chi-square test of homogeneity over all
arms; only if it rejects at ``alpha`` is the best-observed arm compared with every other arm by
one-sided two-proportion z-tests, Holm-adjusted over those k-1 comparisons (family-wise error
<= alpha). The best arm is a *significant* winner when it beats all others after adjustment.
Otherwise the result is inconclusive and the practice still has to fix something: by default
the best-observed arm (what banks do), or the ``control`` arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class ABResult:
    """The A/B decision for one slot."""

    winner: str
    significant: bool
    p_value: float  # the largest Holm-adjusted p of best vs others (1.0 if omnibus fails)
    omnibus_p: float
    decision: str
    arms: pd.DataFrame  # arm, n, successes, rate, p_vs_best, p_adjusted
    mde: float  # minimum detectable absolute lift at this sample size (alpha, 80% power)


def two_proportion_z(s1: int, n1: int, s2: int, n2: int, alternative: str = "greater") -> float:
    """p-value of H0: p1 = p2 with the pooled two-proportion z-test."""
    if min(n1, n2) == 0:
        return 1.0
    p1, p2 = s1 / n1, s2 / n2
    pooled = (s1 + s2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (p1 - p2) / se
    if alternative == "greater":
        return float(stats.norm.sf(z))
    return float(2 * stats.norm.sf(abs(z)))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control, any dependence)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(
    p_base: float, n_per_arm: float, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> float:
    """Smallest absolute lift over ``p_base`` the test can detect (one-sided, Bonferroni-level alpha)."""
    if n_per_arm <= 0:
        return float("inf")
    z = stats.norm.isf(alpha / max(comparisons, 1)) + stats.norm.isf(1 - power)
    return float(z * np.sqrt(2 * p_base * (1 - p_base) / n_per_arm))


def required_sample_size(
    p_base: float, lift: float, alpha: float = 0.05, power: float = 0.8, comparisons: int = 1
) -> int:
    """Exposures per arm to detect an absolute ``lift`` over ``p_base`` (normal approximation)."""
    z = stats.norm.isf(alpha / max(comparisons, 1)) + stats.norm.isf(1 - power)
    p_bar = p_base + lift / 2
    return int(np.ceil(2 * p_bar * (1 - p_bar) * (z / lift) ** 2))


def decide(
    counts: pd.DataFrame,
    alpha: float = 0.05,
    control: str | None = None,
    on_inconclusive: Literal["best_observed", "control"] = "best_observed",
) -> ABResult:
    """Decide a slot's A/B test from per-arm ``arm``, ``n`` (exposures), ``successes`` (clicks)."""
    missing = {"arm", "n", "successes"} - set(counts.columns)
    if missing:
        raise ValueError(f"A/B counts need columns {sorted(missing)}")
    arms = counts[["arm", "n", "successes"]].copy().reset_index(drop=True)
    arms["arm"] = arms["arm"].astype(str)
    if (arms["successes"] > arms["n"]).any() or (arms["n"] < 0).any():
        raise ValueError("successes must lie in [0, n] for every arm")
    if len(arms) == 1:
        only = arms["arm"][0]
        arms["rate"] = arms["successes"] / arms["n"].clip(lower=1)
        return ABResult(
            only, False, 1.0, 1.0, f"single arm {only}: nothing to test", arms, float("inf")
        )
    arms["rate"] = arms["successes"] / arms["n"].clip(lower=1)
    table = np.stack([arms["successes"], arms["n"] - arms["successes"]], axis=1)
    if table.sum(axis=0).min() == 0 or (arms["n"] == 0).any():
        omnibus_p = 1.0
    else:
        omnibus_p = float(stats.chi2_contingency(table, correction=False)[1])
    best = int(arms["rate"].idxmax())
    others = [i for i in range(len(arms)) if i != best]
    raw = np.array(
        [
            two_proportion_z(
                arms["successes"][best], arms["n"][best], arms["successes"][i], arms["n"][i]
            )
            for i in others
        ]
    )
    adjusted = holm(raw)
    arms["p_vs_best"] = np.nan
    arms["p_adjusted"] = np.nan
    arms.loc[others, "p_vs_best"] = raw
    arms.loc[others, "p_adjusted"] = adjusted
    p_value = float(adjusted.max()) if omnibus_p < alpha else 1.0
    significant = omnibus_p < alpha and p_value < alpha
    best_arm = str(arms["arm"][best])
    mde = minimum_detectable_effect(
        float(arms["rate"].mean()), float(arms["n"].mean()), alpha, comparisons=len(others)
    )
    if significant:
        winner = best_arm
        decision = (
            f"{winner} wins (rate {arms['rate'][best]:.4f}; max Holm-adjusted p {p_value:.3g})"
        )
    else:
        fallback = control if (on_inconclusive == "control" and control is not None) else best_arm
        winner = str(fallback)
        decision = (
            f"inconclusive (omnibus p {omnibus_p:.3g}, max adjusted p {p_value:.3g}; "
            f"detectable lift at this n ~{mde:.4f}); fixing {winner}"
        )
    return ABResult(winner, significant, p_value, omnibus_p, decision, arms, mde)


def summarize(results: dict[str, ABResult]) -> pd.DataFrame:
    """One row per slot: winner, significant, p-value, omnibus p, exposures, MDE, decision."""
    return pd.DataFrame(
        [
            {
                "slot": slot,
                "winner": r.winner,
                "significant": r.significant,
                "p_value": r.p_value,
                "omnibus_p": r.omnibus_p,
                "exposures": int(r.arms["n"].sum()),
                "mde": r.mde,
                "decision": r.decision,
            }
            for slot, r in results.items()
        ]
    )
