"""Online stepping: a counterfactual replay of the simulated period for a policy under test.

Requests (customer, slot, time, context) are drawn from the seed alone, and so are the uniforms
that decide each request's click and conversion. Two policies run with the same seed therefore
see identical traffic and identical luck: a reward differs only because the choice differs.
Fatigue counts only this environment's own exposures (the policy lives in its own world).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.data.schemas import CLICK_CHANNELS, SLOTS
from src.data.synthetic import response
from src.data.synthetic.oracle import DAY_SEC, METRICS, Oracle, _metric
from src.data.synthetic.population import US_PER_SEC


@dataclass(frozen=True)
class DecisionRequest:
    """What a policy sees when a slot is to be filled."""

    request_id: int
    customer_id: str
    slot: str
    ts: pd.Timestamp
    channel: str
    hour: int
    weekday: int


@dataclass(frozen=True)
class Reward:
    """Realized outcome; ``value`` is the offer's value_krw when converted, else 0."""

    click: bool
    convert: bool
    value: float
    cost: float


@dataclass(frozen=True)
class ExpectedReward:
    """Expected outcome of a choice under the current fatigue state."""

    click: float
    convert: float
    value: float
    net_value: float


class BankEnvironment:
    """Decision requests in time order over ``days`` days of the simulated period."""

    def __init__(
        self,
        oracle: Oracle,
        seed: int = 0,
        days: int | None = None,
        start_day: int = 0,
        requests_per_customer_day: float = 0.3,
        customer_ids=None,
    ) -> None:
        self.oracle = oracle
        self.seed = seed
        self.start_day = start_day
        self.days = oracle.days - start_day if days is None else days
        if start_day < 0 or self.days < 1 or start_day + self.days > oracle.days:
            raise ValueError("the environment's days must lie inside the simulated period")
        self.rate = requests_per_customer_day
        self.customers = (
            np.arange(len(oracle.customer_index))
            if customer_ids is None
            else oracle.customer_idx(customer_ids)
        )
        traits = oracle.traits
        self._activity = traits["digital_affinity"].to_numpy(float)
        self._app_share = traits["app_share"].to_numpy(float)
        self._pending: dict[int, tuple[int, int, bool, float, float]] = {}
        self._history: dict[int, list[tuple[int, int]]] = defaultdict(
            list
        )  # customer -> (second, offer), in time order
        self.steps: list[dict] = []
        self._offer_number = {str(o): i for i, o in enumerate(oracle.offer_table.offer_id)}
        self._slot_offer_numbers = {slot: oracle._slot_offers(slot) for slot in SLOTS}
        # request_id -> (offer numbers of its slot, P(click), P(convert | click)): computed once
        # per request and reused by best_offer / expected_reward / step (fatigue cannot change
        # before the request is answered, since requests are answered in time order).
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _day_requests(self, day: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(day,)))
        cust = self.customers
        active = self.oracle.closed_day[cust] > day
        count = rng.poisson(self.rate * self._activity[cust] * active)
        c = np.repeat(cust, count)
        pref = self.oracle._pref_hour[c]
        hour = np.where(
            rng.random(len(c)) < 0.6, rng.normal(pref, 2.0), rng.uniform(7.0, 23.5, len(c))
        )
        seconds = day * DAY_SEC + np.floor(np.clip(hour * 3600, 0, DAY_SEC - 1))
        slot = (rng.random(len(c))[:, None] > response.SLOT_SHARE.cumsum()[None, :-1]).sum(axis=1)
        is_app = rng.random(len(c)) < self._app_share[c]
        u_click, u_convert = rng.random(len(c)), rng.random(len(c))
        order = np.lexsort((c, seconds))
        return {
            "cust": c[order],
            "sec": seconds[order].astype(np.int64),
            "slot": slot[order],
            "is_app": is_app[order],
            "u_click": u_click[order],
            "u_convert": u_convert[order],
        }

    def requests(self) -> Iterator[DecisionRequest]:
        """Yield the request stream (identical for every policy given the seed)."""
        request_id = 0
        for day in range(self.start_day, self.start_day + self.days):
            r = self._day_requests(day)
            stamps = pd.to_datetime(
                self.oracle.start_us + r["sec"] * US_PER_SEC, unit="us"
            ).to_pydatetime()
            for i in range(len(r["cust"])):
                request_id += 1
                self._pending[request_id] = (
                    int(r["cust"][i]),
                    int(r["sec"][i]),
                    bool(r["is_app"][i]),
                    float(r["u_click"][i]),
                    float(r["u_convert"][i]),
                )
                ts = pd.Timestamp(stamps[i])
                yield DecisionRequest(
                    request_id=request_id,
                    customer_id=str(self.oracle.customer_index[r["cust"][i]]),
                    slot=SLOTS[int(r["slot"][i])],
                    ts=ts,
                    channel=CLICK_CHANNELS[1] if r["is_app"][i] else CLICK_CHANNELS[0],
                    hour=int(ts.hour),
                    weekday=int(ts.weekday()),
                )

    def _fatigue(self, cust: int, second: int, offer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        window_start = (second // DAY_SEC - self.oracle.fatigue_window_days) * DAY_SEC
        history = self._history[cust]
        while history and history[0][0] < window_start:  # requests come in time order: drop the old
            history.pop(0)
        recent = [o for s, o in history if s < second]
        n_all = np.full(len(offer), len(recent))
        n_same = np.array([recent.count(int(k)) for k in offer])
        return n_all, n_same

    def _probs(self, request: DecisionRequest, offer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cust, second, is_app, _, _ = self._pending[request.request_id]
        n_all, n_same = self._fatigue(cust, second, offer)
        k = len(offer)
        return self.oracle._probs(
            np.full(k, cust), offer, np.full(k, second), np.full(k, is_app), n_all, n_same
        )

    def _slot_probs(self, request: DecisionRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every offer of the request's slot with its probabilities, computed once per request."""
        cached = self._cache.get(request.request_id)
        if cached is None:
            if request.request_id not in self._pending:
                raise KeyError(f"request {request.request_id} is unknown or already answered")
            offer = self._slot_offer_numbers[request.slot]
            cached = self._cache[request.request_id] = (offer, *self._probs(request, offer))
        return cached

    def _expected_of(
        self, offer: np.ndarray, p_click: np.ndarray, p_convert: np.ndarray
    ) -> dict[str, np.ndarray]:
        table = self.oracle.offer_table
        return {
            m: _metric(m, p_click, p_convert, table.value_krw[offer], table.cost_krw[offer])
            for m in METRICS
        }

    def _expected(self, request: DecisionRequest, offer: np.ndarray) -> dict[str, np.ndarray]:
        slot_offer, p_click, p_convert = self._slot_probs(request)
        pos = np.searchsorted(slot_offer, offer)
        if (pos >= len(slot_offer)).any() or (
            slot_offer[pos.clip(max=len(slot_offer) - 1)] != offer
        ).any():
            raise ValueError(f"offer(s) outside slot {request.slot}")
        return self._expected_of(offer, p_click[pos], p_convert[pos])

    def _offer(self, offer_id: str) -> int:
        if offer_id not in self._offer_number:
            raise KeyError(f"unknown offer_id {offer_id!r}")
        return self._offer_number[offer_id]

    def expected_rewards(self, request: DecisionRequest, offer_ids=None) -> pd.DataFrame:
        """Expected click / convert / value of every (eligible) offer of the request's slot."""
        offer = self.oracle._slot_offers(request.slot, offer_ids)
        return pd.DataFrame(
            {
                "offer_id": self.oracle.offer_index[offer].to_numpy(),
                **self._expected(request, offer),
            }
        )

    def expected_reward(self, request: DecisionRequest, offer_id: str) -> ExpectedReward:
        """Expected outcome of choosing ``offer_id`` now (for regret)."""
        values = self._expected(request, np.array([self._offer(offer_id)]))
        return ExpectedReward(**{m: float(v[0]) for m, v in values.items()})

    def expected_all(
        self, request: DecisionRequest, metric: str = "click"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(offer ids of the request's slot in catalog order, their expected ``metric``): one array
        call, no DataFrame — what a simulation loop needs per request."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        offer, p_click, p_convert = self._slot_probs(request)
        table = self.oracle.offer_table
        values = _metric(metric, p_click, p_convert, table.value_krw[offer], table.cost_krw[offer])
        return table.offer_id[offer], values

    def best_offer(
        self, request: DecisionRequest, offer_ids=None, metric: str = "value"
    ) -> tuple[str, float]:
        """The oracle's choice for this request and its expected reward."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        offer = (
            self._slot_offer_numbers[request.slot]
            if offer_ids is None
            else self.oracle._slot_offers(request.slot, offer_ids)
        )
        values = self._expected(request, offer)[metric]
        best = int(values.argmax())
        return str(self.oracle.offer_table.offer_id[offer[best]]), float(values[best])

    def step(self, request: DecisionRequest, offer_id: str, prob: float = 1.0) -> Reward:
        """Show ``offer_id``: draw the outcome from the true probabilities, then add fatigue."""
        if request.request_id not in self._pending:
            raise KeyError(f"request {request.request_id} is unknown or already answered")
        offer = np.array([self._offer(offer_id)])
        if self.oracle.offer_table.slot[offer[0]] != SLOTS.index(request.slot):
            raise ValueError(f"offer {offer_id} does not belong to slot {request.slot}")
        if not 0 < prob <= 1:
            raise ValueError("prob must be in (0, 1]")
        slot_offer, p_all, p_conv_all = self._slot_probs(request)
        pos = int(np.searchsorted(slot_offer, offer[0]))
        p_click, p_convert = p_all[pos : pos + 1], p_conv_all[pos : pos + 1]
        self._cache.pop(request.request_id, None)
        cust, second, _, u_click, u_convert = self._pending.pop(request.request_id)
        click = bool(u_click < p_click[0])
        convert = click and bool(u_convert < p_convert[0])
        table = self.oracle.offer_table
        reward = Reward(
            click=click,
            convert=convert,
            value=float(table.value_krw[offer[0]]) if convert else 0.0,
            cost=float(table.cost_krw[offer[0]]),
        )
        self._history[cust].append((second, int(offer[0])))
        self.steps.append(
            {
                "request_id": request.request_id,
                "offer_id": offer_id,
                "prob": prob,
                "click": click,
                "convert": convert,
                "value": reward.value,
            }
        )
        return reward

    def log_frame(self) -> pd.DataFrame:
        """Every step so far (request, choice, its probability, reward)."""
        return pd.DataFrame(self.steps)
