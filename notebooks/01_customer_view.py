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
# # 01 — The unified customer view
#
# One row per customer as of a date T, built from the customer master, holdings, web/app
# clickstream (anonymous until login, stitched to the customer) and transactions — only from
# what happened strictly before T. The logic lives in `src/features` (SQL run by DuckDB over
# Parquet); this notebook looks at what it produces.
#
# Run `make demo` first (or pass `data_dir` pointing at a simulated bank).

# %% tags=["parameters"]
data_dir = ""  # empty: the project's data/ directory
as_of = ""  # empty: the day after the last event in the clickstream

# %%
import matplotlib.pyplot as plt
import pandas as pd

from src.features.customer_view import build_customer_view, data_dictionary
from src.features.identity import connect_tables, identity_map, session_map
from src.settings import Settings

settings = Settings(data_dir=data_dir) if data_dir else Settings()
catalog = settings.catalog  # validated tables: run `nextoffer validate` first
con = connect_tables(catalog, tables=("customers", "holdings", "clickstream", "transactions", "offers", "exposures"))
last_ts = con.sql("SELECT max(ts) FROM clickstream").fetchall()[0][0]
as_of_ts = pd.Timestamp(as_of) if as_of else pd.Timestamp(last_ts).normalize() + pd.Timedelta(days=1)
print(f"validated tables: {catalog.validated_dir}\nview as of: {as_of_ts:%Y-%m-%d}")

# %% [markdown]
# ## The raw tables

# %%
counts = {
    table: con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    for table in ("customers", "holdings", "clickstream", "transactions", "offers", "exposures")
}
pd.Series(counts, name="rows").to_frame()

# %% [markdown]
# ## Identity stitching
#
# Clickstream events are anonymous until the session logs in. A session with a login belongs to
# that customer (its anonymous start included); a session without one is attributed through its
# device or cookie — but only when that identifier was logged into by exactly one customer. A
# shared device (two customers logged in on it) is never used to merge them.

# %%
sessions = session_map(con, as_of=as_of_ts)
identities = identity_map(con, as_of=as_of_ts)
resolution = sessions["resolution"].value_counts()
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
resolution.plot.barh(ax=axes[0], color="tab:blue")
axes[0].set_title("How sessions were attributed")
axes[0].set_xlabel("sessions")
identities.groupby(["identifier_type", "is_shared"]).size().unstack(fill_value=0).plot.bar(
    ax=axes[1], stacked=True
)
axes[1].set_title("Identifiers linked through logins")
axes[1].set_xlabel("identifier type")
axes[1].set_ylabel("identifiers")
axes[1].tick_params(axis="x", labelrotation=0)
axes[1].legend(title="shared by customers", fontsize=8)
axes[0].set_ylabel("attribution")
plt.tight_layout()
print(f"shared identifiers (not merged): {int(identities['is_shared'].sum()):,}")

# %% [markdown]
# ## The view as of T

# %%
view = build_customer_view(catalog, as_of_ts)
dictionary = pd.DataFrame(data_dictionary(), index=["dtype", "meaning"]).T
print(f"{len(view):,} customers x {view.shape[1]} columns")
dictionary.head(20)

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
view.boxplot(column="age", by="life_stage", ax=axes[0], grid=False)
axes[0].set_title("Age by life stage")
axes[0].set_xlabel("life stage")
axes[0].set_ylabel("age")
axes[0].tick_params(axis="x", labelrotation=30, labelsize=8)
holdings = view[[c for c in view.columns if c.startswith("n_") and "currencies" not in c]]
(holdings > 0).mean().sort_values().plot.barh(ax=axes[1], color="tab:green")
axes[1].set_title("Share of customers holding ...")
axes[1].set_xlabel("share of customers")
axes[1].set_ylabel("holding")
axes[1].xaxis.set_major_formatter("{x:.0%}")
view["days_to_savings_maturity"].dropna().plot.hist(bins=30, ax=axes[2], color="tab:orange")
axes[2].set_title("Days to savings maturity")
axes[2].set_xlabel("days to maturity")
axes[2].set_ylabel("customers")
plt.suptitle("")
plt.tight_layout()

# %% [markdown]
# ## Activity: which product pages each life stage looks at (last 30 days)

# %%
page_groups = ["loan", "fx", "fund", "savings", "card", "signup", "pension", "error"]
pv = view.groupby("life_stage")[[f"pv_{g}_30d" for g in page_groups]].mean()
pv.columns = page_groups
fig, ax = plt.subplots(figsize=(8, 3.5))
image = ax.imshow(pv.values, aspect="auto", cmap="viridis")
ax.set_xticks(range(len(page_groups)), page_groups)
ax.set_yticks(range(len(pv)), pv.index)
fig.colorbar(image, ax=ax, label="page views per customer, 30 days")
ax.set_title("Product page views by life stage")
ax.set_xlabel("page group")
ax.set_ylabel("life stage")
plt.tight_layout()

# %%
txn_cols = [c for c in view.columns if c.startswith("txn_") and c.endswith("_cnt_30d")]
txn = view[txn_cols].sum().sort_values()
txn.index = [c.removeprefix("txn_").removesuffix("_cnt_30d").upper() for c in txn.index]
ax = txn.plot.barh(figsize=(7, 4), color="tab:purple", title="Transactions by code, last 30 days")
ax.set_xlabel("transactions")
ax.set_ylabel("transaction code")

# %% [markdown]
# ## Contact eligibility
# Consent per channel and the exclusion flags the scoring endpoint will apply.

# %%
flags = ["consent_push", "consent_sms", "consent_messenger", "consent_email",
         "is_accident_reported", "is_closed"]
view[flags].mean().rename("share of customers").to_frame().style.format("{:.1%}")

# %% [markdown]
# ## Does the view see what drives customers?
# The simulator knows each customer's latent need per product (never in the raw tables). The view
# only sees its traces — product page views, inquiries, due dates. Customers binned by their true
# need on the day before T: the observable traces should rise with it, noisily.

# %%
from src.data.synthetic import Oracle

if (settings.truth_dir / "meta.json").exists():
    oracle = Oracle.load(settings.truth_dir, settings.raw_dir)
    day_before = as_of_ts - pd.Timedelta(days=1)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, product in zip(axes, ["loan", "fx", "fund", "savings"]):
        need = oracle.need(view["customer_id"].to_numpy(), product, day_before)
        bins = pd.qcut(need, 5, labels=["q1", "q2", "q3", "q4", "q5"], duplicates="drop")
        view.groupby(bins, observed=True)[f"pv_{product}_30d"].mean().plot.bar(ax=ax, color="tab:red")
        ax.set_title(f"{product}: page views by true need")
        ax.set_xlabel("true need quintile")
    axes[0].set_ylabel("page views, 30 days")
    plt.tight_layout()
else:
    print("no simulator truth next to these raw tables (real data): nothing to compare")

# %% [markdown]
# ## Point in time
# The same customer a week earlier: every feature only sees events strictly before its T.

# %%
earlier = build_customer_view(catalog, as_of_ts - pd.Timedelta(days=7))
busiest = view.sort_values("page_views_30d", ascending=False)["customer_id"].iloc[0]
columns = ["sessions_7d", "sessions_30d", "page_views_30d", "days_since_last_session",
           "days_to_card_payment", "days_to_savings_maturity"]
pd.concat(
    {
        f"as of {as_of_ts - pd.Timedelta(days=7):%Y-%m-%d}": earlier.set_index("customer_id").loc[busiest, columns],
        f"as of {as_of_ts:%Y-%m-%d}": view.set_index("customer_id").loc[busiest, columns],
    },
    axis=1,
)
