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
# # 11 — Conversion rate per offer and the segment ROAS report
#
# Every logged exposure (which offer, in which slot, to whom, clicked, converted) is a training
# row, with the customer view as of the start of its week. One LightGBM over all offers predicts
# P(convert | shown); the last week is the test, the week before stops the boosting. On the
# simulated bank the oracle's true probability of the same exposures is the reference (added
# after training by `src/evaluation/cvr.py`; the training reads no truth).
#
# The segment report scores every customer for every offer on the last snapshot and adds up,
# per life stage × income band: expected conversions, value, cost and ROAS — ranked. The logic
# is in `src/models/cvr.py` and `src/models/train.py`. The run is tracked like the propensity
# model's (lineage, AUC interval, a model card `model_card.md`); with `register = True` (what
# `nextoffer retrain` passes) it is registered as `nextoffer-cvr` and promoted only if it beats
# the champion's AUC on the same test exposures by `models.min_auc_gain`, significantly.

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory
as_of = ""  # only data before it (empty: all data)
step_days = None  # models.cvr_step_days: snapshot spacing (one week of exposures per snapshot)
register = False  # register the model as nextoffer-cvr (challenger / champion; `retrain` sets True)
run_info_path = ""  # set by `retrain`
out_dir = ""  # set by `retrain`

# %%
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import display

from src.evaluation.cvr import oracle_comparison
from src.evaluation.propensity import has_truth
from src.models.train import run_cvr_training, write_run_info
from src.settings import Settings

settings = Settings.from_overrides(data_dir=data_dir, models={"cvr_step_days": step_days})
run = run_cvr_training(settings, as_of or None, out_dir=Path(out_dir) if out_dir else None, register=register)
print("weeks:", run.weeks)
print("timings (s):", {k: round(v, 1) for k, v in run.timings.items()})
# the simulated bank: the oracle's conversion probabilities on the same exposures and customers
shown = oracle_comparison(settings, run) if has_truth(settings) else run
plt.close("all")  # the figures are shown in their own cells below

# %% [markdown]
# ## Held-out exposures
# `offer_rate_in_sample` scores each exposure with its offer's test-week rate: a per-offer table
# that has seen the answers, so a generous bar for "CVR per offer" alone.

# %%
display(shown.metrics.round(4))

# %% [markdown]
# Per offer: observed rate, the model's and the oracle's mean probability and AUC.

# %%
display(shown.per_offer.astype(float).round(4))

# %% [markdown]
# ## Segments ranked by ROAS (best offer per segment × product)

# %%
display(shown.summary.head(20).round(3))

# %%
display(shown.figures["segment_roas"])

# %%
if shown is not run:
    display(shown.figures["segment_conversions_vs_oracle"])
    print("ranking vs oracle:", {k: round(v, 3) for k, v in shown.ranking.items()})

# %%
print("MLflow run:", run.run_id, "\nmodel:", run.model_uri)
if run.promotion is not None:
    print(run.promotion)
if run_info_path:
    write_run_info(run_info_path, notebook="11_train_cvr", run_id=run.run_id, model_uri=run.model_uri,
                   weeks=run.weeks, promotion=None if run.promotion is None else run.promotion.__dict__)
