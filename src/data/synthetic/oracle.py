"""The oracle: the simulator's true probabilities for any customer, offer, product and day.

It reads the hidden truth (needs, daily signup probabilities, traits, creative quality) and,
for fatigue, the logged exposures; it calls the same response functions the simulator drew
the logged outcomes from. Use it to score models (oracle AUC), bandits (regret) and
off-policy estimates (true policy value) — never as a model input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.schemas import CLICK_CHANNELS, PRODUCTS, SLOTS
from src.data.synthetic import response
from src.data.synthetic.population import US_PER_SEC

DAY_SEC = 86_400
METRICS = ("click", "convert", "value", "net_value")


@dataclass(frozen=True)
class ExposureHistory:
    """Sorted fatigue keys of past exposures: (customer) and (customer, offer) by second."""

    keys_all: np.ndarray
    keys_same: np.ndarray

    @classmethod
    def build(
        cls, customer: np.ndarray, second: np.ndarray, offer: np.ndarray, n_offers: int
    ) -> ExposureHistory:
        return cls(
            np.sort(response.fatigue_keys(customer, second)),
            np.sort(response.fatigue_keys(customer * n_offers + offer, second)),
        )

    @classmethod
    def empty(cls) -> ExposureHistory:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))


class Oracle:
    """True click / convert / signup probabilities; best offer and its value."""

    def __init__(self, truth_dir: Path, raw_dir: Path) -> None:
        truth_dir, raw_dir = Path(truth_dir), Path(raw_dir)
        meta = json.loads((truth_dir / "meta.json").read_text())
        self.start_us: int = int(meta["start_us"])
        self.start = pd.Timestamp(self.start_us * 1000)
        self.days: int = int(meta["days"])
        self.fatigue_window_days: int = int(meta["config"]["fatigue_window_days"])
        self.needs = np.load(truth_dir / "needs.npy", mmap_mode="r")
        self.signup_prob_daily = np.load(truth_dir / "signup_prob.npy", mmap_mode="r")
        self.organic_signup_prob_daily = np.load(
            truth_dir / "signup_prob_organic.npy", mmap_mode="r"
        )
        self.traits = pd.read_parquet(truth_dir / "customer_traits.parquet")
        self.customer_index = pd.Index(self.traits["customer_id"].astype(str))
        self.offer_table = response.OfferTable.from_truth_frame(
            pd.read_parquet(truth_dir / "offers.parquet")
        )
        self.offer_index = pd.Index(self.offer_table.offer_id.astype(str))
        self.offers = self.offer_table.public_frame()
        from src.data.schemas import LIFE_STAGES

        self._stage = (
            self.traits["life_stage"]
            .map({s: i for i, s in enumerate(LIFE_STAGES)})
            .to_numpy(np.int64)
        )
        self._affinity = self.traits["offer_affinity"].to_numpy(float)
        self._pref_hour = self.traits["preferred_hour"].to_numpy(float)
        self._holds = self.traits[[f"holds_{p}" for p in PRODUCTS]].to_numpy(float)
        customers = pd.read_parquet(
            raw_dir / "customers.parquet", columns=["customer_id", "closed_at"]
        )
        closed = customers.set_index("customer_id")["closed_at"].reindex(self.customer_index)
        closed_day = np.floor((closed - self.start).dt.total_seconds().to_numpy() / DAY_SEC)
        self.closed_day = np.where(np.isnan(closed_day), 1 << 30, closed_day).astype(np.int64)
        exposures = pd.read_parquet(
            raw_dir / "exposures.parquet", columns=["ts", "customer_id", "offer_id"]
        )
        self.history = ExposureHistory.build(
            self.customer_idx(exposures["customer_id"]),
            self._seconds(exposures["ts"]),
            self.offer_idx(exposures["offer_id"]),
            len(self.offer_index),
        )

    @classmethod
    def load(cls, truth_dir: Path, raw_dir: Path) -> Oracle:
        return cls(truth_dir, raw_dir)

    # --- lookups ----------------------------------------------------------------------------
    def customer_idx(self, customer_ids) -> np.ndarray:
        idx = self.customer_index.get_indexer(
            pd.Index(np.atleast_1d(np.asarray(customer_ids, dtype=object)).astype(str))
        )
        if (idx < 0).any():
            raise KeyError("unknown customer_id(s)")
        return idx

    def offer_idx(self, offer_ids) -> np.ndarray:
        idx = self.offer_index.get_indexer(
            pd.Index(np.atleast_1d(np.asarray(offer_ids, dtype=object)).astype(str))
        )
        if (idx < 0).any():
            raise KeyError("unknown offer_id(s)")
        return idx

    def _seconds(self, ts) -> np.ndarray:
        """Whole seconds since the simulation start."""
        values = pd.to_datetime(pd.Series(np.atleast_1d(np.asarray(ts)))).astype("datetime64[us]")
        return (values.astype("int64").to_numpy() - self.start_us) // US_PER_SEC

    def _day(self, seconds: np.ndarray) -> np.ndarray:
        day = seconds // DAY_SEC
        if (day < 0).any() or (day >= self.days).any():
            raise ValueError(
                f"timestamps must fall in the simulated period ({self.days} days from {self.start})"
            )
        return day

    def need(self, customer_ids, product: str, ts) -> np.ndarray:
        """The latent need (truth) of customers for a product on the day of ``ts``."""
        cust = self.customer_idx(customer_ids)
        day = self._day(self._seconds(ts))
        cust, day = np.broadcast_arrays(cust, day)
        return np.asarray(self.needs[day, cust, PRODUCTS.index(product)], dtype=float)

    # --- responses --------------------------------------------------------------------------
    def fatigue(
        self,
        cust: np.ndarray,
        offer: np.ndarray,
        seconds: np.ndarray,
        history: ExposureHistory | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exposures of the customer (any offer, same offer) in the window strictly before ``seconds``."""
        history = self.history if history is None else history
        window_start = (seconds // DAY_SEC - self.fatigue_window_days) * DAY_SEC
        n_offers = len(self.offer_index)
        return (
            response.count_before(history.keys_all, cust, seconds, window_start),
            response.count_before(
                history.keys_same, cust * n_offers + offer, seconds, window_start
            ),
        )

    def _probs(
        self,
        cust: np.ndarray,
        offer: np.ndarray,
        seconds: np.ndarray,
        is_app: np.ndarray,
        n_all: np.ndarray,
        n_same: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(click), P(convert | click)) on index arrays; fatigue counts given."""
        day = self._day(seconds)
        product = self.offer_table.product[offer]
        need = np.asarray(self.needs[day, cust, product], dtype=np.float32)
        hour = np.floor((seconds - day * DAY_SEC) / 3600)
        p_click = response.click_prob(
            self.offer_table,
            offer,
            self._stage[cust],
            self._affinity[cust],
            need,
            hour,
            self._pref_hour[cust],
            is_app.astype(float),
            n_all,
            n_same,
        )
        p_convert = response.convert_prob(self.offer_table, offer, need, self._holds[cust, product])
        return p_click, p_convert

    def _prepare(self, customer_ids, offer_ids, ts, channel) -> tuple[np.ndarray, ...]:
        cust, offer, seconds = np.broadcast_arrays(
            self.customer_idx(customer_ids), self.offer_idx(offer_ids), self._seconds(ts)
        )
        channel = np.broadcast_to(np.asarray(channel, dtype=object), cust.shape)
        if not np.isin(channel, CLICK_CHANNELS).all():
            raise ValueError(f"channel must be one of {CLICK_CHANNELS}")
        return cust, offer, seconds, channel == "app"

    def true_click_prob(
        self, customer_ids, offer_ids, ts, channel="app", history: ExposureHistory | None = None
    ) -> np.ndarray:
        """P(click) of showing each offer to each customer at ``ts`` (arrays broadcast)."""
        cust, offer, seconds, is_app = self._prepare(customer_ids, offer_ids, ts, channel)
        n_all, n_same = self.fatigue(cust, offer, seconds, history)
        return self._probs(cust, offer, seconds, is_app, n_all, n_same)[0]

    def true_convert_prob(self, customer_ids, offer_ids, ts, channel="app") -> np.ndarray:
        """P(convert | click); it depends on the day's need, not on fatigue or channel."""
        cust, offer, seconds, is_app = self._prepare(customer_ids, offer_ids, ts, channel)
        zeros = np.zeros(len(cust))
        return self._probs(cust, offer, seconds, is_app, zeros, zeros)[1]

    def expected(
        self,
        customer_ids,
        offer_ids,
        ts,
        channel="app",
        metric: str = "value",
        history: ExposureHistory | None = None,
    ) -> np.ndarray:
        """Expected reward of a decision: click, convert (= click x convert|click), value (x value_krw)
        or net_value (value - cost_krw)."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}")
        cust, offer, seconds, is_app = self._prepare(customer_ids, offer_ids, ts, channel)
        n_all, n_same = self.fatigue(cust, offer, seconds, history)
        p_click, p_convert = self._probs(cust, offer, seconds, is_app, n_all, n_same)
        return _metric(
            metric,
            p_click,
            p_convert,
            self.offer_table.value_krw[offer],
            self.offer_table.cost_krw[offer],
        )

    def best_offer(
        self,
        customer_ids,
        slot: str,
        ts,
        channel="app",
        offer_ids=None,
        metric: str = "value",
        history: ExposureHistory | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per customer (and ts): the best eligible offer of the slot and its expected reward.

        ``offer_ids`` restricts the candidates (eligibility); default: all offers of the slot.
        """
        candidates = self._slot_offers(slot, offer_ids)
        cust = self.customer_idx(customer_ids)
        seconds = np.broadcast_to(self._seconds(ts), cust.shape)
        channel = np.broadcast_to(np.asarray(channel, dtype=object), cust.shape)
        rows = np.repeat(np.arange(len(cust)), len(candidates))
        values = self.expected(
            self.customer_index[cust[rows]],
            self.offer_index[np.tile(candidates, len(cust))],
            pd.to_datetime(self.start_us + seconds[rows] * US_PER_SEC, unit="us"),
            channel[rows],
            metric,
            history,
        ).reshape(len(cust), len(candidates))
        best = values.argmax(axis=1)
        return self.offer_index[candidates[best]].to_numpy(), values[np.arange(len(cust)), best]

    def best_value(
        self,
        customer_ids,
        slot: str,
        ts,
        channel="app",
        offer_ids=None,
        metric: str = "value",
        history: ExposureHistory | None = None,
    ) -> np.ndarray:
        """The best policy's expected reward per request."""
        return self.best_offer(customer_ids, slot, ts, channel, offer_ids, metric, history)[1]

    def _slot_offers(self, slot: str, offer_ids=None) -> np.ndarray:
        if slot not in SLOTS:
            raise ValueError(f"slot must be one of {SLOTS}")
        in_slot = np.flatnonzero(self.offer_table.slot == SLOTS.index(slot))
        if offer_ids is not None:
            in_slot = np.intersect1d(in_slot, self.offer_idx(offer_ids))
        if len(in_slot) == 0:
            raise ValueError("no eligible offer in this slot")
        return in_slot

    # --- signups ----------------------------------------------------------------------------
    def true_signup_prob(
        self, customer_ids, product: str, as_of, window_days: int = 30, include_offers: bool = True
    ) -> np.ndarray:
        """P(at least one signup of ``product`` in the days [as_of, as_of + window_days)).

        Computed from the daily probabilities the simulator drew signups from (with the realized
        offers' uplift, unless ``include_offers`` is False). ``as_of`` counts by its date; days past
        the simulated period are not counted (the labels cannot see them either).
        """
        daily = self.signup_prob_daily if include_offers else self.organic_signup_prob_daily
        cust = self.customer_idx(customer_ids)
        first = np.broadcast_to(self._seconds(as_of) // DAY_SEC, cust.shape)
        p = PRODUCTS.index(product)
        out = np.empty(len(cust))
        for day in np.unique(first):
            rows = np.flatnonzero(first == day)
            lo, hi = max(int(day), 0), min(int(day) + window_days, self.days)
            if hi <= lo:
                out[rows] = 0.0
                continue
            q = np.asarray(daily[lo:hi, :, p], dtype=np.float64)[:, cust[rows]]
            out[rows] = 1.0 - np.exp(np.log1p(-q).sum(axis=0))
        return out


def _metric(
    metric: str,
    p_click: np.ndarray,
    p_convert: np.ndarray,
    value_krw: np.ndarray,
    cost_krw: np.ndarray,
) -> np.ndarray:
    if metric == "click":
        return p_click
    if metric == "convert":
        return p_click * p_convert
    if metric == "value":
        return p_click * p_convert * value_krw
    return p_click * p_convert * value_krw - cost_krw
