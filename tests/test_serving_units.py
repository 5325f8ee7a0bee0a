"""Pieces of the decision path on their own: eligibility, caps under threads, the policy file,
probability draws and the log's idempotent rewards."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from src.contact.caps import ContactCaps
from src.contact.eligibility import customer_block, exclusions, offer_block
from src.serving.config import Cap, Offer, PolicyConfig, load_policy
from src.serving.engine import draw, epsilon_greedy
from src.serving.log import DecisionRecord, RewardRecord, SqliteDecisionLog, read_log

OFFERS = (
    Offer(
        offer_id="A", slots=("home_banner",), product="loan", target={"age": {"gte": 19, "lt": 70}}
    ),
    Offer(offer_id="B", slots=("home_banner",), product="fx"),
    Offer(
        offer_id="C",
        slots=("home_banner",),
        product="card",
        target={"life_stage": {"in": ["family"]}},
    ),
)
ROW = {
    "is_closed": False,
    "is_accident_reported": False,
    "consent_push": True,
    "consent_sms": False,
    "n_loan": 0,
    "n_card": 1,
    "age": 30,
    "life_stage": "student",
}


def policy(**kw) -> PolicyConfig:
    return PolicyConfig(offers=OFFERS, **kw)


def test_customer_level_blocks_come_first():
    p = policy()
    assert customer_block(ROW, "push", p) is None
    assert customer_block(ROW, "sms", p) == "no_consent_sms"
    assert customer_block({**ROW, "is_closed": True}, "app", p) == "closed_account"
    assert customer_block({**ROW, "is_accident_reported": True}, "app", p) == "accident_report"
    assert customer_block(None, "push", p) == "no_consent_on_record"
    assert customer_block(None, "app", p) is None  # in-app slot of a customer newer than the view


def test_offer_blocks_held_product_and_targeting():
    p = policy()
    assert offer_block(ROW, OFFERS[0], p) is None
    assert offer_block({**ROW, "n_loan": 2}, OFFERS[0], p) == "product_held"
    assert offer_block({**ROW, "age": 17}, OFFERS[0], p) == "target:age"
    assert offer_block({**ROW, "age": None}, OFFERS[0], p) == "target_unknown:age"
    assert offer_block(ROW, OFFERS[2], p) == "product_held"
    assert exclusions({**ROW, "n_card": 0}, "app", OFFERS, p) == {"C": "target:life_stage"}
    assert exclusions(None, "app", OFFERS, p) == {
        "A": "target_unknown:age",
        "C": "target_unknown:life_stage",
    }


def test_policy_file_errors_name_the_file_and_field(tmp_path: Path):
    good = tmp_path / "p.yaml"
    good.write_text(
        "offers:\n  - {offer_id: A, slot: home_banner, product: loan}\n"
        "channel_cap: {per_day: 2}\ndefault_order: [A]\n"
    )
    loaded = load_policy(good)
    assert loaded.offers[0].slots == ("home_banner",) and loaded.channel_cap.per_day == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "offers:\n  - {offer_id: A, slot: home_banner, product: loan, target: {age: {about: 3}}}\n"
    )
    with pytest.raises(ValueError, match=r"(?s)bad\.yaml.*about"):
        load_policy(bad)
    with pytest.raises(ValueError, match="unknown offer"):
        PolicyConfig(offers=OFFERS, default_order=("Z",))


def test_caps_are_never_exceeded_by_concurrent_reservations():
    caps = ContactCaps(policy(channel_cap=Cap(per_day=5, per_week=8), offer_cap=Cap(per_day=2)))
    granted: list[str] = []
    lock = threading.Lock()

    def choose(usage, blocked):
        allowed = [o for o in ("A", "B", "C") if o not in blocked]
        offer = allowed[0] if allowed else None
        return offer, offer

    def client(day: int) -> None:
        for _ in range(100):
            offer = caps.reserve_with("cust", "app", day, ["A", "B", "C"], choose)
            if offer:
                with lock:
                    granted.append((day, offer))

    for day in (100, 101, 102):  # the service's clock only moves forward
        threads = [threading.Thread(target=client, args=(day,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for day in (100, 101, 102):
        mine = [o for d, o in granted if d == day]
        assert len(mine) <= 5 and all(mine.count(o) <= 2 for o in "ABC")
    assert len(granted) <= 8  # the week cap over all days
    usage = caps.usage("cust", "app", 102)
    assert usage.channel_week == len(granted)


def test_caps_rebuild_from_log_and_release():
    caps = ContactCaps(policy(channel_cap=Cap(per_day=1)))
    caps.load([("c", "app", "A", 10), ("c", "app", "B", 2)], today=10)  # day 2 is out of the week
    assert caps.usage("c", "app", 10).channel_week == 1
    assert caps.blocked(caps.usage("c", "app", 10), "app", ["B"]) == {"B": "cap_channel_day"}
    caps.release("c", "app", 10, "A")
    assert caps.usage("c", "app", 10).channel_day == 0


def test_epsilon_greedy_draws_match_their_probabilities():
    p = epsilon_greedy(4, 0.2)
    assert p[0] == pytest.approx(0.85) and sum(p) == pytest.approx(1.0)
    rng = random.Random(0)
    counts = [0] * 4
    for _ in range(20_000):
        counts[draw(p, rng.random())] += 1
    assert [c / 20_000 for c in counts] == pytest.approx(p, abs=0.01)
    assert draw([0.0, 1.0], 0.999999999) == 1


def _record(i: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i}",
        created_at="2026-02-01T10:00:00",
        day=1,
        customer_id="c",
        slot="home_banner",
        channel="app",
        device=None,
        page=None,
        request_time=None,
        offer_id="A",
        product="loan",
        prob=0.5,
        candidates=("A", "B"),
        pmf=(0.5, 0.5),
        scores={"A": 0.1, "B": None},
        excluded={"C": "product_held"},
        policy="default_order",
        model_versions={},
        cold_start=False,
        fallback=True,
        fallback_reason="no_model",
        view_as_of="2026-02-01",
    )


def test_log_group_commits_and_idempotent_rewards(tmp_path: Path):
    gate = threading.Event()

    def hold_first_commit(
        n: int, seconds: float
    ) -> None:  # the writer is busy: the others queue up
        if not gate.is_set():
            gate.wait(10)

    log = SqliteDecisionLog(
        tmp_path / "log.sqlite", synchronous="NORMAL", on_commit=hold_first_commit
    )
    try:
        threads = [
            threading.Thread(target=log.submit_blocking, args=("decision", _record(i)))
            for i in range(50)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while log._queue.qsize() < 49 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for t in threads:
            t.join()
        outcomes = [
            log.submit_blocking("reward", RewardRecord("d3", "click", None, "t")) for _ in range(2)
        ]
        assert outcomes == ["stored", "duplicate"]
        assert (
            log.submit_blocking("reward", RewardRecord("zz", "click", None, "t"))
            == "unknown_decision"
        )
        assert log.stats.commits < log.stats.writes  # several writes shared a commit
    finally:
        log.close()
    decisions, rewards = read_log(tmp_path / "log.sqlite")
    assert len(decisions) == 50 and len(rewards) == 1


def test_contact_counts_match_a_recount_of_the_contacts():
    """The incremental per-day counts equal counting the kept contacts from scratch."""
    caps = ContactCaps(policy())
    rng = random.Random(5)
    kept: list[tuple[int, str, str]] = []
    day = 100
    for _ in range(600):
        step = rng.random()
        if step < 0.05:
            day += 1
        elif step < 0.12 and kept:
            d, ch, o = kept[rng.randrange(len(kept))]
            caps.release("c", ch, d, o)
            kept.remove((d, ch, o))
        else:
            channel, offer = rng.choice(["app", "push"]), rng.choice("ABC")
            got = caps.reserve_with(
                "c", channel, day, ["A", "B", "C"], lambda u, b, o=offer: (o, o)
            )
            kept.append((day, channel, got))
        channel = rng.choice(["app", "push"])
        window = [c for c in kept if day - 7 < c[0] <= day]
        usage = caps.usage("c", channel, day)
        assert usage.week_total == len(window)
        assert usage.channel_week == sum(c[1] == channel for c in window)
        assert usage.channel_day == sum(c[1] == channel and c[0] == day for c in window)
        for o in "ABC":
            assert usage.offer_week.get(o, 0) == sum(c[2] == o for c in window)
            assert usage.offer_day.get(o, 0) == sum(c[2] == o and c[0] == day for c in window)


def _vw_scorer(spec_kw: dict):
    from src.models.bandit import ContextualBandit
    from src.models.bandit_features import default_feature_spec
    from src.serving.models import VwScorer

    base = default_feature_spec()
    spec = type(base)(**{**base.__dict__, **spec_kw})
    return VwScorer(ContextualBandit(spec=spec))


def _cases(rng: random.Random, rules: tuple[str, ...]):
    candidates = [
        {
            "offer_id": f"OF{i:02d}",
            "product": p,
            "slot": "home_banner",
            "creative": f"Get a {p} now",
        }
        for i, p in enumerate(["loan", "fx", "card", "fund"])
    ]
    cases = []
    for _k in range(40):
        customer = {
            "gender": rng.choice(["F", "M", None]),
            "life_stage": rng.choice(["student", "family retiree"]),
            "age": rng.choice([23, 47.0, None]),
            "n_loan": rng.choice([0, 1, 3.5, None]),
            "pv_fx_7d": rng.choice([0, 2, None]),
            "propensity_loan": rng.random(),
            rules[0]: rng.choice([0, 1, 2.5, None]),
        }
        request = {
            "hour": rng.randrange(24),
            "weekday": rng.randrange(7),
            "channel": rng.choice(["app", "web"]),
            "exposures_7d": rng.choice([0, 1, 6]),
            "seen": rng.choice([{}, {"OF01": 2}, {"OF00": 1, "OF03": 4}]),
        }
        flags = rng.choice([(), ("mark_fx",), (rules[1],), tuple(sorted(rules))])
        cases.append((customer, request, flags))
    return cases, candidates


def test_vw_examples_from_cached_pieces_equal_vw_example():
    """The serving side assembles VW examples from per-customer and per-request pieces; with
    propensity and rule features (the online flags override the view's rule columns) the text
    is exactly ``vw_example``'s, and an assembly that is not switches itself off."""
    from src.models.bandit_features import vw_example

    rules = ("rule_fx_remit_large", "rule_loan_no_apply")
    scorer = _vw_scorer({"propensity": ("propensity_loan",), "rules": rules})
    cases, candidates = _cases(random.Random(1), rules)
    for customer, request, flags in cases:
        full = {**customer, **request, **dict.fromkeys(flags, 1)}
        assert scorer.split_lines(customer, request, flags, candidates) == vw_example(
            full, candidates, scorer.spec
        )
        part = scorer.customer_part(("k", id(customer)), lambda c=customer: c)
        key = tuple(request[k] for k in ("hour", "weekday", "channel", "exposures_7d"))
        assert scorer.shared_line(part, key, flags) == vw_example(full, candidates, scorer.spec)[0]
    scorer.check_split(cases, candidates)
    assert scorer.split
    scorer._order = tuple(
        reversed(scorer._order)
    )  # a feature module that orders namespaces otherwise
    scorer.check_split(cases, candidates)
    assert not scorer.split
