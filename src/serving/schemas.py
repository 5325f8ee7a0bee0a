"""Request and response bodies of the HTTP API (what the OpenAPI document publishes).

Requests are strict about what the service relies on (slot, channel, ids) and reject unknown
fields, so a typo in a client is a 422 naming the field rather than a silently ignored value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from src.data.schemas import CLICK_CHANNELS, CONTACT_CHANNELS, SLOTS

Channel = Literal[tuple(CLICK_CHANNELS + CONTACT_CHANNELS)]  # type: ignore[valid-type]
Slot = Literal[SLOTS]  # type: ignore[valid-type]
CustomerId = str
_ID = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.:]+$")


class RequestContext(BaseModel):
    """Where and when the offer will be shown. ``time`` defaults to the server's clock."""

    model_config = ConfigDict(extra="forbid")

    channel: Channel  # type: ignore[valid-type]  # a Literal built from the vocabularies
    device: str | None = Field(None, max_length=64)
    page: str | None = Field(None, max_length=64)
    time: datetime | None = None


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = _ID
    slot: Slot
    context: RequestContext


class RankedOffer(BaseModel):
    offer_id: str
    product: str
    score: float | None = Field(
        description="Champion propensity of the offer's product (None: no model)."
    )
    probability: float = Field(
        description="Probability the policy would choose it among the eligible."
    )


class ExcludedOffer(BaseModel):
    offer_id: str
    reason: str


class ChosenOffer(BaseModel):
    offer_id: str
    product: str
    creative: str


class DecisionResponse(BaseModel):
    """The choice and everything needed to audit it; ``offer`` is None when nothing may be shown."""

    decision_id: str
    customer_id: str
    slot: str
    channel: str
    offer: ChosenOffer | None
    probability: float | None = Field(description="Probability the chosen offer was drawn with.")
    policy: Literal["bandit", "propensity_greedy", "default_order", "none"]
    ranked: list[RankedOffer]
    excluded: list[ExcludedOffer]
    model_versions: dict[str, str]
    cold_start: bool
    fallback: bool
    fallback_reason: str | None
    created_at: datetime


RewardKind = Literal["click", "conversion"]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decision_id: str = Field(min_length=1, max_length=64)
    kind: RewardKind
    value_krw: float | None = Field(
        None, ge=0, le=1e12, description="Margin of a conversion, if known."
    )


class RewardResponse(BaseModel):
    decision_id: str
    kind: RewardKind
    stored: bool = Field(description="False: this reward was already stored (idempotent repeat).")


class EventRequest(BaseModel):
    """A click or transaction in the ``StitchedEvents`` shape (src.data.schemas)."""

    model_config = ConfigDict(extra="forbid")

    event_id: int = Field(ge=0, le=2**62)
    ts: datetime
    customer_id: str | None = Field(None, min_length=1, max_length=64)
    source: Literal["click", "txn"]
    channel: str = Field(max_length=32)
    session_id: int | None = Field(None, ge=0, le=2**62)
    page: str | None = Field(None, max_length=64)
    action: str | None = Field(None, max_length=32)
    dwell_seconds: float | None = Field(None, ge=0, le=1e7)
    referrer: str | None = Field(None, max_length=32)
    code: str | None = Field(None, max_length=32)
    amount: float | None = Field(None, ge=0, le=1e15)
    currency: str | None = Field(None, max_length=8)
    product: str | None = Field(None, max_length=32)
    amount_krw: float | None = Field(None, ge=0, le=1e18)


class TriggeredAction(BaseModel):
    customer_id: str
    rule: str
    kind: str
    fired_at: datetime
    action: dict[str, Any] | None


class EventResponse(BaseModel):
    event_id: int
    late: bool = Field(description="Older than the detector's clock: not evaluated.")
    actions: list[TriggeredAction]


class Reason(BaseModel):
    product: str
    score: float = Field(description="Champion propensity of the product.")
    rank: int
    feature: str
    value: float | None = Field(description="The customer's value the model saw (None: missing).")
    contribution: float = Field(description="SHAP value: push on the score, in log-odds.")
    direction: Literal["up", "down"]


class ExplanationResponse(BaseModel):
    """Why the champion propensity model scores a customer as it does (per product, top reasons)."""

    customer_id: str
    model_version: str
    reasons: list[Reason]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)
