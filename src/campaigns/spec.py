"""A campaign as a YAML file: who (segment), when, what (offer, content, reward), how (channel),
where (slot) and why (the goal it is measured on).

Marketers compose campaigns from these parts without new code; everything a run depends on is
in the spec (plus the data it names), so its content hash is what an approval signs.
"""

from __future__ import annotations

import hashlib
import json
import string
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Channel = Literal["push", "sms", "lms", "messenger", "email", "app"]
#: default cost of one message (KRW), used for expected cost and ROAS
CHANNEL_COST_KRW: dict[str, float] = {
    "push": 0.0,
    "sms": 9.0,
    "lms": 30.0,
    "messenger": 8.0,
    "email": 1.0,
    "app": 0.0,
}
#: channels whose consent column in the view is another channel's (LMS is a long SMS)
CONSENT_CHANNEL: dict[str, str] = {"lms": "sms"}
#: the contract's allow-list of view fields a template may show, per channel. Push, SMS/LMS
#: and messenger text shows on a lock screen: no balances, amounts or identifiers there. E-mail
#: and in-app content reach the signed-in customer and may show their own product facts.
_LOCK_SCREEN = ("age", "life_stage", "region", "tenure_days")
_SIGNED_IN = (
    *_LOCK_SCREEN,
    "income_band",
    "n_account",
    "n_card",
    "n_loan",
    "n_savings",
    "n_fund",
    "n_pension",
    "balance_savings",
    "balance_fund",
    "balance_pension",
    "days_to_card_payment",
    "days_to_savings_maturity",
    "days_to_loan_interest",
    "days_to_auto_transfer_end",
    "fund_return_pct_avg",
)
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "push": _LOCK_SCREEN,
    "sms": _LOCK_SCREEN,
    "lms": _LOCK_SCREEN,
    "messenger": _LOCK_SCREEN,
    "email": _SIGNED_IN,
    "app": _SIGNED_IN,
}
#: never in any template, whatever a spec allows: identifiers and contact details
NEVER_IN_TEMPLATES: tuple[str, ...] = (
    "customer_id",
    "account_number",
    "phone",
    "email_address",
    "name",
    "resident_id",
    "address",
    "card_number",
)
Condition = Literal[
    "delivered",
    "opened",
    "not_opened",
    "clicked",
    "not_clicked",
    "converted",
    "not_converted",
]


class SpecError(ValueError):
    """A campaign spec that cannot run; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Segment(_Model):
    """Exactly one of: ``rule`` (a SQL condition over the customer view; ``detected('rule',
    days)`` for a rule detection in the last days), ``model`` (top-k / threshold on scores),
    ``upload`` (a CSV of customer ids), or a set operation over segments."""

    rule: str | None = None
    model: ModelSegment | None = None
    upload: Path | None = None
    allow_unknown_ids: bool = Field(
        False, description="upload: exclude unknown ids (reported) instead of failing."
    )
    union: tuple[Segment, ...] | None = None
    intersect: tuple[Segment, ...] | None = None
    minus: tuple[Segment, Segment] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        given = [
            k
            for k in ("rule", "model", "upload", "union", "intersect", "minus")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "a segment needs exactly one of rule, model, upload, union, intersect, minus"
                f" (got {given or 'none'})"
            )
        return self


class ModelSegment(_Model):
    """Top-k or a threshold on a champion model's score as of the run's date.

    ``score``: ``propensity`` (P(signs up for ``product``), the ``scores`` table of
    ``nextoffer score``), ``cvr`` (P(converts | shown ``offer_id``), the ``cvr_scores`` table of
    ``nextoffer score --cvr``) or ``expected_value`` (KRW: the ``rate`` score of the offer x
    the offer's value, less ``cost_krw`` or the cost of a message on ``channel``). A propensity
    segment may name ``offer_id`` instead of ``product`` (the offer's product)."""

    score: Literal["propensity", "cvr", "expected_value"] = "propensity"
    product: str | None = None
    offer_id: str | None = None
    rate: Literal["propensity", "cvr"] = Field(
        "cvr", description="expected_value: the probability it multiplies the value by."
    )
    value_krw: float | None = Field(
        None, ge=0, description="expected_value: default the offer's value_krw (policy/catalog)."
    )
    channel: Channel | None = Field(
        None, description="expected_value: net of the cost of one message on this channel."
    )
    cost_krw: float | None = Field(
        None, ge=0, description="expected_value: net of this cost (instead of the channel's)."
    )
    top_k: int | None = Field(None, ge=1)
    threshold: float | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.top_k is None) == (self.threshold is None):
            raise ValueError("model segment: give exactly one of top_k, threshold")
        probability = self.score != "expected_value"
        if probability and self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(
                f"model.threshold: {self.threshold} is not a probability in [0, 1] "
                f"(score {self.score})"
            )
        if self.score == "propensity" and (self.product is None) == (self.offer_id is None):
            raise ValueError("model.product: a propensity segment names product or offer_id")
        if self.score != "propensity" and self.offer_id is None:
            raise ValueError(f"model.offer_id: a {self.score} segment names the offer")
        if self.score != "propensity" and self.product is not None:
            raise ValueError(f"model.product: a {self.score} segment scores offer_id, not product")
        extra = [
            k
            for k in ("value_krw", "channel", "cost_krw")
            if self.score != "expected_value" and getattr(self, k) is not None
        ]
        if extra:
            raise ValueError(f"model.{extra[0]}: only for score expected_value")
        if self.score != "expected_value" and self.rate != "cvr":
            raise ValueError("model.rate: only for score expected_value")
        return self

    @property
    def net_cost(self) -> float:
        """What one contact costs (KRW), netted from the expected value."""
        if self.cost_krw is not None:
            return self.cost_krw
        return CHANNEL_COST_KRW[self.channel] if self.channel is not None else 0.0


class ReEntryAfter(_Model):
    """Enter again only ``after_days`` days after the last entry."""

    after_days: int = Field(ge=1)


class When(_Model):
    """One-off ``at`` a local time, ``cron`` (recurring) or ``trigger`` (a detection rule).

    Missed cron occurrences (the scheduler was down, a tick came late): ``catch_up`` says what
    a tick does with them. Default ``latest``: the most recent one missed is sent once, late,
    the ones before it are skipped. That is what a CRM team expects of "every day at lunch":
    customers due today's message still get it when the scheduler returns, but never a burst
    of the same message several times in a row (the caps would block most of it anyway and
    the rest would be fatigue). ``all`` sends every missed occurrence, oldest first (for
    occurrences that each matter, e.g. a daily statement reminder); ``none`` only an
    occurrence at most ``grace_minutes`` old. None is older than ``catch_up_hours``.
    """

    at: datetime | None = None
    cron: str | None = None
    trigger: str | None = None
    trigger_delay_minutes: int = Field(0, ge=0)
    trigger_max_age_minutes: int = Field(
        24 * 60,
        ge=1,
        description="A detection whose send time (fire time + delay) is older than this when a "
        "tick reads it is skipped, counted as stale (no 'you just looked at ...' days later).",
    )
    catch_up: Literal["latest", "all", "none"] = "latest"
    catch_up_hours: float = Field(24.0, gt=0, le=31 * 24)
    grace_minutes: int = Field(15, ge=0, description="catch_up none: how late a tick may be.")
    timezone: str = "Asia/Seoul"
    re_entry: Literal["always", "once"] | ReEntryAfter = Field(
        "always",
        description="A repeat occurrence (cron) or detection (trigger) for a customer who "
        "already entered the campaign (a first-step message pending or sent): ``always`` "
        "enters again (the caps decide), ``once`` never, ``{after_days: N}`` only N days "
        "after the last entry. Refused before the gate, reason ``re_entry``.",
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if sum(x is not None for x in (self.at, self.cron, self.trigger)) != 1:
            raise ValueError("when: give exactly one of at, cron, trigger")
        if self.cron is not None and len(self.cron.split()) != 5:
            raise ValueError(f"when.cron: {self.cron!r} is not a 5-field cron expression")
        return self


class Step(_Model):
    """One message: channel, offer, content; later steps follow an earlier one (waves)."""

    step_id: str
    channel: Channel
    offer_id: str
    content: str = ""
    kind: Literal["advertising", "informational"] = "advertising"
    fallback: Channel | None = Field(
        None, description="messenger -> sms: one logical message, one cap charge."
    )
    cost_krw: float | None = Field(None, ge=0, description="Default: by channel.")
    after: str | None = None
    condition: Condition = "delivered"
    delay_hours: float = Field(0.0, ge=0)
    slot: str | None = Field(None, description="where: the in-app slot (channel app).")

    @property
    def cost(self) -> float:
        return CHANNEL_COST_KRW[self.channel] if self.cost_krw is None else self.cost_krw

    def fields(self) -> list[str]:
        """View columns the content template references (``{age}``)."""
        return [f for _, f, _, _ in string.Formatter().parse(self.content) if f]


class Reward(_Model):
    """Paid once per customer on the qualifying event within ``expires_days`` of the send."""

    kind: Literal["cashback", "coupon", "lucky_box"] = "cashback"
    amount_krw: float = Field(gt=0)
    budget_krw: float = Field(gt=0)
    event: Literal["click", "convert"] = Field("convert", description="The qualifying event.")
    expires_days: int = Field(14, ge=1)


class Holdout(_Model):
    """A per-campaign control (salted hash of the customer id) and an optional global one."""

    share: float = Field(0.1, ge=0, lt=1)
    salt: str | None = Field(None, description="Default: the campaign id.")
    global_share: float = Field(0.0, ge=0, lt=1)
    global_salt: str = "nextoffer-global-control"


class QuietHours(_Model):
    """Advertising push/SMS between ``start`` and ``end`` (local) needs night-time consent."""

    start_hour: int = Field(21, ge=0, le=23)
    end_hour: int = Field(8, ge=0, le=23)
    action: Literal["requeue", "drop"] = "requeue"


class Why(_Model):
    """The goal the campaign is measured on (never opens: the control cannot open)."""

    goal: Literal["convert", "click"] = "convert"
    product: str | None = None
    window_days: int = Field(14, ge=1)
    value_krw: float | None = Field(None, ge=0, description="Default: the offer's value_krw.")
    exit_on_goal: bool = Field(
        False,
        description="Exit on the goal: a later step skips whoever met the goal (converted, or "
        "clicked for goal click) after any earlier step of the campaign, whatever its own "
        "condition. Off: each step's condition alone decides (a 'delivered' step 3 also "
        "reaches step-1 converters).",
    )


class Exclusions(_Model):
    """Campaign-specific exclusions on top of the shared gate."""

    rule: str | None = None
    campaigns: tuple[str, ...] = Field((), description="Skip who these campaigns contacted.")


class CampaignSpec(_Model):
    """A whole campaign."""

    campaign_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    name: str = ""
    owner: str
    priority: int = 0
    who: Segment
    when: When
    steps: tuple[Step, ...] = Field(min_length=1)
    why: Why = Why()
    reward: Reward | None = None
    holdout: Holdout = Holdout()
    quiet_hours: QuietHours = QuietHours()
    exclusions: Exclusions = Exclusions()
    model_alias: str = "champion"
    template_fields: dict[Channel, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Per channel, the view fields templates may show (replaces the contract's "
        "TEMPLATE_FIELDS for that channel; identifiers and contact details are never allowed).",
    )

    def allowed_fields(self, channel: str) -> tuple[str, ...]:
        return self.template_fields.get(channel, TEMPLATE_FIELDS[channel])  # type: ignore[call-overload]

    @model_validator(mode="after")
    def _steps(self) -> Self:
        for channel, names in self.template_fields.items():
            for name in names:
                if name in NEVER_IN_TEMPLATES:
                    raise ValueError(
                        f"template_fields.{channel}: {name!r} is personal data never shown in "
                        "a template"
                    )
        ids = [s.step_id for s in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError(f"steps: duplicate step_id in {ids}")
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            where = f"steps[{i}] ({step.step_id})"
            if i == 0 and step.after is not None:
                raise ValueError(f"{where}: the first step cannot follow another")
            if i > 0 and step.after is None:
                raise ValueError(f"{where}: a later step needs `after` (the step it follows)")
            if step.after is not None and step.after not in seen:
                raise ValueError(f"{where}: after {step.after!r} is not an earlier step")
            if step.channel == "messenger" and step.kind == "advertising":
                raise ValueError(
                    f"{where}: messenger notification templates (알림톡) carry informational "
                    "messages only; send advertising on another channel"
                )
            if step.fallback is not None and step.fallback == step.channel:
                raise ValueError(f"{where}: fallback is the step's own channel")
            if step.channel == "app" and not step.slot:
                raise ValueError(f"{where}: an in-app step needs its slot")
            try:
                fields = step.fields()
            except ValueError as error:
                raise ValueError(f"{where}.content: {error}") from None
            channels = [step.channel, *([step.fallback] if step.fallback else [])]
            for f in fields:
                for channel in channels:  # the fallback shows the same text
                    allowed = self.allowed_fields(channel)
                    if f not in allowed:
                        raise ValueError(
                            f"{where}.content: template field {{{f}}} is not allowed on "
                            f"{channel} (allowed: {', '.join(allowed) or 'none'})"
                        )
            seen.add(step.step_id)
        return self

    @property
    def salt(self) -> str:
        return self.holdout.salt or self.campaign_id

    def signed_dump(self) -> dict[str, Any]:
        """The spec as an approval signs it. Fields added after a release (:data:`LATER_FIELDS`)
        are left out while at their default, so an approval given before they existed still
        stands after an upgrade (its bundle hash is unchanged); set, they are signed."""
        data = self.model_dump(mode="json")
        for section, fields in LATER_FIELDS.items():
            if section == "who.model":
                _drop_model_defaults(self.who, data["who"], fields)
                continue
            model = getattr(self, section)
            for name in fields:
                if getattr(model, name) == type(model).model_fields[name].default:
                    data[section].pop(name, None)
        return data

    def content_hash(self) -> str:
        """sha256 of the canonical spec (what an approval signs, with the data versions)."""
        return sha256_json(self.signed_dump())


Segment.model_rebuild()

#: spec fields added since the first release, per section (see :meth:`CampaignSpec.signed_dump`)
LATER_FIELDS: dict[str, tuple[str, ...]] = {
    "when": (
        "trigger_max_age_minutes",
        "catch_up",
        "catch_up_hours",
        "grace_minutes",
        "re_entry",
    ),
    "why": ("exit_on_goal",),
    # model segments (at any depth of ``who``)
    "who.model": ("score", "offer_id", "rate", "value_krw", "channel", "cost_krw"),
}


def _drop_model_defaults(segment: Segment, data: dict[str, Any], fields: tuple[str, ...]) -> None:
    """Leave the later fields of every model segment in ``segment`` out while at default."""
    if segment.model is not None:
        for name in fields:
            if getattr(segment.model, name) == ModelSegment.model_fields[name].default:
                data["model"].pop(name, None)
    for key in ("union", "intersect", "minus"):
        for child, child_data in zip(getattr(segment, key) or (), data.get(key) or (), strict=True):
            _drop_model_defaults(child, child_data, fields)


def sha256_json(data: Any) -> str:
    return hashlib.sha256(
        json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def load_spec(path: Path | str) -> CampaignSpec:
    """Read a campaign YAML; relative upload paths are taken from the spec's folder."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpecError(f"{path}: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a campaign spec is a mapping")
    _resolve_uploads(data.get("who"), path.parent)
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spec"
        raise SpecError(
            f"{path}: {where}: {first['msg']} ({error.error_count()} error(s))"
        ) from None


def _resolve_uploads(segment: Any, base: Path) -> None:
    if not isinstance(segment, dict):
        return
    if isinstance(segment.get("upload"), str) and not Path(segment["upload"]).is_absolute():
        segment["upload"] = str(base / segment["upload"])
    for key in ("union", "intersect", "minus"):
        for child in segment.get(key) or ():
            _resolve_uploads(child, base)
