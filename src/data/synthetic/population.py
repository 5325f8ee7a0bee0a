"""Customers, their hidden traits, devices and the holdings they bring into the period.

Everything is drawn once, vectorized over customers. Timestamps are int64 microseconds since
the Unix epoch (naive local time), converted to datetime64 only when written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

from src.data.schemas import INCOME_BANDS, LIFE_STAGES, PRODUCTS, REGIONS

US_PER_SEC = 1_000_000
US_PER_DAY = 86_400 * US_PER_SEC
NAT = np.iinfo(np.int64).min  # "no timestamp" sentinel inside the simulator
P_IDX = {p: i for i, p in enumerate(PRODUCTS)}

STAGE_SHARE = np.array([0.12, 0.18, 0.28, 0.25, 0.17])
STAGE_AGE = np.array([[19, 26], [24, 33], [30, 46], [40, 61], [60, 81]])
# Income band probabilities by life stage (rows) over INCOME_BANDS (columns).
STAGE_INCOME = np.array(
    [
        [0.60, 0.30, 0.08, 0.02, 0.00],
        [0.15, 0.40, 0.35, 0.08, 0.02],
        [0.05, 0.20, 0.40, 0.25, 0.10],
        [0.05, 0.15, 0.35, 0.28, 0.17],
        [0.35, 0.30, 0.20, 0.10, 0.05],
    ]
)
REGION_SHARE = np.array([0.19, 0.26, 0.06, 0.07, 0.05, 0.03, 0.03, 0.31])
# Digital behaviour by life stage: session-rate multiplier and share of sessions in the app.
STAGE_SESSION_RATE = np.array([1.3, 1.3, 1.0, 0.9, 0.5])
STAGE_APP_SHARE = np.array([0.9, 0.85, 0.75, 0.65, 0.5])
# Probability of holding each product at the start, by life stage (columns follow PRODUCTS).
STAGE_HOLDS = np.array(
    [
        # loan savings fund card  fx   pension
        [0.05, 0.20, 0.05, 0.50, 0.08, 0.00],
        [0.25, 0.40, 0.15, 0.80, 0.06, 0.10],
        [0.50, 0.45, 0.25, 0.85, 0.05, 0.30],
        [0.35, 0.50, 0.40, 0.85, 0.06, 0.50],
        [0.10, 0.60, 0.30, 0.50, 0.04, 0.70],
    ]
)
STAGE_AUTO_TRANSFER = np.array([0.20, 0.45, 0.50, 0.45, 0.20])
CARD_PAYMENT_DAYS = np.array([1, 5, 10, 12, 14, 15, 17, 20, 21, 23, 25, 27])


@dataclass(frozen=True)
class Population:
    """Per-customer arrays (index = customer number); the hidden and the observable side."""

    customer_ids: np.ndarray  # str objects, "C0000001"
    stage: np.ndarray  # int8 index into LIFE_STAGES
    income: np.ndarray  # int8 index into INCOME_BANDS
    birth_year: np.ndarray
    gender: np.ndarray  # str
    region: np.ndarray  # int8 index into REGIONS
    joined_us: np.ndarray
    consent: np.ndarray  # (n, 4) bool, CONTACT_CHANNELS order
    accident_us: np.ndarray  # NAT when none
    closed_us: np.ndarray  # NAT when open through the period
    closed_day: np.ndarray  # day index of closure (activity stops that day); large when open
    # Hidden traits.
    digital_affinity: np.ndarray
    app_share: np.ndarray
    preferred_hour: np.ndarray
    offer_affinity: np.ndarray
    need_offset: np.ndarray  # (n, P) static logit offsets
    # Devices: indexes into device_names; -1 when absent.
    app_device: np.ndarray
    app_device2: np.ndarray
    web_device: np.ndarray
    shared_web_device: np.ndarray  # a family member's web device this customer also uses
    device_names: np.ndarray  # str objects
    # Holdings that drive scheduled events (0 / NAT-like sentinels when absent).
    holds: np.ndarray  # (n, P) bool at the start
    card_payment_day: np.ndarray
    loan_interest_day: np.ndarray
    loan_balance: np.ndarray
    savings_maturity_day: np.ndarray  # day index relative to start (may be outside the period)
    savings_balance: np.ndarray
    auto_transfer_end_day: np.ndarray
    auto_transfer_dom: np.ndarray
    auto_transfer_amount: np.ndarray

    @property
    def n(self) -> int:
        return len(self.customer_ids)


def epoch_us(d: date | datetime) -> int:
    """Microseconds since the epoch of a naive date/datetime (local time, no zone)."""
    return int(pd.Timestamp(d).value // 1000)


def make_population(
    n: int,
    start: date,
    days: int,
    rng: np.random.Generator,
    shared_device_share: float = 0.03,
    second_app_device_share: float = 0.25,
    web_user_share: float = 0.7,
    accident_share: float = 0.01,
    closing_share: float = 0.015,
) -> Population:
    """Draw customers, traits, devices and scheduled-holding facts."""
    start_us = epoch_us(start)
    stage = rng.choice(len(LIFE_STAGES), size=n, p=STAGE_SHARE).astype(np.int8)
    age = rng.integers(STAGE_AGE[stage, 0], STAGE_AGE[stage, 1])
    birth_year = (start.year - age).astype(np.int64)
    cum_income = STAGE_INCOME.cumsum(axis=1)[stage]
    income = (rng.random(n)[:, None] > cum_income).sum(axis=1).clip(0, len(INCOME_BANDS) - 1)
    income = income.astype(np.int8)
    region = rng.choice(len(REGIONS), size=n, p=REGION_SHARE).astype(np.int8)
    gender = np.where(rng.random(n) < 0.5, "F", "M").astype(object)
    tenure_days = np.minimum(rng.exponential(1500, n) + 20, (age - 17) * 365)
    joined_us = start_us - (tenure_days * US_PER_DAY).astype(np.int64)
    joined_us -= joined_us % US_PER_SEC
    consent = rng.random((n, 4)) < np.array([0.65, 0.45, 0.55, 0.35])

    accident_us = np.full(n, NAT, dtype=np.int64)
    has_acc = rng.random(n) < accident_share
    acc_offset = rng.uniform(-365, days, n) * US_PER_DAY
    accident_us[has_acc] = (
        start_us + acc_offset[has_acc].astype(np.int64) // US_PER_SEC * US_PER_SEC
    )
    closed_us = np.full(n, NAT, dtype=np.int64)
    closed_day = np.full(n, 1 << 30, dtype=np.int64)
    closing = rng.random(n) < closing_share
    cday = rng.integers(1, max(days, 2), n)
    closed_day[closing] = cday[closing]
    ctime = (rng.uniform(9, 16, n) * 3600).astype(np.int64) * US_PER_SEC
    closed_us[closing] = start_us + cday[closing] * US_PER_DAY + ctime[closing]

    digital_affinity = rng.gamma(2.0, 0.5, n) * STAGE_SESSION_RATE[stage]
    app_share = np.clip(STAGE_APP_SHARE[stage] + rng.normal(0, 0.15, n), 0.05, 1.0)
    preferred_hour = np.clip(rng.normal(np.where(stage == 4, 10.0, 20.0), 3.0), 7, 23)
    # A third of customers barely react to offers: no uplift for them.
    offer_affinity = np.where(
        rng.random(n) < 0.35, rng.uniform(0.0, 0.2, n), rng.lognormal(0.0, 0.35, n)
    )
    need_offset = rng.normal(0.0, 0.9, (n, len(PRODUCTS))).astype(np.float32)

    # Devices: every customer has an app device; some a tablet; most a web browser.
    app_device = np.arange(n)
    has_dev2 = rng.random(n) < second_app_device_share
    app_device2 = np.full(n, -1)
    app_device2[has_dev2] = n + np.arange(has_dev2.sum())
    next_dev = n + int(has_dev2.sum())
    has_web = rng.random(n) < web_user_share
    web_device = np.full(n, -1)
    web_device[has_web] = next_dev + np.arange(has_web.sum())
    next_dev += int(has_web.sum())
    device_names = np.empty(next_dev, dtype=object)
    device_names[:n] = [f"A{i:08d}" for i in range(n)]
    device_names[n : n + has_dev2.sum()] = [f"A{i:08d}" for i in range(n, n + int(has_dev2.sum()))]
    device_names[n + has_dev2.sum() :] = [
        f"W{i:08d}" for i in range(n + int(has_dev2.sum()), next_dev)
    ]
    # Family sharing: a customer uses a partner's web device (the partner keeps using it too).
    shared_web_device = np.full(n, -1)
    web_owners = np.flatnonzero(has_web)
    n_shared = round(shared_device_share * n)
    if n_shared and len(web_owners) > 1:
        users = rng.choice(n, size=min(n_shared, n), replace=False)
        owners = rng.choice(web_owners, size=len(users))
        ok = owners != users
        shared_web_device[users[ok]] = web_device[owners[ok]]

    holds = rng.random((n, len(PRODUCTS))) < STAGE_HOLDS[stage]
    card_payment_day = np.where(holds[:, P_IDX["card"]], rng.choice(CARD_PAYMENT_DAYS, n), 0)
    loan_interest_day = np.where(holds[:, P_IDX["loan"]], rng.integers(1, 29, n), 0)
    loan_balance = np.where(
        holds[:, P_IDX["loan"]], np.round(rng.lognormal(np.log(4e7), 0.8, n), -4), 0.0
    )
    savings_maturity_day = np.where(holds[:, P_IDX["savings"]], rng.integers(-20, 366, n), 1 << 30)
    savings_balance = np.where(
        holds[:, P_IDX["savings"]], np.round(rng.lognormal(np.log(8e6), 0.9, n), -3), 0.0
    )
    has_auto = rng.random(n) < STAGE_AUTO_TRANSFER[stage]
    auto_transfer_end_day = np.where(has_auto, rng.integers(1, 541, n), 1 << 30)
    auto_transfer_dom = np.where(has_auto, rng.integers(1, 29, n), 0)
    auto_transfer_amount = np.where(has_auto, np.round(rng.lognormal(np.log(3e5), 0.6, n), -4), 0.0)

    return Population(
        customer_ids=np.array([f"C{i:07d}" for i in range(n)], dtype=object),
        stage=stage,
        income=income,
        birth_year=birth_year,
        gender=gender,
        region=region,
        joined_us=joined_us,
        consent=consent,
        accident_us=accident_us,
        closed_us=closed_us,
        closed_day=closed_day,
        digital_affinity=digital_affinity,
        app_share=app_share,
        preferred_hour=preferred_hour,
        offer_affinity=offer_affinity,
        need_offset=need_offset,
        app_device=app_device,
        app_device2=app_device2,
        web_device=web_device,
        shared_web_device=shared_web_device,
        device_names=device_names,
        holds=holds,
        card_payment_day=card_payment_day,
        loan_interest_day=loan_interest_day,
        loan_balance=loan_balance,
        savings_maturity_day=savings_maturity_day,
        savings_balance=savings_balance,
        auto_transfer_end_day=auto_transfer_end_day,
        auto_transfer_dom=auto_transfer_dom,
        auto_transfer_amount=auto_transfer_amount,
    )


def _ts(us: np.ndarray) -> pd.Series:
    out = pd.Series(us.astype("datetime64[us]"))
    return out.where(us != NAT)


#: zones of the customers who live abroad (the rest: null, the bank's zone)
FOREIGN_ZONES: tuple[str, ...] = (
    "America/Los_Angeles",
    "America/New_York",
    "Europe/London",
    "Asia/Tokyo",
    "Asia/Singapore",
    "Australia/Sydney",
)


def customers_frame(pop: Population, seed: int = 0) -> pd.DataFrame:
    """The observable customer master (schemas.Customers). About 3 % live abroad (``timezone``),
    drawn from their own generator derived from ``seed``: no other simulated value changes."""
    zone_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A6F6E65]))
    abroad = zone_rng.random(pop.n) < 0.03
    zones = np.array(FOREIGN_ZONES, dtype=object)[zone_rng.integers(len(FOREIGN_ZONES), size=pop.n)]
    zones[~abroad] = None
    return pd.DataFrame(
        {
            "customer_id": pd.array(pop.customer_ids, dtype="str"),
            "birth_year": pop.birth_year.astype(np.int64),
            "gender": pd.array(pop.gender, dtype="str"),
            "life_stage": pd.array(np.array(LIFE_STAGES, dtype=object)[pop.stage], dtype="str"),
            "income_band": pd.array(np.array(INCOME_BANDS, dtype=object)[pop.income], dtype="str"),
            "region": pd.array(np.array(REGIONS, dtype=object)[pop.region], dtype="str"),
            "joined_at": _ts(pop.joined_us),
            "consent_push": pop.consent[:, 0],
            "consent_sms": pop.consent[:, 1],
            "consent_messenger": pop.consent[:, 2],
            "consent_email": pop.consent[:, 3],
            "consent_night": night_consent(pop),
            "accident_reported_at": _ts(pop.accident_us),
            "closed_at": _ts(pop.closed_us),
            "timezone": pd.array(zones, dtype="str"),
        }
    )


def night_consent(pop: Population) -> np.ndarray:
    """Separate consent to advertising push/SMS at night (21:00-08:00): about a third of the
    customers who consented to push or SMS. Drawn from a hash of the join time, not from the
    population's generator, so adding the column changed no other draw of the simulated bank."""
    u = ((pop.joined_us // US_PER_SEC) * 2654435761 % 4294967296) / 4294967296.0
    return (pop.consent[:, 0] | pop.consent[:, 1]) & (u < 0.35)


def traits_frame(pop: Population) -> pd.DataFrame:
    """The hidden traits (truth only)."""
    frame = pd.DataFrame(
        {
            "customer_id": pd.array(pop.customer_ids, dtype="str"),
            "life_stage": pd.array(np.array(LIFE_STAGES, dtype=object)[pop.stage], dtype="str"),
            "digital_affinity": pop.digital_affinity,
            "app_share": pop.app_share,
            "preferred_hour": pop.preferred_hour,
            "offer_affinity": pop.offer_affinity,
        }
    )
    for j, product in enumerate(PRODUCTS):
        frame[f"need_offset_{product}"] = pop.need_offset[:, j]
        frame[f"holds_{product}"] = pop.holds[:, j]
    return frame


def initial_holdings(pop: Population, start: date, rng: np.random.Generator) -> pd.DataFrame:
    """Holdings opened before the period (due dates may fall inside it)."""
    start_us = epoch_us(start)
    n = pop.n
    idx = np.arange(n)
    day = US_PER_DAY

    def opened_before(mask: np.ndarray, max_days: float) -> np.ndarray:
        back = rng.uniform(30, max_days, n)
        when = np.maximum(start_us - (back * day).astype(np.int64), pop.joined_us)
        return (when - when % US_PER_SEC)[mask]

    rows: list[pd.DataFrame] = []

    def add(
        mask: np.ndarray,
        holding_type: str,
        product_code: np.ndarray | str,
        opened: np.ndarray,
        **cols: np.ndarray,
    ) -> None:
        frame = pd.DataFrame(
            {
                "customer_id": pop.customer_ids[mask],
                "holding_type": holding_type,
                "product_code": product_code
                if isinstance(product_code, str)
                else product_code[mask],
                "opened_us": opened,
            }
        )
        for name, values in cols.items():
            frame[name] = values[mask]
        rows.append(frame)

    every = np.ones(n, dtype=bool)
    add(
        every,
        "account",
        "ACC-BASIC",
        pop.joined_us,
        balance=np.round(rng.lognormal(np.log(2e6), 1.2, n), -2),
    )
    h = pop.holds
    card = h[:, P_IDX["card"]]
    add(
        card,
        "card",
        np.where(rng.random(n) < 0.6, "CARD-CREDIT", "CARD-CHECK").astype(object),
        opened_before(card, 2000),
        card_payment_day=pop.card_payment_day.astype(float),
    )
    loan = h[:, P_IDX["loan"]]
    add(
        loan,
        "loan",
        np.where(rng.random(n) < 0.5, "LOAN-JEONSE", "LOAN-CREDIT").astype(object),
        opened_before(loan, 1500),
        balance=pop.loan_balance,
        loan_interest_day=pop.loan_interest_day.astype(float),
    )
    sav = h[:, P_IDX["savings"]]
    term = np.where(rng.random(n) < 0.6, 365, 730)
    sav_open = start_us + (pop.savings_maturity_day - term) * day
    sav_open = np.maximum(sav_open, pop.joined_us)
    add(
        sav,
        "savings",
        np.where(term == 365, "SAV-12M", "SAV-24M").astype(object),
        sav_open[sav],
        balance=pop.savings_balance,
        maturity_us=(start_us + pop.savings_maturity_day * day).astype(np.int64),
    )
    fund = h[:, P_IDX["fund"]]
    add(
        fund,
        "fund",
        "FUND-GLOBAL-EQ",
        opened_before(fund, 1200),
        balance=np.round(rng.lognormal(np.log(5e6), 1.0, n), -3),
        fund_return_pct=np.round(rng.normal(2.0, 8.0, n), 2),
    )
    fx = h[:, P_IDX["fx"]]
    add(
        fx,
        "account",
        "FX-ACCT",
        opened_before(fx, 1500),
        balance=np.round(rng.lognormal(np.log(1e6), 1.0, n), -2),
    )
    pen = h[:, P_IDX["pension"]]
    add(
        pen,
        "pension",
        "PEN-IRP",
        opened_before(pen, 3000),
        balance=np.round(rng.lognormal(np.log(2e7), 1.0, n), -3),
    )
    auto = pop.auto_transfer_dom > 0
    add(
        auto,
        "auto_transfer",
        "AUTO-SAVE",
        opened_before(auto, 700),
        balance=pop.auto_transfer_amount,
        auto_end_us=(start_us + pop.auto_transfer_end_day * day).astype(np.int64),
    )
    del idx
    return pd.concat(rows, ignore_index=True)
