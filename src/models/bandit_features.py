"""Features of the contextual bandit: (context, candidate offers) -> Vowpal Wabbit text examples.

Everything that decides what VW sees lives here, so training from the log, online learning,
the simulation and the MLflow pyfunc all format examples with the same pure function
(:func:`vw_example`). Namespaces (VW keys interactions on a namespace's first letter):

shared (the request)                       action (one line per candidate offer)
  ``|user``  customer view features          ``|offer``    offer id, product, slot
  ``|time``  hour band, weekday, channel,    ``|creative`` words of the creative text
             exposures in the last 7 days    ``|fatigue``  times this offer was shown to the
  ``|propensity`` scores per product (opt.)                customer in the last 7 days
  ``|rules`` detection-rule flags (opt.)
  ``|history`` the customer's own responses to
             past offers, per product (opt.)

Interactions ``uo to po ro ho``: every shared namespace crossed with the offer namespace, which
is what lets one linear model rank offers differently per customer.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from src.data.catalog import Catalog

SHARED_NAMESPACES = ("user", "time", "propensity", "rules", "history")
ACTION_NAMESPACES = ("offer", "creative", "fatigue")
DEFAULT_INTERACTIONS: tuple[str, ...] = ("uo", "to", "po", "ro", "ho")
FATIGUE_WINDOW_DAYS = 7  # same window as the simulator's fatigue: [day - 7, ts)

_UNSAFE = re.compile(r"[\s|:]+")


def cost_of(reward: float) -> float:
    """VW minimizes cost; the bandit maximizes reward. The only place the sign flips."""
    return -float(reward)


def _token(value: Any) -> str:
    """A category value VW can read: no whitespace, ``|`` or ``:`` (they are VW syntax)."""
    return _UNSAFE.sub("_", str(value).strip()) or "_"


def _num(value: float) -> str:
    """Short, deterministic number formatting (the expected-text tests depend on it)."""
    return f"{value:.4g}"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _float_or_none(value: Any) -> float | None:
    """``float(value)``, or None for a missing value (what ``_missing`` says is missing)."""
    return None if _missing(value) else float(value)


@dataclass(frozen=True)
class FeatureSpec:
    """Which context columns become which VW features.

    ``numeric`` columns are counts, amounts and day distances: ``log1p`` of the (non-negative)
    value, so a heavy tail does not dominate the SGD step; nulls are left out (VW treats a
    missing feature as 0 and the ``*_null`` flag records absence). ``age_band`` buckets age by
    decade (the effect of age on offers is not linear). ``propensity`` and ``rules`` columns are
    optional: absent from a context, they are simply not emitted.
    """

    categorical: tuple[str, ...] = ("gender", "life_stage", "income_band", "region")
    numeric: tuple[str, ...] = ()
    age_column: str | None = "age"
    propensity: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    interactions: tuple[str, ...] = DEFAULT_INTERACTIONS

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        # field name -> value of that field's type (tuples of names, the optional age column)
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    @property
    def context_columns(self) -> tuple[str, ...]:
        """Customer-view columns the spec reads (what to keep from a view)."""
        age = (self.age_column,) if self.age_column else ()
        return self.categorical + age + self.numeric + self.propensity + self.rules


def default_feature_spec(propensity: Sequence[str] = (), rules: Sequence[str] = ()) -> FeatureSpec:
    """The customer-view features that carry a customer's current needs and habits.

    Holdings (what they have), product-page views in the last 7/30 days (what they look at now),
    product-related transactions (what they do), due dates (what is coming) and activity.
    """
    from src.data.schemas import HOLDING_TYPES

    numeric = [f"n_{t}" for t in HOLDING_TYPES]
    for group in ("loan", "fx", "fund", "savings", "card", "signup", "pension"):
        numeric += [f"pv_{group}_7d", f"pv_{group}_30d"]
    numeric += ["sessions_7d", "sessions_30d", "app_share_30d", "days_since_last_session"]
    for code in (
        "loan_limit_inquiry",
        "loan_application",
        "fx_remit",
        "fund_buy",
        "product_signup",
    ):
        numeric.append(f"txn_{code}_cnt_30d")
    numeric += [
        "days_to_card_payment",
        "days_to_savings_maturity",
        "days_to_loan_interest",
        "days_to_auto_transfer_end",
    ]
    return FeatureSpec(numeric=tuple(numeric), propensity=tuple(propensity), rules=tuple(rules))


def _shared_line(context: Mapping[str, Any], spec: FeatureSpec) -> str:
    user: list[str] = []
    for col in spec.categorical:
        value = context.get(col)
        if not _missing(value):
            user.append(f"{col}={_token(value)}")
    if spec.age_column and not _missing(context.get(spec.age_column)):
        user.append(f"age_band={int(context[spec.age_column]) // 10 * 10}")
    for col in spec.numeric:
        number = _float_or_none(context.get(col))
        if number is None:
            user.append(f"{col}_null")
        elif number != 0.0:
            user.append(f"{col}:{_num(math.log1p(max(number, 0.0)))}")
    parts = ["shared |user " + " ".join(user)]
    time = []
    if not _missing(context.get("hour")):
        time.append(f"hour_band={int(context['hour']) // 3 * 3}")
    if not _missing(context.get("weekday")):
        time.append(f"weekday={int(context['weekday'])}")
    if not _missing(context.get("channel")):
        time.append(f"channel={_token(context['channel'])}")
    if not _missing(context.get("exposures_7d")) and float(context["exposures_7d"]) > 0:
        time.append(f"exposures_7d:{_num(math.log1p(float(context['exposures_7d'])))}")
    parts.append("|time " + " ".join(time))
    props = [
        f"{_token(c)}:{_num(float(context[c]))}"
        for c in spec.propensity
        if c in context and not _missing(context[c])
    ]
    if props:
        parts.append("|propensity " + " ".join(props))
    flags = []
    for col in spec.rules:
        value = context.get(col)
        number = None if value is False else _float_or_none(value)
        if number is None or number == 0.0:
            continue
        flags.append(
            _token(col) if value is True or number == 1.0 else f"{_token(col)}:{_num(number)}"
        )
    if flags:
        parts.append("|rules " + " ".join(flags))
    responses = context.get("responses")
    if responses:
        parts.append("|history " + _history_features(responses))
    return " ".join(parts)


def _history_features(responses: Mapping[str, tuple[int, int]]) -> str:
    """The customer's past offers per product: clicks, and shown-but-not-clicked as ``log1p``.

    A click on a product's offer is the most direct evidence the bank has of the latent
    ``affinity x need`` that drives the next click; ``any_*`` sums over products (affinity).
    Sorted by product, so the text is deterministic.
    """
    out = []
    shown_all = clicked_all = 0
    for product in sorted(responses):
        shown, clicked = responses[product]
        shown_all, clicked_all = shown_all + shown, clicked_all + clicked
        if clicked:
            out.append(f"{_token(product)}_clicked:{int(clicked)}")
        if shown > clicked:
            out.append(f"{_token(product)}_ignored:{_num(math.log1p(shown - clicked))}")
    if clicked_all:
        out.append(f"any_clicked:{int(clicked_all)}")
    if shown_all > clicked_all:
        out.append(f"any_ignored:{_num(math.log1p(shown_all - clicked_all))}")
    return " ".join(out)


def _action_line(candidate: Mapping[str, Any], seen: Mapping[str, int]) -> str:
    offer_id = str(candidate["offer_id"])
    offer = [f"offer={_token(offer_id)}"]
    for col in ("product", "slot"):
        if not _missing(candidate.get(col)):
            offer.append(f"{col}={_token(candidate[col])}")
    line = "|offer " + " ".join(offer)
    words = [
        _token(w.lower()) for w in re.findall(r"[A-Za-z]+", str(candidate.get("creative", "")))
    ]
    if words:
        line += " |creative " + " ".join(words)
    n_seen = int(seen.get(offer_id, 0))
    if n_seen:
        line += f" |fatigue seen:{n_seen}"
    return line


def vw_example(
    context: Mapping[str, Any],
    candidates: Sequence[Mapping[str, Any]],
    spec: FeatureSpec,
    label: tuple[int, float, float] | None = None,
) -> list[str]:
    """One multi-line ``cb_explore_adf`` example: a shared line, then one line per candidate.

    ``context``: customer-view columns named in ``spec`` plus ``hour``, ``weekday``, ``channel``,
    ``exposures_7d``, ``seen`` (offer_id -> exposures of that offer in the last 7 days) and,
    optionally, ``responses`` (product -> (offers shown, clicked) over the customer's history).
    ``candidates``: mappings with ``offer_id`` and optionally ``product``, ``slot``, ``creative``.
    ``label``: (index of the chosen candidate, reward, probability it was chosen with); the
    reward becomes VW's cost through :func:`cost_of`.
    """
    if not candidates:
        raise ValueError("a decision needs at least one candidate offer")
    seen = context.get("seen") or {}
    lines = [_shared_line(context, spec)] + [_action_line(c, seen) for c in candidates]
    if label is not None:
        chosen, reward, prob = label
        if not 0 <= chosen < len(candidates):
            raise ValueError(f"chosen index {chosen} outside the {len(candidates)} candidates")
        if not 0 < prob <= 1:
            raise ValueError(f"probability must be in (0, 1], got {prob}")
        lines[chosen + 1] = f"0:{_num(cost_of(reward))}:{_num(prob)} {lines[chosen + 1]}"
    return lines


# --- contexts over time -------------------------------------------------------------------


@dataclass
class CustomerViews:
    """Customer views at several as-of dates; a request at time t sees the latest view before t.

    Point-in-time: the view as of D uses only events strictly before D, and a request on day D
    (at any hour) gets the view as of D at the latest, never a later one.
    """

    frames: dict[pd.Timestamp, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def add(
        self, as_of: pd.Timestamp | date | str, view: pd.DataFrame, columns: Iterable[str]
    ) -> None:
        keep = [c for c in columns if c in view.columns]
        records = view.set_index("customer_id")[keep].astype(object).to_dict("index")
        self.frames[pd.Timestamp(as_of).normalize()] = {
            str(k): {c: (None if _missing(v) else v) for c, v in row.items()}
            for k, row in records.items()
        }
        self.frames = dict(sorted(self.frames.items()))

    def dates(self) -> list[pd.Timestamp]:
        return list(self.frames)

    def lookup(self, customer_id: str, ts: pd.Timestamp) -> dict[str, Any]:
        """The customer's latest view row as of ``ts``'s date (empty if none: a new customer)."""
        day = pd.Timestamp(ts).normalize()
        usable = [d for d in self.frames if d <= day]
        if not usable:
            raise ValueError(f"no customer view as of {day:%Y-%m-%d} or earlier")
        return dict(self.frames[usable[-1]].get(str(customer_id), {}))


def build_views(
    catalog: Catalog,
    dates: Iterable[pd.Timestamp | date | str],
    spec: FeatureSpec,
    progress: bool = False,
) -> CustomerViews:
    """Customer views at the given as-of dates (one DuckDB connection reused)."""
    from tqdm.auto import tqdm

    from src.features.customer_view import build_customer_view
    from src.features.identity import connect_tables

    con = connect_tables(catalog)
    views = CustomerViews()
    for d in tqdm(list(dates), desc="customer views", disable=not progress):
        views.add(
            d,
            build_customer_view(catalog, pd.Timestamp(d).to_pydatetime(), con=con),
            spec.context_columns,
        )
    con.close()
    return views


def view_schedule(start: pd.Timestamp, end: pd.Timestamp, every_days: int) -> list[pd.Timestamp]:
    """As-of dates from ``start`` to before ``end`` every ``every_days`` days (start included)."""
    start, end = pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize()
    out: list[pd.Timestamp] = []
    d = start
    while d < end or not out:
        out.append(d)
        d += pd.Timedelta(days=every_days)
    return out


class FatigueTracker:
    """Exposures per customer in the fatigue window, from a policy's own decisions.

    Mirrors the simulator's window ([day - 7 days, ts)), so the bandit sees the count that drives
    fatigue — information the bank has in its own decision log.
    """

    def __init__(self, window_days: int = FATIGUE_WINDOW_DAYS) -> None:
        self.window = pd.Timedelta(days=window_days)
        self._history: dict[str, deque[tuple[pd.Timestamp, str]]] = defaultdict(deque)

    def counts(self, customer_id: str, ts: pd.Timestamp) -> tuple[int, dict[str, int]]:
        """(exposures of any offer, exposures per offer) in the window before ``ts``."""
        start = pd.Timestamp(ts).normalize() - self.window
        history = self._history.get(str(customer_id))
        if not history:
            return 0, {}
        while history and history[0][0] < start:
            history.popleft()
        per_offer: dict[str, int] = defaultdict(int)
        n = 0
        for t, offer in history:
            if t < ts:
                per_offer[offer] += 1
                n += 1
        return n, dict(per_offer)

    def record(self, customer_id: str, ts: pd.Timestamp, offer_id: str) -> None:
        self._history[str(customer_id)].append((pd.Timestamp(ts), str(offer_id)))


class ResponseHistory:
    """Offers shown and clicked per customer and product, from the bank's own decision log.

    Unlike the fatigue window this never forgets: a customer's clicks are the bank's running
    estimate of their affinity for offers and their need for each product (both latent).
    """

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, list[int]]] = defaultdict(dict)

    def get(self, customer_id: str) -> dict[str, tuple[int, int]]:
        """product -> (shown, clicked) so far (empty for a customer never shown an offer)."""
        return {p: (c[0], c[1]) for p, c in self._counts.get(str(customer_id), {}).items()}

    def record(self, customer_id: str, product: str, clicked: bool) -> None:
        counts = self._counts[str(customer_id)].setdefault(str(product), [0, 0])
        counts[0] += 1
        counts[1] += int(bool(clicked))

    def copy(self) -> ResponseHistory:
        out = ResponseHistory()
        out._counts = defaultdict(
            dict, {k: {p: list(c) for p, c in v.items()} for k, v in self._counts.items()}
        )
        return out

    @classmethod
    def from_exposures(
        cls, exposures: pd.DataFrame, offers: pd.DataFrame, before: pd.Timestamp | None = None
    ) -> ResponseHistory:
        """The history of the logged exposures (strictly before ``before`` if given)."""
        out = cls()
        if before is not None:
            exposures = exposures[exposures["ts"] < pd.Timestamp(before)]
        product = exposures["offer_id"].map(offers.set_index("offer_id")["product"])
        grouped = (
            pd.DataFrame(
                {
                    "c": exposures["customer_id"].astype(str),
                    "p": product.astype(str),
                    "k": exposures["click"].astype(int),
                }
            )
            .groupby(["c", "p"])["k"]
            .agg(["size", "sum"])
        )
        for (customer, prod), row in grouped.iterrows():
            out._counts[customer][prod] = [int(row["size"]), int(row["sum"])]
        return out


def request_context(
    view_row: Mapping[str, Any],
    ts: pd.Timestamp,
    channel: str,
    fatigue: tuple[int, dict[str, int]] = (0, {}),
    extra: Mapping[str, Any] | None = None,
    responses: Mapping[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """A request's full context: the view row, time of day, weekday, channel, recent exposures
    and (optionally) the customer's past responses to offers per product."""
    ts = pd.Timestamp(ts)
    ctx = dict(view_row)
    ctx.update(
        hour=ts.hour,
        weekday=ts.weekday(),
        channel=channel,
        exposures_7d=fatigue[0],
        seen=fatigue[1],
    )
    if responses:
        ctx["responses"] = dict(responses)
    if extra:
        ctx.update(extra)
    return ctx


def slot_candidates(offers: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Candidate offers per slot as records (the catalog's own order)."""
    cols = [c for c in ("offer_id", "product", "slot", "creative") if c in offers.columns]
    return {
        str(slot): group[cols].to_dict("records")
        for slot, group in offers.groupby("slot", sort=False)
    }


def candidate_index(candidates: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {str(c["offer_id"]): i for i, c in enumerate(candidates)}


def as_array(pmf: Sequence[float]) -> np.ndarray:
    p = np.asarray(pmf, dtype=float)
    return p / p.sum()
