"""The A/B baseline: its test, multiplicity handling and sample-size arithmetic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from src.models import ab_test


def _counts(rates, n, rng):
    return pd.DataFrame(
        {
            "arm": [f"A{i}" for i in range(len(rates))],
            "n": n,
            "successes": [rng.binomial(n, r) for r in rates],
        }
    )


def test_clear_winner_is_significant():
    result = ab_test.decide(
        pd.DataFrame({"arm": ["a", "b", "c"], "n": [5000] * 3, "successes": [250, 250, 400]})
    )
    assert result.winner == "c" and result.significant and result.p_value < 1e-6
    assert "wins" in result.decision


def test_two_arms_match_the_chi_square_test():
    s1, n1, s2, n2 = 120, 2000, 90, 2000
    two_sided = ab_test.two_proportion_z(s1, n1, s2, n2, alternative="two-sided")
    chi = stats.chi2_contingency(np.array([[s1, n1 - s1], [s2, n2 - s2]]), correction=False)[1]
    assert two_sided == pytest.approx(chi, rel=1e-9)


def test_false_winner_rate_under_the_null_is_at_most_alpha():
    rng = np.random.default_rng(0)
    wins = sum(ab_test.decide(_counts([0.05] * 7, 1500, rng)).significant for _ in range(400))
    assert wins / 400 <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 400)


def test_inconclusive_keeps_best_observed_or_control():
    counts = pd.DataFrame({"arm": ["a", "b"], "n": [100, 100], "successes": [5, 6]})
    assert ab_test.decide(counts).winner == "b"
    result = ab_test.decide(counts, control="a", on_inconclusive="control")
    assert result.winner == "a" and not result.significant and "inconclusive" in result.decision


def test_holm_matches_hand_computation():
    np.testing.assert_allclose(ab_test.holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


def test_sample_size_and_mde_agree():
    n = ab_test.required_sample_size(0.05, 0.01, comparisons=6)
    mde = ab_test.minimum_detectable_effect(0.055, n, comparisons=6)
    assert mde == pytest.approx(0.01, rel=0.05)
    assert ab_test.required_sample_size(0.05, 0.01, comparisons=6) > ab_test.required_sample_size(
        0.05, 0.01
    )


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="successes"):
        ab_test.decide(pd.DataFrame({"arm": ["a"], "n": [1], "successes": [2]}))
    with pytest.raises(ValueError, match="columns"):
        ab_test.decide(pd.DataFrame({"arm": ["a"], "n": [1]}))
