# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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
# Reward: the click (dense, immediate, what the A/B practice measures). The logic lives in
# `src/models` (`policies.py`, `bandit.py`, `ab_test.py`, `ope.py`).

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory
train_days = 14  # the logged history the bandit learns from offline
sim_days = 0  # days the policies run (0: the rest of the simulated period)
ab_test_days = 7  # A/B test period at the start of the run
exploration = "epsilon"  # epsilon | softmax | squarecb
epsilon = 0.05
seed = 0
register = False  # log the bandit to MLflow and register it (challenger / champion)

# %%
import matplotlib.pyplot as plt
import pandas as pd

from src.models.bandit import BanditConfig
from src.models.policies import ComparisonConfig, ope_check, plot_comparison, plot_daily, run_comparison
from src.settings import Settings

settings = Settings(data_dir=data_dir) if data_dir else Settings()
meta_days = pd.read_json(settings.truth_dir / "meta.json", typ="series")["days"]
train = min(train_days, int(meta_days) // 2)
config = ComparisonConfig(
    train_days=train, sim_days=sim_days or None, ab_test_days=min(ab_test_days, (int(meta_days) - train) // 2),
    seed=seed, bandit=BanditConfig(exploration=exploration, epsilon=epsilon),
)
print(f"bank: {settings.raw_dir}\n{int(meta_days)} simulated days; offline log {config.train_days} days; "
      f"A/B test {config.ab_test_days} days")

# %% [markdown]
# ## The run

# %%
result = run_comparison(settings.raw_dir, settings.truth_dir, config, progress=True)
print(f"offline training: {len(result.offline_log):,} logged decisions")
result.summary.round(3)

# %% [markdown]
# `pct_of_oracle` and `lift_vs_ab_pct` are on expected reward (the true click probability of each
# choice): every policy sees the same requests and the same luck, so the realized rewards tell
# the same story with a bit of noise. Goals: the bandit >= 90 % of the oracle, >= +15 % over A/B.

# %%
fig = plot_comparison(result.steps)
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
start = pd.Timestamp(settings.start_date) + pd.Timedelta(days=config.train_days)
ope_table = ope_check(settings.raw_dir, settings.truth_dir, result.offline_bandit, result.views, start,
                      extra_policies={"ab_winners": result.ab["winner"].tolist()})
ope_table.round(4)

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for i, (policy, g) in enumerate(ope_table.groupby("policy", sort=False)):
    x = i + pd.Series(range(len(g))) * 0.18 - 0.27
    ax.errorbar(x, g["value"], yerr=[g["value"] - g["ci_low"], g["ci_high"] - g["value"]], fmt="o")
    ax.hlines(g["true_value"].iloc[0], i - 0.35, i + 0.35, colors="k")
    for xi, name in zip(x, g["estimator"]):
        ax.annotate(name, (xi, g["ci_low"].min()), fontsize=7, ha="center", va="top")
ax.set_xticks(range(ope_table["policy"].nunique()), ope_table["policy"].unique())
ax.set(title="off-policy estimates (95% CI) vs true value (line)", ylabel="value per decision")
plt.show()

# %% [markdown]
# ## Register the bandit (optional)
#
# Logged as an MLflow pyfunc (VW model file + feature spec + catalog), registered as
# `challenger` and promoted to `champion` only if its DR estimate beats the current champion's
# on the same held-out log.

# %%
if register:
    from src.models.bandit import log_bandit, register_bandit
    from src.models.policies import held_out_scorer

    score = held_out_scorer(settings.raw_dir, result.views, config.bandit, start)
    candidate = score(result.bandit)
    uri = log_bandit(result.bandit, pd.read_parquet(settings.raw_dir / "offers.parquet"),
                     metrics={"ope_dr_value": candidate}, tracking_uri=settings.tracking_uri,
                     artifact_location=str(settings.artifact_root))
    print(register_bandit(uri, "nextoffer-bandit", candidate, score_champion=score,
                          tracking_uri=settings.tracking_uri))
