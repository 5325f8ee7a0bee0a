"""How customers respond: offers, click/convert probabilities, daily signup probabilities.

The simulator and the oracle call these same functions, so the probabilities the oracle reports
are by construction the ones the logged outcomes were drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.data.schemas import LIFE_STAGES, PRODUCTS, SLOTS

# (offer_id, slot, product, creative, value_krw, cost_krw, {life_stage: bonus})
CATALOG: tuple[tuple[str, str, str, str, float, float, dict[str, float]], ...] = (
    (
        "OF01",
        "home_banner",
        "loan",
        "Jeonse loan: rate cut 0.3%p",
        250_000,
        20,
        {"family": 0.4, "first_job": 0.3},
    ),
    ("OF02", "home_banner", "savings", "12-month savings at 4.5%", 40_000, 15, {}),
    ("OF03", "home_banner", "card", "Check card: 10% back at cafes", 30_000, 10, {"student": 0.3}),
    (
        "OF04",
        "home_banner",
        "fund",
        "Global ETF fund: first-buy fee waived",
        90_000,
        15,
        {"mid_career": 0.3},
    ),
    ("OF05", "home_banner", "fx", "Travel FX: 90% rate preference", 15_000, 10, {"student": 0.2}),
    (
        "OF06",
        "home_banner",
        "pension",
        "IRP: tax credit up to 1.48M KRW",
        120_000,
        20,
        {"mid_career": 0.3},
    ),
    ("OF07", "home_banner", "loan", "Credit line: check your limit in 1 minute", 180_000, 15, {}),
    (
        "OF08",
        "account_message",
        "savings",
        "Maturity coming: roll over at a bonus rate",
        50_000,
        8,
        {"retiree": 0.3},
    ),
    ("OF09", "account_message", "fx", "Overseas remittance: first 3 fee-free", 20_000, 8, {}),
    ("OF10", "account_message", "card", "Payment day: switch to auto-pay points", 25_000, 6, {}),
    (
        "OF11",
        "account_message",
        "loan",
        "Refinancing check: lower your loan rate",
        200_000,
        10,
        {"mid_career": 0.2},
    ),
    (
        "OF12",
        "account_message",
        "fund",
        "Idle cash into an MMF-type fund",
        70_000,
        8,
        {"retiree": 0.3},
    ),
    ("OF13", "account_message", "pension", "Move your pension account here", 110_000, 10, {}),
    (
        "OF14",
        "account_message",
        "savings",
        "Salary-day auto savings",
        35_000,
        6,
        {"first_job": 0.5},
    ),
    ("OF15", "events_for_me", "card", "Student card: 15% off transit", 20_000, 5, {"student": 0.9}),
    ("OF16", "events_for_me", "fx", "Study-abroad remittance package", 25_000, 5, {"student": 0.7}),
    (
        "OF17",
        "events_for_me",
        "savings",
        "Newlywed home savings",
        45_000,
        5,
        {"family": 0.6, "first_job": 0.5},
    ),
    ("OF18", "events_for_me", "fund", "Children's future fund", 80_000, 5, {"family": 0.7}),
    (
        "OF19",
        "events_for_me",
        "pension",
        "Senior pension bonus event",
        100_000,
        5,
        {"retiree": 0.9},
    ),
    ("OF20", "events_for_me", "loan", "First-job starter loan", 160_000, 5, {"first_job": 0.9}),
)
SLOT_EFFECT = {"home_banner": 0.0, "account_message": -0.3, "events_for_me": 0.2}
SLOT_SHARE = np.array([0.5, 0.3, 0.2])  # which slot a session shows, SLOTS order

CLICK_BASE, CLICK_NEED, HOUR_MATCH, APP_EFFECT = -3.4, 3.0, 0.35, 0.15
FATIGUE_ALL, FATIGUE_SAME = 0.12, 0.4
CONVERT_BASE, CONVERT_NEED, CONVERT_HOLDS = -3.0, 3.5, -0.6
SIGNUP_BASE, SIGNUP_NEED = -8.6, 5.5


@dataclass(frozen=True)
class OfferTable:
    """The catalog as arrays (index = offer number) with its hidden parameters."""

    offer_id: np.ndarray
    slot: np.ndarray  # int index into SLOTS
    product: np.ndarray  # int index into PRODUCTS
    creative: np.ndarray
    value_krw: np.ndarray
    cost_krw: np.ndarray
    quality: np.ndarray  # hidden creative quality (logit)
    convert_base: np.ndarray  # hidden
    stage_bonus: np.ndarray  # hidden, (offers, life stages)
    logging_prob: np.ndarray  # the logging policy: P(offer | slot)

    def public_frame(self) -> pd.DataFrame:
        """The observable catalog (schemas.Offers)."""
        return pd.DataFrame(
            {
                "offer_id": pd.array(self.offer_id, dtype="str"),
                "slot": pd.array(np.array(SLOTS, dtype=object)[self.slot], dtype="str"),
                "product": pd.array(np.array(PRODUCTS, dtype=object)[self.product], dtype="str"),
                "creative": pd.array(self.creative, dtype="str"),
                "value_krw": self.value_krw.astype(float),
                "cost_krw": self.cost_krw.astype(float),
            }
        )

    def truth_frame(self) -> pd.DataFrame:
        """Catalog plus hidden parameters and the logging policy."""
        frame = self.public_frame()
        frame["quality"] = self.quality
        frame["convert_base"] = self.convert_base
        frame["logging_prob"] = self.logging_prob
        for j, stage in enumerate(LIFE_STAGES):
            frame[f"stage_bonus_{stage}"] = self.stage_bonus[:, j]
        return frame

    @classmethod
    def from_truth_frame(cls, frame: pd.DataFrame) -> OfferTable:
        return cls(
            offer_id=frame["offer_id"].to_numpy(dtype=object),
            slot=frame["slot"].map({s: i for i, s in enumerate(SLOTS)}).to_numpy(np.int64),
            product=frame["product"].map({p: i for i, p in enumerate(PRODUCTS)}).to_numpy(np.int64),
            creative=frame["creative"].to_numpy(dtype=object),
            value_krw=frame["value_krw"].to_numpy(float),
            cost_krw=frame["cost_krw"].to_numpy(float),
            quality=frame["quality"].to_numpy(float),
            convert_base=frame["convert_base"].to_numpy(float),
            stage_bonus=frame[[f"stage_bonus_{s}" for s in LIFE_STAGES]].to_numpy(float),
            logging_prob=frame["logging_prob"].to_numpy(float),
        )


def make_offers(rng: np.random.Generator, uniform_mix: float = 0.5) -> OfferTable:
    """The catalog with drawn creative quality and a fixed, known logging policy."""
    n = len(CATALOG)
    slot = np.array([SLOTS.index(c[1]) for c in CATALOG])
    stage_bonus = rng.normal(0.0, 0.15, (n, len(LIFE_STAGES)))
    for i, c in enumerate(CATALOG):
        for stage, bonus in c[6].items():
            stage_bonus[i, LIFE_STAGES.index(stage)] += bonus
    prior = rng.dirichlet(np.ones(n) * 2.0)
    logging_prob = np.zeros(n)
    for s in range(len(SLOTS)):
        in_slot = slot == s
        k = in_slot.sum()
        p = prior[in_slot] / prior[in_slot].sum()
        logging_prob[in_slot] = uniform_mix / k + (1 - uniform_mix) * p
    return OfferTable(
        offer_id=np.array([c[0] for c in CATALOG], dtype=object),
        slot=slot,
        product=np.array([PRODUCTS.index(c[2]) for c in CATALOG]),
        creative=np.array([c[3] for c in CATALOG], dtype=object),
        value_krw=np.array([c[4] for c in CATALOG], dtype=float),
        cost_krw=np.array([c[5] for c in CATALOG], dtype=float),
        quality=rng.normal(0.0, 0.35, n),
        convert_base=CONVERT_BASE + rng.normal(0.0, 0.3, n),
        stage_bonus=stage_bonus,
        logging_prob=logging_prob,
    )


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def click_prob(
    offers: OfferTable,
    offer: np.ndarray,
    stage: np.ndarray,
    offer_affinity: np.ndarray,
    need_for_product: np.ndarray,
    hour: np.ndarray,
    preferred_hour: np.ndarray,
    is_app: np.ndarray,
    n_recent_all: np.ndarray,
    n_recent_same: np.ndarray,
) -> np.ndarray:
    """P(click): creative + stage fit + affinity x need + slot + hour match - fatigue."""
    slot_effect = np.array([SLOT_EFFECT[s] for s in SLOTS])[offers.slot[offer]]
    z = (
        CLICK_BASE
        + offers.quality[offer]
        + offers.stage_bonus[offer, stage]
        + slot_effect
        + CLICK_NEED * offer_affinity * need_for_product
        + HOUR_MATCH * np.cos(2 * np.pi * (hour - preferred_hour) / 24)
        + APP_EFFECT * is_app
        - FATIGUE_ALL * n_recent_all
        - FATIGUE_SAME * n_recent_same
    )
    return sigmoid(z)


def convert_prob(
    offers: OfferTable, offer: np.ndarray, need_for_product: np.ndarray, holds_product: np.ndarray
) -> np.ndarray:
    """P(convert | click): driven by the need for the offer's product."""
    z = offers.convert_base[offer] + CONVERT_NEED * need_for_product + CONVERT_HOLDS * holds_product
    return sigmoid(z)


def organic_signup_prob(need: np.ndarray) -> np.ndarray:
    """Daily probability of signing up for a product without any offer."""
    return sigmoid(SIGNUP_BASE + SIGNUP_NEED * need.astype(np.float64))


SECONDS_BITS = 34  # keys pack (group, second since start) into one int64


def fatigue_keys(group: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Sortable int64 key of (group, whole second since simulation start)."""
    return (group.astype(np.int64) << SECONDS_BITS) + seconds.astype(np.int64)


def count_before(
    sorted_keys: np.ndarray,
    group: np.ndarray,
    seconds: np.ndarray,
    window_start_seconds: np.ndarray,
) -> np.ndarray:
    """How many history entries of the same group fall in [window_start, seconds) — strictly
    before, so the simulator (which includes today's exposures in the history) and the oracle
    count the same set."""
    hi = np.searchsorted(sorted_keys, fatigue_keys(group, seconds), side="left")
    lo = np.searchsorted(sorted_keys, fatigue_keys(group, window_start_seconds), side="left")
    return hi - lo
