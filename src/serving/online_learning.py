"""The bandit learns from rewards inside the service; one learner publishes, every replica swaps.

Today's champion bandit is trained offline and only predicts in the service. With
``serving.online_learning`` (and ``shared_state_url``), on the shared Redis:

1. **Decisions**: every decision the bandit made and the log accepted is appended to a stream
   (``<prefix>:ol:decisions``) with the exact VW example it was scored on (the text lines the
   service fed VW), the chosen index, its probability and the bandit version that served it.
2. **Rewards**: a new reward adds its kind and value to ``<prefix>:ol:reward:<decision id>``.
3. **One learner**: the replica holding a lease (``<prefix>:ol:learner``, renewed while it
   lives, taken over by another replica when it dies) reads decisions whose reward window has
   closed, labels each with its reward (0 if none came: a contextual bandit must learn from
   the offers that were not clicked too), learns, and every ``online_publish_every`` examples
   publishes the weights as version ``<champion>.<n>`` together with the stream position they
   include (``<prefix>:ol:current``), in one transaction; the learned part of the stream is
   then trimmed. A learner taking over resumes from the published weights and position, so
   a published version has learned every closed decision up to its position exactly once.
4. **Replicas** see that version through :class:`OnlineBanditSource` (in front of the model
   registry) and swap it in like a new champion alias (``src.serving.models``: loaded, probed,
   then swapped as one snapshot). The probability logged with a decision is computed by the
   snapshot that served it, and the decision records its version, so the logged probabilities
   always match what was served, whichever version was current elsewhere.

A new champion in the registry restarts learning from it (its own offline training already
saw the older logs). Rewards that arrive after the window are stored in the log but not
learned from.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from src.models.bandit_features import _num, cost_of  # vw_example's label formatting
from src.serving.log import DecisionRecord
from src.serving.models import BanditModel, ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """What ``<prefix>:ol:current`` holds: the version, its champion and its stream position."""

    version: str
    base: str
    n: int
    cursor: str

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Published | None:
        if raw is None:
            return None
        return cls(**json.loads(raw))


class Keys:
    """The shared keys of one deployment (``prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.decisions = f"{prefix}:ol:decisions"
        self.current = f"{prefix}:ol:current"
        self.lease = f"{prefix}:ol:learner"
        self.prefix = prefix

    def reward(self, decision_id: str) -> str:
        return f"{self.prefix}:ol:reward:{decision_id}"

    def model(self, version: str) -> str:
        return f"{self.prefix}:ol:model:{version}"


def labeled(lines: list[str], chosen: int, prob: float, reward: float) -> list[str]:
    """The example with its label on the chosen action's line, as ``vw_example`` writes it."""
    out = list(lines)
    out[chosen + 1] = f"0:{_num(cost_of(reward))}:{_num(prob)} {out[chosen + 1]}"
    return out


class OnlineLearning:
    """The replica's side: record decisions and rewards, and run the learner when it holds the
    lease (:meth:`step`, from a worker thread)."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        source: ModelSource | None,
        bandit_name: str,
        *,
        reward_window_s: float,
        publish_every: int,
        lease_s: float = 30.0,
        retention_s: int = 7 * 86_400,
        stream_max: int = 2_000_000,
        reward_of: Any = None,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.source = source
        self.bandit_name = bandit_name
        self.reward_window_ms = int(reward_window_s * 1000)
        self.publish_every = publish_every
        self.lease_ms = int(lease_s * 1000)
        self.retention_s = retention_s
        self.stream_max = stream_max
        self.reward_of = reward_of
        self.me = uuid.uuid4().hex
        self.recorded = self.skipped = self.failed = 0
        self.learner: _Learner | None = None
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    # -- the request path ---------------------------------------------------------------
    def example_of(self, record: DecisionRecord, bandit: BanditModel | None) -> list[str] | None:
        """The VW lines that scored this bandit decision (right after ``decide``, before any
        await: the scorer keeps only its last example), None if not learnable."""
        if (
            record.policy != "bandit"
            or record.offer_id is None
            or bandit is None
            or bandit.scorer is None
            or bandit.version != record.model_versions.get("bandit")
        ):
            return None
        lines = bandit.scorer.last_lines
        if lines is None or len(lines) != len(record.candidates) + 1:
            return None
        return list(lines)

    def record_decision(self, record: DecisionRecord, lines: list[str] | None) -> None:
        """Append a logged bandit decision to the shared stream (never raises: learning is
        best-effort, the decision stands)."""
        if lines is None or record.offer_id is None or record.prob is None:
            self.skipped += 1
            return
        try:
            self.client.xadd(
                self.keys.decisions,
                {
                    "id": record.decision_id,
                    "lines": json.dumps(lines),
                    "chosen": record.candidates.index(record.offer_id),
                    "prob": repr(record.prob),
                    "version": record.model_versions.get("bandit", ""),
                },
                maxlen=self.stream_max,
                approximate=True,
            )
            self.recorded += 1
        except Exception as error:  # noqa: BLE001 - the decision is logged; only learning misses it
            self._fail("decision", error)

    def record_reward(self, decision_id: str, kind: str, value: float | None) -> None:
        """Note a new reward for the learner (never raises)."""
        try:
            key = self.keys.reward(decision_id)
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, kind, "" if value is None else repr(float(value)))
            pipe.expire(key, max(1, (2 * self.reward_window_ms) // 1000 + 3600))
            pipe.execute()
        except Exception as error:  # noqa: BLE001 - the reward is in the log; learning misses it
            self._fail("reward", error)

    def _fail(self, what: str, error: Exception) -> None:
        self.failed += 1
        cause = f"{what}:{type(error).__name__}"
        if cause not in self._warned:  # once per cause, not per request
            self._warned.add(cause)
            log.warning("online learning could not record a %s (%s)", what, error)

    # -- the learner --------------------------------------------------------------------
    def holds_lease(self) -> bool:
        c, key = self.client, self.keys.lease
        if c.set(key, self.me, nx=True, px=self.lease_ms):
            return True
        held = c.get(key)
        if held is not None and held.decode() == self.me:
            c.pexpire(key, self.lease_ms)
            return True
        return False

    def step(self, max_examples: int = 5_000) -> int:
        """Learn from closed decisions if this replica is the learner; examples learned."""
        with self._lock:
            if not self.holds_lease():
                self.learner = None  # another replica learns; start over if this one takes over
                return 0
            champion = self.source.champion_version(self.bandit_name) if self.source else None
            if champion is None:
                return 0
            if self.learner is None or self.learner.base != champion:
                self.learner = _Learner.start(self, champion)
            return self.learner.learn(max_examples)


class _Learner:
    """The learner's bandit (a copy: serving workspaces are never trained) and its position."""

    def __init__(self, owner: OnlineLearning, base: str, bandit: Any, n: int, cursor: str) -> None:
        self.owner = owner
        self.base = base
        self.bandit = bandit
        self.n = n
        self.cursor = cursor
        self.pending = 0

    @classmethod
    def start(cls, owner: OnlineLearning, champion: str) -> _Learner:
        current = Published.parse(owner.client.get(owner.keys.current))
        if current is not None and current.base == champion:
            bandit = _bandit_from_bytes(
                owner.client.get(owner.keys.model(current.version)),
                _champion_bandit(owner.source, owner.bandit_name, champion),
            )
            return cls(owner, champion, bandit, current.n, current.cursor)
        inner = _champion_bandit(owner.source, owner.bandit_name, champion)
        cursor = current.cursor if current is not None else "0-0"
        return cls(owner, champion, inner.copy(), 0, cursor)

    def learn(self, max_examples: int) -> int:
        owner, client = self.owner, self.owner.client
        closed = int(time.time() * 1000) - owner.reward_window_ms
        if closed <= 0:
            return 0
        entries = client.xrange(
            owner.keys.decisions, min=f"({self.cursor}", max=f"{closed}", count=max_examples
        )
        learned = 0
        for entry_id, fields in entries:
            f = {k.decode(): v.decode() for k, v in fields.items()}
            rewards = client.hgetall(owner.keys.reward(f["id"]))
            kinds = {k.decode(): v.decode() for k, v in rewards.items()}
            value = float(kinds["conversion"]) if kinds.get("conversion") else 0.0
            reward = (
                owner.reward_of("click" in kinds, "conversion" in kinds, value)
                if owner.reward_of is not None
                else float("click" in kinds)
            )
            lines = labeled(json.loads(f["lines"]), int(f["chosen"]), float(f["prob"]), reward)
            self.bandit.vw.learn(lines)
            self.cursor = entry_id.decode()
            learned += 1
        self.pending += learned
        if self.pending >= owner.publish_every:
            self.publish()
        return learned

    def publish(self) -> str:
        owner, client = self.owner, self.owner.client
        self.n += 1
        version = f"{self.base}.{self.n}"
        with tempfile.TemporaryDirectory() as tmp:
            data = self.bandit.save(Path(tmp) / "model.vw").read_bytes()
        current = Published(version, self.base, self.n, self.cursor)
        pipe = client.pipeline(transaction=True)
        pipe.set(owner.keys.model(version), data, ex=owner.retention_s)
        pipe.set(owner.keys.current, json.dumps(current.__dict__))
        pipe.xtrim(owner.keys.decisions, minid=self.cursor)
        pipe.execute()
        self.pending = 0
        log.info("online bandit %s published (%s examples learned)", version, self.cursor)
        return version


def _champion_bandit(source: ModelSource | None, name: str, version: str) -> Any:
    """The ContextualBandit inside the champion's pyfunc."""
    if source is None:
        raise RuntimeError("online learning needs the model registry")
    inner = source.load(name, version).unwrap_python_model()
    return inner.bandit


def _bandit_from_bytes(data: bytes | None, like: Any) -> Any:
    """A ContextualBandit with ``like``'s config and features and the published weights."""
    from src.models.bandit import ContextualBandit

    if data is None:
        raise ValueError("the published online bandit's weights are gone (retention)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.vw"
        path.write_bytes(data)
        return ContextualBandit(like.config, like.spec, model_file=path)


class OnlineBanditSource:
    """The registry, with the bandit's champion replaced by its newest online version (when it
    was learned from that champion)."""

    def __init__(self, inner: ModelSource, client: Any, prefix: str, bandit_name: str) -> None:
        self.inner = inner
        self.client = client
        self.keys = Keys(prefix)
        self.bandit_name = bandit_name
        self._champions: dict[str, Any] = {}

    def champion_version(self, name: str) -> str | None:
        version = self.inner.champion_version(name)
        if name != self.bandit_name or version is None:
            return version
        current = Published.parse(self.client.get(self.keys.current))
        return current.version if current is not None and current.base == version else version

    def load(self, name: str, version: str) -> Any:
        if name != self.bandit_name or "." not in version:
            return self.inner.load(name, version)
        base = version.split(".", 1)[0]
        champion = self._champions.get(base)
        if champion is None:
            self._champions = {base: _champion_bandit(self.inner, name, base)}
            champion = self._champions[base]
        bandit = _bandit_from_bytes(self.client.get(self.keys.model(version)), champion)
        inner = SimpleNamespace(bandit=bandit)
        return SimpleNamespace(unwrap_python_model=lambda: inner)
