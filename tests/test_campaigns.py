"""Campaigns end to end on the small simulated bank: spec checks, segments, the gate's reason
codes, maker-checker, idempotent runs over the outbox, waves and the messenger fallback."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.campaigns import engine
from src.campaigns.adapters import JsonlAdapter, SimulatedChannel
from src.campaigns.gate import assign_arms, in_quiet_hours
from src.campaigns.report import itt_lift, srm_p_value
from src.campaigns.segments import SegmentBuilder, SegmentError, compile_rule
from src.campaigns.spec import CampaignSpec, SpecError, load_spec
from src.campaigns.state import CampaignDB
from src.contact.store_sql import SQLContactStore
from src.settings import Settings

AS_OF = "2026-02-05"


@pytest.fixture(scope="module")
def bank(small_bank: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A private copy of the small bank with its view and detections as of AS_OF."""
    from src.pipeline import run_customer_view, run_detection

    data_dir = tmp_path_factory.mktemp("campbank")
    for sub in ("raw", "validated", "truth"):
        shutil.copytree(small_bank.resolve(small_bank.data_dir) / sub, data_dir / sub)
    settings = Settings(data_dir=data_dir, sim=small_bank.sim)
    run_customer_view(settings, datetime.fromisoformat(AS_OF))
    run_detection(settings, datetime.fromisoformat(AS_OF))
    return settings


def make_spec(**overrides: object) -> CampaignSpec:
    base: dict[str, object] = {
        "campaign_id": "c1",
        "owner": "alice",
        "who": {"rule": "age >= 25"},
        "when": {"at": "2026-02-05T12:00:00"},
        "steps": [{"step_id": "s1", "channel": "push", "offer_id": "OF02", "content": "at {age}"}],
        "holdout": {"share": 0.2},
    }
    base.update(overrides)
    return CampaignSpec.model_validate(base)


@pytest.fixture
def ctx(bank: Settings, tmp_path: Path) -> engine.Context:
    db = CampaignDB(SQLContactStore(tmp_path / "campaigns.sqlite"))
    return engine.Context.open(bank.catalog, AS_OF, db)


# -- spec -----------------------------------------------------------------------------------
def test_spec_rules(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="알림톡"):
        make_spec(steps=[{"step_id": "s1", "channel": "messenger", "offer_id": "OF02"}])
    with pytest.raises(ValueError, match="not an earlier step"):
        make_spec(
            steps=[
                {"step_id": "s1", "channel": "push", "offer_id": "OF02"},
                {"step_id": "s2", "channel": "sms", "offer_id": "OF02", "after": "s9"},
            ]
        )
    with pytest.raises(ValueError, match="exactly one of"):
        make_spec(who={"rule": "age > 1", "upload": "x"})
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "campaign_id: x\nowner: a\nwho: {rule: 'age > 1'}\nwhen: {cron: '0 12 *'}\nsteps: []\n"
    )
    with pytest.raises(SpecError, match=r"bad.yaml: when"):
        load_spec(bad)


def test_validate_names_missing_template_field_and_unknown_offer(ctx: engine.Context) -> None:
    spec = make_spec(
        steps=[
            {"step_id": "s1", "channel": "push", "offer_id": "NOPE", "content": "hi {first_name}"}
        ],
        template_fields={"push": ["first_name", "age"]},  # allowed, but not in the view
    )
    problems = engine.validate(spec, ctx)
    assert any("unknown offer 'NOPE'" in p for p in problems)
    assert any("{first_name}" in p for p in problems)
    assert engine.validate(make_spec(), ctx) == []


# -- segments -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rule, message",
    [
        ("age > 1; DROP TABLE x", "not allowed"),
        ("(SELECT 1) = 1", "not allowed"),
        ("salary > 3", "unknown column 'salary'"),
        ("read_parquet('x') = 1", "not allowed|unknown function"),
        ("detected('r')", "detected\\('rule_name', days\\)"),
    ],
)
def test_rules_are_whitelisted(rule: str, message: str) -> None:
    with pytest.raises(SegmentError, match=message):
        compile_rule(rule, ["age", "customer_id"], AS_OF)


def test_rule_model_upload_and_set_operations(ctx: engine.Context, tmp_path: Path) -> None:
    view = ctx.members
    b = SegmentBuilder(ctx.catalog, ctx.as_of, view)
    thirties = b.rule_ids("age BETWEEN 30 AND 39")
    assert set(thirties) == set(view.loc[view["age"].between(30, 39), "customer_id"])
    det = ctx.catalog.read("detections", AS_OF)
    recent = det[
        (det["fired_at"] < pd.Timestamp(AS_OF))
        & (det["fired_at"] >= pd.Timestamp(AS_OF) - pd.Timedelta(days=14))
    ]
    rule = recent["rule"].iloc[0]
    detected = b.rule_ids(f"detected('{rule}', 14)")
    assert set(detected) == set(recent.loc[recent["rule"] == rule, "customer_id"]) & set(
        view["customer_id"]
    )
    from src.campaigns.spec import Segment

    seg = Segment.model_validate({"minus": [{"rule": "age >= 30"}, {"rule": "age >= 40"}]})
    assert set(b.build(seg).ids) == set(thirties)
    # upload: bad rows are reported with their line numbers
    ids = list(view["customer_id"].head(3))
    csv = tmp_path / "winners.csv"
    csv.write_text("customer_id\n" + "\n".join([*ids, "C9999999", "bad id!"]) + "\n")
    with pytest.raises(
        SegmentError, match=r"line 5: unknown id 'C9999999'.*line 6|line 6: malformed"
    ):
        b.build(Segment(upload=csv))
    built = b.build(Segment(upload=csv, allow_unknown_ids=True))
    assert sorted(built.ids) == sorted(ids) and len(built.problems) == 2
    # model segment: top-k of a scores table
    scores = pd.DataFrame(
        {
            "customer_id": view["customer_id"],
            "product": "savings",
            "score": np.linspace(0, 1, len(view)),
        }
    )
    scores.to_parquet(ctx.catalog.path("scores", AS_OF), index=False)
    try:
        top = b.build(Segment.model_validate({"model": {"product": "savings", "top_k": 10}})).ids
        assert set(top) == set(scores.nlargest(10, "score")["customer_id"])
    finally:
        ctx.catalog.path("scores", AS_OF).unlink()


# -- gate -----------------------------------------------------------------------------------
def test_holdout_is_stable_salted_and_on_ratio() -> None:
    ids = pd.Index([f"C{i:07d}" for i in range(20_000)])
    spec = make_spec(holdout={"share": 0.1, "global_share": 0.05})
    arms = assign_arms(ids, spec)
    assert (assign_arms(ids, spec) == arms).all()
    share = (arms == "control").mean()
    assert 0.08 < share < 0.1  # 10 % minus the global control's overlap
    assert 0.04 < (arms == "global_control").mean() < 0.06
    other = assign_arms(
        ids, make_spec(campaign_id="c2", holdout={"share": 0.1, "global_share": 0.05})
    )
    assert ((other == "control") != (arms == "control")).any()  # another salt, other controls
    assert ((other == "global_control") == (arms == "global_control")).all()  # global: shared


def test_quiet_hours_window() -> None:
    hours = np.arange(24)
    assert sorted(hours[in_quiet_hours(hours, 21, 8)]) == [0, 1, 2, 3, 4, 5, 6, 7, 21, 22, 23]
    assert list(hours[in_quiet_hours(hours, 1, 3)]) == [1, 2]


def test_gate_reasons_consent_and_quiet_hours(ctx: engine.Context) -> None:
    night = make_spec(when={"at": "2026-02-05T22:30:00"}, quiet_hours={"action": "drop"})
    p = engine.plan(night, ctx)
    m = ctx.members.set_index("customer_id").loc[p.frame.index]
    f = p.frame
    assert (
        f.loc[~m["consent_push"].astype(bool), "reason"].isin(
            [
                "no_consent_push",
                "closed_account",
                "accident_report",
                "product_held",
                "global_control",
            ]
        )
    ).all()
    dropped = f["reason"] == "quiet_hours_dropped"
    assert dropped.any() and not m.loc[dropped[dropped].index, "consent_night"].any()
    # requeue: the same customers are sent at 08:00 next morning instead
    p2 = engine.plan(make_spec(when={"at": "2026-02-05T22:30:00"}), ctx)
    requeued = p2.frame[p2.frame["requeued"] & p2.frame["reason"].isna()]
    # (in the bank's zone; a customer abroad is requeued to their own 08:00)
    home = ctx.members.set_index("customer_id").loc[requeued.index, "timezone"].isna()
    requeued = requeued[home.to_numpy()]
    assert len(requeued) and (requeued["send_at"] == pd.Timestamp("2026-02-06 08:00")).all()
    # informational messages are not advertising: no quiet-hours rule
    info = make_spec(
        when={"at": "2026-02-05T22:30:00"},
        steps=[{"step_id": "s1", "channel": "push", "offer_id": "OF02", "kind": "informational"}],
    )
    assert not engine.plan(info, ctx).frame["requeued"].any()


# -- maker-checker, run, idempotence ---------------------------------------------------------
def test_approve_run_rerun_why(ctx: engine.Context) -> None:
    spec = make_spec()
    with pytest.raises(engine.ApprovalError, match="another user"):
        engine.approve(spec, ctx, "alice")
    with pytest.raises(engine.ApprovalError, match="not approved"):
        engine.run(spec, ctx, SimulatedChannel())
    engine.approve(spec, ctx, "bob")
    channel = SimulatedChannel()
    first = engine.run(spec, ctx, channel)
    assert first.sent == first.enqueued > 0 and len(channel.delivered) == first.sent
    again = engine.run(spec, ctx, channel)
    assert (again.enqueued, again.sent) == (0, 0) and channel.sends == first.sent
    # every member has a decision; the not contacted have a reason; the contacted a sent message
    dec = ctx.db.decisions("c1")
    p = engine.plan(spec, ctx)
    assert set(dec["customer_id"]) == set(p.frame.index)
    out = ctx.db.outbox("c1")
    assert (out["status"] == "sent").all() and out["message_id"].is_unique
    assert set(dec.loc[dec["reason"].isna(), "message_id"]) == set(out["message_id"])
    one = dec[dec["reason"].notna()].iloc[0]
    why = ctx.db.why("c1", one["customer_id"])
    assert why["reason"].iloc[0] == one["reason"]
    # any change voids the approval (kept in the history)
    changed = make_spec(
        steps=[{"step_id": "s1", "channel": "push", "offer_id": "OF02", "content": "now {age}"}]
    )
    with pytest.raises(engine.ApprovalError, match="voided"):
        engine.run(changed, ctx, channel)
    assert list(engine.approvals(ctx.db, "c1")["action"]) == ["approved", "voided"]


def test_caps_are_shared_across_campaigns(ctx: engine.Context) -> None:
    """Two campaigns on one offer: the daily offer cap lets only the first one reach a customer;
    the second gets the cap reason (arbitration by run order = priority)."""
    a = make_spec(campaign_id="ca", holdout={"share": 0.0})
    b = make_spec(campaign_id="cb", holdout={"share": 0.0})
    ra = engine.run(a, ctx, SimulatedChannel(), require_approval=False)
    dry = engine.funnel(engine.plan(b, ctx), ctx)  # the dry run sees the charges (no charge)
    assert dry["to_contact"] == 0 and dry["funnel"]["after holdout"] == ra.enqueued
    rb = engine.run(b, ctx, SimulatedChannel(), require_approval=False)
    assert ra.enqueued > 0 and rb.enqueued == 0 and rb.capped == ra.enqueued
    assert set(ctx.db.decisions("cb")["reason"].dropna()) >= {"cap_offer_day"}


def test_waves_follow_delivered_only_and_fallback_is_one_charge(ctx: engine.Context) -> None:
    spec = make_spec(
        campaign_id="w",
        holdout={"share": 0.0},
        steps=[
            {
                "step_id": "s1",
                "channel": "messenger",
                "offer_id": "OF02",
                "kind": "informational",
                "fallback": "sms",
            },
            {
                "step_id": "s2",
                "channel": "push",
                "offer_id": "OF03",
                "after": "s1",
                "condition": "not_clicked",
                "delay_hours": 24,
            },
        ],
    )
    # half the messenger sends are undeliverable: they go out by SMS under the same message id
    channel = SimulatedChannel(
        undeliverable=lambda m: m["channel"] == "messenger" and int(m["customer_id"][-1]) % 2 == 0
    )
    r1 = engine.run(spec, ctx, channel, require_approval=False)
    out = ctx.db.outbox("w")
    fell_back = out[(out["sent_channel"] == "sms") & (out["channel"] == "messenger")]
    assert len(fell_back) and (fell_back["customer_id"].str[-1].astype(int) % 2 == 0).all()
    assert (out["status"] == "sent").all()
    with ctx.db.store.transaction() as tx:
        charges = tx.fetchall("SELECT contact_id FROM contact_charges WHERE source = 'w'")
    assert len(charges) == r1.enqueued == len(out)  # one logical message, one charge
    # receipts: only some delivered; one of them clicked
    sent = out.sort_values("message_id")
    delivered = sent.iloc[: len(sent) // 2]
    clicked = delivered.iloc[:1]
    at = "2026-02-05T12:05:00"
    ctx.db.record_events([(m, "delivered", at) for m in delivered["message_id"]])
    ctx.db.record_events([(m, "clicked", at) for m in clicked["message_id"]])
    p2 = engine.plan(spec, ctx, "s2")
    assert set(p2.frame.index) == set(delivered["customer_id"]) - set(clicked["customer_id"])
    assert (p2.frame["send_at"] == pd.Timestamp("2026-02-06 12:05")).all()


def test_itt_lift_and_srm() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    arms = pd.Series(
        np.where(rng.random(n) < 0.2, "control", "treatment"), index=[f"C{i}" for i in range(n)]
    )
    conv = pd.Series(rng.random(n) < np.where(arms == "treatment", 0.06, 0.04), index=arms.index)
    lift = itt_lift(arms, conv, 0.2)
    assert lift.ci_low < 0.02 < lift.ci_high and lift.ci_low > 0
    assert lift.srm_p_value > 0.001
    assert srm_p_value(9000, 1000, 0.2) < 1e-6  # 10 % control where 20 % were assigned


# -- crash safety ----------------------------------------------------------------------------
KILL_SCRIPT = """
import sys, time
from src.campaigns import engine
from src.campaigns.adapters import JsonlAdapter
from src.campaigns.spec import load_spec
from src.campaigns.state import CampaignDB
from src.contact.store_sql import SQLContactStore
from src.data.catalog import Catalog

class Slow(JsonlAdapter):
    def send(self, message):
        time.sleep(0.02)
        return super().send(message)

spec = load_spec(sys.argv[1])
db = CampaignDB(SQLContactStore(sys.argv[2]))
ctx = engine.Context.open(Catalog.at(sys.argv[3]), sys.argv[4], db)
engine.run(spec, ctx, Slow(sys.argv[5]), require_approval=False, batch_size=int(sys.argv[6]))
print("done")
"""


@pytest.mark.parametrize("batch_size, kill_after_lines", [(500, 15), (7, 0)])
def test_kill_9_mid_run_then_rerun_sends_each_message_once(
    bank: Settings, tmp_path: Path, batch_size: int, kill_after_lines: int
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "campaign_id: k\nowner: a\nwho: {rule: 'age >= 20'}\nwhen: {at: '2026-02-05T12:00:00'}\n"
        "holdout: {share: 0.1}\nsteps: [{step_id: s1, channel: push, offer_id: OF02}]\n"
    )
    db_path, out_path = tmp_path / "c.sqlite", tmp_path / "out.jsonl"
    args = [
        sys.executable,
        "-c",
        KILL_SCRIPT,
        str(spec_path),
        str(db_path),
        str(bank.resolve(bank.data_dir)),
        AS_OF,
        str(out_path),
        str(batch_size),
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    deadline = time.monotonic() + 120
    while True:
        lines = out_path.read_bytes().count(b"\n") if out_path.exists() else 0
        if kill_after_lines == 0 and db_path.exists() and lines == 0 and _outbox_rows(db_path) > 0:
            break  # mid-enqueue: some batches committed, nothing sent yet
        if kill_after_lines and lines >= kill_after_lines:
            break
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    sent_before = out_path.read_bytes().count(b"\n") if out_path.exists() else 0
    # rerun in this process to the end
    spec = load_spec(spec_path)
    db = CampaignDB(SQLContactStore(db_path))
    ctx = engine.Context.open(bank.catalog, AS_OF, db)
    adapter = JsonlAdapter(out_path)
    engine.run(spec, ctx, adapter, require_approval=False)
    adapter.close()
    keys = [json.loads(line)["idempotency_key"] for line in out_path.read_text().splitlines()]
    expected = set(db.outbox("k")["message_id"])
    p = engine.plan(spec, ctx)
    assert len(expected) == int(p.frame["reason"].isna().sum())  # nobody missing
    assert sorted(keys) == sorted(expected)  # each delivered exactly once
    assert (db.outbox("k")["status"] == "sent").all()
    assert sent_before < len(expected)  # the kill did interrupt the run
    with db.store.transaction() as tx:
        assert tx.fetchone("SELECT COUNT(*) FROM contact_charges WHERE source = 'k'") == (
            len(expected),
        )


def _outbox_rows(path: Path) -> int:
    import sqlite3

    try:
        con = sqlite3.connect(path, timeout=0.1)
        try:
            return int(con.execute("SELECT COUNT(*) FROM campaign_outbox").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_arbitration_priority_then_expected_value(ctx: engine.Context) -> None:
    low = make_spec(campaign_id="low", priority=1, holdout={"share": 0.0})
    high = make_spec(campaign_id="high", priority=5, holdout={"share": 0.0})
    assert [s.campaign_id for s in engine.arbitrate([low, high], ctx)] == ["high", "low"]
    # same priority: the higher expected value (an offer worth more, same scores) goes first
    view = ctx.members
    scores = pd.DataFrame({"customer_id": view["customer_id"], "product": "savings", "score": 0.1})
    cheap = make_spec(campaign_id="cheap", why={"value_krw": 1000})
    rich = make_spec(campaign_id="rich", why={"value_krw": 90000})
    assert [s.campaign_id for s in engine.arbitrate([cheap, rich], ctx, scores)] == [
        "rich",
        "cheap",
    ]
    results = engine.run_many([low, high], ctx, SimulatedChannel(), require_approval=False)
    assert results["high"].enqueued > 0 and results["low"].enqueued == 0
    reasons = set(ctx.db.decisions("low")["reason"].dropna())
    assert "arbitration_lost" in reasons  # the cap the winner used (test_campaigns_more)
