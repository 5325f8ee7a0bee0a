"""The notebook/CLI entry point: open the campaign store from the settings and act on a spec."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from src.campaigns import engine
from src.campaigns.adapters import DeliveryAdapter, JsonlAdapter
from src.campaigns.report import report
from src.campaigns.spec import CampaignSpec, load_spec
from src.campaigns.state import CampaignDB
from src.contact.policy import PolicyConfig
from src.contact.store_sql import SQLContactStore
from src.settings import Settings


def open_db(settings: Settings) -> CampaignDB:
    """The contact store + campaign tables the settings name (SQLite under data/ by default)."""
    cfg = settings.campaigns
    url = cfg.store_url or str(settings.campaigns_dir / "campaigns.sqlite")
    return CampaignDB(SQLContactStore(url, schema=cfg.store_schema))


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
        self.ctx = engine.Context.open(settings.catalog, as_of, self.db, policy)

    @staticmethod
    def spec(source: CampaignSpec | Path | str) -> CampaignSpec:
        return source if isinstance(source, CampaignSpec) else load_spec(source)

    def validate(self, spec: CampaignSpec | Path | str) -> list[str]:
        return engine.validate(self.spec(spec), self.ctx)

    def scores(self) -> pd.DataFrame | None:
        path = self.settings.catalog.path("scores", self.ctx.as_of)
        return self.settings.catalog.read("scores", self.ctx.as_of) if path.exists() else None

    def dry_run(
        self, spec: CampaignSpec | Path | str, step_id: str | None = None
    ) -> dict[str, Any]:
        p = engine.plan(self.spec(spec), self.ctx, step_id)
        return engine.funnel(p, self.ctx, self.scores())

    def approve(self, spec: CampaignSpec | Path | str, user: str) -> str:
        return engine.approve(self.spec(spec), self.ctx, user)

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
        try:
            return engine.run(
                spec,
                self.ctx,
                adapter,
                step_id,
                now,
                batch_size=self.settings.campaigns.batch_size,
                progress=progress,
            )
        finally:
            if own:
                adapter.close()

    def report(
        self, spec: CampaignSpec | Path | str, converted: pd.Series | None = None
    ) -> dict[str, Any]:
        return report(self.spec(spec), self.db, converted)

    def why(self, campaign_id: str, customer_id: str) -> pd.DataFrame:
        return self.db.why(campaign_id, customer_id)

    def close(self) -> None:
        self.db.store.close()
