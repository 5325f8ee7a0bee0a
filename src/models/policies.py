"""Policies for an offer slot and the simulated comparison: random, A/B-then-fix, bandit, oracle.

Each policy runs in its own :class:`~src.data.synthetic.BankEnvironment` with the same seed, so
all of them see the same requests and the same luck; only their choices (and the fatigue those
choices cause) differ. Regret per decision = the oracle's best expected reward for that request
minus the expected reward of the choice made, both under the policy's own fatigue state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from src.models import ab_test
from src.models.bandit import (
    BanditConfig,
    ContextualBandit,
    logged_decisions,
    policy_probs,
    train_offline,
)
from src.models.bandit_features import (
    CustomerViews,
    FatigueTracker,
    FeatureSpec,
    build_views,
    candidate_index,
    default_feature_spec,
    request_context,
    slot_candidates,
    view_schedule,
)

Candidates = Sequence[Mapping[str, Any]]


class Policy(Protocol):
    """Chooses one candidate (with the probability it was chosen with) and may learn."""

    name: str

    def choose(self, request, context: Mapping[str, Any], candidates: Candidates) -> tuple[int, float]: ...

    def update(self, request, context: Mapping[str, Any], candidates: Candidates, chosen: int, prob: float,
               reward: float) -> None: ...


@dataclass
class UniformPolicy:
    """Every candidate equally likely: the floor."""

    seed: int = 0
    name: str = "random"

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def choose(self, request, context, candidates) -> tuple[int, float]:
        return int(self.rng.integers(len(candidates))), 1.0 / len(candidates)

    def update(self, *args, **kwargs) -> None:
        return None


@dataclass
class OraclePolicy:
    """Knows the true probabilities: the best expected reward for every request (the ceiling)."""

    env: Any
    metric: str = "click"
    name: str = "oracle"

    def choose(self, request, context, candidates) -> tuple[int, float]:
        best, _ = self.env.best_offer(request, metric=self.metric)
        return candidate_index(candidates)[best], 1.0

    def update(self, *args, **kwargs) -> None:
        return None


@dataclass
class ABTestThenFixPolicy:
    """The seed practice: equal split per slot until ``test_end``, a test, then the winner for all."""

    test_end: pd.Timestamp
    alpha: float = 0.05
    seed: int = 0
    name: str = "ab_then_fix"
    counts: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    results: dict[str, ab_test.ABResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.test_end = pd.Timestamp(self.test_end)

    def _winner(self, slot: str, candidates: Candidates) -> str:
        if slot not in self.results:
            seen = self.counts.get(slot, {})
            frame = pd.DataFrame([{"arm": str(c["offer_id"]), "n": seen.get(str(c["offer_id"]), [0, 0])[0],
                                   "successes": seen.get(str(c["offer_id"]), [0, 0])[1]} for c in candidates])
            self.results[slot] = ab_test.decide(frame, alpha=self.alpha)
        return self.results[slot].winner

    def choose(self, request, context, candidates) -> tuple[int, float]:
        if request.ts < self.test_end:
            return int(self.rng.integers(len(candidates))), 1.0 / len(candidates)
        return candidate_index(candidates)[self._winner(request.slot, candidates)], 1.0

    def update(self, request, context, candidates, chosen, prob, reward) -> None:
        if request.ts < self.test_end:
            arm = self.counts.setdefault(request.slot, {}).setdefault(str(candidates[chosen]["offer_id"]), [0, 0])
            arm[0] += 1
            arm[1] += int(reward > 0)


@dataclass
class BanditPolicy:
    """The VW bandit: samples from its PMF and (optionally) learns from every reward online."""

    bandit: ContextualBandit
    seed: int = 0
    learn_online: bool = True
    name: str = "bandit"

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def choose(self, request, context, candidates) -> tuple[int, float]:
        d = self.bandit.choose(context, candidates, self.rng)
        return d.index, d.prob

    def update(self, request, context, candidates, chosen, prob, reward) -> None:
        if self.learn_online:
            self.bandit.learn(context, candidates, chosen, prob, reward)


def simulate_policy(env, policy: Policy, views: CustomerViews, offers: pd.DataFrame, config: BanditConfig,
                    progress: bool = False) -> pd.DataFrame:
    """Run ``policy`` over the environment's request stream; one row per decision.

    Columns: request_id, ts, day, slot, offer_id, prob, click, convert, value, reward (realized,
    under ``config.reward``), expected (the choice's expected reward), best (the oracle's),
    regret, and the choice's expected click / convert / value for the secondary metrics.
    """
    from tqdm.auto import tqdm

    metric = config.reward
    scale = config.value_scale if metric == "value" else 1.0
    by_slot = slot_candidates(offers)
    tracker = FatigueTracker()
    rows = []
    for request in tqdm(env.requests(), desc=policy.name, disable=not progress, mininterval=2):
        candidates = by_slot[request.slot]
        context = request_context(views.lookup(request.customer_id, request.ts), request.ts, request.channel,
                                  tracker.counts(request.customer_id, request.ts))
        chosen, prob = policy.choose(request, context, candidates)
        offer_id = str(candidates[chosen]["offer_id"])
        _, best = env.best_offer(request, metric=metric)
        expected = env.expected_reward(request, offer_id)
        outcome = env.step(request, offer_id, prob)
        tracker.record(request.customer_id, request.ts, offer_id)
        reward = config.reward_of(outcome.click, outcome.convert, outcome.value)
        policy.update(request, context, candidates, chosen, prob, reward)
        exp = getattr(expected, metric) / scale
        rows.append({"request_id": request.request_id, "ts": request.ts, "slot": request.slot,
                     "customer_id": request.customer_id, "channel": request.channel, "offer_id": offer_id,
                     "prob": prob, "click": outcome.click, "convert": outcome.convert, "value": outcome.value,
                     "reward": reward, "expected": exp, "best": best / scale, "regret": best / scale - exp,
                     "expected_click": expected.click, "expected_convert": expected.convert,
                     "expected_value": expected.value})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["day"] = (frame["ts"].dt.normalize() - frame["ts"].dt.normalize().min()).dt.days
    frame.insert(0, "policy", policy.name)
    return frame


# --- the comparison -------------------------------------------------------------------------


class ComparisonConfig(BaseModel):
    """The bandit-vs-A/B experiment on a simulated bank.

    Days [0, train_days) are the historical log the bandit is trained on offline (the bank's
    logging policy); the policies then run on days [train_days, train_days + sim_days). The A/B
    test splits traffic over the first ``ab_test_days`` of that period, then fixes the winners.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    train_days: int = Field(14, ge=1)
    sim_days: int | None = Field(None, ge=1, description="Default: the rest of the simulated period.")
    ab_test_days: int = Field(7, ge=1)
    alpha: float = 0.05
    view_every_days: int = Field(7, ge=1, description="Refresh the customer view every N days.")
    requests_per_customer_day: float = 0.3
    seed: int = 0
    bandit: BanditConfig = BanditConfig()
    offline_passes: int = Field(1, ge=0)
    policies: tuple[str, ...] = ("random", "ab_then_fix", "bandit", "oracle")


@dataclass
class ComparisonResult:
    steps: pd.DataFrame  # one row per policy x decision
    summary: pd.DataFrame
    ab: pd.DataFrame  # the A/B decision per slot
    bandit: ContextualBandit | None  # after the run (offline + online learning)
    offline_bandit: ContextualBandit | None  # after offline training only (for OPE)
    offline_log: pd.DataFrame  # the logged decisions it was trained on
    views: CustomerViews
    config: ComparisonConfig


def summarize(steps: pd.DataFrame, baseline: str = "ab_then_fix", ceiling: str = "oracle") -> pd.DataFrame:
    """Final figures per policy; ratios on expected reward (the luck is the same for all anyway)."""
    g = steps.groupby("policy", sort=False)
    out = pd.DataFrame({
        "decisions": g.size(),
        "reward": g["reward"].sum(),
        "expected_reward": g["expected"].sum(),
        "regret": g["regret"].sum(),
        "ctr": g["click"].mean(),
        "expected_value_krw": g["expected_value"].sum(),
    })
    if ceiling in out.index:
        out["pct_of_oracle"] = 100 * out["expected_reward"] / out.loc[ceiling, "expected_reward"]
    if baseline in out.index:
        out["lift_vs_ab_pct"] = 100 * (out["expected_reward"] / out.loc[baseline, "expected_reward"] - 1)
    return out


def run_comparison(raw_dir: Path, truth_dir: Path, config: ComparisonConfig | None = None,
                   spec: FeatureSpec | None = None, progress: bool = False) -> ComparisonResult:
    """Simulate the policies of ``config`` on the same traffic; return steps, summary, A/B decisions."""
    from src.data.synthetic import BankEnvironment, Oracle

    config = config or ComparisonConfig()
    spec = spec or default_feature_spec()
    oracle = Oracle(truth_dir, raw_dir)
    offers = oracle.offers
    sim_days = config.sim_days or oracle.days - config.train_days
    if config.train_days + sim_days > oracle.days:
        raise ValueError(f"train_days + sim_days = {config.train_days + sim_days} exceeds the "
                         f"{oracle.days} simulated days")
    start = oracle.start.normalize()
    run_start = start + pd.Timedelta(days=config.train_days)
    run_end = run_start + pd.Timedelta(days=sim_days)
    views = build_views(raw_dir, view_schedule(start, run_end, config.view_every_days), spec, progress=progress)

    def env() -> BankEnvironment:
        return BankEnvironment(oracle, seed=config.seed, days=sim_days, start_day=config.train_days,
                               requests_per_customer_day=config.requests_per_customer_day)

    bandit = offline = None
    log = pd.DataFrame()
    if "bandit" in config.policies:
        exposures = pd.read_parquet(Path(raw_dir) / "exposures.parquet")
        log = logged_decisions(exposures, views, offers, config.bandit, end=run_start)
        bandit = ContextualBandit(config.bandit, spec)
        train_offline(bandit, log, offers, passes=config.offline_passes, progress=progress)
        offline = bandit.copy()

    makers: dict[str, Callable[[Any], Policy]] = {
        "random": lambda e: UniformPolicy(seed=config.seed),
        "ab_then_fix": lambda e: ABTestThenFixPolicy(run_start + pd.Timedelta(days=config.ab_test_days),
                                                     alpha=config.alpha, seed=config.seed),
        "bandit": lambda e: BanditPolicy(bandit, seed=config.seed),
        "oracle": lambda e: OraclePolicy(e, metric=config.bandit.reward),
    }
    frames, ab = [], pd.DataFrame()
    for name in config.policies:
        if name not in makers:
            raise ValueError(f"unknown policy {name!r}; choose from {sorted(makers)}")
        e = env()
        policy = makers[name](e)
        frames.append(simulate_policy(e, policy, views, offers, config.bandit, progress=progress))
        if isinstance(policy, ABTestThenFixPolicy):
            ab = ab_test.summarize(policy.results)
    steps = pd.concat(frames, ignore_index=True)
    return ComparisonResult(steps, summarize(steps), ab, bandit, offline, log, views, config)


def ope_check(raw_dir: Path, truth_dir: Path, bandit: ContextualBandit, views: CustomerViews,
              start: pd.Timestamp, end: pd.Timestamp | None = None,
              extra_policies: Mapping[str, Sequence[str]] | None = None, n_bootstrap: int = 0,
              seed: int = 0) -> pd.DataFrame:
    """Off-policy estimates vs the true value, on the logged exposures in [start, end).

    Policies: the (frozen) bandit, uniform, and any ``constant`` policies given as preferred
    offer ids (e.g. the A/B winners). The truth is the oracle's expected reward of each
    candidate at each logged decision, weighted by the policy's probabilities.
    """
    from src.data.synthetic import Oracle
    from src.models import ope

    oracle = Oracle(truth_dir, raw_dir)
    offers = oracle.offers
    exposures = pd.read_parquet(Path(raw_dir) / "exposures.parquet")
    log = logged_decisions(exposures, views, offers, bandit.config, start=start, end=end)
    by_slot = slot_candidates(offers)
    candidates = [[str(c["offer_id"]) for c in by_slot[s]] for s in log["slot"]]
    action, prob, reward = log["action"].to_numpy(int), log["prob"].to_numpy(float), log["reward"].to_numpy(float)
    q = ope.fit_reward_model(ope.context_frame(log["context"].tolist()), candidates, action, reward,
                             seen=[c.get("seen", {}) for c in log["context"]], seed=seed)
    truth = ope.oracle_rewards(oracle, log, candidates, bandit.config.reward, bandit.config.value_scale)
    targets = {"bandit": policy_probs(bandit, log, offers), "uniform": ope.uniform_policy(log, candidates)}
    for name, preferred in (extra_policies or {}).items():
        targets[name] = ope.constant_policy(preferred)(log, candidates)
    frames = []
    for name, target in targets.items():
        frame = ope.estimate(action, prob, reward, target, q, n_bootstrap=n_bootstrap, seed=seed)
        frame.insert(0, "policy", name)
        frame["true_value"] = ope.true_value(target, truth)
        frame["rel_error_pct"] = 100 * (frame["value"] / frame["true_value"] - 1)
        frame["covered"] = (frame["ci_low"] <= frame["true_value"]) & (frame["true_value"] <= frame["ci_high"])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def plot_comparison(steps: pd.DataFrame):
    """Cumulative expected reward and cumulative regret per policy over decisions."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, g in steps.groupby("policy", sort=False):
        x = np.arange(1, len(g) + 1)
        axes[0].plot(x, g["expected"].cumsum().to_numpy(), label=name)
        axes[1].plot(x, g["regret"].cumsum().to_numpy(), label=name)
    axes[0].set(title="cumulative expected reward", xlabel="decision")
    axes[1].set(title="cumulative regret vs oracle", xlabel="decision")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_daily(steps: pd.DataFrame):
    """Expected reward per decision by day: learning curves."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    daily = steps.groupby(["day", "policy"], sort=False)["expected"].mean().unstack()
    daily.plot(ax=ax)
    ax.set(title="expected reward per decision, by day", xlabel="day of the run", ylabel="expected reward")
    fig.tight_layout()
    return fig


def held_out_scorer(raw_dir: Path, views: CustomerViews, config: BanditConfig, start: pd.Timestamp,
                    end: pd.Timestamp | None = None, seed: int = 0) -> Callable[[Any], float]:
    """DR value of a bandit (object or MLflow model URI) on the logged decisions in [start, end).

    The log and the cross-fitted reward model are built once, so a challenger and the current
    champion are scored on exactly the same held-out window (the registry's promotion rule).
    """
    from src.models import ope

    offers = pd.read_parquet(Path(raw_dir) / "offers.parquet")
    exposures = pd.read_parquet(Path(raw_dir) / "exposures.parquet")
    log = logged_decisions(exposures, views, offers, config, start=start, end=end)
    by_slot = slot_candidates(offers)
    candidates = [[str(c["offer_id"]) for c in by_slot[s]] for s in log["slot"]]
    action, prob, reward = log["action"].to_numpy(int), log["prob"].to_numpy(float), log["reward"].to_numpy(float)
    q = ope.fit_reward_model(ope.context_frame(log["context"].tolist()), candidates, action, reward,
                             seen=[c.get("seen", {}) for c in log["context"]], seed=seed)

    def score(model: Any) -> float:
        if isinstance(model, str):
            import mlflow.pyfunc

            model = mlflow.pyfunc.load_model(model).unwrap_python_model().bandit
        target = policy_probs(model, log, offers)
        table = ope.estimate(action, prob, reward, target, q).set_index("estimator")
        return float(table.loc["dr", "value"])

    return score
