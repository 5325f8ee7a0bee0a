"""Champion models for serving: loaded from the MLflow registry, swapped atomically, never lost.

A :class:`ModelSet` is an immutable snapshot (propensity scores, the bandit, their versions);
a request reads ``manager.current`` once and uses that snapshot throughout, so a swap in the
middle of a request cannot mix two versions. :meth:`ModelManager.refresh` resolves the
``champion`` alias of each configured model; a new version is loaded, checked and only then
swapped in. Any failure — registry unreachable, alias missing, model not loading or not
predicting — keeps the last good model of that kind and is counted.

Propensity is scored in batch for every customer of the view when a version is loaded (the
view is the batch features; rescoring per request would only repeat the same computation):
the request path reads one row of a matrix. Cold-start customers get the mean over the view.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
from cachetools import FIFOCache

from src.serving.customers import CustomerStore

log = logging.getLogger(__name__)


class ModelSource(Protocol):
    """Where champion models come from (the MLflow registry; a fake in tests)."""

    def champion_version(self, name: str) -> str | None:
        """Version holding the alias, None if the model or alias does not exist; raises if the
        registry cannot be reached."""

    def load(self, name: str, version: str) -> Any:
        """The pyfunc model of that version."""


class MlflowModelSource:
    """Aliases and models from an MLflow registry (``models:/<name>/<version>`` once resolved,
    so an alias moving during the load cannot hand back a different version than reported)."""

    def __init__(self, tracking_uri: str, alias: str = "champion") -> None:
        self.tracking_uri = tracking_uri
        self.alias = alias

    def _client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def champion_version(self, name: str) -> str | None:
        from mlflow.exceptions import MlflowException

        client = self._client()
        try:
            return str(client.get_model_version_by_alias(name, self.alias).version)
        except MlflowException as error:
            code = getattr(error, "error_code", "")
            if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def load(self, name: str, version: str) -> Any:
        import mlflow

        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}")


# --- the two kinds of model ---------------------------------------------------------------------


@dataclass(frozen=True)
class PropensityScores:
    """Calibrated probability per product for every customer of the view (row = store position)."""

    version: str
    products: tuple[str, ...]
    matrix: np.ndarray
    prior: np.ndarray
    explainer: Any = None  # the pyfunc's own PropensityModel (SHAP reasons); None: not ours

    def for_position(self, position: int | None) -> dict[str, float]:
        values = self.prior if position is None else self.matrix[position]
        return {p: float(v) for p, v in zip(self.products, values.tolist(), strict=True)}

    def reasons(self, rows: pd.DataFrame, top: int = 5) -> list[dict[str, Any]]:
        """Per product: the score and its ``top`` reasons (SHAP, :mod:`src.models.explain`)."""
        from src.models.explain import explain_rows

        if self.explainer is None:
            raise LookupError(f"propensity model v{self.version} cannot explain its scores")
        frame = explain_rows(self.explainer, rows, top=top)
        frame["value"] = frame["value"].astype(object).where(frame["value"].notna(), None)
        return frame.drop(columns=frame.columns[0]).to_dict("records")


def unwrap_explainer(model: Any) -> Any:
    """The project's PropensityModel inside a loaded pyfunc, or None (another kind of model)."""
    try:
        inner = getattr(model.unwrap_python_model(), "model", None)
    except Exception:  # noqa: BLE001 - not a PythonModel pyfunc: no explanations, still serves
        return None
    return inner if hasattr(inner, "products") and hasattr(inner, "matrix") else None


def score_view(
    model: Any, store: CustomerStore, version: str, chunk: int = 50_000
) -> PropensityScores:
    """Run a propensity pyfunc over the whole view (in chunks) in the logged signature's types."""
    from src.models.tracking import serving_frame

    schema = model.metadata.get_input_schema() if getattr(model, "metadata", None) else None
    columns = [
        c
        for c in (schema.input_names() if schema is not None else store.columns)
        if c != "customer_id"
    ]
    missing = [c for c in columns if c not in store.frame.columns]
    if missing:
        raise ValueError(f"the customer view lacks model input column(s) {missing[:5]}")
    parts = []
    for lo in range(0, len(store.frame), chunk):
        rows = serving_frame(store.frame.iloc[lo : lo + chunk], columns)
        parts.append(pd.DataFrame(model.predict(rows)))
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(scores) != len(store.frame):
        raise ValueError(f"propensity model returned {len(scores)} rows for {len(store.frame)}")
    matrix = scores.to_numpy(dtype=float)
    if not np.isfinite(matrix).all() or (matrix < 0).any() or (matrix > 1).any():
        raise ValueError("propensity model returned values outside [0, 1] or non-finite")
    prior = matrix.mean(axis=0) if len(matrix) else np.zeros(matrix.shape[1])
    return PropensityScores(version, tuple(str(c) for c in scores.columns), matrix, prior)


def normalized_pmf(values: Sequence[float], n: int) -> list[float]:
    """Probabilities over ``n`` candidates renormalized to sum to one; raises if not usable."""
    p = [float(v) for v in values]
    total = sum(p)
    if len(p) != n or not math.isfinite(total) or total <= 0 or min(p) < 0:
        raise ValueError(f"bandit returned an unusable PMF {p!r}")
    return [v / total for v in p]


@dataclass(frozen=True)
class BanditModel:
    """The champion bandit: ``pmf(context, candidates)`` over the candidates it is given.

    ``scorer``: the VW fast path (:class:`VwScorer`) when the pyfunc wraps a VW bandit; the
    engine then hands it cached text pieces instead of a context (same examples, same PMF)."""

    version: str
    pmf_fn: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], Sequence[float]]
    context_columns: tuple[str, ...]
    propensity_features: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], None] | None = None
    scorer: VwScorer | None = None

    def pmf(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        """Probabilities over the candidates, renormalized to sum to one; raises if not usable."""
        return normalized_pmf(self.pmf_fn(context, candidates), len(candidates))


@dataclass(frozen=True, slots=True)
class CustomerPart:
    """A customer's namespaces of the shared line (name -> text) and the view's values of the
    rule columns (what online flags override)."""

    segments: dict[str, str]
    rules: dict[str, Any]


_PROBE_CANDIDATE = {"offer_id": "probe"}
_MISSING: Any = object()
_REQUEST_KEYS = ("hour", "weekday", "channel", "exposures_7d")
_CACHE_MAX = 100_000  # entries per cache (bounded memory; the oldest entry goes first)


class VwScorer:
    """PMFs from a :class:`~src.models.bandit.ContextualBandit` without its per-call overhead.

    The examples are exactly ``bandit_features.vw_example``'s (its public function builds every
    piece; nothing here formats a feature), assembled from cached pieces:

    * the shared line's namespaces split by what they depend on: the customer's (``|user``,
      ``|propensity``, ``|rules`` from the view) are built once per customer and model version;
      the request's (``|time``: hour band, weekday, channel, exposures) once per distinct value;
      rule flags set online by ``/v1/events`` rebuild ``|rules`` for that request only;
    * an offer's action line depends only on the offer and how often the customer has seen it.

    The text goes to VW through the binding's parse/predict calls. Both shortcuts are checked at
    load against ``vw_example`` and ``bandit.pmf`` (:meth:`check`, :meth:`check_split`) and
    switched off (``fast`` / ``split`` False) if they do not reproduce them exactly.
    """

    def __init__(self, bandit: Any) -> None:
        from src.models import bandit_features

        self.bandit = bandit
        self.spec = bandit.spec
        self.fast = True
        self.split = True
        self.last_lines: list[str] | None = None  # the last example scored (online learning)
        self._order = tuple(
            getattr(bandit_features, "SHARED_NAMESPACES", ("user", "time", "propensity", "rules"))
        )
        self._rule_columns = frozenset(self.spec.rules)
        self._customer_columns = frozenset(self.spec.context_columns) - self._rule_columns
        # bounded, the oldest entry out first (never a whole cache freed at once: that stalls
        # the event loop for every request behind it)
        self._customer: FIFOCache[Any, CustomerPart] = FIFOCache(_CACHE_MAX)
        self._request: FIFOCache[tuple[Any, ...], Any] = FIFOCache(_CACHE_MAX)
        self._action_lines: FIFOCache[tuple[Any, ...], str] = FIFOCache(_CACHE_MAX)
        self._blocks: FIFOCache[
            int, tuple[tuple[Mapping[str, Any], ...], list[str], dict[Any, int]]
        ] = FIFOCache(_CACHE_MAX)

    # -- pieces, each built by vw_example ----------------------------------------------------------
    def _example(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        from src.models.bandit_features import vw_example

        return vw_example(context, candidates, self.spec)

    @staticmethod
    def _segments(line: str) -> dict[str, str]:
        """namespace -> its text (``"user a=1 b"``) of a shared line (``|`` cannot occur in a
        value: ``vw_example`` escapes it)."""
        return {seg.split(" ", 1)[0]: seg for seg in line.split(" |")[1:]}

    def customer_part(self, key: Any, context_fn: Callable[[], Mapping[str, Any]]) -> CustomerPart:
        """The customer's shared namespaces; ``key`` must change whenever ``context_fn()`` can
        (the engine uses the view position and the propensity version)."""
        part = self._customer.get(key)
        if part is None:
            part = self._customer_part(context_fn())
            self._customer[key] = part
        return part

    def _customer_part(self, context: Mapping[str, Any]) -> CustomerPart:
        segments = self._segments(self._example(context, [_PROBE_CANDIDATE])[0])
        segments.pop("time", None)
        return CustomerPart(segments, {c: context.get(c) for c in self._rule_columns})

    def _time(self, request: tuple[Any, ...]) -> str | None:
        seg = self._request.get(request, _MISSING)
        if seg is _MISSING:
            line = self._example(
                dict(zip(_REQUEST_KEYS, request, strict=True)), [_PROBE_CANDIDATE]
            )[0]
            seg = self._segments(line).get("time")
            self._request[request] = seg
        return seg

    def flags_supported(self, flags: Sequence[str]) -> bool:
        """False if an online flag shadows a customer feature other than a rule column (the
        split would then be wrong: the caller takes the generic path)."""
        return not any(f in self._customer_columns for f in flags)

    def shared_line(
        self, part: CustomerPart, request: tuple[Any, ...], flags: Sequence[str]
    ) -> str:
        """The shared line of (customer part, (hour, weekday, channel, exposures_7d), flags)."""
        segs: dict[str, str | None] = dict(part.segments)  # None: no such segment this time
        segs["time"] = self._time(request)
        on = [f for f in flags if f in self._rule_columns]
        if on:
            ctx = {**part.rules, **dict.fromkeys(on, 1)}
            segs["rules"] = self._segments(self._example(ctx, [_PROBE_CANDIDATE])[0]).get("rules")
        out = ["shared"]
        for ns in self._order:
            seg = segs.pop(ns, None)
            if seg is not None:
                out.append(seg)
        out.extend(s for s in segs.values() if s is not None)  # namespaces this code does not know
        return " |".join(out)

    def _action_line(self, candidate: Mapping[str, Any], n_seen: int) -> str:
        key = (
            candidate["offer_id"],
            candidate.get("product"),
            candidate.get("slot"),
            candidate.get("creative"),
            n_seen,
        )
        line = self._action_lines.get(key)
        if line is None:
            seen = {str(candidate["offer_id"]): n_seen} if n_seen else {}
            line = self._action_lines[key] = self._example({"seen": seen}, [candidate])[1]
        return line

    def action_lines(
        self, candidates: Sequence[Mapping[str, Any]], seen: Mapping[str, int]
    ) -> list[str]:
        """One line per candidate. A tuple of candidates (the engine's per-customer one, never
        mutated) keeps its unseen lines; only the offers the customer has seen are looked up."""
        if not isinstance(candidates, tuple):
            return [
                self._action_line(c, seen.get(c["offer_id"], 0) if seen else 0) for c in candidates
            ]
        block = self._blocks.get(id(candidates))
        if block is None or block[0] is not candidates:
            block = self._blocks[
                id(candidates)
            ] = (  # holds the tuple: its id is not reused meanwhile
                candidates,
                [self._action_line(c, 0) for c in candidates],
                {c["offer_id"]: i for i, c in enumerate(candidates)},
            )
        out = list(block[1])
        if seen:
            index = block[2]
            for offer_id, n_seen in seen.items():
                i = index.get(offer_id)
                if i is not None and n_seen:
                    out[i] = self._action_line(candidates[i], n_seen)
        return out

    # -- scoring -----------------------------------------------------------------------------------
    def lines(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        """The example of a full context (no customer cache): shared line, then action lines."""
        if not candidates:
            raise ValueError("a decision needs at least one candidate offer")
        shared = self._example(context, [_PROBE_CANDIDATE])[0]
        return [shared, *self.action_lines(candidates, context.get("seen") or {})]

    def predict(self, lines: list[str]) -> list[float]:
        """VW's scores for one example given as lines (shared first)."""
        vw = self.bandit.vw
        self.last_lines = lines
        if not self.fast:
            return [float(p) for p in vw.predict(lines)]
        import pylibvw

        examples = vw._parse("\n".join(lines))
        try:
            pylibvw.vw.predict_multi(vw, examples)
            return list(examples[0].get_action_scores())
        finally:
            pylibvw.vw._finish_example_multi_ex(vw, examples)

    def pmf(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        return self.predict(self.lines(context, candidates))

    # -- load-time checks ------------------------------------------------------------------------
    def check(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> None:
        """Keep the fast path only if it gives the bandit's own PMF on this request."""
        reference = [float(p) for p in self.bandit.pmf(context, candidates)]
        try:
            fast = self.pmf(context, candidates)
            total = sum(fast)
            self.fast = len(fast) == len(reference) and all(
                abs(a / total - b) < 1e-6 for a, b in zip(fast, reference, strict=True)
            )
        except Exception:  # noqa: BLE001 - binding internals changed: use the public path
            self.fast = False
        if not self.fast:
            log.warning("VW fast path disabled: it does not reproduce bandit.pmf")

    def split_lines(
        self,
        customer: Mapping[str, Any],
        request: Mapping[str, Any],
        flags: Sequence[str],
        candidates: Sequence[Mapping[str, Any]],
    ) -> list[str]:
        """The example assembled from pieces, with no cache (what :meth:`check_split` compares)."""
        part = self._customer_part(customer)
        key = tuple(request.get(k) for k in _REQUEST_KEYS)
        return [
            self.shared_line(part, key, flags),
            *self.action_lines(candidates, request.get("seen") or {}),
        ]

    def check_split(
        self,
        cases: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], Sequence[str]]],
        candidates: Sequence[Mapping[str, Any]],
    ) -> None:
        """Keep the cached assembly only if it gives ``vw_example``'s text on every case:
        (customer context, request context with ``seen``, online flags)."""
        try:
            for customer, request, flags in cases:
                full = {**customer, **request, **dict.fromkeys(flags, 1)}
                if self.split_lines(customer, request, flags, candidates) != self._example(
                    full, candidates
                ):
                    self.split = False
                    break
        except Exception:  # noqa: BLE001 - feature code changed shape: use the full example
            self.split = False
        if not self.split:
            log.warning("VW cached example assembly disabled: it does not reproduce vw_example")


def bandit_from_pyfunc(model: Any, version: str) -> BanditModel:
    """Use the VW workspace inside ``src.models.bandit``'s pyfunc directly (no DataFrame per
    request); any other pyfunc with the same ``predict`` contract goes through ``predict``."""
    inner = None
    try:
        inner = model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a PythonModel pyfunc: use predict
        inner = None
    bandit = getattr(inner, "bandit", None)
    if bandit is not None and hasattr(bandit, "pmf") and hasattr(bandit, "vw"):
        scorer = VwScorer(bandit)
        spec = bandit.spec
        return BanditModel(
            version,
            scorer.pmf,
            tuple(spec.context_columns),
            tuple(spec.propensity),
            check=scorer.check,
            scorer=scorer,
        )

    def via_predict(
        context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> list[float]:
        row = {k: v for k, v in context.items() if k != "seen"}
        row["seen"] = json.dumps(context.get("seen") or {})
        row["candidates"] = ",".join(str(c["offer_id"]) for c in candidates)
        pmf = json.loads(model.predict(pd.DataFrame([row]))["pmf"].iloc[0])
        return [float(pmf[str(c["offer_id"])]) for c in candidates]

    return BanditModel(version, via_predict, ())


# --- the snapshot and its manager --------------------------------------------------------------


@dataclass(frozen=True)
class ModelSet:
    """What a request scores with; replaced as a whole, never mutated."""

    propensity: PropensityScores | None = None
    bandit: BanditModel | None = None
    errors: Mapping[str, str] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        out = {}
        if self.propensity is not None:
            out["propensity"] = self.propensity.version
        if self.bandit is not None:
            out["bandit"] = self.bandit.version
        return out


class ModelManager:
    """Holds ``current`` and refreshes it from a :class:`ModelSource` (call from a worker thread).

    ``on_event(kind, what)`` reports loads and failures (the service turns them into metrics).
    ``probe`` is a sample context the bandit must answer before it is swapped in.
    """

    def __init__(
        self,
        source: ModelSource | None,
        store: CustomerStore,
        *,
        propensity_name: str | None,
        bandit_name: str | None,
        probe: Callable[[BanditModel], None] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.source = source
        self.store = store
        self.names = {"propensity": propensity_name, "bandit": bandit_name}
        self.probe = probe
        self.on_event = on_event or (lambda kind, what: None)
        self.current = ModelSet()
        self.last_refresh: float | None = None
        self._refreshing = threading.Lock()

    def refresh(self) -> ModelSet:
        """Check both aliases; load what changed; keep the last good model on any failure.

        Refreshes never overlap: one that finds another running returns the current set."""
        if not self._refreshing.acquire(blocking=False):
            return self.current
        try:
            return self._refresh()
        finally:
            self._refreshing.release()

    def _refresh(self) -> ModelSet:
        current = self.current
        updates: dict[str, Any] = {}
        errors = dict(current.errors)
        published = getattr(self.store, "published_scores", None)
        if published is not None and current.propensity is not published:
            updates["propensity"] = published  # scores published with the view win
            errors.pop("propensity", None)
        for kind, name in self.names.items():
            if not name or self.source is None or (kind == "propensity" and published is not None):
                continue
            held = getattr(current, kind)
            try:
                version = self.source.champion_version(name)
                if version is None:
                    errors[kind] = f"no '{name}' champion in the registry"
                    continue
                if held is not None and held.version == version:
                    errors.pop(kind, None)
                    continue
                started = time.perf_counter()
                loaded = self._load(kind, name, version)
                updates[kind] = loaded
                errors.pop(kind, None)
                self.on_event("loaded", kind)
                log.info(
                    "loaded %s model %s v%s in %.1fs",
                    kind,
                    name,
                    version,
                    time.perf_counter() - started,
                )
            except Exception as error:  # noqa: BLE001 - keep serving with what we have
                errors[kind] = f"{type(error).__name__}: {str(error)[:200]}"
                self.on_event("failed", kind)
                log.warning(
                    "could not refresh the %s model %s (%s); keeping %s",
                    kind,
                    name,
                    errors[kind],
                    "v" + held.version if held else "none",
                )
        self.current = replace(
            current, **updates, errors=errors
        )  # one reference assignment: atomic
        self.last_refresh = time.time()
        return self.current

    def _load(self, kind: str, name: str, version: str) -> Any:
        if self.source is None:  # _refresh skips every model when there is no source
            raise RuntimeError(f"no model source to load the {kind} model {name} v{version} from")
        model = self.source.load(name, version)
        if kind == "propensity":
            if len(self.store.frame) != len(self.store):  # a published store is read by row
                raise ValueError(
                    "the served view has no published scores table: publish scores_<as_of> "
                    "with it (nextoffer score, then publish-view)"
                )
            return replace(
                score_view(model, self.store, version), explainer=unwrap_explainer(model)
            )
        bandit = bandit_from_pyfunc(model, version)
        if self.probe is not None:
            self.probe(bandit)
        self.store.warm(bandit.context_columns)
        return bandit
