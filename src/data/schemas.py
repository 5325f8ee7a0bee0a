"""The raw data contract: one pandera model per table.

These are the tables a bank hands over (or the simulator writes under ``data/raw/``).
Everything downstream — the customer view SQL, detection rules, models — relies only on
the columns declared here. Timestamps are naive local time (Asia/Seoul), amounts are in
the transaction's own currency.
"""

from __future__ import annotations

import warnings
from zoneinfo import available_timezones

import pandas as pd

# pandera imports pyspark.pandas when pyspark is installed (the `spark` extra) — at import and
# again when it builds a schema — and pyspark 4.x warns each time that it does not fully support
# pandas 3. Nothing here uses pandas-on-Spark (the Spark engine uses Spark SQL and Arrow), so
# that one notice is filtered for the process, by its exact message.
warnings.filterwarnings(
    "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
)
import pandera.pandas as pa  # noqa: E402
from pandera.typing import Series  # noqa: E402

# Controlled vocabularies. A value outside these lists is bad input, not a new category.
PRODUCTS: tuple[str, ...] = ("loan", "savings", "fund", "card", "fx", "pension")
LIFE_STAGES: tuple[str, ...] = ("student", "first_job", "family", "mid_career", "retiree")
INCOME_BANDS: tuple[str, ...] = ("low", "lower_mid", "mid", "upper_mid", "high")
REGIONS: tuple[str, ...] = (
    "seoul",
    "gyeonggi",
    "incheon",
    "busan",
    "daegu",
    "gwangju",
    "daejeon",
    "other",
)
HOLDING_TYPES: tuple[str, ...] = (
    "account",
    "card",
    "loan",
    "savings",
    "fund",
    "auto_transfer",
    "pension",
)
CLICK_CHANNELS: tuple[str, ...] = ("web", "app")
CLICK_ACTIONS: tuple[str, ...] = ("view", "click", "submit", "login", "logout", "error")
REFERRERS: tuple[str, ...] = ("direct", "push", "sms", "search", "banner", "messenger", "email")
TXN_CODES: tuple[str, ...] = (
    "TRANSFER",
    "CARD_PAYMENT",
    "FX_REMIT",
    "LOAN_LIMIT_INQUIRY",
    "LOAN_APPLICATION",
    "PRODUCT_SIGNUP",
    "DEPOSIT",
    "WITHDRAWAL",
    "BALANCE_INQUIRY",
    "MATURITY_PAYOUT",
    "AUTO_TRANSFER",
    "LOAN_INTEREST",
    "FUND_BUY",
)
TXN_CHANNELS: tuple[str, ...] = ("app", "web", "branch", "atm", "auto")
CURRENCIES: tuple[str, ...] = ("KRW", "USD", "JPY", "EUR", "CNY", "VND")
# Fixed reference rates (KRW per unit) to put amounts in different currencies on one scale.
# Raw amounts stay in the transaction's own currency; features and rules that need KRW
# ("a remittance of at least 10M KRW") convert with these. Approximate constants, not market data.
KRW_REFERENCE_RATES: dict[str, float] = {
    "KRW": 1.0,
    "USD": 1400.0,
    "JPY": 9.5,
    "EUR": 1500.0,
    "CNY": 195.0,
    "VND": 0.055,
}
SLOTS: tuple[str, ...] = ("home_banner", "account_message", "events_for_me")
CONTACT_CHANNELS: tuple[str, ...] = ("push", "sms", "messenger", "email")

# Pages of the web/app site. Flows in the simulator and rules in detection use these names.
PAGES: tuple[str, ...] = (
    "home",
    "login",
    "account_summary",
    "transfer_input",
    "transfer_done",
    "card_statement",
    "card_benefits",
    "loan_main",
    "loan_limit_inquiry",
    "loan_limit_result",
    "loan_apply_step1",
    "loan_apply_step2",
    "loan_apply_step3",
    "loan_apply_done",
    "fx_main",
    "fx_rates",
    "fx_remit_input",
    "fx_remit_done",
    "fund_list",
    "fund_detail",
    "fund_buy_done",
    "savings_list",
    "savings_detail",
    "signup_step1",
    "signup_step2",
    "signup_step3",
    "signup_done",
    "pension_main",
    "events",
    "support",
    "error",
)


#: the names a customer's ``timezone`` may take: the IANA database this Python knows
TIMEZONES: frozenset[str] = frozenset(available_timezones())


def _isin(values: tuple[str, ...]) -> pa.Check:
    return pa.Check.isin(list(values))


class Customers(pa.DataFrameModel):
    """Customer master: static traits and contact/exclusion flags."""

    customer_id: Series[str] = pa.Field(unique=True)
    birth_year: Series[int] = pa.Field(ge=1900, le=2030)
    gender: Series[str] = pa.Field(isin=["F", "M"])
    life_stage: Series[str] = pa.Field(isin=list(LIFE_STAGES))
    income_band: Series[str] = pa.Field(isin=list(INCOME_BANDS))
    region: Series[str] = pa.Field(isin=list(REGIONS))
    joined_at: Series[pd.Timestamp]
    consent_push: Series[bool]
    consent_sms: Series[bool]
    consent_messenger: Series[bool]
    consent_email: Series[bool]
    # advertising push/SMS between 21:00 and 08:00 needs this separate consent (Korean rule);
    # optional and nullable so exports that predate it still validate: absent or null = no
    # night-time consent on record (the campaign gate fails closed)
    consent_night: Series[pd.BooleanDtype] | None = pa.Field(nullable=True)
    accident_reported_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    closed_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    # the customer's own time zone (IANA name, e.g. Europe/London) for quiet hours; optional and
    # nullable: absent or null = the bank's zone (Asia/Seoul); an unknown name is refused
    timezone: Series[str] | None = pa.Field(nullable=True)

    @pa.check("timezone", name="iana_timezone", error="not an IANA time zone name")
    @classmethod
    def _known_zone(cls, zone: Series[str]) -> Series[bool]:
        return zone.isna() | zone.isin(TIMEZONES)

    class Config:
        name = "customers"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


class Holdings(pa.DataFrameModel):
    """One row per product a customer holds (or held), with its due dates."""

    holding_id: Series[str] = pa.Field(unique=True)
    customer_id: Series[str]
    holding_type: Series[str] = pa.Field(isin=list(HOLDING_TYPES))
    product_code: Series[str]
    opened_at: Series[pd.Timestamp]
    closed_at: Series[pd.Timestamp] = pa.Field(nullable=True)
    balance: Series[float] = pa.Field(nullable=True)  # loans carry their outstanding amount
    card_payment_day: Series[pd.Int64Dtype] = pa.Field(ge=1, le=31, nullable=True)
    maturity_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    loan_interest_day: Series[pd.Int64Dtype] = pa.Field(ge=1, le=31, nullable=True)
    auto_transfer_end_date: Series[pd.Timestamp] = pa.Field(nullable=True)
    fund_return_pct: Series[float] = pa.Field(nullable=True)

    class Config:
        name = "holdings"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


class Clickstream(pa.DataFrameModel):
    """Web and app events. ``customer_id`` is null until the session logs in.

    Event ids are unique across clickstream and transactions together, so a stitched
    event stream can be keyed by ``event_id`` alone.
    """

    event_id: Series[int] = pa.Field(unique=True)
    ts: Series[pd.Timestamp]
    channel: Series[str] = pa.Field(isin=list(CLICK_CHANNELS))
    device_id: Series[str]
    cookie_id: Series[str] = pa.Field(nullable=True)  # web only
    customer_id: Series[str] = pa.Field(nullable=True)
    session_id: Series[int]
    page: Series[str] = pa.Field(isin=list(PAGES))
    action: Series[str] = pa.Field(isin=list(CLICK_ACTIONS))
    dwell_seconds: Series[float] = pa.Field(ge=0)
    referrer: Series[str] = pa.Field(isin=list(REFERRERS))

    class Config:
        name = "clickstream"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


class Transactions(pa.DataFrameModel):
    """Transaction log: a code plus detail fields (amount, currency, product)."""

    event_id: Series[int] = pa.Field(unique=True)
    ts: Series[pd.Timestamp]
    customer_id: Series[str]
    code: Series[str] = pa.Field(isin=list(TXN_CODES))
    channel: Series[str] = pa.Field(isin=list(TXN_CHANNELS))
    amount: Series[float] = pa.Field(ge=0)
    currency: Series[str] = pa.Field(isin=list(CURRENCIES))
    product: Series[str] = pa.Field(isin=list(PRODUCTS), nullable=True)
    session_id: Series[pd.Int64Dtype] = pa.Field(nullable=True)  # the web/app session it came from

    class Config:
        name = "transactions"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


class Offers(pa.DataFrameModel):
    """Offer catalog: what can be shown in which slot."""

    offer_id: Series[str] = pa.Field(unique=True)
    slot: Series[str] = pa.Field(isin=list(SLOTS))
    product: Series[str] = pa.Field(isin=list(PRODUCTS))
    creative: Series[str]
    value_krw: Series[float] = pa.Field(ge=0)  # expected margin of one conversion
    cost_krw: Series[float] = pa.Field(ge=0)  # cost of one exposure

    class Config:
        name = "offers"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


class Exposures(pa.DataFrameModel):
    """Logged decisions and responses, with the logging policy's probability."""

    decision_id: Series[str] = pa.Field(unique=True)
    ts: Series[pd.Timestamp]
    customer_id: Series[str]
    slot: Series[str] = pa.Field(isin=list(SLOTS))
    channel: Series[str] = pa.Field(isin=list(CLICK_CHANNELS))
    offer_id: Series[str]
    logged_prob: Series[float] = pa.Field(gt=0, le=1)
    click: Series[bool]
    convert: Series[bool]

    class Config:
        name = "exposures"
        strict = True  # a missing or unexpected column is an error
        coerce = True  # CSV strings are parsed; what does not parse is an error


TABLES: dict[str, type[pa.DataFrameModel]] = {
    "customers": Customers,
    "holdings": Holdings,
    "clickstream": Clickstream,
    "transactions": Transactions,
    "offers": Offers,
    "exposures": Exposures,
}


class StitchedEvents(pa.DataFrameModel):
    """Clickstream and transactions as one time-ordered stream per customer.

    Built by ``src.features.identity``: clicks carry the customer their session, device or
    cookie resolves to (null when it cannot be resolved without merging two customers);
    transaction-only fields are null on clicks and click-only fields null on transactions.
    This is the input of detection rules and journey analysis.
    """

    event_id: Series[int] = pa.Field(unique=True)
    ts: Series[pd.Timestamp]
    customer_id: Series[str] = pa.Field(nullable=True)
    source: Series[str] = pa.Field(isin=["click", "txn"])
    channel: Series[str]
    session_id: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    page: Series[str] = pa.Field(nullable=True)
    action: Series[str] = pa.Field(nullable=True)
    dwell_seconds: Series[float] = pa.Field(nullable=True)
    referrer: Series[str] = pa.Field(nullable=True)
    code: Series[str] = pa.Field(nullable=True)
    amount: Series[float] = pa.Field(nullable=True)
    currency: Series[str] = pa.Field(nullable=True)
    product: Series[str] = pa.Field(nullable=True)
    amount_krw: Series[float] = pa.Field(nullable=True)  # amount at KRW_REFERENCE_RATES

    class Config:
        name = "stitched_events"
        strict = True
        coerce = True
