"""Campaign gaps: the attribution window, lift per step/segment/channel, arbitration losers,
rewards from the CLI, the recurring schedule and PII in templates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from test_campaigns import AS_OF, bank, ctx  # noqa: F401 (the small bank's fixtures)
from test_campaigns import make_spec as bank_spec

from src.campaigns import engine
from src.campaigns.adapters import SimulatedChannel
from src.campaigns.report import report, step_table
from src.campaigns.spec import CampaignSpec, SpecError
from src.campaigns.state import CampaignDB, message_id
from src.contact.store_sql import SQLContactStore
from src.settings import Settings


def make_spec(**overrides: object) -> CampaignSpec:
    base: dict[str, object] = {
        "campaign_id": "c1",
        "owner": "alice",
        "who": {"rule": "age >= 25"},
        "when": {"at": "2026-02-05T12:00:00"},
        "steps": [{"step_id": "s1", "channel": "push", "offer_id": "OF02"}],
        "holdout": {"share": 0.5},
        "why": {"window_days": 7},
    }
    base.update(overrides)
    return CampaignSpec.model_validate(base)


def seed_run(
    db: CampaignDB, spec: CampaignSpec, arms: dict[str, str], step_id: str = "s1"
) -> dict[str, str]:
    """Decisions, a segment snapshot and sent outbox rows for the treatment arm (no engine):
    returns customer -> message id."""
    cid = spec.campaign_id
    mids = {c: message_id(cid, step_id, c) for c, a in arms.items() if a == "treatment"}
    db.save_segment(cid, "v1", pd.Series(arms))
    with db.store.transaction() as tx:
        tx.execute(
            "INSERT INTO campaign_runs (run_id, campaign_id, step_id, segment_version, "
            "holdout_version, bundle_hash, started_at) VALUES (?, ?, ?, 'v1', 'h', 'b', ?)",
            (f"r-{cid}-{step_id}", cid, step_id, "2026-02-05T12:00:00"),
        )
        tx.executemany(
            "INSERT INTO campaign_outbox (message_id, campaign_id, step_id, customer_id, channel, "
            "offer_id, content, send_at, status, sent_at) VALUES (?, ?, ?, ?, 'push', 'OF02', '', "
            "'2026-02-05T12:00:00', 'sent', '2026-02-05T12:00:00')",
            [(m, cid, step_id, c) for c, m in mids.items()],
        )
        tx.executemany(
            "INSERT INTO campaign_decisions (campaign_id, step_id, customer_id, arm, reason, "
            "channel, message_id, run_id) VALUES (?, ?, ?, ?, ?, 'push', ?, 'r')",
            [
                (cid, step_id, c, a, None if a == "treatment" else "holdout", mids.get(c))
                for c, a in arms.items()
            ],
        )
    return mids


# -- 1. attribution window ------------------------------------------------------------------
def test_responses_count_only_within_the_window_of_delivery(tmp_path: Path) -> None:
    db = CampaignDB(SQLContactStore(tmp_path / "c.sqlite"))
    spec = make_spec()
    mids = seed_run(db, spec, {"a": "treatment", "b": "treatment", "c": "treatment"})
    db.record_events(
        [
            (mids["a"], "delivered", "2026-02-05T12:01:00"),
            (mids["a"], "opened", "2026-02-05T13:00:00"),  # in the window
            (mids["a"], "converted", "2026-02-11T12:00:00"),  # day 6: in
            (mids["b"], "delivered", "2026-02-05T12:01:00"),
            (mids["b"], "opened", "2026-02-06T09:00:00"),  # in
            (mids["b"], "converted", "2026-02-20T12:00:00"),  # day 15: outside 7 days
            (mids["c"], "clicked", "2026-02-06T09:00:00"),  # never delivered: not attributed
        ]
    )
    row = step_table(spec, db).iloc[0]
    assert (row["delivered"], row["opened"], row["clicked"], row["converted"]) == (2, 2, 0, 1)
    wide = step_table(make_spec(why={"window_days": 30}), db).iloc[0]
    assert wide["converted"] == 2  # the same events, a longer window: both conversions count
    assert report(spec, db)["steps"]["converted"].iloc[0] == 1


# -- 2. lift per step, segment and channel --------------------------------------------------
def test_lift_per_step_channel_and_segment_with_intervals(tmp_path: Path) -> None:
    db = CampaignDB(SQLContactStore(tmp_path / "c.sqlite"))
    spec = make_spec()
    ids = [f"u{i:03d}" for i in range(400)]
    arms = {c: ("treatment" if i % 2 else "control") for i, c in enumerate(ids)}
    seed_run(db, spec, arms)
    young = pd.Series({c: ("20s" if i < 200 else "50s") for i, c in enumerate(ids)})
    # the young convert only if treated (lift 0.5); the old convert at 0.2 either way
    conv = {
        c: (arms[c] == "treatment" and i % 4 == 1) if i < 200 else i % 5 == 0
        for i, c in enumerate(ids)
    }
    converted = pd.Series(conv)
    rep = report(spec, db, converted, segments=young)
    assert "no winner is ever picked on opens" in rep["primary_metric"]
    lifts = rep["lifts"].set_index(["level", "key"])
    assert {"overall", "step", "channel", "segment"} <= set(lifts.index.get_level_values(0))
    y, o = lifts.loc[("segment", "20s")], lifts.loc[("segment", "50s")]
    assert y["lift"] > 0.4 and y["ci_low"] > 0.3  # clearly positive for the young
    assert o["ci_low"] < 0 < o["ci_high"]  # nothing for the old
    assert lifts.loc[("step", "s1/push"), "n_control"] == 200
    assert lifts.loc[("channel", "push"), "n_treatment"] == 200
    assert lifts.loc[("overall", "all"), "ci_low"] < lifts.loc[("overall", "all"), "lift"]


# -- 3. arbitration losers ------------------------------------------------------------------
def test_arbitration_loser_gets_reason_and_winner(ctx: engine.Context) -> None:  # noqa: F811
    """Two campaigns on one offer compete for the daily offer cap: the higher priority wins;
    the loser's customers it reached carry ``arbitration_lost`` and the winner's id."""
    low = bank_spec(campaign_id="low", priority=1, holdout={"share": 0.0})
    high = bank_spec(campaign_id="high", priority=5, holdout={"share": 0.0})
    results = engine.run_many([low, high], ctx, SimulatedChannel(), require_approval=False)
    assert list(results) == ["high", "low"]
    assert results["high"].enqueued > 0 and results["low"].enqueued == 0
    dec = ctx.db.decisions("low")
    lost = dec[dec["reason"] == "arbitration_lost"]
    sent_high = set(ctx.db.outbox("high")["customer_id"])
    assert len(lost) == results["high"].enqueued and set(lost["customer_id"]) == sent_high
    why = ctx.db.why("low", lost["customer_id"].iloc[0])
    assert list(why[["reason", "winner"]].iloc[0]) == ["arbitration_lost", "high"]
    # the winner's own decisions carry no loser reason; a rerun changes nothing
    assert (ctx.db.decisions("high")["reason"] != "arbitration_lost").all()
    engine.run_many([low, high], ctx, SimulatedChannel(), require_approval=False)
    assert (ctx.db.decisions("low")["reason"] == "arbitration_lost").sum() == len(lost)
    from src.campaigns.report import step_table as table

    assert table(low, ctx.db)["capped"].iloc[0] == len(lost)


# -- 5. recurring schedule ------------------------------------------------------------------
def test_cron_parsing_and_latest_occurrence() -> None:
    from src.campaigns.schedule import Cron

    c = Cron.parse("*/15 9-17 * * 1-5")  # every quarter hour, office hours, weekdays
    assert c.latest(datetime(2026, 2, 5, 12, 7)) == datetime(2026, 2, 5, 12, 0)  # a Thursday
    assert c.latest(datetime(2026, 2, 8, 10, 0)) == datetime(2026, 2, 6, 17, 45)  # Sunday
    with pytest.raises(SpecError, match="hour"):
        Cron.parse("0 25 * * *")


def test_tick_runs_due_campaigns_once_per_occurrence(
    bank: Settings,  # noqa: F811
    ctx: engine.Context,  # noqa: F811
) -> None:
    from src.campaigns.api import Campaigns

    daily = bank_spec(
        campaign_id="daily",
        when={"cron": "0 12 * * *"},
        holdout={"share": 0.0},
        steps=[{"step_id": "s1", "channel": "email", "offer_id": "OF03"}],
    )
    once = bank_spec(campaign_id="once", holdout={"share": 0.0})  # at 2026-02-05 12:00
    later = bank_spec(campaign_id="later", when={"at": "2026-03-01T09:00:00"})
    unapproved = bank_spec(campaign_id="draft", when={"cron": "* * * * *"})
    for spec in (daily, once, later):
        engine.approve(spec, ctx, "bob")
    assert unapproved.campaign_id  # written, never approved: never ticks
    c = Campaigns(bank, AS_OF, db=ctx.db)
    channel = SimulatedChannel()
    first = c.tick(datetime(2026, 2, 5, 12, 30), channel)
    ran = {cid: (occ, r) for cid, occ, r in first}
    assert set(ran) == {"daily", "once"}
    assert ran["daily"][0] == "2026-02-05T12:00:00" and ran["daily"][1] is not None
    assert ran["once"][1] is not None and ran["once"][1].sent > 0
    sends = channel.sends
    again = c.tick(datetime(2026, 2, 5, 12, 45), channel)
    assert {(cid, r is None) for cid, _, r in again} == {("daily", True), ("once", True)}
    assert channel.sends == sends  # nothing sent twice
    next_day = {cid: (occ, r) for cid, occ, r in c.tick(datetime(2026, 2, 6, 12, 0), channel)}
    assert next_day["daily"][0] == "2026-02-06T12:00:00" and next_day["daily"][1] is not None
    assert next_day["once"][1] is None
    out = ctx.db.outbox("daily")
    assert out["message_id"].is_unique and len(out) > 0
    ticks = ctx.db.frame("SELECT campaign_id, occurrence FROM campaign_ticks", (), ["c", "o"])
    assert len(ticks) == 3 and not ticks.duplicated().any()


# -- 6. PII in templates --------------------------------------------------------------------
def test_templates_may_only_show_the_channels_allowed_fields() -> None:
    def step(channel: str, content: str, **kw: object) -> dict[str, object]:
        return {"step_id": "s1", "channel": channel, "offer_id": "OF02", "content": content, **kw}

    # a balance is not lock-screen text: refused on push, naming the field and the channel
    with pytest.raises(ValueError, match=r"\{balance_savings\} is not allowed on push"):
        make_spec(steps=[step("push", "You have {balance_savings} KRW saved")])
    # ... but fine in an e-mail to the signed-in customer
    assert make_spec(steps=[step("email", "You have {balance_savings} KRW saved")])
    # a messenger message falling back to SMS must be allowed on both
    with pytest.raises(ValueError, match=r"\{n_loan\} is not allowed on messenger"):
        make_spec(steps=[step("messenger", "{n_loan} loans", kind="informational", fallback="sms")])
    # a spec may narrow a channel's list; identifiers are never allowed, whatever it says
    with pytest.raises(ValueError, match=r"\{age\} is not allowed on push \(allowed: region\)"):
        make_spec(steps=[step("push", "at {age}")], template_fields={"push": ["region"]})
    with pytest.raises(ValueError, match="'phone' is personal data"):
        make_spec(steps=[step("push", "x")], template_fields={"push": ["phone"]})
    with pytest.raises(ValueError, match=r"\{customer_id\} is not allowed on email"):
        make_spec(steps=[step("email", "Dear {customer_id}")])
    assert make_spec(steps=[step("push", "At {age}, in {region}")])


def test_report_plot_shows_every_lift_slice(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from src.campaigns.report import plot_report

    db = CampaignDB(SQLContactStore(tmp_path / "c.sqlite"))
    spec = make_spec()
    arms = {f"u{i}": ("treatment" if i % 2 else "control") for i in range(40)}
    seed_run(db, spec, arms)
    rep = report(spec, db, pd.Series({c: i % 3 == 0 for i, c in enumerate(arms)}))
    fig = plot_report(rep)
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    lifts = rep["lifts"]
    assert labels == [f"{lv}: {k}" for lv, k in zip(lifts["level"], lifts["key"], strict=True)]
    assert "never on opens" in fig.axes[1].get_title() and fig.axes[1].get_ylabel()


# -- the new queries on PostgreSQL ----------------------------------------------------------
@pytest.fixture
def pg_db() -> Iterator[CampaignDB]:
    """A CampaignDB in a fresh uuid schema of the local PostgreSQL (dropped afterwards)."""
    import os
    import uuid

    schema = f"camp2_{uuid.uuid4().hex[:12]}"
    try:
        store = SQLContactStore("postgresql://postgres@127.0.0.1:5432/test", schema=schema)
        db = CampaignDB(store)
    except Exception as error:  # noqa: BLE001 - any connection failure means no server
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL 127.0.0.1:5432 not available: {error}")
    try:
        yield db
    finally:
        with store.transaction() as tx:
            tx.execute(f"DROP SCHEMA {schema} CASCADE")
        store.close()


def test_arbitration_marks_and_ledger_reconcile_on_postgres(pg_db: CampaignDB) -> None:
    from src.campaigns.ledger import RewardLedger

    win, lose = make_spec(campaign_id="win"), make_spec(campaign_id="lose")
    seed_run(pg_db, win, {"a": "treatment", "b": "treatment"})
    seed_run(pg_db, lose, {"a": "control", "b": "control"})
    with pg_db.store.transaction() as tx:  # the loser's members were capped
        tx.execute(
            "UPDATE campaign_decisions SET reason = 'cap_offer_day' WHERE campaign_id = 'lose'"
        )
    assert pg_db.mark_arbitration_lost("lose", ["win"]) == 2
    assert list(pg_db.why("lose", "a")[["reason", "winner"]].iloc[0]) == ["arbitration_lost", "win"]
    ledger = RewardLedger(pg_db.store)
    ledger.pend("win", "a", "m", 100.0, datetime(2026, 2, 5), 14)
    ledger.pend("other", "a", "m2", 50.0, datetime(2026, 2, 5), 14)
    rec = ledger.reconcile("win")
    assert rec.counts == {"pending": 1, "paid": 0} and rec.amounts == {"pending": 100.0}
    assert rec.entries_sum == 0 and not rec.problems


def test_exit_on_goal_is_explicit_and_signed_only_when_set(ctx: engine.Context) -> None:  # noqa: F811
    """A 'delivered' step 2 reaches step-1 converters unless the spec says ``why.exit_on_goal``;
    the switch is part of what an approval signs only once it is set (old approvals stand)."""
    steps = [
        {"step_id": "s1", "channel": "push", "offer_id": "OF02"},
        {"step_id": "s2", "channel": "push", "offer_id": "OF03", "after": "s1"},
    ]
    stay = bank_spec(campaign_id="stay", holdout={"share": 0.0}, steps=steps)
    leave = bank_spec(
        campaign_id="stay", holdout={"share": 0.0}, steps=steps, why={"exit_on_goal": True}
    )
    assert "exit_on_goal" not in stay.signed_dump()["why"]
    assert leave.signed_dump()["why"]["exit_on_goal"] is True
    assert leave.content_hash() != stay.content_hash()
    engine.run(stay, ctx, SimulatedChannel(), require_approval=False, step_id="s1")
    sent = ctx.db.outbox("stay").sort_values("message_id")
    at = "2026-02-05T12:05:00"
    ctx.db.record_events([(m, "delivered", at) for m in sent["message_id"]])
    converters = sent.iloc[:3]
    ctx.db.record_events([(m, "converted", at) for m in converters["message_id"]])
    everyone = set(engine.plan(stay, ctx, "s2").frame.index)
    assert everyone == set(sent["customer_id"])
    assert set(engine.plan(leave, ctx, "s2").frame.index) == everyone - set(
        converters["customer_id"]
    )
