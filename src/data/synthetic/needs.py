"""Latent needs: one value in [0, 1] per customer and product, moving day by day.

need = sigmoid(static + walk + life_event + push), where
- static: life-stage base + income + holdings already held + a personal offset (never moves),
- walk: a slow mean-reverting random walk (AR(1), rho 0.97),
- life_event: a rare jump (+2.5 logits, decaying 5 %/day) in a stage-typical product,
- push: scheduled dates seen in the holdings (savings maturity, auto-transfer end).
Needs are exogenous: they never react to the simulated signups, so the daily signup
probabilities derived from them are exactly the probabilities the labels were drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from src.data.schemas import PRODUCTS
from src.data.synthetic.population import P_IDX, Population

# Base logits by life stage (rows: LIFE_STAGES) and product (columns: PRODUCTS).
STAGE_BASE = np.array(
    [
        # loan  savings fund  card   fx   pension
        [-2.6, -1.6, -2.6, -0.6, -0.8, -3.6],  # student: card, fx (travel / study abroad)
        [-1.2, -0.6, -1.9, -0.7, -1.9, -2.6],  # first_job: savings, loan (jeonse), card
        [-0.7, -1.1, -1.4, -1.6, -2.1, -1.9],  # family: loan, savings
        [-1.6, -1.3, -0.6, -1.9, -1.6, -0.8],  # mid_career: fund, pension
        [-2.6, -0.5, -1.3, -2.6, -2.3, -1.0],  # retiree: savings, pension
    ],
    dtype=np.float32,
)
INCOME_EFFECT = np.array(
    [  # rows: INCOME_BANDS
        [0.4, -0.3, -0.6, 0.0, 0.0, -0.4],
        [0.2, -0.1, -0.3, 0.0, 0.0, -0.2],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-0.2, 0.1, 0.3, 0.0, 0.1, 0.2],
        [-0.4, 0.1, 0.6, 0.1, 0.3, 0.3],
    ],
    dtype=np.float32,
)
HOLDS_EFFECT = np.array([-0.8, 0.0, 0.2, -1.0, -0.5, -1.0], dtype=np.float32)
# Which product a life event hits, by life stage.
LIFE_EVENT_PRODUCT = np.array(
    [
        [0.20, 0.00, 0.00, 0.30, 0.50, 0.00],
        [0.45, 0.35, 0.00, 0.20, 0.00, 0.00],
        [0.60, 0.20, 0.20, 0.00, 0.00, 0.00],
        [0.20, 0.00, 0.40, 0.00, 0.00, 0.40],
        [0.00, 0.50, 0.00, 0.00, 0.00, 0.50],
    ]
)
WALK_RHO, WALK_SIGMA = 0.97, 0.12
EVENT_JUMP, EVENT_DECAY, EVENT_RATE = 2.5, 0.95, 0.0015


@dataclass(frozen=True)
class NeedState:
    """The moving parts of the need logits, (customers, products) each."""

    walk: np.ndarray
    event: np.ndarray


def static_logits(pop: Population) -> np.ndarray:
    """The part of the need that never moves."""
    return (
        STAGE_BASE[pop.stage]
        + INCOME_EFFECT[pop.income]
        + HOLDS_EFFECT * pop.holds
        + pop.need_offset
    ).astype(np.float32)


def initial_state(n: int, rng: np.random.Generator) -> NeedState:
    """Start the walk at its stationary distribution, no life event under way."""
    sd = WALK_SIGMA / np.sqrt(1 - WALK_RHO**2)
    walk = rng.normal(0.0, sd, (n, len(PRODUCTS))).astype(np.float32)
    return NeedState(walk=walk, event=np.zeros_like(walk))


def advance(state: NeedState, stage: np.ndarray, rng: np.random.Generator) -> NeedState:
    """One day later: walk mean-reverts with noise, events decay, a few new events start."""
    n, n_products = state.walk.shape
    walk = WALK_RHO * state.walk + rng.normal(0.0, WALK_SIGMA, (n, n_products)).astype(np.float32)
    event = EVENT_DECAY * state.event
    hit = np.flatnonzero(rng.random(n) < EVENT_RATE)
    if len(hit):
        cum = LIFE_EVENT_PRODUCT[stage[hit]].cumsum(axis=1)
        product = (rng.random(len(hit))[:, None] > cum).sum(axis=1).clip(0, n_products - 1)
        event[hit, product] += EVENT_JUMP
    return NeedState(walk=walk.astype(np.float32), event=event.astype(np.float32))


class DueDays(Protocol):
    """What :func:`push_logits` reads: a :class:`Population`, or the due days rebuilt from the
    truth files (``src.evaluation.propensity.truth_state``)."""

    @property
    def n(self) -> int: ...
    @property
    def savings_maturity_day(self) -> np.ndarray: ...
    @property
    def auto_transfer_end_day(self) -> np.ndarray: ...


def push_logits(pop: DueDays, day: int) -> np.ndarray:
    """Scheduled pushes: money coming free soon makes customers think about where to put it."""
    push = np.zeros((pop.n, len(PRODUCTS)), dtype=np.float32)
    to_maturity = pop.savings_maturity_day - day
    soon = (to_maturity >= 0) & (to_maturity <= 30)
    push[:, P_IDX["savings"]] += np.where(soon, 2.0 * (1 - to_maturity / 30), 0.0)
    after = (to_maturity < 0) & (to_maturity >= -14)
    push[:, P_IDX["savings"]] += np.where(after, 1.0 * (1 + to_maturity / 14), 0.0)
    push[:, P_IDX["fund"]] += np.where(after, 0.8 * (1 + to_maturity / 14), 0.0)
    to_end = pop.auto_transfer_end_day - day
    ending = (to_end >= 0) & (to_end <= 30)
    push[:, P_IDX["savings"]] += np.where(ending, 1.5 * (1 - to_end / 30), 0.0)
    return push


def needs_today(static: np.ndarray, state: NeedState, push: np.ndarray) -> np.ndarray:
    """Need in [0, 1] as float32."""
    z = static + state.walk + state.event + push
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
