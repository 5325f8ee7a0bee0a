"""The synthetic bank: contract, determinism, identity, consistency with its oracle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.data.schemas import KRW_REFERENCE_RATES, PRODUCTS, TABLES
from src.data.synthetic import BankEnvironment, Oracle, SimConfig, simulate

CONFIG = SimConfig(customers=300, days=14, seed=5)
RAW_TABLES = ("customers", "holdings", "clickstream", "transactions", "offers", "exposures")


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("synthetic")
    counts = simulate(CONFIG, root / "raw", root / "truth", progress=False)
    return root / "raw", root / "truth", counts


@pytest.fixture(scope="module")
def tables(bank) -> dict[str, pd.DataFrame]:
    raw, _, _ = bank
    return {name: pd.read_parquet(raw / f"{name}.parquet") for name in RAW_TABLES}


@pytest.fixture(scope="module")
def oracle(bank) -> Oracle:
    raw, truth, _ = bank
    return Oracle.load(truth, raw)


def test_every_table_validates_and_counts_match(tables, bank):
    _, _, counts = bank
    for name in RAW_TABLES:
        TABLES[name].validate(tables[name], lazy=True)
        assert counts[name] == len(tables[name])
    assert pd.api.types.is_datetime64_any_dtype(tables["clickstream"]["ts"])
    assert tables["clickstream"]["ts"].dt.tz is None


def test_volumes_are_in_the_designed_range(tables):
    customer_days = CONFIG.customers * CONFIG.days
    assert 2.0 <= len(tables["clickstream"]) / customer_days <= 6.0
    assert 0.4 <= len(tables["transactions"]) / customer_days <= 1.6
    codes = set(tables["transactions"]["code"])
    assert {"TRANSFER", "CARD_PAYMENT", "FX_REMIT", "LOAN_LIMIT_INQUIRY", "PRODUCT_SIGNUP"} <= codes
    fx = tables["transactions"].query("code == 'FX_REMIT'")
    assert set(fx["currency"]) <= {"USD", "JPY", "EUR", "CNY", "VND"}
    krw = fx["amount"] * fx["currency"].map(KRW_REFERENCE_RATES)
    assert (
        5e5 < krw.median() < 5e6
    )  # stored in the remittance currency, KRW-equivalent median ~1.5M


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_config_gives_identical_bytes(tmp_path):
    small = SimConfig(customers=120, days=5, seed=9)
    for run in ("a", "b"):
        simulate(small, tmp_path / run / "raw", tmp_path / run / "truth", progress=False)
    assert _digest(tmp_path / "a" / "raw") == _digest(tmp_path / "b" / "raw")
    assert _digest(tmp_path / "a" / "truth") == _digest(tmp_path / "b" / "truth")
    simulate(
        small.model_copy(update={"seed": 10}),
        tmp_path / "c" / "raw",
        tmp_path / "c" / "truth",
        progress=False,
    )
    assert (
        _digest(tmp_path / "a" / "raw")["clickstream.parquet"]
        != _digest(tmp_path / "c" / "raw")["clickstream.parquet"]
    )


def test_event_ids_unique_across_clicks_and_transactions(tables):
    ids = pd.concat([tables["clickstream"]["event_id"], tables["transactions"]["event_id"]])
    assert ids.is_unique


def test_sessions_are_anonymous_until_login(tables):
    clicks = tables["clickstream"].sort_values(["session_id", "ts", "event_id"])
    is_login = clicks["action"].eq("login")
    seen_login = is_login.groupby(clicks["session_id"]).cumsum() > 0
    assert clicks.loc[~seen_login, "customer_id"].isna().all()
    assert clicks.loc[seen_login, "customer_id"].notna().all()
    # One customer per session, and some sessions never log in.
    per_session = clicks.groupby("session_id")["customer_id"].nunique()
    assert per_session.max() == 1
    assert (per_session == 0).any()
    assert (~seen_login & clicks["page"].ne("login")).any()


def test_shared_devices_serve_two_customers_told_apart_only_by_login(tables):
    logged = tables["clickstream"].dropna(subset=["customer_id"])
    customers_per_device = logged.groupby("device_id")["customer_id"].nunique()
    shared = customers_per_device[customers_per_device > 1]
    assert 0 < len(shared) <= 0.1 * CONFIG.customers
    assert tables["clickstream"].query("channel == 'app'")["cookie_id"].isna().all()
    assert tables["clickstream"].query("channel == 'web'")["cookie_id"].notna().all()


def test_session_transactions_fall_inside_a_session_of_that_customer(tables):
    clicks = tables["clickstream"]
    end = clicks["ts"] + pd.to_timedelta(clicks["dwell_seconds"], unit="s")
    sessions = (
        clicks.assign(end=end)
        .groupby("session_id")
        .agg(start=("ts", "min"), end=("end", "max"), customer_id=("customer_id", "first"))
    )
    txns = tables["transactions"].dropna(subset=["session_id"])
    assert len(txns) > 0
    joined = txns.join(
        sessions.rename(columns={"customer_id": "customer_id_session"}), on="session_id"
    )
    assert joined["start"].notna().all()
    assert (joined["customer_id"] == joined["customer_id_session"]).all()
    assert ((joined["ts"] >= joined["start"]) & (joined["ts"] <= joined["end"])).all()
    assert txns["channel"].isin(["app", "web"]).all()


def test_signups_add_holdings_and_match_truth(tables, bank):
    _, truth, _ = bank
    signups = tables["transactions"].query("code == 'PRODUCT_SIGNUP'")
    assert signups["product"].notna().all()
    truth_signups = pd.read_parquet(truth / "signups.parquet")
    assert len(truth_signups) == len(signups)
    start = pd.Timestamp(CONFIG.start_date)
    assert (tables["holdings"]["opened_at"] >= start).sum() == len(signups)


def test_signups_agree_with_the_oracle(tables, oracle):
    """Observed (customer, product) signups in the window vs the oracle's probabilities."""
    start = pd.Timestamp(CONFIG.start_date)
    customers = tables["customers"]["customer_id"]
    signups = tables["transactions"].query("code == 'PRODUCT_SIGNUP'")
    observed = signups.groupby(["customer_id", "product"]).size().gt(0)
    expected, variance, hits = 0.0, 0.0, 0
    aucs = []
    for product in PRODUCTS:
        p = oracle.true_signup_prob(customers, product, start, window_days=CONFIG.days)
        y = customers.map(lambda c, product=product: observed.get((c, product), False)).to_numpy(
            bool
        )
        expected += p.sum()
        variance += (p * (1 - p)).sum()
        hits += y.sum()
        if 0 < y.sum() < len(y):
            ranks = pd.Series(p).rank().to_numpy()
            aucs.append((ranks[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))
    z = (hits - expected) / np.sqrt(variance)
    assert abs(z) < 4, (hits, expected)
    assert np.mean(aucs) > 0.65  # the needs really drive signups


def test_oracle_reproduces_logged_probabilities(tables, bank, oracle):
    _, truth, _ = bank
    exposures = tables["exposures"]
    exposure_truth = pd.read_parquet(truth / "exposure_truth.parquet")
    assert (exposures["decision_id"].to_numpy() == exposure_truth["decision_id"].to_numpy()).all()
    p_click = oracle.true_click_prob(
        exposures["customer_id"], exposures["offer_id"], exposures["ts"], exposures["channel"]
    )
    np.testing.assert_allclose(p_click, exposure_truth["p_click"], rtol=1e-6)
    assert exposure_truth["n_recent_all"].max() > 0  # fatigue is in play
    # Logged clicks follow the true probabilities.
    z = (exposures["click"].sum() - p_click.sum()) / np.sqrt((p_click * (1 - p_click)).sum())
    assert abs(z) < 4
    offers = tables["offers"]
    assert (exposures.groupby("slot")["logged_prob"].nunique() > 1).all()
    for slot, group in offers.groupby("slot"):
        firsts = exposures.drop_duplicates("offer_id")
        probs = firsts.loc[firsts["slot"] == slot, "logged_prob"]
        assert probs.sum() <= 1.0 + 1e-9
        assert len(group) >= 6


def test_best_offer_differs_across_customers(tables, oracle):
    ts = pd.Timestamp(CONFIG.start_date) + pd.Timedelta(days=3, hours=20)
    best, value = oracle.best_offer(tables["customers"]["customer_id"], "home_banner", ts)
    assert pd.Series(best).value_counts(normalize=True).iloc[0] < 0.8
    assert (value > 0).all()


def _run_env(oracle: Oracle, seed: int, choose) -> tuple[list, list, list]:
    env = BankEnvironment(oracle, seed=seed, days=4)
    requests, rewards, expected = [], [], []
    for request in env.requests():
        offer_id = choose(env, request)
        expected.append(env.expected_reward(request, offer_id).click)
        rewards.append(env.step(request, offer_id, 1.0))
        requests.append(request)
    return requests, rewards, expected


def test_environment_is_reproducible_and_unbiased(oracle):
    offers = oracle.offers

    def first_offer(env, request):
        return offers.loc[offers["slot"] == request.slot, "offer_id"].iloc[0]

    def best(env, request):
        return env.best_offer(request, metric="click")[0]

    req_a, rew_a, exp_a = _run_env(oracle, 21, first_offer)
    req_b, rew_b, _ = _run_env(oracle, 21, first_offer)
    req_c, rew_c, exp_c = _run_env(oracle, 21, best)
    assert req_a == req_b == req_c and len(req_a) > 200
    assert rew_a == rew_b
    assert [r.ts for r in req_a] == sorted(r.ts for r in req_a)
    clicks = np.array([r.click for r in rew_a + rew_c])
    p = np.array(exp_a + exp_c)
    assert abs(clicks.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    assert np.mean(exp_c) > np.mean(exp_a)  # the oracle choice beats a fixed offer
    req_d, _, _ = _run_env(oracle, 22, first_offer)
    assert req_d != req_a


def test_environment_rejects_bad_steps(oracle):
    env = BankEnvironment(oracle, seed=1, days=1)
    request = next(iter(env.requests()))
    wrong_slot = oracle.offers.query("slot != @request.slot")["offer_id"].iloc[0]
    with pytest.raises(ValueError):
        env.step(request, wrong_slot, 0.5)
    right = oracle.offers.query("slot == @request.slot")["offer_id"].iloc[0]
    env.step(request, right, 0.5)
    with pytest.raises(KeyError):
        env.step(request, right, 0.5)


def test_needs_stay_out_of_the_raw_tables(tables, bank):
    _, truth, _ = bank
    hidden = (
        "need",
        "quality",
        "affinity",
        "p_click",
        "p_convert",
        "signup_prob",
        "preferred_hour",
    )
    for name, frame in tables.items():
        for column in frame.columns:
            assert not any(word in column for word in hidden), (name, column)
    needs = np.load(truth / "needs.npy")
    assert needs.shape == (CONFIG.days, CONFIG.customers, len(PRODUCTS))
    assert needs.min() >= 0 and needs.max() <= 1
    assert np.abs(np.diff(needs, axis=0)).mean() > 0  # needs drift day by day
