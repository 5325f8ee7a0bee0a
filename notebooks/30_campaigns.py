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
# # 30 — A wave campaign on the synthetic bank: build, dry-run, approve, run, report
#
# A CRM request: *"at lunchtime, push the savings offer to customers in their 30s and 40s who
# checked their loan limit lately or whom the model likes; two days later, text the ones who
# did not convert."* It is a YAML spec (who, when, what, how, why), not code. The gate gives every
# segment member who is not contacted a reason (consent, accident, closed, product held, quiet
# hours, holdout, fatigue caps); the run writes each message to a transactional outbox together
# with its cap charge; the synthetic bank answers; the report's lift (intention-to-treat, against
# the holdout) is checked against the simulator's true lift. The logic is in `src/campaigns/`;
# the bank's answers and the true lift come from `src/evaluation/campaigns.py`.

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory (a validated bank)
work_dir = ""  # empty: a temporary copy (the notebook never writes into data_dir)
answer_seed = 0  # the draws of the bank's answers to the messages

# %%
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import yaml
from IPython.display import display

from src.campaigns import engine
from src.campaigns.adapters import SimulatedChannel
from src.campaigns.api import Campaigns
from src.campaigns.report import plot_report, report
from src.campaigns.spec import CampaignSpec
from src.evaluation.campaigns import campaign_effects, draw_responses, true_itt_lift
from src.pipeline import run_customer_view, run_detection
from src.settings import Settings

source = Settings.from_overrides(data_dir=data_dir)
work = Path(work_dir or tempfile.mkdtemp(prefix="nextoffer-campaigns-"))
for sub in ("raw", "validated", "truth"):
    if not (work / sub).exists() and (source.resolve(source.data_dir) / sub).exists():
        shutil.copytree(source.resolve(source.data_dir) / sub, work / sub)
settings = Settings.from_overrides(data_dir=str(work))
last = settings.catalog.read("transactions", columns=["ts"])["ts"].max()
as_of = (last.normalize() + timedelta(days=1)).to_pydatetime()
run_customer_view(settings, as_of)
run_detection(settings, as_of)
print("view and detections as of", as_of.date(), "in", work)

# %% [markdown]
# ## The spec
# Step 1 goes at 12:00 (push, advertising); step 2 only to customers whose step-1 message was
# **delivered** and who did not convert, 48 hours later, by SMS. 20 % of the segment is held
# out by a salted hash of the customer id.

# %%
spec_text = f"""
campaign_id: lunch_savings
owner: maker
priority: 10
who:
  intersect:
    - rule: "age BETWEEN 30 AND 49"
    - union:
        - rule: "detected('loan_inquiry_no_application', 30)"
        - rule: "sessions_7d >= 2"
when: {{at: "{as_of:%Y-%m-%d}T12:00:00"}}
why: {{goal: convert, product: savings, window_days: 14}}
steps:
  - {{step_id: s1, channel: push, offer_id: OF02, content: "12-month savings for you at {{age}}"}}
  - {{step_id: s2, after: s1, condition: not_converted, delay_hours: 48, channel: sms, offer_id: OF02}}
holdout: {{share: 0.2}}
reward: {{kind: cashback, amount_krw: 3000, budget_krw: 300000, event: convert, expires_days: 14}}
"""
spec = CampaignSpec.model_validate(yaml.safe_load(spec_text))
camps = Campaigns(settings, as_of)
print("problems:", camps.validate(spec) or "none")

# %% [markdown]
# ## Dry run: the audience funnel
# Size after the segment and after each exclusion, as the gate applies them; fatigue is read
# from the shared contact store (no charge).

# %%
dry = camps.dry_run(spec)
funnel = pd.Series(dry["funnel"])
ax = funnel.plot.barh(figsize=(8, 4))
ax.invert_yaxis()
ax.set_title(f"{spec.campaign_id}: audience funnel (step s1)")
ax.set_xlabel("customers")
ax.set_ylabel("stage")
plt.show()
print("requeued by quiet hours:", dry["requeued_quiet_hours"], "| arms:", dry["arms"])

# %% [markdown]
# ## Maker-checker, then step 1
# The author cannot approve; another user approves the content-hashed bundle (spec, segment
# version, caps, holdout). The run charges caps and writes the outbox in one transaction per
# batch; a rerun sends nothing twice.

# %%
try:
    camps.approve(spec, "maker")
except engine.ApprovalError as error:
    print("refused:", error)
print("approved bundle", camps.approve(spec, "checker")[:16])
channel = SimulatedChannel()
print(camps.run(spec, adapter=channel, step_id="s1"))
print("rerun:", camps.run(spec, adapter=channel, step_id="s1"))

# %% [markdown]
# ## The bank answers; step 2 follows the delivered, unconverted customers

# %%
seg = camps.db.segment(spec.campaign_id)
arms = seg.set_index("customer_id")["arm"]
eff = campaign_effects(
    settings.truth_dir, pd.Index(arms.index), "savings", "push", 12, seed=answer_seed
)
out = camps.db.outbox(spec.campaign_id)
drawn, events = draw_responses(
    eff, arms, out[(out["step_id"] == "s1") & (out["status"] == "sent")],
    f"{as_of:%Y-%m-%d}T12:10:00", seed=answer_seed,
)  # fmt: skip
camps.db.record_events(events)
print(camps.run(spec, adapter=channel, step_id="s2"))
display(eff["uplift_type"].value_counts().rename("customers (truth)"))

# %% [markdown]
# ## Report: funnel per step, reasons, lift against the holdout vs the truth
# Intention-to-treat: capped and suppressed customers stay in their arm. No winner on opens.

# %%
rep = report(spec, camps.db, drawn["converted"], value_krw=40_000)
display(rep["steps"])
display(rep["reasons"].pivot(index="reason", columns="step_id", values="customers").fillna(0))
lift = rep["lift"]
truth = true_itt_lift(eff, arms, drawn["delivered"] & drawn["contacted"])
print(
    f"ITT lift {lift.lift * 100:.2f} pp [{lift.ci_low * 100:.2f}, {lift.ci_high * 100:.2f}], "
    f"true {truth * 100:.2f} pp; SRM p = {lift.srm_p_value:.2f}"
)
fig = plot_report(rep)
fig.axes[1].axhline(truth * 100, color="tab:red", ls="--", label="true lift (oracle)")
fig.axes[1].legend()
plt.show()

# %% [markdown]
# ## Why was this customer not contacted?

# %%
not_contacted = camps.db.decisions(spec.campaign_id).dropna(subset=["reason"])
if len(not_contacted):
    display(camps.why(spec.campaign_id, not_contacted["customer_id"].iloc[0]))
camps.close()
