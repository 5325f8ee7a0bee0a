"""Settings of the scoring service and the offer policy file it reads.

Two layers, on purpose: :class:`ServingSettings` is *where things are and how the process
runs* (environment variables ``NEXTOFFER_SERVING_<FIELD>``); :class:`PolicyConfig` is *what the
bank allows* — the offer catalog, targeting rules, consent per channel, contact caps and the
fallback order — a YAML/JSON file the business side edits without touching code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.settings import Settings


class ServingSettings(BaseSettings):
    """Process settings of ``nextoffer serve``; nothing is read or opened when constructed.

    Relative paths are resolved against the project root (``Settings.resolve``).
    """

    model_config = SettingsConfigDict(env_prefix="NEXTOFFER_SERVING_", extra="ignore")

    view_path: Path | None = Field(
        None,
        description="Customer view Parquet; default: the newest features/customer_view_*.parquet.",
    )
    policy_path: Path | None = Field(
        None,
        description="Offer policy YAML/JSON; default: every offer of raw/offers.parquet, default rules.",
    )
    log_path: Path = Field(
        Path("data/serving/decisions.sqlite"), description="SQLite decision/reward log."
    )
    rules_dir: Path | None = Field(
        None, description="Detection rules for /v1/events; default: the shipped ones."
    )
    propensity_model: str | None = "nextoffer-propensity"
    bandit_model: str | None = "nextoffer-bandit"
    model_alias: str = "champion"
    model_poll_seconds: float = Field(30.0, gt=0, description="How often aliases are checked.")
    model_load_timeout_seconds: float = Field(60.0, gt=0)
    api_key: SecretStr | None = Field(
        None, description="If set, /v1/* need it in the API key header."
    )
    api_key_header: str = "X-API-Key"
    commit_max_batch: int = Field(512, ge=1, description="Most log writes in one group commit.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="FULL: a decision survives power loss once answered; NORMAL: process crash only.",
    )
    fast_path: bool = Field(
        True,
        description="Answer valid decision requests before FastAPI's routing (same handler and "
        "validation); off: every request goes through the FastAPI route.",
    )
    timezone: str = Field("Asia/Seoul", description="Days of the contact caps are local days here.")
    seed: int | None = Field(
        None, description="Seeds the exploration draws (tests); default: OS entropy."
    )

    def resolved(self, settings: Settings) -> ServingSettings:
        """A copy with every path absolute and the defaults that depend on data filled in."""
        view = self.view_path and settings.resolve(self.view_path)
        if view is None:
            view = settings.catalog.latest("customer_view")
            if view is None:
                raise FileNotFoundError(
                    f"no customer view in {settings.features_dir}: run `nextoffer build-view` "
                    "or set NEXTOFFER_SERVING_VIEW_PATH"
                )
        return self.model_copy(
            update={
                "view_path": view,
                "policy_path": self.policy_path and settings.resolve(self.policy_path),
                "log_path": settings.resolve(self.log_path),
                "rules_dir": settings.resolve(self.rules_dir)
                if self.rules_dir
                else settings.root / "src" / "features" / "rules",
            }
        )


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


def resolve_policy(serving: ServingSettings, settings: Settings) -> PolicyConfig:
    """The configured policy file, else default rules over the validated offer table."""
    if serving.policy_path is not None:
        return load_policy(serving.policy_path)
    return policy_from_offers(settings.catalog.read("offers"))
