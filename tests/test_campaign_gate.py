"""The campaign gate and the offer slot's eligibility agree (one set of rules, two shapes: a
whole audience vs one request), quiet hours are read in the customer's own time zone, and the
campaigns read the slot's policy file. Pure functions on small frames: no bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.campaigns.gate import gate
from src.campaigns.spec import CampaignSpec
from src.contact.eligibility import exclusions
from src.contact.policy import DEFAULT_CONSENT, Offer, PolicyConfig

OFFER = Offer(
    offer_id="OF1",
    slots=("app",),
    product="savings",
    target={"age": {"gte": 30, "lt": 50}, "life_stage": {"in": ["worker", "family"]}},
)
POLICY = PolicyConfig(offers=(OFFER,))


def _spec(**overrides: object) -> CampaignSpec:
    base: dict[str, object] = {
        "campaign_id": "g",
        "owner": "alice",
        "who": {"rule": "age > 0"},
        "when": {"at": "2026-02-05T12:00:00", "timezone": "Asia/Seoul"},
        "steps": [{"step_id": "s1", "channel": "push", "offer_id": "OF1"}],
        "holdout": {"share": 0.0},
    }
    base.update(overrides)
    return CampaignSpec.model_validate(base)


def _gate(spec: CampaignSpec, members: pd.DataFrame, policy: PolicyConfig = POLICY) -> pd.Series:
    arms = pd.Series("treatment", index=members.index)
    send_at = pd.Series(pd.Timestamp(spec.when.at), index=members.index)
    return gate(spec, spec.steps[0], members, arms, policy, send_at).frame


def _rows(n: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    stages = ["student", "worker", "family", "retired", None]
    return [
        {
            "customer_id": f"C{i:07d}",
            "is_closed": bool(rng.random() < 0.1),
            "is_accident_reported": bool(rng.random() < 0.1),
            "consent_push": bool(rng.random() < 0.7),
            "n_savings": int(rng.random() < 0.2),
            "age": None if rng.random() < 0.1 else int(rng.integers(18, 80)),
            "life_stage": stages[int(rng.integers(0, len(stages)))],
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_campaign_gate_blocks_whom_the_slot_would_block(seed: int) -> None:
    """Same customers blocked, for the same reason wherever only one reason applies (the two
    orders differ only in where consent is checked): closed, accident, held, every targeting
    verdict (``target:age``, ``target_unknown:life_stage``) and consent."""
    rows = _rows(400, seed)
    members = pd.DataFrame(rows).set_index("customer_id", drop=False)
    frame = _gate(_spec(), members)
    slot = {r["customer_id"]: exclusions(r, "push", [OFFER], POLICY).get("OF1") for r in rows}
    campaign = frame["reason"].where(frame["reason"].notna(), None).to_dict()
    assert {c for c, r in campaign.items() if r} == {c for c, r in slot.items() if r}
    consented = set(members.index[members["consent_push"]])
    assert {c: campaign[c] for c in consented} == {c: slot[c] for c in consented}
    reasons = set(frame["reason"].dropna())
    assert {"target:age", "target:life_stage", "target_unknown:age"} <= reasons
    assert {"product_held", "closed_account", "no_consent_push"} <= reasons
    assert frame["reason"].isna().any()  # someone passes every rule


def test_a_channel_the_policy_does_not_list_is_closed_as_in_the_slot() -> None:
    rows = _rows(50, 3)
    members = pd.DataFrame(rows).set_index("customer_id", drop=False)
    members["consent_email"] = True
    no_email = PolicyConfig(
        offers=(Offer(offer_id="OF1", slots=("app",), product="savings"),),
        consent_by_channel={k: v for k, v in DEFAULT_CONSENT.items() if k != "email"},
    )
    spec = _spec(steps=[{"step_id": "s1", "channel": "email", "offer_id": "OF1"}])
    frame = _gate(spec, members, no_email)
    assert frame["reason"].notna().all()
    open_rows = ~members["is_closed"] & ~members["is_accident_reported"] & ~members["n_savings"]
    assert (frame.loc[open_rows.astype(bool), "reason"] == "no_consent_email").all()
    assert exclusions(rows[0], "email", no_email.offers, no_email) == {"OF1": "channel_not_allowed"}


def test_quiet_hours_are_read_in_the_customers_time_zone() -> None:
    """20:30 in Seoul is 21:30 in Vladivostok (quiet) and 19:30 in Shanghai (not); a dropped send
    is dropped only where it is night, a requeued one moves to 08:00 *there*."""
    members = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3", "C4"],
            "consent_push": True,
            "consent_night": [False, False, True, False],
            "timezone": ["Asia/Vladivostok", "Asia/Shanghai", "Asia/Vladivostok", None],
        }
    ).set_index("customer_id", drop=False)
    when = {"at": "2026-02-05T20:30:00", "timezone": "Asia/Seoul"}
    steps = [{"step_id": "s1", "channel": "push", "offer_id": "OF1"}]
    plain = PolicyConfig(offers=(Offer(offer_id="OF1", slots=("app",), product="savings"),))
    dropped = _gate(_spec(when=when, quiet_hours={"action": "drop"}, steps=steps), members, plain)
    assert dropped["reason"].to_dict() == {
        "C1": "quiet_hours_dropped",  # 21:30 local, no night consent
        "C2": None,  # 19:30 local
        "C3": None,  # night-time consent
        "C4": None,  # no zone on record: the campaign's, 20:30
    }
    requeued = _gate(_spec(when=when, steps=steps), members, plain)
    assert requeued["reason"].isna().all()
    assert list(requeued["requeued"]) == [True, False, False, False]
    # 08:00 in Vladivostok is 07:00 in Seoul (send times are in the campaign's zone)
    assert requeued.loc["C1", "send_at"] == pd.Timestamp("2026-02-06 07:00")
    assert (requeued.loc[["C2", "C3", "C4"], "send_at"] == pd.Timestamp(when["at"])).all()


def test_campaigns_gate_on_the_slots_policy_file(tmp_path: Path) -> None:
    """With ``serving.policy_path`` set, campaigns read the same policy as the slot (its
    consent columns, held products, targeting and caps), not the default rules."""
    import yaml

    from src.campaigns.api import Campaigns
    from src.settings import Settings

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(
            {
                "offers": [OFFER.model_dump(mode="json")],
                "channel_cap": {"per_day": 1, "per_week": 2},
            }
        )
    )
    settings = Settings(data_dir=tmp_path / "data", serving={"policy_path": policy_file})
    camps = Campaigns(settings, "2026-02-05")
    try:
        assert camps.ctx.policy.offers == (OFFER,)
        assert camps.ctx.policy.channel_cap.per_day == 1
    finally:
        camps.db.store.close()
