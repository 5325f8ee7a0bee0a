"""The synthetic bank: a Korean retail bank simulator that knows its own truth.

Generative model (one day at a time, vectorized over customers; ``simulator.py``):

1. **Customers** (``population.py``): life stage (student, first_job, family, mid_career,
   retiree) sets age, income band, product holdings and digital habits; consent per channel,
   a few accident reports and closings (which may fall inside the period). Hidden traits:
   digital affinity, app share, preferred hour, offer affinity (a third barely react to offers).
2. **Latent needs** (``needs.py``) per customer x product in [0, 1]:
   ``sigmoid(stage/income/holdings base + personal offset + AR(1) walk + life-event jump + push)``,
   where pushes come from due dates visible in the holdings (savings maturity, auto-transfer end).
   Needs are exogenous (never react to signups) and are written only to ``truth/needs.npy``.
3. **Sessions** (``flows.py``): rate ~ affinity x (0.6 + 0.8 max need), more near card payment
   day. Web/app sessions are anonymous until the ``login`` event; some never log in (fx_rates,
   product pages). Customers use 1-3 devices; web cookies reset; ~3 % use a family member's web
   device, so only logins tell them apart. Pages come from templates: habits (home ->
   account_summary -> transfer) dominate; browsing of a product's pages (deeper, with long dwell
   on detail pages, the higher the need); abandoned flows; steps erroring 2-4 times in a row.
   Transactions are emitted by flow steps (TRANSFER, BALANCE_INQUIRY, LOAN_LIMIT_INQUIRY, FX_REMIT,
   LOAN_APPLICATION, FUND_BUY, PRODUCT_SIGNUP; ``session_id`` set, ts inside the session), by
   schedules (CARD_PAYMENT, LOAN_INTEREST, AUTO_TRANSFER, MATURITY_PAYOUT, salary DEPOSIT:
   channel ``auto``) and at branch/ATM. Amounts are in the transaction's own currency: FX_REMIT is
   drawn as a KRW equivalent (median 1.5M, ~3 % >= 10M KRW) and stored in the remittance currency
   (USD/JPY/EUR/CNY/VND) via ``schemas.KRW_REFERENCE_RATES``; every other amount is KRW.
4. **Offers** (``response.py``): 20 offers over the 3 slots, hidden creative quality and
   life-stage fit. One logged-in session in ``exposure_prob_per_session`` shows one slot; the
   logging policy (known, in ``truth/offers.parquet``: ``logging_uniform_mix`` x uniform + the rest
   a fixed prior) picks the offer. ``P(click) = sigmoid(base + quality + stage fit + slot +
   affinity x 3 x need[product] + hour match + app - 0.12 x exposures in the last 7 days
   - 0.4 x same-offer exposures)``; ``P(convert | click) = sigmoid(base_o + 3.5 need - 0.6 holds)``.
5. **Signups**: daily ``q = 1 - (1 - sigmoid(-8.6 + 5.5 need)) x prod_exposures(1 - p_click p_convert)``
   for every customer x product x day (a conversion is a signup; organic signups happen in a
   session or at the branch). ``q`` is stored (``truth/signup_prob.npy``) and is exactly what the
   labels were drawn from, so ``Oracle.true_signup_prob`` and the labels agree.

Public API: ``SimConfig``, ``simulate``, ``Oracle``, ``BankEnvironment`` (with
``DecisionRequest``, ``Reward``, ``ExpectedReward``). Truth files: ``meta.json``, ``needs.npy``,
``signup_prob.npy``, ``signup_prob_organic.npy`` (days x customers x PRODUCTS, float32),
``customer_traits.parquet``, ``offers.parquet``, ``exposure_truth.parquet`` (true probabilities
by decision_id), ``signups.parquet``.
"""

from src.data.synthetic.config import SimConfig
from src.data.synthetic.environment import BankEnvironment, DecisionRequest, ExpectedReward, Reward
from src.data.synthetic.oracle import Oracle
from src.data.synthetic.simulator import simulate

__all__ = [
    "BankEnvironment",
    "DecisionRequest",
    "ExpectedReward",
    "Oracle",
    "Reward",
    "SimConfig",
    "simulate",
]
