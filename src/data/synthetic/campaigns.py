"""How the synthetic bank answers an outbound campaign message.

Each customer has a true effect of being contacted about a product: a base conversion
probability ``p0`` if left alone (latent need) and ``p1`` if contacted, which adds an uplift that
grows with need, offer affinity, the channel's reach and how close the send hour is to the
customer's habits. Some customers convert anyway (*sure things*), some only when contacted
(*persuadables*), some never (*lost causes*) and some are put off (*sleeping dogs*: contact
halves their chance). Opens and clicks depend on the channel, the hour and digital habits. The
oracle (``src.evaluation.campaigns``) reads ``p0``/``p1`` to give a campaign's true lift.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.schemas import PRODUCTS

#: open rate at the customer's preferred hour, and the uplift multiplier, per channel
CHANNEL_OPEN: dict[str, float] = {
    "push": 0.25,
    "sms": 0.45,
    "lms": 0.40,
    "messenger": 0.55,
    "email": 0.15,
    "app": 0.30,
}
CHANNEL_UPLIFT: dict[str, float] = {
    "push": 1.0,
    "sms": 0.8,
    "lms": 0.9,
    "messenger": 1.1,
    "email": 0.5,
    "app": 0.7,
}
SLEEPING_DOG_SHARE = 0.08
UPLIFT_TYPES = ("sure_thing", "persuadable", "lost_cause", "sleeping_dog")


@dataclass(frozen=True)
class CampaignTruth:
    """The hidden inputs of the response: traits and the needs on the last simulated day."""

    customer_ids: pd.Index
    need: np.ndarray  # (n, P) latent need on the last simulated day
    affinity: np.ndarray
    digital: np.ndarray
    preferred_hour: np.ndarray

    @classmethod
    def load(cls, truth_dir: Path) -> CampaignTruth:
        traits = pd.read_parquet(Path(truth_dir) / "customer_traits.parquet")
        needs = np.load(Path(truth_dir) / "needs.npy", mmap_mode="r")
        return cls(
            pd.Index(traits["customer_id"].astype(str)),
            np.asarray(needs[-1], dtype=float),
            traits["offer_affinity"].to_numpy(float),
            traits["digital_affinity"].to_numpy(float),
            traits["preferred_hour"].to_numpy(float),
        )


def _unit(seed: int, tag: str, ids: pd.Index) -> np.ndarray:
    """Per-customer uniforms from a hash (stable: the same customer draws the same, whatever
    else is in the campaign)."""
    out = np.empty(len(ids))
    for i, cid in enumerate(ids):
        h = hashlib.sha256(f"{seed}:{tag}:{cid}".encode()).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2.0**64
    return out


def effects(
    truth: CampaignTruth,
    customer_ids: pd.Index,
    product: str,
    channel: str,
    hour: int,
    window_days: int = 14,
    seed: int = 0,
) -> pd.DataFrame:
    """Per customer: ``p0`` (not contacted), ``p1`` (contacted) conversion within the window,
    open/click probabilities if contacted, and the uplift type."""
    idx = truth.customer_ids.get_indexer(pd.Index(customer_ids).astype(str))
    if (idx < 0).any():
        raise KeyError("unknown customer_id(s) in the campaign")
    need = truth.need[idx, PRODUCTS.index(product)]
    affinity = np.minimum(truth.affinity[idx], 2.0)
    hour_gap = np.abs(((hour - truth.preferred_hour[idx]) + 12) % 24 - 12)
    hour_factor = np.exp(-hour_gap / 6.0)
    scale = min(window_days, 30) / 14.0
    p0 = np.clip((0.005 + 0.12 * need**1.5) * scale, 0, 0.9)
    tau = 0.10 * need * affinity * CHANNEL_UPLIFT[channel] * (0.5 + 0.5 * hour_factor) * scale
    dog = _unit(seed, "dog", pd.Index(customer_ids)) < SLEEPING_DOG_SHARE
    p1 = np.where(dog, p0 * 0.5, np.clip(p0 + tau, 0, 0.95))
    kind = np.where(
        dog,
        "sleeping_dog",
        np.where(tau >= 0.01, "persuadable", np.where(p0 >= 0.05, "sure_thing", "lost_cause")),
    )
    p_open = np.clip(
        CHANNEL_OPEN[channel] * hour_factor * (0.5 + 0.5 * np.minimum(truth.digital[idx], 2.0)),
        0,
        0.95,
    )
    p_click = np.clip(0.05 + 0.3 * need * affinity, 0, 0.9)
    return pd.DataFrame(
        {"p0": p0, "p1": p1, "p_open": p_open, "p_click": p_click, "uplift_type": kind},
        index=pd.Index(customer_ids, name="customer_id"),
    )


def respond(
    eff: pd.DataFrame, contacted: pd.Series, delivered_share: float = 0.97, seed: int = 0
) -> pd.DataFrame:
    """Draw outcomes: ``contacted`` (customer -> bool) picks ``p1`` over ``p0``; opens and
    clicks only for delivered messages (a contacted customer's message may bounce)."""
    ids = eff.index
    c = contacted.reindex(ids).fillna(False).astype(bool).to_numpy()
    delivered = c & (_unit(seed, "delivered", ids) < delivered_share)
    opened = delivered & (_unit(seed, "open", ids) < eff["p_open"].to_numpy())
    clicked = opened & (_unit(seed, "click", ids) < eff["p_click"].to_numpy())
    p = np.where(delivered, eff["p1"].to_numpy(), eff["p0"].to_numpy())
    converted = _unit(seed, "convert", ids) < p
    return pd.DataFrame(
        {"delivered": delivered, "opened": opened, "clicked": clicked, "converted": converted},
        index=ids,
    )
