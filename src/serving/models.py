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

    def for_position(self, position: int | None) -> dict[str, float]:
        values = self.prior if position is None else self.matrix[position]
        return {p: float(v) for p, v in zip(self.products, values.tolist(), strict=True)}


def score_view(model: Any, store: CustomerStore, version: str, chunk: int = 50_000) -> PropensityScores:
    """Run a propensity pyfunc over the whole view (in chunks) in the logged signature's types."""
    from src.models.tracking import serving_frame

    schema = model.metadata.get_input_schema() if getattr(model, "metadata", None) else None
    columns = [c for c in (schema.input_names() if schema is not None else store.columns)
               if c != "customer_id"]
    missing = [c for c in columns if c not in store.frame.columns]
    if missing:
        raise ValueError(f"the customer view lacks model input column(s) {missing[:5]}")
    parts = []
    for lo in range(0, len(store.frame), chunk):
        rows = serving_frame(store.frame.iloc[lo:lo + chunk], columns)
        parts.append(pd.DataFrame(model.predict(rows)))
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if len(scores) != len(store.frame):
        raise ValueError(f"propensity model returned {len(scores)} rows for {len(store.frame)}")
    matrix = scores.to_numpy(dtype=float)
    if not np.isfinite(matrix).all() or (matrix < 0).any() or (matrix > 1).any():
        raise ValueError("propensity model returned values outside [0, 1] or non-finite")
    prior = matrix.mean(axis=0) if len(matrix) else np.zeros(matrix.shape[1])
    return PropensityScores(version, tuple(str(c) for c in scores.columns), matrix, prior)


@dataclass(frozen=True)
class BanditModel:
    """The champion bandit: ``pmf(context, candidates)`` over the candidates it is given."""

    version: str
    pmf_fn: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], Sequence[float]]
    context_columns: tuple[str, ...]
    propensity_features: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any], Sequence[Mapping[str, Any]]], None] | None = None

    def pmf(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[float]:
        """Probabilities over the candidates, renormalized to sum to one; raises if not usable."""
        p = [float(v) for v in self.pmf_fn(context, candidates)]
        total = sum(p)
        if len(p) != len(candidates) or not math.isfinite(total) or total <= 0 or min(p) < 0:
            raise ValueError(f"bandit returned an unusable PMF {p!r}")
        return [v / total for v in p]


class VwScorer:
    """PMFs from a :class:`~src.models.bandit.ContextualBandit` without its per-call overhead.

    Same examples as ``bandit_features.vw_example`` (the shared line is built by the same
    function; an offer's action line depends only on the offer unless the customer has seen it,
    so it is built once), handed to VW as one text through the binding's parse/predict calls.
    ``fast`` is switched off at load if it does not reproduce ``bandit.pmf`` exactly.
    """

    def __init__(self, bandit: Any) -> None:
        self.bandit = bandit
        self.spec = bandit.spec
        self._action_lines: dict[tuple[Any, ...], str] = {}
        self.fast = True

    def lines(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[str]:
        from src.models.bandit_features import _action_line, _shared_line

        if not candidates:
            raise ValueError("a decision needs at least one candidate offer")
        seen = context.get("seen") or {}
        out = [_shared_line(context, self.spec)]
        cache = self._action_lines
        for c in candidates:
            n_seen = seen.get(str(c["offer_id"]), 0)
            key = (c["offer_id"], c.get("product"), c.get("slot"), c.get("creative"), n_seen)
            line = cache.get(key)
            if line is None:
                if len(cache) > 100_000:  # offers x fatigue counts: bounded, but be safe
                    cache.clear()
                line = cache[key] = _action_line(c, {str(c["offer_id"]): n_seen} if n_seen else {})
            out.append(line)
        return out

    def pmf(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[float]:
        lines = self.lines(context, candidates)
        vw = self.bandit.vw
        if not self.fast:
            return [float(p) for p in vw.predict(lines)]
        import pylibvw

        examples = vw._parse("\n".join(lines))
        try:
            pylibvw.vw.predict_multi(vw, examples)
            return list(examples[0].get_action_scores())
        finally:
            pylibvw.vw._finish_example_multi_ex(vw, examples)

    def check(self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> None:
        """Keep the fast path only if it gives the bandit's own PMF on this request."""
        reference = [float(p) for p in self.bandit.pmf(context, candidates)]
        try:
            fast = self.pmf(context, candidates)
            total = sum(fast)
            self.fast = len(fast) == len(reference) and all(
                abs(a / total - b) < 1e-6 for a, b in zip(fast, reference, strict=True))
        except Exception:  # noqa: BLE001 - binding internals changed: use the public path
            self.fast = False
        if not self.fast:
            log.warning("VW fast path disabled: it does not reproduce bandit.pmf")


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
        return BanditModel(version, scorer.pmf, tuple(spec.context_columns), tuple(spec.propensity),
                           check=scorer.check)

    def via_predict(context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]) -> list[float]:
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

    def __init__(self, source: ModelSource | None, store: CustomerStore, *,
                 propensity_name: str | None, bandit_name: str | None,
                 probe: Callable[[BanditModel], None] | None = None,
                 on_event: Callable[[str, str], None] | None = None) -> None:
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
        for kind, name in self.names.items():
            if not name or self.source is None:
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
                log.info("loaded %s model %s v%s in %.1fs", kind, name, version, time.perf_counter() - started)
            except Exception as error:  # noqa: BLE001 - keep serving with what we have
                errors[kind] = f"{type(error).__name__}: {str(error)[:200]}"
                self.on_event("failed", kind)
                log.warning("could not refresh the %s model %s (%s); keeping %s", kind, name,
                            errors[kind], "v" + held.version if held else "none")
        self.current = replace(current, **updates, errors=errors)  # one reference assignment: atomic
        self.last_refresh = time.time()
        return self.current

    def _load(self, kind: str, name: str, version: str) -> Any:
        model = self.source.load(name, version)
        if kind == "propensity":
            return score_view(model, self.store, version)
        bandit = bandit_from_pyfunc(model, version)
        if self.probe is not None:
            self.probe(bandit)
        self.store.warm(bandit.context_columns)
        return bandit
