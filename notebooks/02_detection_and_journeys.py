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
# # 02 — Behaviour detection and customer journeys
#
# The stitched event stream (web/app clicks and transactions of each customer, in time order)
# seen two ways: **rules** that detect behaviour patterns — the same YAML rules run in batch
# here and online in the serving path — and **journeys**: sessions, paths around a page, top
# paths and funnels by segment. Logic lives in `src/features/detection` and
# `src/features/journeys`; this notebook runs it on the synthetic bank and plots it.

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory (run `make demo` first)
target_page = "loan_limit_result"  # the page whose before/after paths we look at
path_steps = 3  # pages before and after the target
segment = "life_stage"  # customer column to split funnels by

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from src.features import journeys
from src.features.detection import (
    OnlineDetector, detect, events_from_frame, funnel_report, load_rules, rule_features,
)
from src.features.detection.events import detections_frame
from src.features.identity import stitched_events
from src.settings import Settings

settings = Settings(data_dir=data_dir) if data_dir else Settings()
events = stitched_events(settings.catalog)  # validated tables: run `nextoffer validate` first
customers = settings.catalog.read("customers")
print(f"{len(events):,} events of {events['customer_id'].nunique():,} customers, "
      f"{events['ts'].min():%Y-%m-%d} .. {events['ts'].max():%Y-%m-%d}")
journeys.attribution_summary(events)

# %% [markdown]
# ## Rules
# The shipped rules (`src/features/rules/*.yaml`): ordered steps over clicks and transactions,
# time windows, absences that fire as timeouts, dwell and count conditions, and an action for the
# online path.

# %%
rules = load_rules()
pd.DataFrame(
    [{"rule": r.name, "kind": r.kind, "steps": " → ".join(s.name for s in r.steps),
      "action": r.action} for r in rules]
)

# %% [markdown]
# ### Batch over history

# %%
until = events["ts"].max()
detections = detect(events, rules, until=until)
per_day = (detections.assign(day=detections["fired_at"].dt.floor("D"))
           .groupby(["day", "rule"]).size().unstack(fill_value=0))
ax = per_day.plot(figsize=(10, 3.5), title="Detections per day by rule")
ax.set_ylabel("detections")
ax.set_xlabel("day")
detections.groupby(["rule", "kind"]).size().rename("detections").to_frame()

# %% [markdown]
# ### Online, one event at a time — the same detections
# The serving path sees events one by one in time order. Replaying the history through the
# online evaluator (and a final clock tick for pending timeouts) gives exactly the batch result.

# %%
online = OnlineDetector(rules)
fired = online.process_many(events_from_frame(events))
fired += online.tick(until)
online_frame = detections_frame(fired)
key = ["customer_id", "rule", "kind", "anchor_at", "fired_at"]
same = (online_frame[key].sort_values(key).reset_index(drop=True)
        .equals(detections[key].sort_values(key).reset_index(drop=True)))
print(f"batch {len(detections):,} detections, online {len(online_frame):,}; identical: {same}; "
      f"online state at the end: {online.state_size():,} partial matches")

# %% [markdown]
# ### Step funnels per rule, by segment

# %%
fig, axes = plt.subplots(1, len(rules), figsize=(3.2 * len(rules), 3.2), sharey=False)
for ax, rule in zip(axes, rules):
    report = funnel_report(events, rule, customers=customers, by=segment, until=until)
    steps = report.groupby(["step", "step_name"])["customers"].sum()
    ax.bar([f"{i}. {name}" for i, name in steps.index], steps.values, color="tab:blue")
    ax.set_title(rule.name, fontsize=9)
    ax.set_xlabel("rule step")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
axes[0].set_ylabel("customers reaching the step")
fig.suptitle("Rule step funnels (all segments)")
plt.tight_layout()
funnel_report(events, rules[0], customers=customers, by=segment, until=until).head(10)

# %% [markdown]
# ### Rule features as of a date (for the models)

# %%
as_of = until.normalize()
features = rule_features(detections, as_of, customers, rules=rules, wide=True)
features.describe().T.head(12)

# %% [markdown]
# ## Sessions
# A journey session ends after 30 minutes without activity or when the customer switches between
# web and app. Web/app transactions join the session they happened in; branch, ATM and automatic
# transactions form sessions of their own without pages.

# %%
sessions = journeys.sessionize(events)
table = journeys.session_table(sessions)
busiest = table.groupby("customer_id").size().idxmax()
print(f"{len(table):,} sessions; one customer's journey ({busiest}):")
journeys.customer_journey(sessions, busiest).head(10)

# %% [markdown]
# ## Paths before and after a target page

# %%
around = journeys.paths_around(sessions, target_page, before=path_steps, after=path_steps)
journeys.plot_top_paths(journeys.top_paths(around, k=10), title=f"Top paths through {target_page}")
plt.show()

# %% [markdown]
# The same paths as a Sankey: interactive (plotly) and, below it, a static drawing of the same
# flows that survives HTML and PDF exports (plotly's JSON output is not rendered there).

# %%
display(journeys.sankey_figure(around, title=f"Paths through {target_page}"))
journeys.sankey_static(around, title=f"Paths through {target_page} (static)")
plt.show()

# %% [markdown]
# ## Start-to-end paths
# Whole sessions from entry page to exit page; habits (home → account → transfer) dominate.

# %%
journeys.start_to_end_paths(table, k=10)

# %% [markdown]
# ## Which paths lead to an error page?
# `rate` is how often the error page follows the path among all times the path occurs: a busy
# path is not necessarily a broken one.

# %%
to_error = journeys.paths_to(sessions, "error", before=path_steps)
journeys.plot_top_paths(to_error.head(10), title="Paths into the error page")
plt.show()
to_error.head(10)

# %% [markdown]
# ## Funnels by segment
# Loan: limit inquiry → result → application steps → done, within one session.

# %%
loan_steps = ["loan_main", "loan_limit_inquiry", "loan_limit_result", "loan_apply_step1",
              "loan_apply_done"]
loan_funnel = journeys.funnel(sessions, loan_steps, by=segment, customers=customers)
journeys.plot_funnel(loan_funnel, title="Loan funnel by segment")
plt.show()
loan_funnel.head(12)

# %%
signup_steps = ["signup_step1", "signup_step2", "signup_step3", "signup_done"]
signup_funnel = journeys.funnel(sessions, signup_steps, by=segment, customers=customers)
journeys.plot_funnel(signup_funnel, title="Signup funnel by segment")
plt.show()
