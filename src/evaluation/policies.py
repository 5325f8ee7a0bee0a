"""Policies for an offer slot and the simulated comparison: random, A/B-then-fix, bandit, oracle.

Each policy runs in its own :class:`~src.data.synthetic.BankEnvironment` with the same seed, so
all of them see the same requests and the same luck; only their choices (and the fatigue those
choices cause) differ. Regret per decision = the oracle's best expected reward for that request
minus the expected reward of the choice made, both under the policy's own fatigue state.

:func:`ope_check` sets the off-policy estimates (the ones ``train-bandit`` promotes with,
:mod:`src.models.bandit_eval`) against the true values the oracle knows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from src.data.catalog import Catalog
from src.models import ab_test
from src.models.bandit import (
    BanditConfig,
    ContextualBandit,
    logged_decisions,
    policy_probs,
    train_offline,
)
from src.models.bandit_eval import bandit_view, reward_model
from src.models.bandit_features import (
    CustomerViews,
    FatigueTracker,
    FeatureSpec,
    ResponseHistory,
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

    def choose(
        self, request, context: Mapping[str, Any], candidates: Candidates
    ) -> tuple[int, float]: ...

    def update(
        self,
        request,
        context: Mapping[str, Any],
        candidates: Candidates,
        chosen: int,
        prob: float,
        reward: float,
    ) -> None: ...


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
class TrueNeedGreedyPolicy:
    """Diagnostic, reads the truth: the offer of the product the customer needs most today.

    Knows the latent need (which no bank does) but ignores creative quality, life-stage fit and
    affinity: how far knowing the need alone goes.
    """

    oracle: Any
    name: str = "greedy_true_need"

    def choose(self, request, context, candidates) -> tuple[int, float]:
        from src.data.schemas import PRODUCTS

        cust = self.oracle.customer_idx([request.customer_id])[0]
        need = np.asarray(
            self.oracle.needs[(request.ts - self.oracle.start).days, cust], dtype=float
        )
        return int(np.argmax([need[PRODUCTS.index(str(c["product"]))] for c in candidates])), 1.0

    def update(self, *args, **kwargs) -> None:
        return None


def true_need_context(oracle: Any) -> Callable[[str, pd.Timestamp], dict[str, float]]:
    """Diagnostic, reads the truth: ``true_need_<product>`` = offer affinity x need, the exact term
    of the click logit that no observable feature carries. A bandit given it shows how far
    better features could take it (a ceiling for the features, not for a deployable bandit)."""
    from src.data.schemas import PRODUCTS

    affinity = oracle.traits.set_index(oracle.customer_index)["offer_affinity"].to_dict()

    def extra(customer_id: str, ts: pd.Timestamp) -> dict[str, float]:
        cust = oracle.customer_idx([customer_id])[0]
        day = int((pd.Timestamp(ts) - oracle.start).days)
        needs = np.asarray(oracle.needs[day, cust], dtype=float)
        return {
            f"true_need_{p}": round(affinity[str(customer_id)] * needs[j], 3)
            for j, p in enumerate(PRODUCTS)
        }

    return extra


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
            frame = pd.DataFrame(
                [
                    {
                        "arm": str(c["offer_id"]),
                        "n": seen.get(str(c["offer_id"]), [0, 0])[0],
                        "successes": seen.get(str(c["offer_id"]), [0, 0])[1],
                    }
                    for c in candidates
                ]
            )
            self.results[slot] = ab_test.decide(frame, alpha=self.alpha)
        return self.results[slot].winner

    def choose(self, request, context, candidates) -> tuple[int, float]:
        if request.ts < self.test_end:
            return int(self.rng.integers(len(candidates))), 1.0 / len(candidates)
        return candidate_index(candidates)[self._winner(request.slot, candidates)], 1.0

    def update(self, request, context, candidates, chosen, prob, reward) -> None:
        if request.ts < self.test_end:
            arm = self.counts.setdefault(request.slot, {}).setdefault(
                str(candidates[chosen]["offer_id"]), [0, 0]
            )
            arm[0] += 1
            arm[1] += int(reward > 0)


@dataclass
class BanditPolicy:
    """The VW bandit: samples from its PMF and (optionally) learns from every reward online."""

    bandit: ContextualBandit
    seed: int = 0
    learn_online: bool = True
    name: str = "bandit"
    last_pmf: np.ndarray | None = None  # of the latest choice: the simulation values its greedy arm

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def choose(self, request, context, candidates) -> tuple[int, float]:
        d = self.bandit.choose(context, candidates, self.rng)
        self.last_pmf = d.pmf
        return d.index, d.prob

    def update(self, request, context, candidates, chosen, prob, reward) -> None:
        if self.learn_online:
            self.bandit.learn(context, candidates, chosen, prob, reward)


def simulate_policy(
    env,
    policy: Policy,
    views: CustomerViews,
    offers: pd.DataFrame,
    config: BanditConfig,
    progress: bool = False,
    history: ResponseHistory | None = None,
    extra: Callable[[str, pd.Timestamp], Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Run ``policy`` over the environment's request stream; one row per decision.

    Columns: request_id, ts, day, slot, offer_id, prob, click, convert, value, reward (realized,
    under ``config.reward``), expected (the choice's expected reward), best (the oracle's),
    regret, and the choice's expected click / convert / value for the secondary metrics.
    ``history``: the customer's responses to offers so far (the bank's log before the run; it
    is copied, then grows with this policy's own decisions); ``extra(customer_id, ts)`` adds
    context (diagnostics).
    """
    from tqdm.auto import tqdm

    metric = config.reward
    scale = config.value_scale if metric == "value" else 1.0
    by_slot = slot_candidates(offers)
    product = offers.set_index("offer_id")["product"].astype(str).to_dict()
    tracker = FatigueTracker()
    history = history.copy() if history is not None else None
    rows = []
    for request in tqdm(env.requests(), desc=policy.name, disable=not progress, mininterval=2):
        candidates = by_slot[request.slot]
        context = request_context(
            views.lookup(request.customer_id, request.ts),
            request.ts,
            request.channel,
            tracker.counts(request.customer_id, request.ts),
            extra(request.customer_id, request.ts) if extra else None,
            responses=history.get(request.customer_id) if history is not None else None,
        )
        chosen, prob = policy.choose(request, context, candidates)
        offer_id = str(candidates[chosen]["offer_id"])
        ids, values = env.expected_all(request, metric)
        position = {str(o): i for i, o in enumerate(ids)}
        best = float(values.max())
        expected = env.expected_reward(request, offer_id)
        outcome = env.step(request, offer_id, prob)
        tracker.record(request.customer_id, request.ts, offer_id)
        if history is not None:
            history.record(request.customer_id, product[offer_id], outcome.click)
        reward = config.reward_of(outcome.click, outcome.convert, outcome.value)
        policy.update(request, context, candidates, chosen, prob, reward)
        exp = float(values[position[offer_id]]) / scale
        pmf = getattr(policy, "last_pmf", None)
        if pmf is not None:  # what the policy would earn without exploring, and in expectation
            greedy = (
                float(values[position[str(candidates[int(np.argmax(pmf))]["offer_id"])]]) / scale
            )
            on_policy = (
                float(
                    sum(
                        pm * values[position[str(c["offer_id"])]]
                        for pm, c in zip(pmf, candidates, strict=False)
                    )
                )
                / scale
            )
        else:
            greedy = on_policy = exp
        rows.append(
            {
                "request_id": request.request_id,
                "ts": request.ts,
                "slot": request.slot,
                "customer_id": request.customer_id,
                "channel": request.channel,
                "offer_id": offer_id,
                "prob": prob,
                "click": outcome.click,
                "convert": outcome.convert,
                "value": outcome.value,
                "reward": reward,
                "expected": exp,
                "best": best / scale,
                "regret": best / scale - exp,
                "expected_click": expected.click,
                "expected_convert": expected.convert,
                "expected_value": expected.value,
                "expected_greedy": greedy,
                "expected_policy": on_policy,
            }
        )
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
    sim_days: int | None = Field(
        None, ge=1, description="Default: the rest of the simulated period."
    )
    ab_test_days: int = Field(7, ge=1)
    alpha: float = 0.05
    view_every_days: int = Field(7, ge=1, description="Refresh the customer view every N days.")
    requests_per_customer_day: float = 0.3
    seed: int = 0
    bandit: BanditConfig = BanditConfig()
    offline_passes: int = Field(1, ge=0)
    history: bool = Field(
        False,
        description="Give the bandit the customer's past responses to offers "
        "(``|history``); no measurable gain on notebook 20's run, and serving lacks it.",
    )
    policies: tuple[str, ...] = ("random", "ab_then_fix", "bandit", "oracle")


DIAGNOSTIC_POLICIES = ("bandit_frozen", "bandit_true_need", "greedy_true_need")
"""Extra policies for ``ComparisonConfig.policies``: the offline bandit without online learning
(the learning curve), a bandit also given the true affinity x need (a ceiling for features) and
a greedy policy on the true need. The last two read the simulator's truth."""


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


def summarize(
    steps: pd.DataFrame, baseline: str = "ab_then_fix", ceiling: str = "oracle"
) -> pd.DataFrame:
    """Final figures per policy; ratios on expected reward (the luck is the same for all anyway)."""
    g = steps.groupby("policy", sort=False)
    out = pd.DataFrame(
        {
            "decisions": g.size(),
            "reward": g["reward"].sum(),
            "expected_reward": g["expected"].sum(),
            "regret": g["regret"].sum(),
            "ctr": g["click"].mean(),
            "expected_value_krw": g["expected_value"].sum(),
        }
    )
    if ceiling in out.index:
        out["pct_of_oracle"] = 100 * out["expected_reward"] / out.loc[ceiling, "expected_reward"]
    if baseline in out.index:
        out["lift_vs_ab_pct"] = 100 * (
            out["expected_reward"] / out.loc[baseline, "expected_reward"] - 1
        )
    return out


def gap_report(steps: pd.DataFrame, ceiling: str = "oracle") -> dict[str, pd.DataFrame]:
    """Where each policy's gap to the oracle goes, as % of the oracle's expected reward.

    ``overall``: as run, without exploration (``greedy_pct``: each step's greedy choice) and the
    exploration cost between them; ``by_slot`` and ``by_week`` (the learning curve) as run.
    """
    oracle = steps[steps["policy"] == ceiling]
    g = steps.groupby("policy", sort=False)
    total = oracle["expected"].sum()
    overall = pd.DataFrame(
        {
            "pct_of_oracle": 100 * g["expected"].sum() / total,
            "greedy_pct": 100 * g["expected_greedy"].sum() / total,
        }
    )
    overall["exploration_cost_pts"] = overall["greedy_pct"] - overall["pct_of_oracle"]
    week = steps["day"] // 7
    by_slot = 100 * steps.groupby(["slot", "policy"], sort=False)["expected"].sum().unstack().div(
        oracle.groupby("slot")["expected"].sum(), axis=0
    )
    by_week = 100 * steps.groupby([week, "policy"], sort=False)["expected"].sum().unstack().div(
        oracle.groupby(oracle["day"] // 7)["expected"].sum(), axis=0
    )
    by_week.index.name = "week"
    return {"overall": overall, "by_slot": by_slot, "by_week": by_week}


def run_comparison(
    catalog: Catalog,
    truth_dir: Path,
    config: ComparisonConfig | None = None,
    spec: FeatureSpec | None = None,
    progress: bool = False,
) -> ComparisonResult:
    """Simulate the policies of ``config`` on the same traffic; return steps, summary, A/B decisions.

    The bandit's views and log come from the ``catalog`` (validated tables, as in production);
    the oracle reads the simulator's truth beside the raw export it simulated."""
    from src.data.synthetic import BankEnvironment, Oracle

    config = config or ComparisonConfig()
    spec = spec or default_feature_spec()
    oracle = Oracle(truth_dir, catalog.raw_dir)
    offers = oracle.offers
    sim_days = config.sim_days or oracle.days - config.train_days
    if config.train_days + sim_days > oracle.days:
        raise ValueError(
            f"train_days + sim_days = {config.train_days + sim_days} exceeds the "
            f"{oracle.days} simulated days"
        )
    start = oracle.start.normalize()
    run_start = start + pd.Timedelta(days=config.train_days)
    run_end = run_start + pd.Timedelta(days=sim_days)
    views = build_views(
        catalog, view_schedule(start, run_end, config.view_every_days), spec, progress=progress
    )

    def env() -> BankEnvironment:
        return BankEnvironment(
            oracle,
            seed=config.seed,
            days=sim_days,
            start_day=config.train_days,
            requests_per_customer_day=config.requests_per_customer_day,
        )

    exposures = catalog.read("exposures")
    history = (
        ResponseHistory.from_exposures(exposures, offers, before=run_start)
        if config.history
        else None
    )

    def trained(spec: FeatureSpec, extra=None) -> tuple[ContextualBandit, pd.DataFrame]:
        log = logged_decisions(
            exposures,
            views,
            offers,
            config.bandit,
            end=run_start,
            extra=extra,
            responses=config.history,
        )
        bandit = ContextualBandit(config.bandit, spec)
        train_offline(bandit, log, offers, passes=config.offline_passes, progress=progress)
        return bandit, log

    bandit = offline = None
    log = pd.DataFrame()
    if {"bandit", "bandit_frozen"} & set(config.policies):
        bandit, log = trained(spec)
        offline = bandit.copy()
    truth_extra = true_need_context(oracle) if "bandit_true_need" in config.policies else None

    def true_need_bandit(e) -> Policy:
        from dataclasses import replace

        from src.data.schemas import PRODUCTS

        truth_spec = replace(
            spec, propensity=spec.propensity + tuple(f"true_need_{p}" for p in PRODUCTS)
        )
        return BanditPolicy(
            trained(truth_spec, truth_extra)[0], seed=config.seed, name="bandit_true_need"
        )

    def bandit_policy(e) -> Policy:
        assert bandit is not None  # trained above: "bandit" is among the policies
        return BanditPolicy(bandit, seed=config.seed)

    def frozen_bandit_policy(e) -> Policy:
        assert offline is not None  # trained above: "bandit_frozen" is among the policies
        return BanditPolicy(
            offline.copy(), seed=config.seed, learn_online=False, name="bandit_frozen"
        )

    makers: dict[str, Callable[[Any], Policy]] = {
        "random": lambda e: UniformPolicy(seed=config.seed),
        "ab_then_fix": lambda e: ABTestThenFixPolicy(
            run_start + pd.Timedelta(days=config.ab_test_days), alpha=config.alpha, seed=config.seed
        ),
        "bandit": bandit_policy,
        "oracle": lambda e: OraclePolicy(e, metric=config.bandit.reward),
        "bandit_frozen": frozen_bandit_policy,
        "bandit_true_need": true_need_bandit,
        "greedy_true_need": lambda e: TrueNeedGreedyPolicy(oracle),
    }
    frames, ab = [], pd.DataFrame()
    for name in config.policies:
        if name not in makers:
            raise ValueError(f"unknown policy {name!r}; choose from {sorted(makers)}")
        e = env()
        policy = makers[name](e)
        frames.append(
            simulate_policy(
                e,
                policy,
                views,
                offers,
                config.bandit,
                progress=progress,
                history=history,
                extra=truth_extra if name == "bandit_true_need" else None,
            )
        )
        if isinstance(policy, ABTestThenFixPolicy):
            ab = ab_test.summarize(policy.results)
    steps = pd.concat(frames, ignore_index=True)
    return ComparisonResult(steps, summarize(steps), ab, bandit, offline, log, views, config)


def oracle_rewards(
    oracle,
    log: pd.DataFrame,
    candidates: list[list[str]],
    metric: str = "click",
    value_scale: float = 1.0,
) -> np.ndarray:
    """True expected reward of every candidate of every logged decision: (n, K), zero-padded.

    Fatigue is the logged history's (the one-step counterfactual: only this decision changes).
    """
    width = max(len(c) for c in candidates)
    rows = np.concatenate([np.full(len(c), i) for i, c in enumerate(candidates)])
    k = np.concatenate([np.arange(len(c)) for c in candidates])
    ids = np.array([o for c in candidates for o in c], dtype=object)
    values = oracle.expected(
        log["customer_id"].to_numpy()[rows],
        ids,
        log["ts"].to_numpy()[rows],
        log["channel"].to_numpy()[rows],
        metric=metric,
    )
    out = np.zeros((len(candidates), width))
    out[rows, k] = values / (value_scale if metric == "value" else 1.0)
    return out


def ope_check(
    catalog: Catalog,
    truth_dir: Path,
    bandit: ContextualBandit,
    views: CustomerViews,
    start: pd.Timestamp,
    end: pd.Timestamp | None = None,
    extra_policies: Mapping[str, Sequence[str]] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    history: bool = False,
) -> pd.DataFrame:
    """Off-policy estimates vs the true value, on the logged exposures in [start, end).

    Policies: the (frozen) bandit, uniform, and any ``constant`` policies given as preferred
    offer ids (e.g. the A/B winners). The truth is the oracle's expected reward of each
    candidate at each logged decision, weighted by the policy's probabilities. ``history``: the
    bandit was trained with the customer's past responses (``|history``).
    """
    from src.data.synthetic import Oracle
    from src.models import ope

    oracle = Oracle(truth_dir, catalog.raw_dir)
    offers = oracle.offers
    exposures = catalog.read("exposures")
    log = logged_decisions(
        exposures, views, offers, bandit.config, start=start, end=end, responses=True
    )
    by_slot = slot_candidates(offers)
    candidates = [[str(c["offer_id"]) for c in by_slot[s]] for s in log["slot"]]
    action, prob, reward = (
        log["action"].to_numpy(int),
        log["prob"].to_numpy(float),
        log["reward"].to_numpy(float),
    )
    q = reward_model(log, offers, candidates, seed=seed)
    truth = oracle_rewards(oracle, log, candidates, bandit.config.reward, bandit.config.value_scale)
    targets = {
        "bandit": policy_probs(bandit, bandit_view(log, history), offers),
        "uniform": ope.uniform_policy(log, candidates),
    }
    for name, preferred in (extra_policies or {}).items():
        targets[name] = ope.constant_policy(preferred)(log, candidates)
    frames = []
    for name, target in targets.items():
        frame = ope.estimate(
            action,
            prob,
            reward,
            target,
            q,
            n_bootstrap=n_bootstrap,
            seed=seed,
            groups=log["customer_id"].to_numpy(),
        )
        frame.insert(0, "policy", name)
        frame["true_value"] = ope.true_value(target, truth)
        frame["rel_error_pct"] = 100 * (frame["value"] / frame["true_value"] - 1)
        frame["covered"] = (frame["ci_low"] <= frame["true_value"]) & (
            frame["true_value"] <= frame["ci_high"]
        )
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
    ax.set(
        title="expected reward per decision, by day",
        xlabel="day of the run",
        ylabel="expected reward",
    )
    fig.tight_layout()
    return fig
