"""The simulated comparison and the off-policy check on the small bank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.evaluation.policies import (
    ComparisonConfig,
    gap_report,
    ope_check,
    run_comparison,
    summarize,
)
from src.models.bandit import BanditConfig


@pytest.fixture(scope="module")
def comparison(small_bank):
    config = ComparisonConfig(
        train_days=14,
        sim_days=6,
        ab_test_days=3,
        seed=3,
        history=True,
        requests_per_customer_day=1.0,
        bandit=BanditConfig(epsilon=0.1),
    )
    return run_comparison(small_bank.catalog, small_bank.truth_dir, config)


def test_every_policy_sees_the_same_traffic(comparison):
    steps = comparison.steps
    ids = {p: g["request_id"].tolist() for p, g in steps.groupby("policy")}
    assert set(ids) == {"random", "ab_then_fix", "bandit", "oracle"}
    first = next(iter(ids.values()))
    assert len(first) > 100 and all(v == first for v in ids.values())


def test_oracle_is_the_ceiling_and_probabilities_are_valid(comparison):
    steps, summary = comparison.steps, comparison.summary
    assert steps.query("policy == 'oracle'")["regret"].abs().max() < 1e-9
    assert (steps["regret"] >= -1e-9).all()
    assert summary["expected_reward"].idxmax() == "oracle"
    assert ((steps["prob"] > 0) & (steps["prob"] <= 1)).all()
    assert summarize(steps).loc["oracle", "pct_of_oracle"] == pytest.approx(100)


def test_ab_policy_tests_then_fixes_one_offer_per_slot(comparison):
    steps = comparison.steps.query("policy == 'ab_then_fix'")
    after = steps[steps["day"] >= 3]
    assert (after.groupby("slot")["offer_id"].nunique() == 1).all()
    assert (after["prob"] == 1.0).all()
    ab = comparison.ab.set_index("slot")
    for slot, offer in after.groupby("slot")["offer_id"].first().items():
        assert ab.loc[slot, "winner"] == offer
    assert ab["p_value"].between(0, 1).all()


def test_offline_log_keeps_logged_probabilities_and_point_in_time_views(small_bank, comparison):
    log = comparison.offline_log
    exposures = pd.read_parquet(small_bank.raw_dir / "exposures.parquet").set_index("decision_id")
    np.testing.assert_allclose(log["prob"], exposures.loc[log["decision_id"], "logged_prob"])
    assert log["ts"].max() < pd.Timestamp(small_bank.sim.start_date) + pd.Timedelta(days=14)
    # the reward is the click, and the bandit learned from every logged decision
    assert (log["reward"] == log["click"].astype(float)).all()
    assert comparison.offline_bandit.n_learned == len(log)


def test_fatigue_in_the_log_matches_a_brute_force_count(small_bank, comparison):
    exposures = pd.read_parquet(small_bank.raw_dir / "exposures.parquet")
    log = comparison.offline_log.sample(30, random_state=0)
    for r in log.itertuples():
        mine = exposures[
            (exposures.customer_id == r.customer_id)
            & (exposures.ts < r.ts)
            & (exposures.ts >= r.ts.normalize() - pd.Timedelta(days=7))
        ]
        assert r.context["exposures_7d"] == len(mine)
        assert r.context["seen"] == mine["offer_id"].value_counts().to_dict()


def test_response_history_in_the_log_is_point_in_time(small_bank, comparison):
    exposures = pd.read_parquet(small_bank.raw_dir / "exposures.parquet")
    product = pd.read_parquet(small_bank.raw_dir / "offers.parquet").set_index("offer_id")[
        "product"
    ]
    exposures["product"] = exposures["offer_id"].map(product)
    log = comparison.offline_log.sample(30, random_state=1)
    for r in log.itertuples():
        before = exposures[(exposures.customer_id == r.customer_id) & (exposures.ts < r.ts)]
        expected = {p: (len(g), int(g["click"].sum())) for p, g in before.groupby("product")}
        assert r.context.get("responses", {}) == expected


def test_environment_reuses_one_computation_per_request(small_bank):
    from src.data.synthetic import BankEnvironment, Oracle

    oracle = Oracle(small_bank.truth_dir, small_bank.raw_dir)
    env = BankEnvironment(oracle, seed=4, days=3)
    for i, request in enumerate(env.requests()):
        ids, values = env.expected_all(request, "click")
        best_id, best = env.best_offer(request, metric="click")
        assert best == values.max() and best_id == ids[values.argmax()]
        for offer_id, v in zip(ids, values, strict=False):
            assert env.expected_reward(request, str(offer_id)).click == pytest.approx(v)
        # the cache is what a fresh computation (fatigue from the steps so far) gives
        np.testing.assert_allclose(
            values, env._probs(request, env._slot_offer_numbers[request.slot])[0]
        )
        env.step(request, str(ids[i % 2]), 0.5)
        with pytest.raises(KeyError):
            env.expected_all(request, "click")


def test_gap_report_splits_exploration_slots_and_weeks(comparison):
    gaps = gap_report(comparison.steps)
    overall = gaps["overall"]
    assert overall.loc["oracle", "pct_of_oracle"] == pytest.approx(100)
    assert overall.loc["random", "exploration_cost_pts"] == pytest.approx(0)
    assert set(gaps["by_slot"].columns) == set(overall.index)
    np.testing.assert_allclose(gaps["by_week"]["oracle"], 100)


def test_off_policy_estimates_bracket_the_truth(small_bank, comparison):
    start = pd.Timestamp(small_bank.sim.start_date) + pd.Timedelta(days=14)
    table = ope_check(
        small_bank.catalog,
        small_bank.truth_dir,
        comparison.offline_bandit,
        comparison.views,
        start,
        start + pd.Timedelta(days=10),
        extra_policies={"ab": comparison.ab["winner"].tolist()},
        history=True,
    )
    assert set(table["policy"]) == {"bandit", "uniform", "ab"}
    for row in table.query("estimator in ['ips', 'dr']").itertuples():
        assert abs(row.value - row.true_value) < 4 * row.se, row
