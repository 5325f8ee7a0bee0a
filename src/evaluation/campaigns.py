"""The synthetic bank answers a campaign, and the oracle's true lift to check the report against.

:func:`draw_responses` draws each segment member's response (customers whose message was sent
with ``p1`` once delivered, everyone else with ``p0``) and returns the receipts, opens, clicks
and conversions of the messages as events for the campaign store, so waves and reports run on
them as on a real provider's feed. :func:`true_itt_lift` is the estimand of the report's ITT
lift: the mean over the treatment arm of ``delivered x (p1 - p0)`` (a capped, suppressed or
bounced customer adds zero).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.data.synthetic.campaigns import CampaignTruth, effects, respond


def campaign_effects(
    truth_dir: Path,
    members: pd.Index,
    product: str,
    channel: str,
    hour: int,
    window_days: int = 14,
    seed: int = 0,
) -> pd.DataFrame:
    """The true effects of one message for every segment member."""
    return effects(
        CampaignTruth.load(truth_dir), members, product, channel, hour, window_days, seed
    )


def draw_responses(
    eff: pd.DataFrame,
    arms: pd.Series,
    sent: pd.DataFrame,
    at: str,
    seed: int = 0,
) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """``arms``: segment member -> arm; ``sent``: customer_id, message_id of the sent step.
    Returns per member (arm, contacted, delivered, opened, clicked, converted) and the events
    (message_id, event, at) of the contacted."""
    sent = sent.drop_duplicates("customer_id").set_index("customer_id")
    contacted = pd.Series(arms.index.isin(sent.index), index=arms.index)
    drawn = respond(eff.reindex(arms.index), contacted, seed=seed)
    events: list[tuple[str, str, str]] = []
    for event in ("delivered", "opened", "clicked", "converted"):
        who = drawn.index[drawn[event].to_numpy() & contacted.to_numpy()]
        events += [(str(sent.loc[c, "message_id"]), event, at) for c in who]
    return drawn.assign(arm=arms, contacted=contacted), events


def true_itt_lift(eff: pd.DataFrame, arms: pd.Series, reached: pd.Series) -> float:
    """Mean over the treatment arm of reached x (p1 - p0), ``reached`` = whom the message
    reached (delivered): what the ITT estimate targets."""
    t = arms[arms == "treatment"].index
    r = reached.reindex(t).fillna(False).astype(bool).to_numpy()
    e = eff.reindex(t)
    return float(np.mean(np.where(r, e["p1"] - e["p0"], 0.0))) if len(t) else float("nan")
