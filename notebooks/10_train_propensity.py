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
# # 10 — Propensity per product
#
# For every customer and date T: will they sign up for each product within the next 30 days?
# Features are the customer view as of T (only what happened before T); labels are the
# `PRODUCT_SIGNUP` transactions in [T, T + 30 days). Training, validation (early stopping and
# calibration) and test use successive dates, so the test is on held-out time.
#
# The model — one calibrated LightGBM per product — is compared with a logistic regression on
# the same rows and, on the simulated bank, with the **oracle** (the true probability the labels
# were drawn from), **bayes_as_of** (the honest ceiling: the expected window probability given the
# simulator's full true state the day before T, by Monte Carlo over its dynamics; off by default,
# `ceiling_paths` > 0 turns it on) and **need_frozen** (the true need the day before T, frozen). Everything is logged to MLflow. With `register = True` (what
# `nextoffer retrain` passes; off by default so running this notebook by hand never moves the
# champion) the model is registered as `challenger`; it becomes `champion` only if it beats the
# current one on the same test rows.
# The training is in `src/models/train.py` and reads no truth; the references come afterwards
# from `src/evaluation/propensity.py` (only on a bank with a truth directory) and are added to the
# same MLflow run. `nextoffer retrain` runs this notebook with papermill.

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory
as_of = ""  # retraining date: only data before it is used (empty: all data)
products = ""  # comma-separated (empty: all products)
window_days = None  # models.window_days: label window (shortened automatically on a bank too short for it)
embargo = None  # models.embargo: every training label window closes before the test date (False leaks)
learning_rate = None  # models.learning_rate
num_leaves = None  # models.num_leaves
min_child_samples = None  # models.min_child_samples
calibration = None  # models.calibration: "sigmoid" (Platt) or "isotonic" (needs 200+ validation positives)
register = False  # register the model and run the champion/challenger comparison (`retrain` sets True)
with_rule_features = False  # add the detection rules' features (slower: detection per date)
ceiling_paths = 0  # > 0: Monte Carlo paths for the bayes_as_of ceiling (minutes on a large bank)
run_info_path = ""  # where to write {run_id, model_uri, ...} as JSON (set by `retrain`)
out_dir = ""  # also write plots and tables here (set by `retrain`)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from src.data.schemas import PRODUCTS
from src.evaluation.propensity import has_truth, log_comparison, oracle_gaps
from src.models.train import run_propensity_training, write_run_info
from src.settings import Settings

# parameters left at None take the settings' values (environment NEXTOFFER_MODELS__<FIELD>, else defaults)
settings = Settings.from_overrides(data_dir=data_dir, models=dict(
    window_days=window_days, embargo=embargo, learning_rate=learning_rate, num_leaves=num_leaves,
    min_child_samples=min_child_samples, calibration=calibration))
chosen = [p.strip() for p in products.split(",") if p.strip()] or list(PRODUCTS)
extra = None
if with_rule_features:
    from src.features.feature_table import detection_rule_features

    extra = detection_rule_features()
run = run_propensity_training(settings, as_of or None, chosen,  # config, window, embargo: settings.models
                              extra=extra, register=register, out_dir=Path(out_dir) if out_dir else None)
print("time split:", run.plan.as_dict())
print("timings (s):", {k: round(v, 1) for k, v in run.timings.items()})
plt.close("all")  # the run's figures are shown one per cell below, not all at once here

# %%
shown = run  # a real bank: the model next to the baseline only
if has_truth(settings):  # the simulated bank: the oracle (and the ceilings) on the same test rows
    shown = oracle_gaps(settings, run, ceiling_paths=ceiling_paths)
    if run.run_id:
        log_comparison(settings, run.run_id, shown)
    print("timings (s):", {k: round(v, 1) for k, v in shown.timings.items()})
plt.close("all")

# %% [markdown]
# ## Held-out quality next to the baseline and the oracle
#
# `gap_to_oracle` = oracle AUC − model AUC. With the ceiling it splits exactly into
# `gap_to_ceiling` (bayes_as_of − model: what better features or models could still win),
# `drift_gap` (oracle_organic − bayes_as_of: the need moving inside the window) and `offers_gap`
# (oracle − oracle_organic: offers shown inside the window) — the last two no model scoring on T
# can close. Without it: `irreducible_gap` (oracle − need_frozen) and `learnable_gap`.

# %%
display(shown.gaps.round(4))
display(shown.metrics.round(4))

# %%
display(shown.figures["roc"])

# %%
display(shown.figures["calibration"])

# %%
display(shown.figures["lift"])

# %%
display(shown.figures["feature_importance"])

# %% [markdown]
# ## Why a customer gets their score
#
# SHAP values from LightGBM itself (`pred_contrib`, `src/models/explain.py`): each customer's raw
# score (log-odds) split exactly into one contribution per feature plus the average. Below: the
# reasons of the customer with the highest score for the first product, then the mean |SHAP| per
# feature over the test rows (importance in log-odds, customer by customer, unlike split gain).
# The endpoint returns the same reasons for a decision when an authenticated caller asks
# (`explain: true`).

# %%
from src.models.explain import explain_rows, global_importance, plot_global, plot_reasons, reasons_text

product = chosen[0]
test_scores = run.model.predict_proba(run.test_rows)
who = run.test_rows.loc[[test_scores[product].idxmax()]]
reasons = explain_rows(run.model, who, top=8)
print("\n".join(reasons_text(reasons.groupby("product").head(3))))
display(plot_reasons(reasons.loc[reasons["product"] == product]))
plt.close("all")

# %%
sample = run.test_rows.sample(min(len(run.test_rows), 1000), random_state=0)
display(plot_global(global_importance(run.model, sample)))
plt.close("all")

# %% [markdown]
# ## Tracking and promotion
#
# The run also holds `model_card.md` (data window, metrics with intervals, calibration,
# importance, known limits); a registered version's description points to it.

# %%
print("MLflow run:", run.run_id, "\nmodel:", run.model_uri)
if run.promotion is not None:
    print(run.promotion)
print(run.extra["model_card"].split("## Calibration")[0])  # the card's head: use, window, metrics
if run_info_path:
    write_run_info(run_info_path, notebook="10_train_propensity", run_id=run.run_id, model_uri=run.model_uri,
                   experiment_id=run.extra.get("experiment_id"), plan=run.plan.as_dict(),
                   promotion=None if run.promotion is None else run.promotion.__dict__)
