"""The decision path: eligibility -> contact caps -> scores -> policy draw -> a loggable record.

Everything here is synchronous and in memory (one view row, one matrix row, one VW predict);
the only I/O of a decision is the log write the HTTP handler awaits afterwards.

Policies, in order of preference, each returning a probability for every allowed offer:

1. ``bandit``: the champion bandit's PMF over the allowed offers (renormalized over them).
2. ``propensity_greedy`` (fallback): offers of products a rule marked first, then by champion
   propensity; epsilon-greedy, so the log stays usable for off-policy evaluation.
3. ``default_order`` (fallback): the policy file's order, epsilon-greedy.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cachetools import FIFOCache

from src.contact.caps import ContactCaps, Usage
from src.contact.eligibility import exclusions, needed_columns
from src.contact.inbox import InAppInbox, InAppMessage
from src.contact.store import Charge, ContactStore, StoreUnavailable
from src.serving.config import Offer, PolicyConfig
from src.serving.customers import CustomerStore, OnlineFlags
from src.serving.log import DecisionRecord
from src.serving.models import ModelManager, ModelSet, normalized_pmf
from src.serving.schemas import DecisionRequest


@dataclass(frozen=True, slots=True)
class Choice:
    """What the policy did with the allowed offers."""

    offer_id: str | None
    candidates: tuple[str, ...]
    pmf: tuple[float, ...]
    policy: str
    fallback_reason: str | None


@dataclass(frozen=True, slots=True)
class Audience:
    """What the view says about one customer for one channel and slot, under one model set:
    computed on the customer's first request and reused (the view changes only with a new batch
    run, which restarts the service; the online rule flags are kept apart, in ``OnlineFlags``).
    Shared between decisions: never mutated."""

    excluded: dict[str, str]
    eligible: tuple[Offer, ...]
    eligible_ids: tuple[str, ...]
    candidates: tuple[dict[str, Any], ...]  # the bandit's candidate records of ``eligible``
    scores: dict[str, float] | None  # propensity by product
    offer_scores: dict[str, float | None]  # propensity by eligible offer


AUDIENCE_CACHE_MAX = 100_000  # (customer, channel, slot) entries; the oldest goes first
_EPOCH = datetime(1970, 1, 1)
EPOCH_ORDINAL = _EPOCH.toordinal()  # a contact store's day: days since 1970-01-01


@dataclass(frozen=True, slots=True)
class Prefetched:
    """A shared contact store's counts, read on the event loop before the decision (see
    :meth:`DecisionEngine.prefetch`); ``usage`` None: the store could not be read."""

    customer_id: str
    channel: str
    local_day: int
    usage: Usage | None


CHARGE_ATTEMPTS = 3  # choose again after a refused charge at most this often
CAMPAIGN_POLICY = "campaign"  # a decision that served a campaign's in-app message (prob 1)


def naive_ns(when: datetime) -> int:
    """Nanoseconds of a naive local time on the event stream's scale (``detection.to_ns``)."""
    return (when - _EPOCH) // timedelta(microseconds=1) * 1000


def epsilon_greedy(n: int, epsilon: float) -> list[float]:
    """Probabilities of an epsilon-greedy draw whose first candidate is the greedy one."""
    if n == 0:
        return []
    p = [epsilon / n] * n
    p[0] += 1.0 - epsilon
    return p


def draw(pmf: Sequence[float], u: float) -> int:
    """Index drawn from ``pmf`` with a uniform number ``u`` in [0, 1)."""
    acc = 0.0
    for i, p in enumerate(pmf):
        acc += p
        if u < acc:
            return i
    return max(i for i, p in enumerate(pmf) if p > 0)


def bandit_context(
    row: Mapping[str, Any] | None,
    when: datetime,
    channel: str,
    usage: Usage,
    scores: Mapping[str, float] | None,
    flags: Sequence[str],
) -> dict[str, Any]:
    """The bandit's request context (``bandit_features.request_context`` plus propensity scores as
    ``propensity_<product>`` and active rule flags as 1)."""
    ctx: dict[str, Any] = dict(row) if row else {}
    ctx["hour"] = when.hour
    ctx["weekday"] = when.weekday()
    ctx["channel"] = channel
    ctx["exposures_7d"] = usage.week_total
    ctx["seen"] = usage.offer_week
    if scores:
        for product, p in scores.items():
            ctx[f"propensity_{product}"] = p
    for f in flags:
        ctx[f] = 1
    return ctx


class DecisionEngine:
    """Makes decisions; owns no I/O but the contact store's. ``clock`` returns an aware datetime
    (injected in tests). ``contact_store``: caps shared by replicas (else ``caps``, in memory);
    ``inbox``: in-app campaign messages to serve before the policy's own choice."""

    def __init__(
        self,
        policy: PolicyConfig,
        store: CustomerStore,
        flags: OnlineFlags,
        caps: ContactCaps,
        models: ModelManager,
        *,
        timezone: str = "Asia/Seoul",
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
        contact_store: ContactStore | None = None,
        inbox: InAppInbox | None = None,
    ) -> None:
        self.policy = policy
        self.inbox = inbox
        self.store = store
        self.flags = flags
        self.caps = caps
        self.contact_store = contact_store
        self.models = models
        self.tz = ZoneInfo(timezone)
        self.rng = random.Random(seed)
        self._ids = random.Random()  # OS-seeded even in tests: ids must not repeat across restarts
        self.clock = clock or (lambda: datetime.now(self.tz))
        self.by_slot: dict[str, list[Offer]] = {}
        for offer in policy.offers:
            for slot in offer.slots:
                self.by_slot.setdefault(slot, []).append(offer)
        self.offers = {o.offer_id: o for o in policy.offers}
        rank = {o: i for i, o in enumerate(policy.default_order)}
        self.default_rank = {
            o.offer_id: rank.get(o.offer_id, len(rank) + i) for i, o in enumerate(policy.offers)
        }
        self.eligibility_columns = needed_columns(policy)
        store.warm(self.eligibility_columns)
        self._columns_for: tuple[int, tuple[str, ...]] = (-1, ())
        self._candidate = {
            (slot, o.offer_id): {
                "offer_id": o.offer_id,
                "product": o.product,
                "slot": slot,
                "creative": o.creative,
            }
            for slot, offers in self.by_slot.items()
            for o in offers
        }
        self._audiences: FIFOCache[tuple[int | None, str, str], Audience] = FIFOCache(
            AUDIENCE_CACHE_MAX
        )
        self._audience_models: ModelSet | None = None
        self._versions: dict[str, str] = {}

    def new_id(self) -> str:
        """A random 128-bit decision id (``uuid4`` costs an ``os.urandom`` call per request)."""
        return f"{self._ids.getrandbits(128):032x}"

    def now(self) -> datetime:
        """Local wall-clock time of the service (naive, like the data)."""
        return self.clock().astimezone(self.tz).replace(tzinfo=None)

    def local(self, when: datetime | None, default: datetime) -> datetime:
        if when is None:
            return default
        return when.astimezone(self.tz).replace(tzinfo=None) if when.tzinfo else when

    def _columns(self, models: ModelSet) -> tuple[str, ...]:
        key = id(models.bandit)
        if self._columns_for[0] != key:
            extra = models.bandit.context_columns if models.bandit else ()
            self._columns_for = (key, tuple(dict.fromkeys(self.eligibility_columns + extra)))
        return self._columns_for[1]

    def audience(self, position: int | None, channel: str, slot: str, models: ModelSet) -> Audience:
        """Eligibility and propensity scores of the customer at ``position`` (None: cold start)."""
        if models is not self._audience_models:
            old = self._audience_models
            # a poll that loaded nothing still makes a new set: keep the customers' audiences
            # (rebuilding them every poll kept the VW scorer's cache growing in the soak)
            if (
                old is None
                or old.propensity is not models.propensity
                or old.bandit is not models.bandit
            ):
                self._audiences = FIFOCache(AUDIENCE_CACHE_MAX)
            self._versions = models.versions()
            self._audience_models = models
        key = (position, channel, slot)
        found = self._audiences.get(key)
        if found is not None:
            return found
        row = None if position is None else self.store.row(position, self.eligibility_columns)
        offers = self.by_slot.get(slot, [])
        excluded = exclusions(row, channel, offers, self.policy)
        eligible = tuple(o for o in offers if o.offer_id not in excluded)
        scores = models.propensity.for_position(position) if models.propensity else None
        found = Audience(
            excluded,
            eligible,
            tuple(o.offer_id for o in eligible),
            tuple(self._candidate[(slot, o.offer_id)] for o in eligible),
            scores,
            {o.offer_id: (scores.get(o.product) if scores else None) for o in eligible},
        )
        self._audiences[key] = found
        return found

    async def prefetch(self, request: DecisionRequest) -> Prefetched | None:
        """Read what the decision needs from shared stores without blocking the event loop: the
        customer's row (a shared customer store) and the contact counts (a shared contact store
        that reads async). One after the other: ``asyncio.gather`` saved no time here and cost
        CPU (tasks). The counts may be a moment old when the decision uses them: the charge
        checks the caps again atomically, so a cap still holds (a refused charge reads them
        again, like a charge lost to another replica)."""
        store_prefetch = getattr(self.store, "prefetch", None)
        if store_prefetch is not None:
            await store_prefetch(request.customer_id)
        ausage = getattr(self.contact_store, "ausage", None)
        if ausage is None:
            return None
        customer_id, channel = request.customer_id, request.context.channel
        local_day = self.now().toordinal() - EPOCH_ORDINAL
        try:
            usage = await ausage(customer_id, channel, local_day)
        except StoreUnavailable:
            usage = None
        return Prefetched(customer_id, channel, local_day, usage)

    def decide(
        self,
        request: DecisionRequest,
        prefetched: Prefetched | None = None,
        models: ModelSet | None = None,
    ) -> DecisionRecord:
        """One decision, with its contact reserved; the caller logs it (or releases the contact).
        ``prefetched``: what :meth:`prefetch` read for this request; ``models``: the model set
        to decide with (default: the current one), so the caller knows which scorer decided."""
        now = self.now()
        day = now.toordinal()
        ctx = request.context
        when = self.local(ctx.time, now)
        customer_id, channel, slot = request.customer_id, ctx.channel, request.slot
        models = models if models is not None else self.models.current
        position = self.store.position(customer_id)
        audience = self.audience(position, channel, slot, models)
        excluded = audience.excluded
        flags = self.flags.active(customer_id, naive_ns(when)) if len(self.flags) else ()
        if self.inbox is not None:
            message = self._pending_message(customer_id, slot, channel, now, audience)
            if message is not None:
                return self._campaign_record(request, message, now, when, position, audience)

        def choose(usage: Usage, blocked: dict[str, str]) -> tuple[str | None, Choice]:
            nonlocal excluded
            if blocked:
                excluded = {**excluded, **blocked}
                allowed: Sequence[Offer] = [
                    o for o in audience.eligible if o.offer_id not in blocked
                ]
                candidates: Sequence[dict[str, Any]] = [
                    c for c in audience.candidates if c["offer_id"] not in blocked
                ]
                ids = tuple(o.offer_id for o in allowed)
            else:
                allowed, candidates, ids = (
                    audience.eligible,
                    audience.candidates,
                    audience.eligible_ids,
                )
            if not allowed:
                return None, Choice(None, (), (), "none", None)
            choice = self._choose(
                allowed,
                candidates,
                ids,
                position,
                when,
                channel,
                usage,
                audience.scores,
                flags,
                models,
            )
            return choice.offer_id, choice

        decision_id = self.new_id()
        if self.contact_store is None:
            choice = self.caps.reserve_with(
                customer_id, channel, day, audience.eligible_ids, choose
            )
        else:
            choice = self._charge_shared(
                self.contact_store,
                decision_id,
                customer_id,
                channel,
                day,
                audience,
                choose,
                prefetched,
            )
        chosen = self.offers.get(choice.offer_id) if choice.offer_id else None
        return DecisionRecord(
            decision_id=decision_id,
            created_at=now.isoformat(timespec="microseconds"),
            day=day,
            customer_id=customer_id,
            slot=slot,
            channel=channel,
            device=ctx.device,
            page=ctx.page,
            request_time=when.isoformat(timespec="seconds"),
            offer_id=choice.offer_id,
            product=chosen.product if chosen else None,
            prob=choice.pmf[choice.candidates.index(choice.offer_id)] if chosen else None,
            candidates=choice.candidates,
            pmf=choice.pmf,
            scores=audience.offer_scores,
            excluded=excluded,
            policy=choice.policy,
            model_versions=self._versions,
            cold_start=position is None,
            fallback=choice.fallback_reason is not None,
            fallback_reason=choice.fallback_reason,
            view_as_of=self.store.as_of,
            flags=flags,
        )

    def _pending_message(
        self, customer_id: str, slot: str, channel: str, now: datetime, audience: Audience
    ) -> tuple[InAppMessage, str] | None:
        """The customer's pending in-app campaign message for the slot, claimed under a new
        decision id (exactly one replica wins a claim), if its offer is still eligible here; an
        ineligible one is marked undeliverable with the slot's reason. The inbox unreachable:
        none (the policy's own choice, which fails closed on the caps by itself)."""
        assert self.inbox is not None
        try:
            message = self.inbox.next_for(customer_id, slot, channel, now)
            if message is None:
                return None
            if message.offer_id not in audience.eligible_ids:
                reason = audience.excluded.get(message.offer_id, "offer_not_in_slot")
                self.inbox.refuse(message.message_id, reason, now)
                return None
            decision_id = self.new_id()
            if not self.inbox.claim(message.message_id, decision_id, now):
                return None  # another replica served it just now
        except StoreUnavailable:
            return None
        return message, decision_id

    def _campaign_record(
        self,
        request: DecisionRequest,
        claimed: tuple[InAppMessage, str],
        now: datetime,
        when: datetime,
        position: int | None,
        audience: Audience,
    ) -> DecisionRecord:
        """The decision that shows a campaign's in-app message: policy ``campaign``, a
        deterministic choice (its one candidate with probability 1) that off-policy evaluation
        must not read as a draw of the bandit (``decisions_for_evaluation`` leaves it out); the
        campaign and message ids are in ``model_versions``. No contact is charged: the campaign
        charged it when it wrote the message's outbox row."""
        message, decision_id = claimed
        offer = self.offers[message.offer_id]
        return DecisionRecord(
            decision_id=decision_id,
            created_at=now.isoformat(timespec="microseconds"),
            day=now.toordinal(),
            customer_id=request.customer_id,
            slot=request.slot,
            channel=request.context.channel,
            device=request.context.device,
            page=request.context.page,
            request_time=when.isoformat(timespec="seconds"),
            offer_id=offer.offer_id,
            product=offer.product,
            prob=1.0,
            candidates=(offer.offer_id,),
            pmf=(1.0,),
            scores={offer.offer_id: audience.offer_scores.get(offer.offer_id)},
            excluded=audience.excluded,
            policy=CAMPAIGN_POLICY,
            model_versions={
                "campaign": message.campaign_id,
                "campaign_message": message.message_id,
            },
            cold_start=position is None,
            fallback=False,
            fallback_reason=None,
            view_as_of=self.store.as_of,
            content=message.content or None,
        )

    def _charge_shared(
        self,
        contact_store: ContactStore,
        decision_id: str,
        customer_id: str,
        channel: str,
        day: int,
        audience: Audience,
        choose: Callable[[Usage, dict[str, str]], tuple[str | None, Choice]],
        prefetched: Prefetched | None = None,
    ) -> Choice:
        """Optimistic use of a shared store: read the counts (or take them ``prefetched``),
        choose, charge the contact under the decision's id; if another replica took the contact
        meanwhile (refused), read and choose again. The store unreachable: no offer that needs
        a cap check (fail closed)."""
        local_day = day - EPOCH_ORDINAL
        refused: dict[str, str] = {}
        if prefetched is not None and (prefetched.customer_id, prefetched.channel) != (
            customer_id,
            channel,
        ):
            prefetched = None
        for attempt in range(CHARGE_ATTEMPTS):
            try:
                if attempt == 0 and prefetched is not None and prefetched.local_day == local_day:
                    if prefetched.usage is None:
                        raise StoreUnavailable("the contact store could not be read")
                    usage = prefetched.usage
                else:
                    usage = contact_store.usage(customer_id, channel, local_day)
            except StoreUnavailable:
                return self._unchecked(channel, audience, choose)
            blocked = self.caps.blocked(usage, channel, audience.eligible_ids)
            offer, choice = choose(usage, {**blocked, **refused} if refused else blocked)
            if offer is None:
                return choice
            charge = Charge(decision_id, customer_id, channel, offer, local_day, "slot")
            try:
                reason = contact_store.try_charge(charge, self.policy)
            except StoreUnavailable:
                return self._unchecked(channel, audience, choose)
            if reason is None:
                return choice
            refused[offer] = reason
        return Choice(None, (), (), "none", "contact_contention")

    def _unchecked(
        self,
        channel: str,
        audience: Audience,
        choose: Callable[[Usage, dict[str, str]], tuple[str | None, Choice]],
    ) -> Choice:
        """The decision when caps cannot be counted: nothing if any cap applies on the channel."""
        cap, offer_cap = self.policy.cap_for(channel), self.policy.offer_cap
        capped = (cap.per_day, cap.per_week, offer_cap.per_day, offer_cap.per_week)
        if any(c is not None for c in capped) and audience.eligible_ids:
            return Choice(None, (), (), "none", "contact_store_unavailable")
        return choose(Usage(0, 0, {}, {}, 0), {})[1]

    def release(self, record: DecisionRecord) -> None:
        """Undo the contact of a decision that could not be logged (it was never shown)."""
        if record.offer_id is None:
            return
        if record.policy == CAMPAIGN_POLICY:  # no charge of ours: give the message back
            message_id = record.model_versions.get("campaign_message")
            if self.inbox is not None and message_id:
                with contextlib.suppress(StoreUnavailable):
                    self.inbox.unclaim(message_id, record.decision_id)
            return
        if self.contact_store is None:
            self.caps.release(record.customer_id, record.channel, record.day, record.offer_id)
            return
        # unreachable: the charge stays, a cap counts one contact too many (the safe side)
        with contextlib.suppress(StoreUnavailable):
            self.contact_store.release(record.decision_id)

    def _customer_context(
        self, position: int | None, scores: Mapping[str, float] | None, models: ModelSet
    ) -> dict[str, Any]:
        """The customer's part of the bandit context: view row and propensity scores."""
        ctx: dict[str, Any] = (
            {} if position is None else self.store.row(position, self._columns(models))
        )
        if scores:
            for product, p in scores.items():
                ctx[f"propensity_{product}"] = p
        return ctx

    def _choose(
        self,
        allowed: Sequence[Offer],
        candidates: Sequence[Mapping[str, Any]],
        ids: tuple[str, ...],
        position: int | None,
        when: datetime,
        channel: str,
        usage: Usage,
        scores: Mapping[str, float] | None,
        flags: Sequence[str],
        models: ModelSet,
    ) -> Choice:
        reason = None
        bandit = models.bandit
        if bandit is not None:
            try:
                scorer = bandit.scorer
                if (
                    scorer is not None
                    and scorer.split
                    and (not flags or scorer.flags_supported(flags))
                ):
                    key = (position, models.propensity.version if models.propensity else None)
                    part = scorer.customer_part(
                        key, lambda: self._customer_context(position, scores, models)
                    )
                    lines = scorer.action_lines(candidates, usage.offer_week)
                    lines.insert(
                        0,
                        scorer.shared_line(
                            part, (when.hour, when.weekday(), channel, usage.week_total), flags
                        ),
                    )
                    pmf = normalized_pmf(scorer.predict(lines), len(candidates))
                else:
                    row = (
                        None
                        if position is None
                        else self.store.row(position, self._columns(models))
                    )
                    context = bandit_context(row, when, channel, usage, scores, flags)
                    pmf = bandit.pmf(context, candidates)
                i = draw(pmf, self.rng.random())
                return Choice(allowed[i].offer_id, ids, tuple(pmf), "bandit", None)
            except Exception:  # noqa: BLE001 - a failing model must not fail the request
                reason = "bandit_error"
        marked = {f[len("mark_") :] for f in flags if f.startswith("mark_")}
        if scores is not None:
            ordered = sorted(
                allowed,
                key=lambda o: (
                    o.product not in marked,
                    -(scores.get(o.product) or 0.0),
                    self.default_rank[o.offer_id],
                ),
            )
            policy = "propensity_greedy"
            reason = reason or ("no_bandit_model" if self.models.names.get("bandit") else None)
        else:
            ordered = sorted(
                allowed, key=lambda o: (o.product not in marked, self.default_rank[o.offer_id])
            )
            policy = "default_order"
            reason = reason or "no_model"
        pmf = epsilon_greedy(len(ordered), self.policy.fallback_epsilon)
        i = draw(pmf, self.rng.random())
        return Choice(
            ordered[i].offer_id, tuple(o.offer_id for o in ordered), tuple(pmf), policy, reason
        )

    def without_offer(
        self, request: DecisionRequest, reason: str, base: DecisionRecord | None = None
    ) -> DecisionRecord:
        """A decision that shows nothing, flagged with ``reason``: what the app gets when the
        decision could not be made or not be logged (no contact without a durable record)."""
        if base is not None:
            excluded = dict(base.excluded)
            if base.offer_id:
                excluded[base.offer_id] = reason
            return replace(
                base,
                offer_id=None,
                product=None,
                prob=None,
                candidates=(),
                pmf=(),
                excluded=excluded,
                policy="none",
                fallback=True,
                fallback_reason=reason,
            )
        now = self.now()
        ctx = request.context
        return DecisionRecord(
            decision_id=self.new_id(),
            created_at=now.isoformat(timespec="microseconds"),
            day=now.toordinal(),
            customer_id=request.customer_id,
            slot=request.slot,
            channel=ctx.channel,
            device=ctx.device,
            page=ctx.page,
            request_time=None,
            offer_id=None,
            product=None,
            prob=None,
            candidates=(),
            pmf=(),
            scores={},
            excluded={},
            policy="none",
            model_versions={},
            cold_start=self.store.position(request.customer_id) is None,
            fallback=True,
            fallback_reason=reason,
            view_as_of=self.store.as_of,
        )
