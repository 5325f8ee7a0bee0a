# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 20 — A contextual bandit vs the A/B-then-fix practice
#
# The seed practice fills an app slot by A/B testing its contents for a while, then showing the
# winner to everyone. We replace it with a Vowpal Wabbit contextual bandit (`cb_explore_adf`) that
# picks per customer and request, and check — on the synthetic bank, which knows the truth — that
# it is better before anything goes live:
#
# 1. the bandit is trained **offline** on the bank's logged decisions (days `[0, train_days)`,
#    with their logged probabilities), then learns **online** from rewards;
# 2. random, A/B-then-fix, the bandit and the oracle each serve the **same** request stream
#    (`BankEnvironment`, same seed) for the following days;
# 3. **off-policy evaluation** on the held-out log estimates each policy's value before any of it
#    is served, and is checked against the true value.
#
# Reward: the click (dense, immediate, what the A/B practice measures). The default run (14 days
# of serving, 14 days of held-out log, no diagnostic policies) takes under 2 minutes on the demo
# bank; `sim_days = 0, ope_days = 0, diagnostics = True` is the full study (minutes). The logic lives in
# `src/models` (`bandit.py`, `ab_test.py`, `ope.py`, `bandit_eval.py`) and, for the simulation
# that reads the truth, `src/evaluation/policies.py`.

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory
train_days = 14  # the logged history the bandit learns from offline
sim_days = 14  # days the policies run (0: the rest of the simulated period; the full run takes minutes)
ab_test_days = 7  # A/B test period at the start of the run
exploration = None  # bandit.exploration: epsilon | softmax | squarecb
epsilon = None  # bandit.epsilon
learning_rate = None  # bandit.learning_rate
seed = None  # bandit.seed (also seeds the simulated requests)
diagnostics = False  # also run the diagnostic policies (frozen bandit, true-need greedy and bandit; slower)
ope_days = 14  # days of held-out log for the off-policy check (0: all of it)
register = False  # log the bandit to MLflow and register it (challenger / champion)

# %%
import matplotlib.pyplot as plt
import pandas as pd

from src.evaluation.policies import (
    DIAGNOSTIC_POLICIES,
    ComparisonConfig,
    gap_report,
    ope_check,
    plot_comparison,
    plot_daily,
    run_comparison,
)
from src.models.bandit import BanditConfig
from src.settings import Settings

# parameters left at None take the settings' values (environment NEXTOFFER_BANDIT__<FIELD>, else defaults)
settings = Settings.from_overrides(data_dir=data_dir, bandit=dict(
    exploration=exploration, epsilon=epsilon, learning_rate=learning_rate, seed=seed))
meta_days = pd.read_json(settings.truth_dir / "meta.json", typ="series")["days"]
train = min(train_days, int(meta_days) // 2)
config = ComparisonConfig(
    train_days=train, sim_days=sim_days or None, ab_test_days=min(ab_test_days, (int(meta_days) - train) // 2),
    seed=settings.bandit.seed, bandit=BanditConfig.of(settings.bandit),
    policies=("random", "ab_then_fix", "bandit", "oracle") + (DIAGNOSTIC_POLICIES if diagnostics else ()),
)
print(f"bank: {settings.catalog.data_dir}\n{int(meta_days)} simulated days; offline log {config.train_days} days; "
      f"A/B test {config.ab_test_days} days")

# %% [markdown]
# ## The run

# %%
result = run_comparison(settings.catalog, settings.truth_dir, config, progress=True)
print(f"offline training: {len(result.offline_log):,} logged decisions")
result.summary.round(3)

# %% [markdown]
# `pct_of_oracle` and `lift_vs_ab_pct` are on expected reward (the true click probability of each
# choice): every policy sees the same requests and the same luck, so the realized rewards tell
# the same story with a bit of noise. Goals: the bandit >= 90 % of the oracle, >= +15 % over A/B.

# %%
summary = result.summary
print(f"bandit: {summary.loc['bandit', 'pct_of_oracle']:.1f} % of the oracle (goal >= 90 %), "
      f"{summary.loc['bandit', 'lift_vs_ab_pct']:+.1f} % vs A/B-then-fix (goal >= +15 %)")

# %% [markdown]
# ## Where the gap to the oracle goes
#
# The click logit is creative quality + life-stage fit + slot + 3 x offer affinity x need for the
# offer's product + hour match + app - fatigue. Hour match, app and overall fatigue shift every
# offer of a request alike, so they cannot change which offer is best; what ranks offers is the
# creative, the life stage (observable), same-offer fatigue (the bank's own log) and
# **affinity x need**, which no table holds: need has a per-customer offset ~ N(0, 0.9) logits and
# drifts day by day; the bank sees it only through behaviour (page views, transactions, holdings)
# and through the customer's own responses to past offers (``|history``).
#
# The diagnostic policies (with `diagnostics = True`; they read the simulator's truth, so they are
# measuring sticks, not candidates):
# - `bandit_frozen`: the offline-trained bandit without online updates: what online learning adds;
# - `greedy_true_need`: the offer of the product with the highest true need, ignoring creative and
#   life stage: how far the need alone goes;
# - `bandit_true_need`: the same bandit also given the true affinity x need per product: a ceiling
#   for what better features could give this model.
#
# `greedy_pct` is what each step's greedy choice would have earned: the difference to
# `pct_of_oracle` is the cost of exploring.

# %%
gaps = gap_report(result.steps)
gaps["overall"].round(1)

# %%
gaps["by_week"].round(1)

# %%
gaps["by_slot"].round(1)

# %%
fig = plot_comparison(result.steps)
fig.axes[0].set_ylabel("cumulative expected reward")
fig.axes[1].set_ylabel("cumulative regret")
plt.show()

# %%
fig = plot_daily(result.steps)
plt.show()

# %% [markdown]
# ## The A/B test's decision
#
# Traffic split equally over each slot's contents during the test period; the winner is the
# best-observed arm if an omnibus chi-square test rejects and the best arm beats every other one
# in Holm-adjusted two-proportion z-tests (family-wise error <= alpha). If not, the practice still
# fixes the best-observed arm (`decision` says so). `mde` is the absolute lift the test period's
# sample could detect with 80 % power.

# %%
result.ab

# %% [markdown]
# ## Off-policy evaluation on the held-out log
#
# Estimates of the offline-trained bandit, the uniform policy and the A/B winners, from the
# bank's logged decisions after the training window (logging policy = the simulator's), against
# their true value from the oracle.

# %%
start = pd.Timestamp(settings.sim.start_date) + pd.Timedelta(days=config.train_days)
end = start + pd.Timedelta(days=min(ope_days or 10**6, int(meta_days) - config.train_days))
ope_table = ope_check(settings.catalog, settings.truth_dir, result.offline_bandit, result.views, start, end,
                      extra_policies={"ab_winners": result.ab["winner"].tolist()}, history=config.history)
ope_table[["policy", "estimator", "value", "ci_low", "ci_high", "true_value", "rel_error_pct", "covered"]].round(4)

# %% [markdown]
# Goal: every estimate within 5 % of the true value. The direct method's reward model is
# cross-fitted gradient boosting on the context, the offer (one-hot and its in-fold mean reward)
# and the customer's evidence about the offer's product; DR corrects what is left of its bias.

# %%
print(ope_table.pivot(index="policy", columns="estimator", values="rel_error_pct").round(1))

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for i, (policy, g) in enumerate(ope_table.groupby("policy", sort=False)):
    x = i + pd.Series(range(len(g))) * 0.18 - 0.27
    ax.errorbar(x, g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]], fmt="o")
    ax.hlines(g["true_value"].iloc[0], i - 0.35, i + 0.35, colors="k")
    for xi, name in zip(x, g["estimator"]):
        ax.annotate(name, (xi, g["ci_low"].min()), fontsize=7, ha="center", va="top")
ax.set_xticks(range(ope_table["policy"].nunique()), ope_table["policy"].unique())
ax.set(title="off-policy estimates (95% CI) vs true value (line)", xlabel="policy",
       ylabel="value per decision")
plt.show()

# %% [markdown]
# ## Register the bandit (optional)
#
# Logged as an MLflow pyfunc (VW model file + feature spec + catalog), registered as
# `challenger` and promoted to `champion` only if its DR estimate beats the current champion's
# on the same held-out log.

# %%
if register:
    from src.models.bandit import log_bandit, pyfunc_input_example, register_bandit
    from src.models.bandit_eval import held_out_scorer

    score = held_out_scorer(settings.catalog, result.views, config.bandit, start, history=config.history)
    candidate = score(result.bandit)
    offers = settings.catalog.read("offers")
    uri = log_bandit(result.bandit, offers, metrics={"ope_dr_value": candidate}, tracking_uri=settings.tracking_uri,
                     artifact_location=str(settings.artifact_root),
                     input_example=pyfunc_input_example(result.offline_log, offers))
    print(register_bandit(uri, "nextoffer-bandit", candidate, score_champion=score,
                          tracking_uri=settings.tracking_uri))
