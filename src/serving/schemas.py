"""Request and response bodies of the HTTP API (what the OpenAPI document publishes).

Requests are strict about what the service relies on (slot, channel, ids) and reject unknown
fields, so a typo in a client is a 422 naming the field rather than a silently ignored value.

Strict types where the API means numbers and times: a number is a JSON number (not ``"100"``,
not ``true``), an integer has no fraction, a time is an ISO 8601 string (not ``0``), and
non-finite numbers (``NaN``, ``Infinity``, ``1e999``) are refused wherever they appear. Times
must lie in years :data:`MIN_YEAR`..:data:`MAX_YEAR` so that converting them to any time zone
cannot overflow.

Customer ids have one canonical form (:data:`CUSTOMER_ID_PATTERN`): 1-64 ASCII letters, digits
and ``_ - . :``, matched exactly (case-sensitive, nothing trimmed or folded): ``c1`` and ``C1``
are two customers, `` C1`` is a 422. The customer view's ids are read as the same strings
(:func:`src.serving.customers.canonical_customer_id`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
)

from src.data.schemas import CLICK_CHANNELS, CONTACT_CHANNELS, SLOTS

Channel = Literal[tuple(CLICK_CHANNELS + CONTACT_CHANNELS)]  # type: ignore[valid-type]
Slot = Literal[SLOTS]  # type: ignore[valid-type]
CustomerId = str
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_\-.:]+$"
_ID = Field(min_length=1, max_length=64, pattern=CUSTOMER_ID_PATTERN)
MIN_YEAR, MAX_YEAR = 1900, 2999
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _iso_time(value: Any) -> Any:
    """Only an ISO 8601 string (or a datetime from Python callers) is a time: not a number,
    and not a string of digits pydantic would read as Unix seconds."""
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_DATE.match(value)):
        return value
    raise ValueError("a time must be an ISO 8601 string (YYYY-MM-DDTHH:MM:SS[+HH:MM])")


def _bounded_time(value: datetime) -> datetime:
    """Refuse times whose time-zone conversion could overflow (near years 1 and 9999)."""
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"a time must lie in the years {MIN_YEAR}..{MAX_YEAR}")
    return value


def canonical_customer_id(value: Any) -> str:
    """The id a view row is matched by: the string as stored; an integer (or an integral float
    from a numeric column with nulls) as its decimal digits. Nothing is trimmed or case-folded,
    so a view id is matched only by exactly the string a client sends."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return canonical_customer_id(value.item())
    return str(value)


def _utf8(value: str) -> str:
    """JSON may escape a lone surrogate (``"\\ud800"``); no UTF-8 text holds one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate is not)") from None
    return value


Text = Annotated[str, AfterValidator(_utf8)]  # free text of a request, storable as UTF-8

Time = Annotated[
    datetime,
    BeforeValidator(_iso_time),
    AfterValidator(_bounded_time),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^(19|2[0-9])[0-9]{2}-",  # MIN_YEAR..MAX_YEAR
            "description": f"ISO 8601, years {MIN_YEAR}..{MAX_YEAR}; naive: the service's local time.",
        }
    ),
]
Number = Annotated[float, Strict()]  # a JSON number: ints are fine, "1" and true are not


def _json_number(value: Any) -> Any:
    """A number, not its string or a boolean (``"1"`` and ``true`` are not 1)."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not a string or a boolean")
    return value


# a round decimal bound (about 2**62): a JSON writer's shortest form of a float at or below it
# never parses above it (2**62 itself prints as 4611686018427388000, past 2**62)
ID_MAX = 4 * 10**18
# (Field before the validator: the bounds stay in the published schema)
# an id as JSON Schema means an integer: 7 or 7.0, not 7.5, "7" or true
EventId = Annotated[int, Field(ge=0, le=ID_MAX), BeforeValidator(_json_number)]


class RequestContext(BaseModel):
    """Where and when the offer will be shown. ``time`` defaults to the server's clock."""

    model_config = _STRICT

    channel: Channel  # type: ignore[valid-type]  # a Literal built from the vocabularies
    device: Text | None = Field(None, max_length=64)
    page: Text | None = Field(None, max_length=64)
    time: Time | None = None


class DecisionRequest(BaseModel):
    model_config = _STRICT

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
    """Why an offer was not eligible (shown to internal callers only)."""

    offer_id: str
    reason: str


class ChosenOffer(BaseModel):
    offer_id: str
    product: str
    creative: str


class DecisionResponse(BaseModel):
    """The choice and everything needed to audit it; ``offer`` is None when nothing may be shown.

    ``explained`` False (a caller without the internal API key): ``ranked`` and ``excluded`` are
    empty and ``cold_start`` is None, so the answer tells neither why a customer gets nothing
    (closed account, accident report, consent, products held) nor whether the id is known; the
    full record is in the decision log either way."""

    decision_id: str
    customer_id: str
    slot: str
    channel: str
    offer: ChosenOffer | None
    probability: float | None = Field(description="Probability the chosen offer was drawn with.")
    policy: Literal["bandit", "propensity_greedy", "default_order", "campaign", "none"] = Field(
        description="``campaign``: a campaign's in-app message for this slot, shown before the "
        "policy's choice (probability 1; campaign and message ids in model_versions)."
    )
    ranked: list[RankedOffer]
    excluded: list[ExcludedOffer]
    model_versions: dict[str, str]
    cold_start: bool | None = Field(description="Customer not in the view (None: not disclosed).")
    fallback: bool
    fallback_reason: str | None
    created_at: datetime
    explained: bool = Field(
        description="True: ranked, excluded and cold_start are filled in (internal callers)."
    )


RewardKind = Literal["click", "conversion"]


class RewardRequest(BaseModel):
    model_config = _STRICT

    decision_id: str = Field(min_length=1, max_length=64, pattern=CUSTOMER_ID_PATTERN)
    kind: RewardKind
    value_krw: Number | None = Field(
        None, ge=0, le=1e12, description="Margin of a conversion, if known."
    )


class RewardResponse(BaseModel):
    decision_id: str
    kind: RewardKind
    stored: bool = Field(
        description="False: this reward was already stored with the same value (idempotent "
        "repeat; a different value is a 409)."
    )


class EventRequest(BaseModel):
    """A click or transaction in the ``StitchedEvents`` shape (src.data.schemas)."""

    model_config = _STRICT

    event_id: EventId
    ts: Time = Field(
        description="Event time; naive: the service's local time. At most the configured skew "
        "past the server's clock (422 otherwise)."
    )
    customer_id: str | None = Field(None, min_length=1, max_length=64, pattern=CUSTOMER_ID_PATTERN)
    source: Literal["click", "txn"]
    channel: Text = Field(max_length=32)
    session_id: EventId | None = None
    page: Text | None = Field(None, max_length=64)
    action: Text | None = Field(None, max_length=32)
    dwell_seconds: Number | None = Field(None, ge=0, le=1e7)
    referrer: Text | None = Field(None, max_length=32)
    code: Text | None = Field(None, max_length=32)
    amount: Number | None = Field(None, ge=0, le=1e15)
    currency: Text | None = Field(None, max_length=8)
    product: Text | None = Field(None, max_length=32)
    amount_krw: Number | None = Field(None, ge=0, le=1e18)


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
