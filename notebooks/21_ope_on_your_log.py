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
# # 21 — Off-policy evaluation on your own decision log
#
# You have a log from your current banner system and a candidate policy from your own notebook.
# What would the candidate have earned on the traffic the current system served? This notebook
# walks through it with `src.models.ope_log.evaluate` (the same code as
# `nextoffer evaluate-policy`).
#
# **What the log needs**, one row per decision (per decision *and position* for slates):
# `action` (what was shown), `prob` (the probability your system chose it with — without it no
# off-policy estimate is possible), `reward` (click, conversion, value). Helpful: `decision_id`
# (to key a probability file), `customer_id` (intervals per customer), `slot`, `position`, a
# `candidates` column (the offers that *could* have been shown) and context columns.
#
# Set `log_path` to your Parquet/CSV file; empty, the notebook generates a small demo log of a
# banner system (12 items, 3 positions, a click rate under 1 %).

# %% tags=["parameters"]
data_dir = ""  # unused (the notebook runs on a decision log, not on the bank)
log_path = ""  # your decision log (Parquet/CSV); empty: a generated demo log
candidates_path = ""  # offers eligible per slot (slot, offer_id); empty: the log's own
context = "segment,device"  # the reward model's context columns (comma-separated)
n_decisions = 20_000  # size of the demo log
n_bootstrap = 100  # bootstrap replicates for percentile intervals (0: none)
rng_seed = 0  # the demo log and the bootstrap (not a settings seed: this is your log)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

from src.models import ope_log
from src.models.decision_log import load_log


def demo_log(n: int, seed: int) -> pd.DataFrame:
    """A banner system's log: 12 items, 3 positions, the logger favours a few items; the click
    depends on the item, the position and the customer's segment (rate well under 1 %)."""
    rng = np.random.default_rng(seed)
    items = [f"item{i:02d}" for i in range(12)]
    logging = np.exp(-0.25 * np.arange(12))
    logging /= logging.sum()
    segment = rng.choice(["new", "regular", "loyal"], n)
    device = rng.choice(["app", "web"], n)
    rows = []
    for d in range(n):
        for position in (1, 2, 3):
            k = rng.choice(12, p=logging)
            fits = (k % 3) == ["new", "regular", "loyal"].index(segment[d])
            rate = 0.004 * (1.0 + 2.0 * fits) / position
            rows.append(
                {
                    "decision_id": f"d{d}",
                    "customer_id": f"c{d % (n // 4)}",
                    "segment": segment[d],
                    "device": device[d],
                    "position": position,
                    "candidates": ",".join(items),
                    "action": items[k],
                    "prob": float(logging[k]),
                    "reward": float(rng.random() < rate),
                }
            )
    return pd.DataFrame(rows)


log = (
    pd.read_parquet(log_path)
    if log_path.endswith(".parquet")
    else (pd.read_csv(log_path) if log_path else demo_log(n_decisions, rng_seed))
)
print(f"{len(log):,} rows, reward rate {log['reward'].mean():.4%}, columns: {list(log.columns)}")
display(log.head())

# %% [markdown]
# ## The log: which items did the current system show?
# Items it rarely shows get large weights later (a policy that favours them rests on few
# decisions); items it never shows cannot be evaluated by IPS at all.

# %%
counts = log["action"].value_counts().sort_index()
fig, ax = plt.subplots(figsize=(8, 3))
ax.bar(counts.index.astype(str), counts.to_numpy())
ax.set_title("How often the logging policy showed each item")
ax.set_xlabel("item")
ax.set_ylabel("decisions (all positions)")
ax.tick_params(axis="x", rotation=60)
plt.show()

# %% [markdown]
# ## Candidates are explicit
# With a `candidates` column (or a `candidates_path` file of offers eligible per slot) the
# evaluation knows what could have been shown. Without either, they are derived from what the
# logger happened to show, and a warning says how many actions each slot then has.

# %%
dlog = load_log(log, candidates=candidates_path or None)
print(
    "candidates:",
    dlog.candidate_source,
    "| offers:",
    len(dlog.offers),
    "| per decision:",
    dlog.width,
)
for w in dlog.warnings:
    print("warning:", w)

# %% [markdown]
# ## Your policy as a Python function
# A target policy is a function `(frame, candidates) -> (n, K)` array: row i holds the
# probability of each of row i's candidates (in order; zero-padded). It may also return a long
# frame `(decision_id, action, prob)`. Here: show each segment the items that fit it, with a
# little exploration, so the weights stay bounded.


# %%
def segment_policy(frame: pd.DataFrame, candidates: list[list[str]]) -> np.ndarray:
    width = max(len(c) for c in candidates)
    out = np.zeros((len(frame), width))
    fit = {"new": 0, "regular": 1, "loyal": 2}
    seg = frame["segment"].map(fit).to_numpy() if "segment" in frame else np.zeros(len(frame))
    for i, cands in enumerate(candidates):
        score = np.array([2.0 if int(c[-2:]) % 3 == seg[i] else 0.0 for c in cands])
        p = np.exp(score)
        out[i, : len(cands)] = p / p.sum()
    return out


policies = {"uniform": "uniform", "item00": "constant:item00", "segment": segment_policy}
report = ope_log.evaluate(
    dlog,
    policies,
    context=[c for c in context.split(",") if c],
    n_bootstrap=n_bootstrap,
    seed=rng_seed,
    positions="independent" if "position" in log else "per-position",
)
print(report.to_text())

# %% [markdown]
# ## Estimates with their intervals
# The logging policy's own value is the mean reward. Intervals are honest at rare events: IPS
# and SNIPS use a Fay-Feuer (Poisson-type) bound next to the normal one, so they neither collapse
# to a point nor go below zero; DM and DR are clipped to the reward range with a flag.

# %%
est = report.estimates[report.estimates["estimator"].isin(["ips", "snips", "dr", "sndr"])]
fig, ax = plt.subplots(figsize=(8, 3.5))
labels = [f"{p}\n{e}" for p, e in zip(est["policy"], est["estimator"], strict=True)]
ax.errorbar(
    range(len(est)),
    est["value"],
    yerr=[est["value"] - est["ci_low"], est["ci_high"] - est["value"]],
    fmt="o",
    capsize=3,
)
per_decision = (
    log.groupby("decision_id")["reward"].sum().mean() if "position" in log else log["reward"].mean()
)
ax.axhline(per_decision, color="grey", ls="--", label="logging policy (observed)")
ax.set_xticks(range(len(est)), labels, fontsize=8)
ax.set_title("Estimated value per decision, 95 % intervals")
ax.set_ylabel("expected reward per decision")
ax.legend()
plt.show()

# %% [markdown]
# ## Diagnostics: can the log support the estimate?
# The weights `pi(a|x) / p` of the logged actions. Effective sample size `(sum w)^2 / sum w^2`:
# how many decisions the estimate is really worth. A warning fires below 1 % of n, when the
# target puts mass on items never logged, or with fewer than 30 rewarded decisions.

# %%
display(report.diagnostics)
target = segment_policy(dlog.frame, dlog.candidates())
weights = target[np.arange(dlog.n), dlog.action] / dlog.prob
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(weights, bins=50)
ax.set_yscale("log")
ess = weights.sum() ** 2 / (weights**2).sum()
ax.set_title(f"Importance weights of the segment policy (ESS {ess:,.0f} of {len(weights):,})")
ax.set_xlabel("weight pi(a|x) / p")
ax.set_ylabel("decisions (log scale)")
plt.show()

# %% [markdown]
# ## Positions
# With a `position` column the report either estimates each position separately
# (`positions="per-position"`) or the slate's total under the independent-position assumption
# (the reward at a position depends only on the item there); the report's `positions` line says
# which it used.

# %%
if "position" in log:
    per_position = ope_log.evaluate(dlog, {"segment": segment_policy}, reward_model=False)
    print(per_position.info["positions"])
    display(per_position.estimates.query("estimator == 'snips'"))
