"""Rule files: the pydantic model of the YAML, loading with precise errors, and compilation.

Both evaluators consume the *compiled* form (:class:`CompiledRule`), so a rule can only mean
one thing: durations are integer nanoseconds, predicates are normalised to ``(field, op, value)``
triples, and everything the YAML allows but the evaluators would have to guess about (an
absent first step, a rule with no time bound, a field that does not exist on the step's
source, a page name that is not in ``PAGES``) is refused at load time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from src.data.schemas import (
    CLICK_ACTIONS,
    CLICK_CHANNELS,
    CURRENCIES,
    PAGES,
    PRODUCTS,
    REFERRERS,
    TXN_CHANNELS,
    TXN_CODES,
)

NS = 1_000_000_000
SESSION_GAP_NS = 30 * 60 * NS  # a click more than this after the previous one starts a session
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)?\s*$")

# Which fields a predicate may use, per source; None = numeric, else the controlled vocabulary.
CLICK_FIELDS: dict[str, tuple[str, ...] | None] = {
    "page": PAGES,
    "action": CLICK_ACTIONS,
    "channel": CLICK_CHANNELS,
    "referrer": REFERRERS,
    "dwell_seconds": None,
}
TXN_FIELDS: dict[str, tuple[str, ...] | None] = {
    "code": TXN_CODES,
    "channel": TXN_CHANNELS,
    "currency": CURRENCIES,
    "product": PRODUCTS,
    "amount": None,
    "amount_krw": None,
}
SOURCE_FIELDS = {"click": CLICK_FIELDS, "txn": TXN_FIELDS}
STRING_FIELDS = ("page", "action", "channel", "referrer", "code", "currency", "product")
NUMERIC_FIELDS = ("amount", "amount_krw", "dwell_seconds")
ACTION_TYPES = ("show_survey", "mark_offer", "notify", "flag")


class RuleError(ValueError):
    """A rule file is invalid; the message names the file, the rule, the step and the problem."""


def parse_duration(value: Any) -> int:
    """Seconds from ``30m`` / ``7d`` / ``180s`` / ``1.5h`` or a bare number of seconds.

    Raises ValueError even for wrong types: pydantic turns only ValueError into an error
    located at the field, which is what RuleError reports.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value.lower())
        if not m or (m.group(2) and m.group(2) not in _UNITS):
            raise ValueError(f"not a duration: {value!r} (use e.g. 180s, 30m, 2h, 7d)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"not a duration: {value!r}")  # noqa: TRY004
    if seconds < 1 or not float(round(seconds)) == seconds:
        raise ValueError(f"duration must be a whole number of seconds >= 1, got {value!r}")
    return int(seconds)


Scalar = str | int | float


class Predicate(BaseModel):
    """Operators on one field; several operators on one field are ANDed."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    gte: float | None = None
    lte: float | None = None

    @model_validator(mode="after")
    def _some_operator(self) -> Predicate:
        if not any(v is not None for v in self.__dict__.values()):
            raise ValueError("predicate has no operator (use eq, ne, in, not_in, gte, lte)")
        for op in ("in_", "not_in"):
            if getattr(self, op) == []:
                raise ValueError(f"'{op.rstrip('_')}' needs at least one value")
        return self


class CountSpec(BaseModel):
    """n qualifying events of the customer within a trailing window (optionally same field)."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=2)
    within: int
    same: str | None = None

    _dur = field_validator("within", mode="before")(lambda v: parse_duration(v))


class Step(BaseModel):
    """One step of a rule: an event of ``source`` satisfying ``where`` (or its absence)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    source: Literal["click", "txn"]
    where: dict[str, Any] = Field(default_factory=dict)
    within: int | None = None
    absent: bool = False
    dwell_gte: int | None = None
    count: CountSpec | None = None

    @field_validator("within", "dwell_gte", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> int | None:
        return None if v is None else parse_duration(v)

    @model_validator(mode="after")
    def _check(self) -> Step:
        fields = SOURCE_FIELDS[self.source]
        for fname, pred in self.where.items():
            if fname == "session_start":
                if self.source != "click":
                    raise ValueError("'session_start' only exists on click steps")
                if not isinstance(pred, bool):
                    raise ValueError("'session_start' must be true or false")
                continue
            if fname not in fields:
                raise ValueError(
                    f"field '{fname}' does not exist on {self.source} events "
                    f"(allowed: {', '.join(sorted(fields))}, session_start)"
                    if self.source == "click"
                    else f"field '{fname}' does not exist on {self.source} events "
                    f"(allowed: {', '.join(sorted(fields))})"
                )
            try:
                _check_predicate(fname, fields[fname], _as_predicate(pred))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                raise ValueError(
                    f"where.{fname}{'.' + loc if loc else ''}: "
                    f"{err['msg'].removeprefix('Value error, ')}"
                ) from None
            except ValueError as exc:
                raise ValueError(f"where.{fname}: {exc}") from None
        if self.dwell_gte is not None and self.source != "click":
            raise ValueError("'dwell_gte' only applies to click steps")
        if self.absent and self.within is None:
            raise ValueError("an absent step needs 'within' (not followed by X within T)")
        if self.absent and self.count is not None:
            raise ValueError("an absent step cannot have 'count'")
        if self.count is not None and self.count.same is not None and self.count.same not in fields:
            raise ValueError(
                f"count.same: field '{self.count.same}' does not exist on {self.source} events"
            )
        if not self.where and self.dwell_gte is None and self.count is None:
            raise ValueError("step has no condition: give 'where', 'dwell_gte' or 'count'")
        return self


def _as_predicate(pred: Any) -> Predicate:
    if isinstance(pred, Predicate):
        return pred
    if isinstance(pred, dict):
        return Predicate.model_validate(pred)
    if isinstance(pred, bool):
        raise ValueError("true/false is only allowed for 'session_start'")  # noqa: TRY004
    if isinstance(pred, list):
        return Predicate.model_validate({"in": pred})
    if not isinstance(pred, (str, int, float)):
        raise ValueError(f"expected a value, a list or operators, got {pred!r}")  # noqa: TRY004
    return Predicate(eq=pred)


def _check_predicate(fname: str, vocab: tuple[str, ...] | None, p: Predicate) -> None:
    if vocab is None:  # numeric
        for op in ("ne", "in_", "not_in"):
            if getattr(p, op) is not None:
                raise ValueError(f"'{fname}' is numeric: use eq, gte or lte")
        if p.eq is not None and isinstance(p.eq, str):
            raise ValueError(f"'{fname}' is numeric, got {p.eq!r}")
        return
    if p.gte is not None or p.lte is not None:
        raise ValueError(f"'{fname}' is a category: gte/lte do not apply")
    values: list[Any] = [v for v in (p.eq, p.ne) if v is not None]
    values += (p.in_ or []) + (p.not_in or [])
    for v in values:
        if v not in vocab:
            raise ValueError(f"unknown {fname} {v!r} (not in the data contract vocabulary)")


class Action(BaseModel):
    """What the online path does when the rule fires; extra keys are parameters."""

    model_config = ConfigDict(extra="allow")
    type: Literal["show_survey", "mark_offer", "notify", "flag"]


class Rule(BaseModel):
    """A rule file's content, validated."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    action: Action
    within: int | None = None
    cooldown: int = 0
    steps: list[Step] = Field(min_length=1)

    @field_validator("within", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> int | None:
        return None if v is None else parse_duration(v)

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, v: Any) -> int:
        return 0 if v in (None, 0) else parse_duration(v)


@dataclass(frozen=True)
class CompiledStep:
    """A step in evaluator form: durations in ns, predicates as (field, op, value)."""

    name: str
    source: str
    preds: tuple[tuple[str, str, Any], ...]
    session_start: bool | None
    absent: bool
    within_ns: int | None
    count: tuple[int, int, str | None] | None  # (n, window ns, same field)


@dataclass(frozen=True)
class CompiledRule:
    """A rule in evaluator form; ``kind`` is 'timeout' when the last step is an absence."""

    name: str
    description: str
    action: dict[str, Any]
    steps: tuple[CompiledStep, ...]
    within_ns: int | None
    cooldown_ns: int
    source_file: str = ""

    @property
    def kind(self) -> str:
        return "timeout" if self.steps[-1].absent else "match"


def compile_rule(rule: Rule, source_file: str = "") -> CompiledRule:
    """Normalise a validated :class:`Rule`; raises ValueError for whole-rule problems."""
    steps: list[CompiledStep] = []
    for i, s in enumerate(rule.steps):
        preds: list[tuple[str, str, Any]] = []
        session_start = None
        for fname, raw in s.where.items():
            if fname == "session_start":
                session_start = bool(raw)
                continue
            p = _as_predicate(raw)
            num = fname in NUMERIC_FIELDS
            if p.eq is not None:
                preds.append((fname, "eq", float(p.eq) if num else p.eq))
            if p.ne is not None:
                preds.append((fname, "ne", p.ne))
            if p.in_ is not None:
                preds.append((fname, "in", frozenset(p.in_)))
            if p.not_in is not None:
                preds.append((fname, "not_in", frozenset(p.not_in)))
            if p.gte is not None:
                preds.append((fname, "gte", float(p.gte)))
            if p.lte is not None:
                preds.append((fname, "lte", float(p.lte)))
        if s.dwell_gte is not None:
            preds.append(("dwell_seconds", "gte", float(s.dwell_gte)))
        count = None
        if s.count is not None:
            count = (s.count.n, s.count.within * NS, s.count.same)
        steps.append(
            CompiledStep(
                name=s.name or f"step{i + 1}",
                source=s.source,
                preds=tuple(preds),
                session_start=session_start,
                absent=s.absent,
                within_ns=None if s.within is None else s.within * NS,
                count=count,
            )
        )
    return CompiledRule(
        name=rule.name,
        description=rule.description,
        action=rule.action.model_dump(),
        steps=tuple(steps),
        within_ns=None if rule.within is None else rule.within * NS,
        cooldown_ns=rule.cooldown * NS,
        source_file=source_file,
    )


def _rule_level_checks(rule: Rule) -> list[tuple[int | None, str]]:
    """Problems that involve several steps: (step index or None, message)."""
    problems: list[tuple[int | None, str]] = []
    first = rule.steps[0]
    if first.absent:
        problems.append((0, "the first step cannot be absent (nothing to be 'not followed' by)"))
    if first.within is not None:
        problems.append((0, "the first step cannot have 'within' (there is no previous step)"))
    if rule.within is None:
        for i, s in enumerate(rule.steps[1:], start=1):
            if s.within is None:
                problems.append(
                    (
                        i,
                        (
                            "no time bound: set 'within' on this step or on the rule "
                            "(partial matches must expire)"
                        ),
                    )
                )
    elif len(rule.steps) > 1:
        # The rule window must leave room for the absence deadlines it contains.
        fixed = sum(s.within or 0 for s in rule.steps[1:] if s.absent)
        if fixed > rule.within:
            problems.append(
                (
                    None,
                    (
                        f"absence windows ({fixed}s) exceed the rule's within "
                        f"({rule.within}s): the rule can never fire"
                    ),
                )
            )
    return problems


def _step_label(raw: Any, idx: int) -> str:
    name = None
    if isinstance(raw, dict):
        steps = raw.get("steps")
        if isinstance(steps, list) and idx < len(steps) and isinstance(steps[idx], dict):
            name = steps[idx].get("name")
    return f"step {idx + 1}" + (f" ({name})" if name else "")


def _error(path: str, rule_name: str, where: str, msg: str) -> RuleError:
    return RuleError(f"{path}: rule '{rule_name}': {where}: {msg}")


def parse_rule(raw: Any, path: str = "<string>") -> CompiledRule:
    """Validate one rule mapping; any problem becomes a :class:`RuleError`."""
    rule_name = raw.get("name", "?") if isinstance(raw, dict) else "?"
    if not isinstance(raw, dict):
        raise _error(path, rule_name, "rule", f"expected a mapping, got {type(raw).__name__}")
    try:
        rule = Rule.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        where = "rule"
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            where = _step_label(raw, loc[1])
            loc = loc[2:]
        # Drop pydantic's union-branch labels so the location reads like the YAML.
        loc = [
            p
            for p in loc
            if not (
                isinstance(p, str)
                and ("[" in p or p in ("str", "int", "float", "bool", "list", "Predicate"))
            )
        ]
        field = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        raise _error(path, rule_name, where + (f": {field}" if field else ""), msg) from None
    problems = _rule_level_checks(rule)
    if problems:
        idx, msg = problems[0]
        raise _error(path, rule.name, "rule" if idx is None else _step_label(raw, idx), msg)
    return compile_rule(rule, path)


def load_rules(path: str | Path | None = None) -> list[CompiledRule]:
    """Rules from one YAML file or every ``*.yaml``/``*.yml`` in a directory (sorted by name).

    A file holds one rule mapping or a list of them. Rule names must be unique. The default is
    the rules shipped with the package (``src/features/rules``).
    """
    p = Path(path) if path is not None else Path(__file__).resolve().parents[1] / "rules"
    files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p]
    rules: list[CompiledRule] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            docs = yaml.safe_load(f.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise RuleError(f"{f}: not valid YAML: {exc}") from None
        if docs is None:
            raise RuleError(f"{f}: empty rule file")
        for raw in docs if isinstance(docs, list) else [docs]:
            rule = parse_rule(raw, str(f))
            if rule.name in seen:
                raise RuleError(
                    f"{f}: rule '{rule.name}': rule: duplicate name "
                    f"(already defined in {seen[rule.name]})"
                )
            seen[rule.name] = str(f)
            rules.append(rule)
    return rules
