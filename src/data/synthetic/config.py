"""Knobs of the synthetic bank. Defaults give the volumes the downstream code is tuned for."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field


class SimConfig(BaseModel):
    """Everything that determines a simulated bank: same config, same tables, byte for byte."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    customers: int = Field(2_000, ge=1, le=5_000_000)
    days: int = Field(60, ge=1, le=730)
    start_date: date = date(2026, 1, 1)
    seed: int = 7

    # Behaviour volumes (per active customer and day).
    sessions_per_day: float = Field(0.6, gt=0, description="Mean logged-in-capable sessions.")
    anonymous_session_share: float = Field(
        0.12,
        ge=0,
        le=1,
        description="Share of sessions that never log in (e.g. checking fx_rates).",
    )
    # Identity.
    shared_device_share: float = Field(
        0.03,
        ge=0,
        le=0.5,
        description="Customers whose web device is also used by a family member.",
    )
    second_app_device_share: float = Field(0.25, ge=0, le=1)
    web_user_share: float = Field(0.7, ge=0, le=1, description="Customers with a web device.")
    cookie_reset_prob: float = Field(
        0.02, ge=0, le=1, description="Daily chance a web cookie resets."
    )
    # Offers and logging policy.
    exposure_prob_per_session: float = Field(
        0.6, ge=0, le=1, description="Chance a logged-in session shows one offer slot."
    )
    logging_uniform_mix: float = Field(
        0.5, gt=0, le=1, description="Logging policy = mix * uniform + (1 - mix) * fixed prior."
    )
    fatigue_window_days: int = Field(7, ge=1, le=60)
    # Flags.
    accident_share: float = Field(0.01, ge=0, le=1)
    closing_share: float = Field(
        0.015, ge=0, le=1, description="Customers closing during the period."
    )
