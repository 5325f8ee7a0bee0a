"""What the bank allows: the offer catalog, targeting rules, consent per channel, contact caps.

A YAML/JSON file the business side edits without touching code. It lives in ``src.contact``
(below both ``src.serving`` and ``src.campaigns``) because the offer slot and the outbound sender
must apply one and the same contact policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# --- the policy file ------------------------------------------------------------------------

Op = Literal["eq", "ne", "in", "not_in", "gte", "gt", "lte", "lt"]


class Offer(BaseModel):
    """One offer of the catalog and who may see it (``target``: customer-view column -> op -> value)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offer_id: str
    slots: tuple[str, ...]
    product: str
    creative: str = ""
    value_krw: float = 0.0
    cost_krw: float = 0.0
    target: dict[str, dict[Op, Any]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _slot_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "slot" in data and "slots" not in data:
            data = {**data, "slots": [data["slot"]]}
            data.pop("slot")
        return data


class Cap(BaseModel):
    """Most contacts per local day and per the last 7 local days (today included); None = no cap."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_day: int | None = Field(None, ge=0)
    per_week: int | None = Field(None, ge=0)


DEFAULT_CONSENT: dict[str, str | None] = {
    # outbound channels need the customer's marketing consent for that channel; the app and web
    # slots are shown inside a session the customer opened (a bank may require consent there too)
    "push": "consent_push",
    "sms": "consent_sms",
    "messenger": "consent_messenger",
    "email": "consent_email",
    "app": None,
    "web": None,
}
DEFAULT_HELD: dict[str, str] = {
    "loan": "n_loan",
    "savings": "n_savings",
    "fund": "n_fund",
    "card": "n_card",
    "pension": "n_pension",
}


class PolicyConfig(BaseModel):
    """What the bank allows: offers, consent per channel, product-held columns, caps, fallback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    offers: tuple[Offer, ...]
    consent_by_channel: dict[str, str | None] = Field(default_factory=lambda: dict(DEFAULT_CONSENT))
    held_columns: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_HELD),
        description="product -> view column counting open holdings; an offer of a held product is excluded",
    )
    channel_cap: Cap = Cap(per_day=3, per_week=10)
    channel_caps: dict[str, Cap] = Field(default_factory=dict, description="per-channel overrides")
    offer_cap: Cap = Cap(per_day=1, per_week=3)
    default_order: tuple[str, ...] = Field(
        (),
        description="Fallback ranking when no model is loaded; offers not listed follow in catalog order.",
    )
    fallback_epsilon: float = Field(
        0.05, ge=0, le=1, description="Exploration of the fallback policies."
    )
    mark_ttl_hours: float = Field(168.0, gt=0, description="How long a rule's mark_offer stays on.")

    @field_validator("offers")
    @classmethod
    def _unique(cls, offers: tuple[Offer, ...]) -> tuple[Offer, ...]:
        ids = [o.offer_id for o in offers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate offer_id(s) {dupes}")
        if not offers:
            raise ValueError("the catalog has no offers")
        return offers

    @model_validator(mode="after")
    def _known_order(self) -> PolicyConfig:
        unknown = set(self.default_order) - {o.offer_id for o in self.offers}
        if unknown:
            raise ValueError(f"default_order names unknown offer(s) {sorted(unknown)}")
        return self

    def cap_for(self, channel: str) -> Cap:
        return self.channel_caps.get(channel, self.channel_cap)


def policy_from_offers(offers: pd.DataFrame, **overrides: Any) -> PolicyConfig:
    """A policy with default rules over an offer table (``raw/offers.parquet``); fallback order:
    highest expected margin first (value_krw)."""
    records = offers.sort_values("offer_id").to_dict("records")
    items = [
        Offer(
            offer_id=str(r["offer_id"]),
            slots=(str(r["slot"]),),
            product=str(r["product"]),
            creative=str(r.get("creative", "")),
            value_krw=float(r.get("value_krw", 0.0)),
            cost_krw=float(r.get("cost_krw", 0.0)),
        )
        for r in records
    ]
    order = tuple(o.offer_id for o in sorted(items, key=lambda o: -o.value_krw))
    return PolicyConfig(offers=tuple(items), default_order=order, **overrides)


def load_policy(path: Path) -> PolicyConfig:
    """Read a policy file (``.yaml``/``.yml``/``.json``); errors name the file and the field."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    try:
        return PolicyConfig.model_validate(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
