"""The bandit's example text, exploration, learning, persistence and MLflow pyfunc."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.models.bandit import BanditConfig, ContextualBandit, predict_frame
from src.models.bandit_features import (
    CustomerViews,
    FatigueTracker,
    FeatureSpec,
    ResponseHistory,
    cost_of,
    request_context,
    vw_example,
)

SPEC = FeatureSpec(
    categorical=("life_stage", "region"),
    numeric=("pv_loan_7d", "n_card", "days_to_card_payment"),
    propensity=("propensity_loan",),
    rules=("rule_loan_inquiry",),
)
CONTEXT = {
    "life_stage": "first_job",
    "region": "seoul",
    "age": 27,
    "pv_loan_7d": 3,
    "n_card": 0,
    "days_to_card_payment": None,
    "propensity_loan": 0.25,
    "rule_loan_inquiry": True,
    "hour": 20,
    "weekday": 4,
    "channel": "app",
    "exposures_7d": 2,
    "seen": {"OF07": 1},
}
CANDIDATES = [
    {
        "offer_id": "OF01",
        "product": "loan",
        "slot": "home_banner",
        "creative": "Jeonse loan: rate cut 0.3%p",
    },
    {
        "offer_id": "OF07",
        "product": "loan",
        "slot": "home_banner",
        "creative": "Credit line: check your limit in 1 minute",
    },
]
EXPECTED = [
    (
        "shared |user life_stage=first_job region=seoul age_band=20 pv_loan_7d:1.386 days_to_card_payment_null "
        "|time hour_band=18 weekday=4 channel=app exposures_7d:1.099 |propensity propensity_loan:0.25 "
        "|rules rule_loan_inquiry"
    ),
    "|offer offer=OF01 product=loan slot=home_banner |creative jeonse loan rate cut p",
    (
        "0:-1:0.25 |offer offer=OF07 product=loan slot=home_banner |creative credit line check your limit in minute "
        "|fatigue seen:1"
    ),
]


def test_vw_example_fixed_text():
    assert vw_example(CONTEXT, CANDIDATES, SPEC, label=(1, 1.0, 0.25)) == EXPECTED


def test_vw_example_without_label_and_optional_inputs():
    lines = vw_example({"channel": "web"}, CANDIDATES[:1], SPEC)
    assert lines == [
        "shared |user pv_loan_7d_null n_card_null days_to_card_payment_null |time channel=web",
        "|offer offer=OF01 product=loan slot=home_banner |creative jeonse loan rate cut p",
    ]


def test_vw_example_with_response_history_fixed_text():
    ctx = {"channel": "app", "responses": {"loan": (3, 1), "card": (2, 0), "fx": (1, 1)}}
    lines = vw_example(ctx, CANDIDATES[:1], FeatureSpec(categorical=(), age_column=None))
    assert lines[0] == (
        "shared |user  |time channel=app |history card_ignored:1.099 fx_clicked:1 "
        "loan_clicked:1 loan_ignored:1.099 any_clicked:2 any_ignored:1.609"
    )
    assert "ho" in FeatureSpec().interactions  # history is crossed with the offer


def test_response_history_counts_and_copies():
    h = ResponseHistory()
    h.record("C1", "loan", True)
    h.record("C1", "loan", False)
    copy = h.copy()
    h.record("C1", "fx", False)
    assert h.get("C1") == {"loan": (2, 1), "fx": (1, 0)} and copy.get("C1") == {"loan": (2, 1)}
    assert h.get("C2") == {}
    ctx = request_context({}, pd.Timestamp("2026-01-05 20:00"), "web", responses=h.get("C1"))
    assert ctx["responses"] == {"loan": (2, 1), "fx": (1, 0)}
    exposures = pd.DataFrame(
        {
            "ts": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
            "customer_id": ["C1", "C1", "C2"],
            "offer_id": ["OF01", "OF07", "OF01"],
            "click": [True, False, True],
        }
    )
    offers = pd.DataFrame(CANDIDATES)
    assert ResponseHistory.from_exposures(exposures, offers).get("C1") == {"loan": (2, 1)}
    assert ResponseHistory.from_exposures(exposures, offers, before="2026-01-02").get("C1") == {
        "loan": (1, 1)
    }


def test_vw_syntax_characters_are_sanitized():
    lines = vw_example(
        {"region": "a b|c:d"},
        [{"offer_id": "X 1"}],
        FeatureSpec(categorical=("region",), age_column=None),
    )
    assert "region=a_b_c_d" in lines[0] and "offer=X_1" in lines[1]
    assert lines[0].count("|") == 2  # the shared marker's namespaces only


def test_cost_is_negative_reward_and_label_checks():
    assert cost_of(1.0) == -1.0 and cost_of(0.0) == 0.0
    with pytest.raises(ValueError, match="probability"):
        vw_example(CONTEXT, CANDIDATES, SPEC, label=(0, 1.0, 0.0))
    with pytest.raises(ValueError, match="outside"):
        vw_example(CONTEXT, CANDIDATES, SPEC, label=(2, 1.0, 0.5))
    with pytest.raises(ValueError, match="candidate"):
        vw_example(CONTEXT, [], SPEC)


def _toy_round(rng: np.random.Generator) -> tuple[dict, list[dict], np.ndarray]:
    """Three offers; which one is best depends on the customer's life stage."""
    stage = ["student", "family", "retiree"][rng.integers(3)]
    ctr = {"student": [0.5, 0.1, 0.1], "family": [0.1, 0.5, 0.1], "retiree": [0.1, 0.1, 0.5]}[stage]
    cands = [
        {"offer_id": f"O{i}", "product": p, "slot": "home_banner"}
        for i, p in enumerate(["card", "fund", "pension"])
    ]
    return {"life_stage": stage, "hour": 10, "channel": "app"}, cands, np.array(ctr)


@pytest.mark.parametrize("exploration", ["epsilon", "softmax", "squarecb"])
def test_bandit_learns_contextual_preference(exploration):
    rng = np.random.default_rng(0)
    spec = FeatureSpec(categorical=("life_stage",), age_column=None)
    bandit = ContextualBandit(
        BanditConfig(exploration=exploration, epsilon=0.1, softmax_lambda=20), spec
    )
    for _ in range(1500):
        ctx, cands, ctr = _toy_round(rng)
        d = bandit.choose(ctx, cands, rng)
        assert d.prob == pytest.approx(d.pmf[d.index]) and d.pmf.sum() == pytest.approx(1.0)
        bandit.learn(ctx, cands, d.index, d.prob, float(rng.random() < ctr[d.index]))
    hits = 0
    for _ in range(300):
        ctx, cands, ctr = _toy_round(rng)
        hits += int(np.argmax(bandit.pmf(ctx, cands)) == np.argmax(ctr))
    assert hits / 300 > 0.9


def test_epsilon_keeps_exploring_with_stated_probability():
    bandit = ContextualBandit(
        BanditConfig(exploration="epsilon", epsilon=0.3), FeatureSpec(age_column=None)
    )
    p = bandit.pmf({}, CANDIDATES)
    assert p.min() >= 0.3 / len(CANDIDATES) - 1e-6


def test_save_load_and_copy_give_same_pmf(tmp_path):
    rng = np.random.default_rng(1)
    spec = FeatureSpec(categorical=("life_stage",), age_column=None)
    bandit = ContextualBandit(BanditConfig(), spec)
    for _ in range(300):
        ctx, cands, ctr = _toy_round(rng)
        d = bandit.choose(ctx, cands, rng)
        bandit.learn(ctx, cands, d.index, d.prob, float(rng.random() < ctr[d.index]))
    ctx, cands, _ = _toy_round(rng)
    loaded = ContextualBandit(bandit.config, spec, model_file=bandit.save(tmp_path / "m.vw"))
    np.testing.assert_allclose(loaded.pmf(ctx, cands), bandit.pmf(ctx, cands))
    np.testing.assert_allclose(bandit.copy().pmf(ctx, cands), bandit.pmf(ctx, cands))


def test_customer_views_are_point_in_time():
    views = CustomerViews()
    views.add(
        "2026-01-08", pd.DataFrame({"customer_id": ["C1"], "pv_loan_7d": [5]}), ["pv_loan_7d"]
    )
    views.add(
        "2026-01-01", pd.DataFrame({"customer_id": ["C1"], "pv_loan_7d": [1]}), ["pv_loan_7d"]
    )
    assert views.lookup("C1", pd.Timestamp("2026-01-07 23:00"))["pv_loan_7d"] == 1
    assert views.lookup("C1", pd.Timestamp("2026-01-08 08:00"))["pv_loan_7d"] == 5
    assert views.lookup("unknown", pd.Timestamp("2026-01-08")) == {}
    with pytest.raises(ValueError, match="no customer view"):
        views.lookup("C1", pd.Timestamp("2025-12-31"))


def test_fatigue_tracker_window_is_strictly_before():
    t = FatigueTracker(window_days=7)
    t.record("C1", pd.Timestamp("2026-01-01 10:00"), "A")
    t.record("C1", pd.Timestamp("2026-01-05 10:00"), "A")
    t.record("C1", pd.Timestamp("2026-01-05 12:00"), "B")
    assert t.counts("C1", pd.Timestamp("2026-01-05 12:00")) == (2, {"A": 2})
    assert t.counts("C1", pd.Timestamp("2026-01-08 23:00")) == (3, {"A": 2, "B": 1})
    assert t.counts("C1", pd.Timestamp("2026-01-09 00:00")) == (2, {"A": 1, "B": 1})
    assert t.counts("C1", pd.Timestamp("2026-01-12 09:00")) == (2, {"A": 1, "B": 1})


@pytest.mark.slow
def test_pyfunc_is_logged_with_a_signature_and_an_input_example(tmp_path):
    import mlflow

    from src.models.bandit import log_bandit, pyfunc_input_example

    offers = pd.DataFrame(CANDIDATES)
    spec = FeatureSpec(categorical=("life_stage",), numeric=("pv_loan_30d",), age_column=None)
    bandit = ContextualBandit(BanditConfig(epsilon=0.2), spec)
    log = pd.DataFrame(
        {
            "slot": ["home_banner"] * 2,
            "context": [
                {"life_stage": "student", "pv_loan_30d": None, "hour": 9, "seen": {"OF01": 2}},
                {"life_stage": "family", "pv_loan_30d": None, "hour": 21, "seen": {}},
            ],
        }
    )
    example = pyfunc_input_example(log, offers)
    assert example["candidates"].tolist() == ["OF01,OF07"] * 2
    assert (
        example["pv_loan_30d"].dtype == float and example["hour"].dtype == float
    )  # may be missing in a request
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_uri = log_bandit(
        bandit,
        offers,
        tracking_uri=uri,
        artifact_location=str(tmp_path / "art"),
        input_example=example,
    )
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(model_uri)
    assert {"life_stage", "pv_loan_30d", "seen", "candidates", "decision_id"} <= set(
        info.signature.inputs.input_names()
    )
    assert {"offer_id", "prob", "pmf"} == set(info.signature.outputs.input_names())
    out = mlflow.pyfunc.load_model(model_uri).predict(example)
    pd.testing.assert_frame_equal(out, predict_frame(bandit, offers, example))


def test_pyfunc_round_trip(tmp_path):
    import mlflow

    from src.models.bandit import log_bandit

    offers = pd.DataFrame(CANDIDATES)
    spec = FeatureSpec(categorical=("life_stage",), age_column=None)
    bandit = ContextualBandit(BanditConfig(epsilon=0.2), spec)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_uri = log_bandit(
        bandit, offers, tracking_uri=uri, artifact_location=str(tmp_path / "art")
    )
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    rows = pd.DataFrame(
        {
            "decision_id": ["d1", "d2"],
            "life_stage": ["student", "family"],
            "candidates": ["OF01,OF07", "OF07"],
        }
    )
    out = model.predict(rows)
    assert list(out.columns) == ["offer_id", "prob", "pmf"]
    assert out["offer_id"][1] == "OF07" and out["prob"][1] == pytest.approx(1.0)
    assert 0 < out["prob"][0] <= 1
    pd.testing.assert_frame_equal(
        out, predict_frame(bandit, offers, rows)
    )  # same seed from decision_id
    with pytest.raises(ValueError, match="unknown candidate"):
        predict_frame(bandit, offers, pd.DataFrame({"candidates": ["NOPE"]}))
