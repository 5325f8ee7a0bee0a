"""Off-policy estimators against known truth, the file entry point and its errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.models import ope, ope_log


def _synthetic_log(n: int, rng: np.random.Generator):
    """Context x in {0, 1}; 4 actions; true reward P(r | x, a) known; logging policy non-uniform."""
    x = rng.integers(0, 2, n)
    true = np.array([[0.05, 0.10, 0.02, 0.20], [0.25, 0.03, 0.10, 0.05]])
    logging = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    a = np.array([rng.choice(4, p=logging[xi]) for xi in x])
    r = (rng.random(n) < true[x, a]).astype(float)
    return x, a, logging[x, a], r, true[x]


def test_estimators_recover_true_value_and_cover():
    rng = np.random.default_rng(0)
    target = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0]])  # the best action per context
    covered = {e: 0 for e in ope.ESTIMATORS}
    reps = 40
    for _ in range(reps):
        x, a, p, r, truth = _synthetic_log(4000, rng)
        pi = target[x]
        q = truth + rng.normal(0, 0.03, truth.shape)  # a slightly wrong reward model
        table = ope.estimate(a, p, r, pi, q).set_index("estimator")
        value = ope.true_value(pi, truth)
        for e in ope.ESTIMATORS:
            covered[e] += int(table.loc[e, "ci_low"] <= value <= table.loc[e, "ci_high"])
        assert abs(table.loc["dr", "value"] - value) < 5 * table.loc["dr", "se"]
    for e in ("ips", "snips", "dr"):
        assert covered[e] / reps >= 0.8, (e, covered)


def test_dr_with_exact_model_beats_ips_variance():
    rng = np.random.default_rng(1)
    x, a, p, r, truth = _synthetic_log(5000, rng)
    pi = np.tile([0.25, 0.25, 0.25, 0.25], (len(x), 1))
    t = ope.estimate(a, p, r, pi, truth, n_bootstrap=50).set_index("estimator")
    assert t.loc["dr", "se"] < t.loc["ips", "se"]
    assert (t["boot_low"] <= t["value"]).all() and (t["value"] <= t["boot_high"]).all()


def _clustered_log(customers: int, per_customer: int, rng: np.random.Generator):
    """Every customer has a hidden taste for action 0 shared by all their decisions."""
    groups = np.repeat(np.arange(customers), per_customer)
    taste = rng.uniform(0.0, 0.8, customers)[groups]
    a = rng.integers(0, 2, len(groups))
    r = (rng.random(len(groups)) < np.where(a == 0, taste, 0.1)).astype(float)
    return groups, a, np.full(len(a), 0.5), r


def test_customer_clustered_intervals_keep_their_coverage():
    rng = np.random.default_rng(3)
    target = np.tile([1.0, 0.0], (4000, 1))  # always action 0: true value = mean taste = 0.4
    covered = {"iid": 0, "customer": 0}
    reps = 150
    for _ in range(reps):
        groups, a, p, r = _clustered_log(100, 40, rng)
        for name, g in (("iid", None), ("customer", groups)):
            row = ope.estimate(a, p, r, target, groups=g).set_index("estimator").loc["ips"]
            covered[name] += int(row["ci_low"] <= 0.4 <= row["ci_high"])
    assert covered["iid"] / reps < 0.8, covered  # independent-decision intervals are too narrow
    assert covered["customer"] / reps >= 0.88, covered


def test_singleton_groups_give_the_iid_interval_and_the_bootstrap_resamples_customers():
    rng = np.random.default_rng(4)
    x, a, p, r, truth = _synthetic_log(3000, rng)
    pi = np.tile([0.25, 0.25, 0.25, 0.25], (len(x), 1))
    iid = ope.estimate(a, p, r, pi, truth)
    single = ope.estimate(a, p, r, pi, truth, groups=[f"C{i}" for i in range(len(x))])
    pd.testing.assert_frame_equal(iid, single)
    groups = np.repeat(np.arange(300), 10)
    boot = ope.estimate(a, p, r, pi, truth, groups=groups, n_bootstrap=40).set_index("estimator")
    assert (boot["boot_low"] <= boot["value"]).all() and (boot["value"] <= boot["boot_high"]).all()
    with pytest.raises(ValueError, match="one entry per decision"):
        ope.estimate(a, p, r, pi, groups=groups[:10])
    with pytest.raises(ValueError, match="empty value at row 2"):
        ope.estimate(a[:3], p[:3], r[:3], pi[:3], groups=["C1", "C2", None])


def test_estimate_input_checks():
    with pytest.raises(ValueError, match="probabilities"):
        ope.estimate(np.array([0]), np.array([0.0]), np.array([1.0]), np.ones((1, 1)))
    with pytest.raises(ValueError, match="outside"):
        ope.estimate(np.array([3]), np.array([0.5]), np.array([1.0]), np.ones((1, 2)))


def _log_frame(rng, n=3000) -> pd.DataFrame:
    x, a, p, r, _ = _synthetic_log(n, rng)
    return pd.DataFrame(
        {
            "segment": np.where(x == 1, "young", "old"),
            "action": [f"O{i}" for i in a],
            "prob": p,
            "reward": r,
            "candidates": "O0,O1,O2,O3",
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_evaluate_policy_file(tmp_path, suffix):
    log = _log_frame(np.random.default_rng(2))
    path = tmp_path / f"log{suffix}"
    log.to_csv(path, index=False) if suffix == ".csv" else log.to_parquet(path)
    table = ope_log.evaluate_policy_file(path, {"uniform": "uniform", "always_O3": "constant:O3"})
    assert set(table["policy"]) == {"uniform", "always_O3"}
    assert set(table["estimator"]) >= set(ope.ESTIMATORS) | {"sndr", "dros"}
    truth_uniform = np.array([[0.05, 0.10, 0.02, 0.20], [0.25, 0.03, 0.10, 0.05]]).mean()
    dr = table.query("policy == 'uniform' and estimator == 'dr'").iloc[0]
    assert abs(dr["value"] - truth_uniform) < 4 * dr["se"]


def test_a_log_with_customer_ids_gets_customer_clustered_intervals(tmp_path):
    log = _log_frame(np.random.default_rng(5), 3000)
    path = tmp_path / "log.parquet"
    log.to_parquet(path)
    iid = ope_log.evaluate_policy_file(path, "uniform", reward_model=False).set_index("estimator")
    log.assign(customer_id=[f"C{i % 100}" for i in range(len(log))]).to_parquet(path)
    clustered = ope_log.evaluate_policy_file(path, "uniform", reward_model=False).set_index(
        "estimator"
    )
    pd.testing.assert_series_equal(iid["value"], clustered["value"])
    groups = np.array([f"C{i % 100}" for i in range(len(log))])
    x = log["action"].str[1:].astype(int).to_numpy()
    direct = ope.estimate(
        x, log["prob"], log["reward"], np.full((len(log), 4), 0.25), groups=groups
    )
    assert clustered.loc["ips", "se"] == pytest.approx(
        direct.set_index("estimator").loc["ips", "se"]
    )
    assert clustered.loc["ips", "se"] != pytest.approx(iid.loc["ips", "se"])


def test_candidates_from_slot_when_no_candidate_column(tmp_path):
    log = _log_frame(np.random.default_rng(3), 500).drop(columns="candidates")
    log["slot"] = "home_banner"
    assert ope.log_candidates(log)[0] == ["O0", "O1", "O2", "O3"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.drop(columns="prob"), "missing column.*prob"),
        (lambda d: d.assign(prob=1.5), "'prob' must be in"),
        (lambda d: d.assign(reward="x"), "'reward' has non-numeric"),
        (lambda d: d.assign(candidates="O9"), "not among its candidates"),
        (
            lambda d: d.assign(customer_id=["C1"] * 7 + [None] * 43),
            "'customer_id' has empty values in 43 row.*row 7",
        ),
    ],
)
def test_bad_logs_name_the_field(tmp_path, change, message):
    path = tmp_path / "log.csv"
    change(_log_frame(np.random.default_rng(4), 50)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=message):
        ope_log.evaluate_policy_file(path, "uniform", reward_model=False)


def test_unknown_policy_and_format(tmp_path):
    with pytest.raises(ValueError, match="unknown policy"):
        ope.parse_policy("greedy")
    (tmp_path / "log.json").write_text("{}")
    with pytest.raises(ValueError, match="parquet or .csv"):
        ope.read_log(tmp_path / "log.json")


@pytest.mark.slow
def test_direct_method_with_aligned_offer_features_values_a_selective_policy():
    """The reward depends on the customer's evidence about *the offer's* product; a selective
    (greedy) policy picks the offers where it is high. DM must get its value within the issue's
    5 %, and DR's interval must cover it."""
    rng = np.random.default_rng(5)
    n, products = 20_000, ["loan", "fx", "card", "fund", "savings", "pension"]
    offers = [f"OF{i}" for i in range(len(products))]
    need = rng.beta(0.7, 3.0, (n, len(products)))
    quality = rng.normal(0, 0.3, len(products))
    contexts = [
        {f"pv_{p}_7d": float(np.round(10 * need[i, j])) for j, p in enumerate(products)}
        | {"life_stage": ["student", "family"][i % 2]}
        for i in range(n)
    ]
    observed = np.array([[c[f"pv_{p}_7d"] for p in products] for c in contexts])
    truth = 1 / (
        1 + np.exp(-(-3.0 + quality + 0.3 * observed))
    )  # a function of what the model sees
    logging = np.full(len(products), 1 / len(products))
    action = rng.integers(0, len(products), n)
    reward = (rng.random(n) < truth[np.arange(n), action]).astype(float)
    candidates = [offers] * n
    target = np.eye(len(products))[truth.argmax(axis=1)]
    q = ope.fit_reward_model(
        ope.context_frame(contexts),
        candidates,
        action,
        reward,
        offer_features=ope.product_features(contexts, dict(zip(offers, products, strict=False))),
    )
    table = ope.estimate(action, logging[action], reward, target, q).set_index("estimator")
    value = ope.true_value(target, truth)
    assert abs(table.loc["dm", "value"] / value - 1) < 0.05, table
    assert table.loc["dr", "ci_low"] <= value <= table.loc["dr", "ci_high"], table
