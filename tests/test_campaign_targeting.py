"""Campaign targeting on the small simulated bank: model segments on propensity, CVR or
expected value; explicit re-entry of recurring campaigns; quiet hours in the customer's own
time zone from the customers table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_campaigns import AS_OF, bank, ctx  # noqa: F401 (the small bank's fixtures)
from test_campaigns import make_spec as bank_spec

from src.campaigns import engine
from src.campaigns.adapters import SimulatedChannel
from src.campaigns.gate import gate, re_entries
from src.campaigns.segments import SegmentBuilder, SegmentError
from src.campaigns.spec import CHANNEL_COST_KRW, LATER_FIELDS, CampaignSpec, Segment, When
from src.contact.policy import Offer, PolicyConfig
from src.models.scoring import Champion, cvr_rows, score_cvr_embedded


# -- 1. model segments ----------------------------------------------------------------------
@pytest.fixture
def scored(ctx: engine.Context):  # noqa: F811
    """Propensity and CVR scores of the view as of AS_OF (removed afterwards)."""
    ids = ctx.members["customer_id"].astype(str)
    rng = np.random.default_rng(3)
    props = pd.DataFrame({"customer_id": ids, "product": "savings", "score": rng.random(len(ids))})
    cvr = pd.concat(
        [
            pd.DataFrame({"customer_id": ids, "offer_id": o, "score": rng.random(len(ids)) / 4})
            for o in ("OF02", "OF03")
        ],
        ignore_index=True,
    )
    paths = [ctx.catalog.path("scores", AS_OF), ctx.catalog.path("cvr_scores", AS_OF)]
    props.to_parquet(paths[0], index=False)
    cvr.to_parquet(paths[1], index=False)
    yield props.set_index("customer_id")["score"], cvr
    for p in paths:
        p.unlink()


def _top(scores: pd.Series, k: int) -> set[str]:
    frame = scores.rename("s").rename_axis("c").reset_index()
    return set(frame.sort_values(["s", "c"], ascending=[False, True]).head(k)["c"])


def test_model_segments_on_propensity_cvr_and_expected_value(
    ctx: engine.Context,  # noqa: F811
    scored,
) -> None:
    props, cvr = scored
    b = SegmentBuilder(ctx.catalog, ctx.as_of, ctx.members, ctx.policy.offers)
    offers = {o.offer_id: o for o in ctx.policy.offers}

    def ids(model: dict[str, object]) -> set[str]:
        return set(b.build(Segment.model_validate({"model": model})).ids)

    of02 = cvr[cvr["offer_id"] == "OF02"].set_index("customer_id")["score"]
    assert ids({"score": "cvr", "offer_id": "OF02", "top_k": 7}) == _top(of02, 7)
    assert ids({"score": "cvr", "offer_id": "OF02", "threshold": 0.2}) == set(
        of02[of02 >= 0.2].index
    )
    # propensity by the offer's product = by the product
    product = offers["OF02"].product
    if product == "savings":
        assert ids({"offer_id": "OF02", "top_k": 5}) == ids({"product": "savings", "top_k": 5})
    # expected value: CVR x the offer's value (policy) - one push/SMS's cost, in KRW
    value = offers["OF02"].value_krw
    assert value > 0
    ev = of02 * value - CHANNEL_COST_KRW["sms"]
    model = {"score": "expected_value", "offer_id": "OF02", "channel": "sms"}
    assert ids({**model, "top_k": 9}) == _top(ev, 9)
    cut = float(ev.median())
    assert ids({**model, "threshold": cut}) == set(ev[ev >= cut].index)
    # an explicit value and cost; the propensity rate of the offer's product
    own = {"score": "expected_value", "offer_id": "OF03", "value_krw": 1000.0, "cost_krw": 50.0}
    of03 = cvr[cvr["offer_id"] == "OF03"].set_index("customer_id")["score"]
    assert ids({**own, "threshold": 0.0}) == set(of03[of03 * 1000 - 50 >= 0].index)
    with pytest.raises(SegmentError, match="model.product: no scores for product"):
        ids({**own, "rate": "propensity", "top_k": 3})  # OF03's product has no scores here
    with pytest.raises(SegmentError, match="model.offer_id: unknown offer 'OF99'"):
        ids({"score": "expected_value", "offer_id": "OF99", "top_k": 3})
    with pytest.raises(SegmentError, match="model.offer_id: no CVR scores for offer 'OF05'"):
        ids({"score": "cvr", "offer_id": "OF05", "top_k": 3})
    # the engine builds it with the policy's offers: the plan's audience is the segment
    spec = bank_spec(who={"model": {**model, "top_k": 9}}, holdout={"share": 0.0})
    assert set(engine.plan(spec, ctx).frame.index) == _top(ev, 9)


@pytest.mark.parametrize(
    "model, field",
    [
        ({"score": "cvr", "offer_id": "OF02", "threshold": 1.5}, "model.threshold"),
        ({"product": "savings", "threshold": -0.1}, "model.threshold"),
        ({"score": "cvr", "top_k": 3}, "model.offer_id"),
        ({"score": "expected_value", "product": "savings", "top_k": 3}, "model.offer_id"),
        ({"score": "cvr", "offer_id": "OF02", "product": "savings", "top_k": 3}, "model.product"),
        ({"top_k": 3}, "model.product"),
        ({"product": "savings", "channel": "sms", "top_k": 3}, "model.channel"),
        ({"score": "cvr", "offer_id": "OF02", "rate": "propensity", "top_k": 3}, "model.rate"),
        ({"score": "expected_value", "offer_id": "OF02", "channel": "fax", "top_k": 3}, "channel"),
        ({"score": "expected_value", "offer_id": "OF02"}, "top_k, threshold"),
    ],
)
def test_model_segment_errors_name_the_field(model: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        bank_spec(who={"model": model})


def test_old_model_segments_keep_their_signed_hash() -> None:
    """The model segment's new fields are signed only once set, at any depth of ``who``: an
    approval of a propensity segment given before them still stands."""
    old = {"model": {"product": "savings", "top_k": 10}}
    spec = bank_spec(who={"union": [{"rule": "age > 30"}, old]})
    dumped = spec.signed_dump()["who"]
    assert set(dumped["union"][1]["model"]) == {"product", "top_k", "threshold"}
    assert set(bank_spec(who=old).signed_dump()["who"]["model"]) == {
        "product",
        "top_k",
        "threshold",
    }
    cvr = bank_spec(who={"model": {"score": "cvr", "offer_id": "OF02", "top_k": 10}})
    assert cvr.signed_dump()["who"]["model"]["score"] == "cvr"
    assert set(LATER_FIELDS["who.model"]) >= {"score", "offer_id", "rate", "channel", "cost_krw"}


def test_cvr_champion_scores_customer_x_offer(ctx: engine.Context) -> None:  # noqa: F811
    """``nextoffer score --cvr`` writes what cvr segments read: one row per customer x offer,
    the model's P(convert) with the offer and channel set on each row; not a probability is an
    error naming the customer and offer."""

    class Fake:
        def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
            assert set(rows["channel"]) == {"app"}
            bump = (rows["offer_id"] == "OF03").to_numpy(float) / 10
            return pd.DataFrame({"convert": rows["age"].to_numpy(float) / 200 + bump})

    champion = Champion(
        "nextoffer-cvr", "3", (("age", "double"), ("offer_id", "string"), ("channel", "string")),
        ("convert",),
    )  # fmt: skip
    path = score_cvr_embedded(
        ctx.catalog, AS_OF, champion, ["OF02", "OF03"], chunk_rows=150, model=Fake()
    )
    try:
        out = pd.read_parquet(path)
        view = ctx.members.set_index("customer_id")
        assert len(out) == 2 * len(view) and not out.duplicated(["customer_id", "offer_id"]).any()
        of03 = out[out["offer_id"] == "OF03"].set_index("customer_id")["score"]
        expected = view["age"].astype(float) / 200 + 0.1
        assert np.allclose(of03.reindex(view.index), expected)
        assert set(out["model_version"]) == {"nextoffer-cvr/3"}
    finally:
        path.unlink()

    class Broken:
        def predict(self, rows: pd.DataFrame) -> np.ndarray:
            return np.full(len(rows), 1.5)

    frame = ctx.members.head(3)
    with pytest.raises(
        ValueError, match=rf"customer '{frame['customer_id'].iloc[0]}' offer 'OF02'"
    ):
        cvr_rows(frame, Broken(), champion, ["OF02"], AS_OF)


# -- 2. re-entry ----------------------------------------------------------------------------
def _daily(re_entry: object = None) -> CampaignSpec:
    when: dict[str, object] = {"cron": "0 12 * * *"}
    if re_entry is not None:
        when["re_entry"] = re_entry
    return bank_spec(
        campaign_id="daily",
        when=when,
        holdout={"share": 0.0},
        steps=[{"step_id": "s1", "channel": "email", "offer_id": "OF03"}],
    )


def _occurrence(spec: CampaignSpec, ctx: engine.Context, day: int) -> engine.RunResult:  # noqa: F811
    at = f"2026-02-{day:02d}T12:00:00"
    return engine.run(spec, ctx, SimulatedChannel(), require_approval=False, occurrence=at)


def test_re_entry_once_refuses_later_occurrences_with_a_reason(ctx: engine.Context) -> None:  # noqa: F811
    spec = _daily("once")
    assert spec.signed_dump()["when"]["re_entry"] == "once"
    assert "re_entry" not in _daily().signed_dump()["when"]  # default: old approvals stand
    assert "re_entry" in LATER_FIELDS["when"]
    first = _occurrence(spec, ctx, 5)
    assert first.enqueued > 0
    entered = set(ctx.db.outbox("daily")["customer_id"])
    # a rerun of the same occurrence is not a re-entry (nothing new, nothing refused)
    again = _occurrence(spec, ctx, 5)
    assert again.enqueued == 0
    assert "re_entry" not in set(ctx.db.decisions("daily")["reason"].dropna())
    # the next day: whoever entered is refused before the gate, reason re_entry
    dry = engine.funnel(engine.plan(spec, ctx, start=datetime(2026, 2, 6, 12)), ctx)
    assert dry["funnel"]["segment"] - dry["funnel"]["after re_entry"] == len(entered)
    second = _occurrence(spec, ctx, 6)
    assert second.enqueued == 0 and second.suppressed >= len(entered)
    one = sorted(entered)[0]
    why = ctx.db.why("daily", one)
    assert why["reason"].tolist() == ["contacted", "re_entry"]
    assert why["at"].iloc[1] == "2026-02-06T12:00:00"


def test_re_entry_after_days_and_always(ctx: engine.Context) -> None:  # noqa: F811
    spec = _daily({"after_days": 2})
    assert spec.signed_dump()["when"]["re_entry"] == {"after_days": 2}
    n = _occurrence(spec, ctx, 5).enqueued
    assert n > 0
    assert _occurrence(spec, ctx, 6).enqueued == 0  # 1 day after: refused
    assert _occurrence(spec, ctx, 7).enqueued == n  # 2 days after: in again
    # always (the default) leaves it to the caps: the pure rule refuses nobody
    entries = pd.Series(pd.to_datetime(["2026-02-05T12:00"]), index=["a"])
    at = pd.Series(pd.Timestamp("2026-02-06T12:00"), index=["a", "b"])
    assert list(re_entries(_daily(), entries, at)) == []
    assert list(re_entries(_daily("once"), entries, at)) == ["a"]
    assert list(re_entries(_daily({"after_days": 1}), entries, at)) == []
    with pytest.raises(ValueError, match="after_days"):
        _daily({"after_days": 0})


def test_re_entry_once_of_a_trigger_campaign(ctx: engine.Context) -> None:  # noqa: F811
    """A second detection of a customer who entered is refused (``re_entry``), not sent."""
    from src.contact.triggers import DetectionQueue, DetectionRecord

    spec = bank_spec(
        campaign_id="trig",
        when={"trigger": "fx_remit_large", "re_entry": "once"},
        holdout={"share": 0.0},
        steps=[{"step_id": "s1", "channel": "email", "offer_id": "OF03"}],
    )
    # who the gate lets through (the same spec, one-off at the detection's time)
    ref = engine.plan(spec.model_copy(update={"when": When(at=datetime(2026, 2, 5, 10))}), ctx)
    who = list(ref.frame.index[ref.frame["reason"].isna()][:3])
    queue = DetectionQueue(ctx.db.store)
    queue.append([DetectionRecord(c, "fx_remit_large", datetime(2026, 2, 5, 10)) for c in who])
    first = engine.run_triggered(spec, ctx, SimulatedChannel(), queue, datetime(2026, 2, 5, 11))
    entered = set(ctx.db.outbox("trig")["customer_id"])
    assert first.enqueued == len(entered) > 0
    queue.append([DetectionRecord(c, "fx_remit_large", datetime(2026, 2, 6, 10)) for c in who])
    second = engine.run_triggered(spec, ctx, SimulatedChannel(), queue, datetime(2026, 2, 6, 11))
    assert second.enqueued == 0 and len(ctx.db.outbox("trig")) == len(entered)
    one = sorted(entered)[0]
    assert ctx.db.why("trig", one)["reason"].tolist() == ["contacted", "re_entry"]


# -- 3. quiet hours in the customer's zone --------------------------------------------------
def test_quiet_hours_use_the_customers_zone_from_the_customers_table(
    ctx: engine.Context,  # noqa: F811
) -> None:
    """07:30 in Seoul is quiet time there, not in Los Angeles (14:30), New York (17:30) or
    Sydney (09:30): the simulated bank's foreign customers are read from the customers table."""
    members = ctx.members.set_index("customer_id")
    assert "timezone" in members and members["timezone"].notna().any()
    spec = bank_spec(
        when={"at": "2026-02-05T07:30:00"},
        holdout={"share": 0.0},
        steps=[{"step_id": "s1", "channel": "push", "offer_id": "OF02"}],
    )
    frame = engine.plan(spec, ctx).frame
    open_ = frame[frame["reason"].isna()].join(members[["timezone", "consent_night"]])
    day = open_[
        open_["timezone"].isin(["America/Los_Angeles", "America/New_York", "Australia/Sydney"])
    ]
    home = open_[open_["timezone"].isna() & ~open_["consent_night"].astype(bool)]
    assert len(day) > 0 and len(home) > 0
    assert not day["requeued"].any()
    assert home["requeued"].all()
    assert (home["send_at"] == pd.Timestamp("2026-02-05T08:00:00")).all()


def test_an_unknown_zone_is_an_error_naming_the_record() -> None:
    from src.data.loaders import RawDataError, validate_frame

    customers = pd.DataFrame(
        {
            "customer_id": ["C1", "C2"],
            "birth_year": [1990, 1980],
            "gender": ["F", "M"],
            "life_stage": ["family", "family"],
            "income_band": ["mid", "mid"],
            "region": ["seoul", "seoul"],
            "joined_at": ["2020-01-01T00:00:00"] * 2,
            "consent_push": [True, True],
            "consent_sms": [True, True],
            "consent_messenger": [True, True],
            "consent_email": [True, True],
            "accident_reported_at": [None, None],
            "closed_at": [None, None],
            "timezone": [None, "Mars/Olympus_Mons"],
        }
    )
    with pytest.raises(RawDataError, match="timezone") as error:
        validate_frame(customers, "customers")
    failures = error.value.failures
    assert failures["row"].tolist() == [1] and "C2" in str(error.value)
    assert validate_frame(customers.assign(timezone=[None, "Europe/London"]), "customers")
    # the gate (given unvalidated rows) names the customers too
    spec = bank_spec(
        holdout={"share": 0.0}, steps=[{"step_id": "s1", "channel": "push", "offer_id": "OF02"}]
    )
    members = customers.set_index("customer_id").assign(consent_night=False)
    with pytest.raises(ValueError, match=r"customers.timezone: 'Mars/Olympus_Mons'.*C2"):
        gate(
            spec,
            spec.steps[0],
            members,
            pd.Series(dtype=object),
            PolicyConfig(offers=(Offer(offer_id="OF02", slots=("app",), product="savings"),)),
            pd.Series(pd.Timestamp("2026-02-05T12:00"), index=members.index),
        )


def test_cvr_scores_of_a_registered_cvr_champion_feed_a_segment(
    ctx: engine.Context,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The real path: a CVR model logged and registered as ``nextoffer-cvr@champion`` (as
    retrain does), scored by ``run_score_cvr`` into ``cvr_scores``; a cvr segment reads it."""
    import mlflow

    from src.models.cvr import train_cvr
    from src.models.registry import register_and_promote
    from src.models.scoring import CVR_MODEL, run_score_cvr
    from src.models.tracking import configure_mlflow, log_pyfunc
    from src.settings import Settings

    view = ctx.catalog.read("customer_view", AS_OF)
    rng = np.random.default_rng(0)
    rows = pd.concat([view, view], ignore_index=True).assign(
        offer_id=rng.choice(["OF02", "OF03"], 2 * len(view)), channel="app"
    )
    rows["convert"] = (rng.random(len(rows)) < 0.1 + 0.3 * (rows["age"] > 40)).astype(int)
    model = train_cvr(rows.iloc[::2], rows.iloc[1::2], ["OF02", "OF03"], n_estimators=10)
    settings = Settings(
        mlruns_dir=tmp_path / "mlruns", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'ml.db'}"
    )
    with mlflow.start_run(experiment_id=configure_mlflow(settings, "cvr-test")):
        uri = log_pyfunc(model, rows, model.raw_columns)
    register_and_promote(
        uri, CVR_MODEL, metric="fixture", candidate_score=1.0, score_champion=lambda _: 0.0,
        tracking_uri=settings.tracking_uri,
    )  # fmt: skip
    path, champion = run_score_cvr(ctx.catalog, AS_OF, settings.tracking_uri, chunk_rows=250)
    try:
        out = pd.read_parquet(path)
        offers = sorted(ctx.catalog.read("offers")["offer_id"])
        assert champion.products == ("convert",) and sorted(set(out["offer_id"])) == offers
        assert len(out) == len(view) * len(offers) and out["score"].between(0, 1).all()
        of02 = out[out["offer_id"] == "OF02"].set_index("customer_id")["score"]
        expected = model.predict(view.assign(offer_id="OF02", channel="app"))
        assert np.allclose(of02.reindex(view["customer_id"]).to_numpy(), expected)
        b = SegmentBuilder(ctx.catalog, ctx.as_of, ctx.members, ctx.policy.offers)
        seg = Segment.model_validate({"model": {"score": "cvr", "offer_id": "OF02", "top_k": 5}})
        assert set(b.build(seg).ids) == _top(of02, 5)
    finally:
        path.unlink()
