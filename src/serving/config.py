"""Settings of the scoring service and the offer policy file it reads.

Two layers, on purpose: :class:`ServingSettings` is *where things are and how the process
runs* — the ``serving`` section of :class:`~src.settings.Settings` (defined there, re-exported
here; environment variables ``NEXTOFFER_SERVING__<FIELD>``); :class:`PolicyConfig` is *what the
bank allows* — the offer catalog, targeting rules, consent per channel, contact caps and the
fallback order — a YAML/JSON file the business side edits without touching code.
"""

from __future__ import annotations

# ServingSettings is defined with the other settings sections and still importable from here
from src.contact.policy import Cap, Offer, PolicyConfig, load_policy, policy_from_offers
from src.settings import ServingSettings, Settings

__all__ = [
    "Cap",
    "Offer",
    "PolicyConfig",
    "ServingSettings",
    "load_policy",
    "policy_from_offers",
    "resolve_policy",
]


def resolve_policy(serving: ServingSettings, settings: Settings) -> PolicyConfig:
    """The configured policy file, else default rules over the validated offer table."""
    if serving.policy_path is not None:
        return load_policy(serving.policy_path)
    return policy_from_offers(settings.catalog.read("offers"))
