"""The notebook/CLI entry point: open the campaign store from the settings and act on a spec."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from src.campaigns import engine
from src.campaigns.adapters import (
    ChannelRouter,
    DeliveryAdapter,
    InAppAdapter,
    JsonlAdapter,
    inbox_receipts,
)
from src.campaigns.ledger import JsonlPayouts, PayoutProvider, RewardLedger
from src.campaigns.receipts import ReceiptResult, ingest_receipts
from src.campaigns.report import conversions_from_transactions, report
from src.campaigns.spec import CampaignSpec, SpecError, load_spec
from src.campaigns.state import CampaignDB
from src.contact.inbox import InAppInbox
from src.contact.policy import PolicyConfig, load_policy
from src.contact.store_sql import SQLContactStore
from src.settings import Settings


def open_db(settings: Settings) -> CampaignDB:
    """The contact store + campaign tables the settings name (SQLite under data/ by default)."""
    cfg = settings.campaigns
    url = cfg.store_url or str(settings.campaigns_dir / "campaigns.sqlite")
    return CampaignDB(SQLContactStore(url, schema=cfg.store_schema))


def bank_policy(settings: Settings) -> PolicyConfig | None:
    """The offer slot's policy file (``serving.policy_path``) when one is set: campaigns gate on
    the same consent columns, held products, targeting rules and caps as the slot, not on the
    defaults; None (default rules over the offer table) when the slot has none either."""
    path = settings.serving.policy_path
    return load_policy(settings.resolve(path)) if path is not None else None


class Campaigns:
    """One data directory's campaigns as of a date: validate, dry-run, approve, run, report."""

    def __init__(
        self,
        settings: Settings,
        as_of: datetime | str,
        db: CampaignDB | None = None,
        policy: PolicyConfig | None = None,
    ) -> None:
        self.settings = settings
        self.db = db or open_db(settings)
        self.inbox = InAppInbox(self.db.store)
        self.ctx = engine.Context.open(
            settings.catalog, as_of, self.db, policy or bank_policy(settings)
        )

    def with_inbox(self, adapter: DeliveryAdapter) -> ChannelRouter:
        """``adapter`` for every channel but in-app (``app``), whose messages go to the offer
        slot's inbox: the slot serves them when it shares this store
        (``serving.contact_store_url``)."""
        inapp = InAppAdapter(self.inbox, self.settings.campaigns.inapp_valid_hours)
        return ChannelRouter(adapter, {"app": inapp})

    def sync_inbox(self, now: datetime | None = None, campaign_id: str | None = None) -> int:
        """Read the slot's in-app deliveries (and refusals, expiries by ``now``) into the
        campaign events, so waves and reports see them (:func:`inbox_receipts`)."""
        return inbox_receipts(self.db, self.inbox, now, campaign_id)

    @staticmethod
    def spec(source: CampaignSpec | Path | str) -> CampaignSpec:
        return source if isinstance(source, CampaignSpec) else load_spec(source)

    def validate(self, spec: CampaignSpec | Path | str) -> list[str]:
        spec = self.spec(spec)
        return engine.validate(spec, self.ctx) + self.trigger_problems(spec)

    def trigger_problems(self, spec: CampaignSpec) -> list[str]:
        """A trigger naming no detection rule the service runs would never fire: say so."""
        if spec.when.trigger is None:
            return []
        from src.features.detection import load_rules

        rules_dir = self.settings.serving.rules_dir
        names = sorted(r.name for r in load_rules(rules_dir and self.settings.resolve(rules_dir)))
        if spec.when.trigger in names:
            return []
        return [
            f"when.trigger: no detection rule {spec.when.trigger!r} (rules: {', '.join(names)})"
        ]

    def scores(self) -> pd.DataFrame | None:
        path = self.settings.catalog.path("scores", self.ctx.as_of)
        return self.settings.catalog.read("scores", self.ctx.as_of) if path.exists() else None

    def dry_run(
        self, spec: CampaignSpec | Path | str, step_id: str | None = None
    ) -> dict[str, Any]:
        p = engine.plan(self.spec(spec), self.ctx, step_id)
        return engine.funnel(p, self.ctx, self.scores())

    def approve(self, spec: CampaignSpec | Path | str, user: str) -> str:
        spec = self.spec(spec)
        problems = self.trigger_problems(spec)
        if problems:
            raise SpecError(f"campaign {spec.campaign_id!r}: {'; '.join(problems)}")
        return engine.approve(spec, self.ctx, user)

    def run(
        self,
        spec: CampaignSpec | Path | str,
        adapter: DeliveryAdapter | None = None,
        step_id: str | None = None,
        now: datetime | None = None,
        progress: bool = False,
    ) -> engine.RunResult:
        spec = self.spec(spec)
        own = adapter is None
        if adapter is None:
            path = (
                self.settings.campaigns.outbox_path or self.settings.campaigns_dir / "outbox.jsonl"
            )
            adapter = JsonlAdapter(self.settings.resolve(Path(path)))
        self.sync_inbox(now, spec.campaign_id)  # a wave after an in-app step sees deliveries
        try:
            return engine.run(
                spec,
                self.ctx,
                self.with_inbox(adapter),
                step_id,
                now,
                batch_size=self.settings.campaigns.batch_size,
                progress=progress,
            )
        finally:
            if own:
                adapter.close()

    def conversions(self, spec: CampaignSpec) -> pd.Series | None:
        """customer -> converted: a signup of the goal's product (default: the first step's
        offer's) within ``why.window_days`` of the campaign's start, from the transactions the
        catalog holds (None when there are none: the report then shows no lift)."""
        if not self.settings.catalog.path("transactions").exists():
            return None
        product = spec.why.product
        if product is None:
            offer = next(
                (o for o in self.ctx.policy.offers if o.offer_id == spec.steps[0].offer_id), None
            )
            if offer is None:
                return None
            product = offer.product
        start = pd.Timestamp(spec.when.at) if spec.when.at is not None else self.ctx.as_of
        tx = self.settings.catalog.read("transactions")
        return conversions_from_transactions(tx, product, start, spec.why.window_days)

    def report(
        self, spec: CampaignSpec | Path | str, converted: pd.Series | None = None
    ) -> dict[str, Any]:
        """The report; conversions default to the catalog's (:meth:`conversions`), and the
        lift is also shown per age band when the view has ages."""
        spec = self.spec(spec)
        self.sync_inbox(campaign_id=spec.campaign_id)
        if converted is None:
            converted = self.conversions(spec)
        members = self.ctx.members.set_index("customer_id")
        segments = None
        if "age" in members:
            segments = (members["age"] // 10 * 10).astype("Int64").astype(str) + "s"
        return report(spec, self.db, converted, segments=segments)

    def rewards(
        self,
        spec: CampaignSpec | Path | str,
        now: datetime,
        provider: PayoutProvider | None = None,
    ) -> dict[str, Any]:
        """Settle a campaign's rewards as of ``now``: reserve any sent message's reward not yet
        pending, post each qualifying event (``reward.event``) of a sent message, void what
        expired, pay posted rewards (default provider: ``<campaigns>/payouts.jsonl``, keyed by
        the transfer id) and reconcile. Every step is idempotent: rerun after a crash."""
        spec = self.spec(spec)
        if spec.reward is None:
            raise SpecError(f"campaign {spec.campaign_id!r}: reward: the spec has no reward")
        refused = engine.pend_rewards(spec, self.ctx)
        ledger = RewardLedger(self.db.store, {spec.campaign_id: spec.reward.budget_krw})
        name = {"convert": "converted", "click": "clicked"}[spec.reward.event]
        ev = self.db.events(spec.campaign_id)
        ev = ev[ev["event"] == name].sort_values(["at", "message_id"])
        posted = sum(
            ledger.post(
                spec.campaign_id,
                str(e.customer_id),
                f"{e.message_id}:{name}",
                datetime.fromisoformat(str(e.at)),
            )
            for e in ev.itertuples()
        )
        voided = ledger.expire(now)
        if provider is None:
            provider = JsonlPayouts(self.settings.campaigns_dir / "payouts.jsonl")
        paid = ledger.pay(provider)
        rec = ledger.reconcile(spec.campaign_id)
        return {
            "campaign_id": spec.campaign_id,
            "eligible_events": len(ev),
            "posted_now_or_before": int(posted),
            "voided_now": voided,
            "paid_now": paid,
            "refused_by_budget": refused,
            "reconciliation": rec,
        }

    def tick(
        self, at: datetime, adapter: DeliveryAdapter | None = None
    ) -> list[tuple[str, str, engine.RunResult | engine.TriggerResult | None]]:
        """Run every approved campaign whose ``when`` is due at ``at``, once per occurrence
        (missed ones per its ``when.catch_up``), and read the new detections of every approved
        trigger campaign: (campaign, occurrence or ``trigger``, result; None when the latest
        occurrence already ran)."""
        from src.campaigns import schedule
        from src.contact.triggers import DetectionQueue

        own = adapter is None
        if adapter is None:
            path = (
                self.settings.campaigns.outbox_path or self.settings.campaigns_dir / "outbox.jsonl"
            )
            adapter = JsonlAdapter(self.settings.resolve(Path(path)))
        out: list[tuple[str, str, engine.RunResult | engine.TriggerResult | None]] = []
        batch_size = self.settings.campaigns.batch_size
        self.sync_inbox(at)
        routed = self.with_inbox(adapter)
        try:
            for spec in schedule.approved_specs(self.db):
                if spec.when.trigger is not None:
                    queue = DetectionQueue(self.db.store)
                    result = engine.run_triggered(spec, self.ctx, routed, queue, at, batch_size)
                    out.append((spec.campaign_id, "trigger", result))
                    continue
                due = schedule.due_occurrences(spec, at)
                for occurrence in due:
                    if schedule.done(self.db, spec.campaign_id, occurrence):
                        if occurrence == due[-1]:
                            out.append((spec.campaign_id, occurrence, None))
                        continue
                    # a one-off keeps the ids of a manual `campaign run`; a recurring one gets
                    # its own per occurrence
                    occ = occurrence if spec.when.cron is not None else ""
                    ran = engine.run(
                        spec,
                        self.ctx,
                        routed,
                        now=at,
                        require_approval=False,  # the spec is the approved bundle's own
                        batch_size=batch_size,
                        occurrence=occ,
                    )
                    schedule.mark_done(self.db, spec.campaign_id, occurrence, datetime.now())
                    out.append((spec.campaign_id, occurrence, ran))
        finally:
            if own:
                adapter.close()
        return out

    def receipts(self, path: Path | str, allow_invalid: bool = False) -> ReceiptResult:
        """Ingest a provider's delivery-receipt file (:mod:`src.campaigns.receipts`)."""
        return ingest_receipts(self.db, path, allow_invalid=allow_invalid)

    def why(self, campaign_id: str, customer_id: str) -> pd.DataFrame:
        return self.db.why(campaign_id, customer_id)

    def close(self) -> None:
        self.db.store.close()
