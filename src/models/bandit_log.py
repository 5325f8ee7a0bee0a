"""The VW bandit trained from any decision log (``nextoffer train-bandit --log LOG --actions CAT``).

Not only the simulated bank's raw tables: any log of (context, candidates, action, prob,
reward) plus a catalog of the actions. Examples are ``cb_explore_adf`` text:

    shared |user <context: numeric col:value, categorical col=value>
    |offer offer=<id> |attr <action features: numeric col:value, categorical col=value>
           |pair <per-(context, action) features, e.g. a user-item affinity for this candidate>

with interactions ``uo`` and ``ua`` (the context crossed with the offer and its attributes),
which is what lets one linear model rank offers differently per context.

An offer eligible in several slots is one action with one set of features; a slot's candidates
are deduplicated, so the PMF over them sums to 1. The earlier part of the log (by time) trains,
the later ``held_out_share`` scores it off-policy (:mod:`src.models.ope_log`) against the logging
policy and uniform, and it is registered only if it beats the current champion there.
"""

from __future__ import annotations

import json
import math
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.models import ope_log
from src.models.bandit import BanditConfig
from src.models.bandit_features import _token, cost_of
from src.models.decision_log import (
    MAX_CATEGORIES,
    DecisionLog,
    _read_table,
    build_log,
    categorical_context,
    context_columns,
)
from src.models.ope import LogError, validate_log

ACTION_ID_COLUMNS = ("offer_id", "action")


@dataclass(frozen=True)
class LogBanditSpec:
    """Which log and catalog columns become which VW features."""

    context_numeric: tuple[str, ...] = ()
    context_categorical: tuple[str, ...] = ()
    action_numeric: tuple[str, ...] = ()
    action_categorical: tuple[str, ...] = ()
    pair: tuple[str, ...] = ()
    interactions: tuple[str, ...] = ("uo", "ua")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogBanditSpec:
        return cls(**{k: tuple(v) for k, v in d.items()})

    @property
    def context(self) -> tuple[str, ...]:
        return self.context_numeric + self.context_categorical


def _value(v: Any) -> float | None:
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


@dataclass
class ActionCatalog:
    """Actions with their features (one row per offer) and, if given, the slots they are
    eligible in (``slots``: slot -> offer ids, deduplicated)."""

    features: pd.DataFrame  # index offer id
    slots: dict[str, list[str]] = field(default_factory=dict)

    def line(self, offer_id: str, spec: LogBanditSpec) -> str:
        """The action's static part of its VW line (cached by :class:`LogBandit`)."""
        parts = [f"|offer offer={_token(offer_id)}"]
        attrs = []
        row = self.features.loc[offer_id] if offer_id in self.features.index else None
        if row is not None:
            for c in spec.action_numeric:
                x = _value(row[c])
                if x is not None and x != 0.0:
                    attrs.append(f"{_token(c)}:{x:.6g}")
            for c in spec.action_categorical:
                if not _missing(row[c]):
                    attrs.append(f"{_token(c)}={_token(row[c])}")
        if attrs:
            parts.append("|attr " + " ".join(attrs))
        return " ".join(parts)


def read_actions(
    path: Path | str, features: Sequence[str] = ()
) -> tuple[ActionCatalog, list[str], list[str]]:
    """The action catalog (CSV/Parquet: ``offer_id`` or ``action``, optional ``slot``, feature
    columns) -> (catalog, numeric features, categorical features). An offer listed once per slot
    must have the same features in every row."""
    table = _read_table(Path(path), "action catalog")
    name = Path(path).name
    id_col = next((c for c in ACTION_ID_COLUMNS if c in table.columns), None)
    if id_col is None:
        raise LogError(f"{name}: missing column 'offer_id' (the action id)")
    bad = table[id_col].isna()
    if bad.any():
        raise LogError(
            f"{name}: column '{id_col}' has empty values, first at row {int(np.flatnonzero(bad)[0])}"
        )
    table[id_col] = table[id_col].astype(str)
    features = [c.strip() for col in features for c in str(col).split(",") if c.strip()]
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise LogError(
            f"{name}: action feature column(s) {missing} are not in the catalog; its columns: "
            f"{list(table.columns)}"
        )
    per_offer = table.drop_duplicates([id_col, *features])
    dup = per_offer[id_col].duplicated()
    if dup.any():
        offer = per_offer.loc[dup, id_col].iloc[0]
        raise LogError(
            f"{name}: offer {offer!r} is listed with different action features in different rows "
            f"({features}); one offer, one set of features"
        )
    numeric = [
        c
        for c in features
        if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])
    ]
    categorical = [c for c in features if c not in numeric]
    slots: dict[str, list[str]] = {}
    if "slot" in table.columns:
        for slot, offer in zip(table["slot"].astype(str), table[id_col], strict=True):
            ids = slots.setdefault(slot, [])
            if offer not in ids:
                ids.append(offer)
    frame = per_offer.drop_duplicates(id_col).set_index(id_col)[features]
    return ActionCatalog(frame, slots), numeric, categorical


def _pair_values(value: Any, candidates: Sequence[str]) -> list[float | None]:
    """A per-candidate feature cell: a mapping offer -> number (or its JSON), or a list aligned
    with the row's candidates (or its JSON)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if isinstance(value, Mapping):
        return [_value(value.get(c)) for c in candidates]
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) != len(candidates):
            raise LogError(
                f"a per-candidate feature has {len(value)} values for {len(candidates)} candidates"
            )
        return [_value(v) for v in value]
    if _missing(value):
        return [None] * len(candidates)
    raise LogError(f"a per-candidate feature must be a mapping or a list, got {value!r}")


class LogBandit:
    """A VW ``cb_explore_adf`` workspace over a generic log's features."""

    def __init__(
        self,
        config: BanditConfig,
        spec: LogBanditSpec,
        catalog: ActionCatalog,
        model_file: Path | None = None,
    ) -> None:
        from vowpalwabbit import Workspace

        self.config, self.spec, self.catalog = config, spec, catalog
        self.vw = Workspace(
            self.vw_args() + (f" -i {model_file}" if model_file else ""), quiet=True
        )
        self.n_learned = 0
        self._lines: dict[str, str] = {}

    def vw_args(self) -> str:
        c = self.config
        explore = {
            "epsilon": f"--epsilon {c.epsilon}",
            "softmax": f"--softmax --lambda {c.softmax_lambda}",
            "squarecb": f"--squarecb --gamma_scale {c.gamma_scale}",
        }[c.exploration]
        interactions = " ".join(f"-q {pair}" for pair in self.spec.interactions)
        return (
            f"--cb_explore_adf --cb_type {c.cb_type} {explore} {interactions} -b {c.bits} "
            f"-l {c.learning_rate} --random_seed {c.seed} --quiet"
        )

    def _shared(self, row: Mapping[str, Any]) -> str:
        feats = []
        for c in self.spec.context_numeric:
            x = _value(row.get(c))
            if x is None:
                feats.append(f"{_token(c)}_null")
            elif x != 0.0:
                feats.append(f"{_token(c)}:{x:.6g}")
        for c in self.spec.context_categorical:
            v = row.get(c)
            if not _missing(v):
                feats.append(f"{_token(c)}={_token(v)}")
        return "shared |user " + " ".join(feats)

    def example(
        self,
        row: Mapping[str, Any],
        candidates: Sequence[str],
        label: tuple[int, float, float] | None = None,
    ) -> list[str]:
        """One multi-line example: shared context, then one line per candidate."""
        lines = [self._shared(row)]
        pairs = [_pair_values(row.get(c), candidates) for c in self.spec.pair]
        for k, offer in enumerate(candidates):
            line = self._lines.get(offer)
            if line is None:
                line = self._lines[offer] = self.catalog.line(offer, self.spec)
            extra = [
                f"{_token(c)}:{vals[k]:.6g}"
                for c, vals in zip(self.spec.pair, pairs, strict=True)
                if vals[k] is not None and vals[k] != 0.0
            ]
            lines.append(line + (" |pair " + " ".join(extra) if extra else ""))
        if label is not None:
            chosen, reward, prob = label
            lines[chosen + 1] = f"0:{cost_of(reward):.6g}:{prob:.6g} {lines[chosen + 1]}"
        return lines

    def pmf(self, row: Mapping[str, Any], candidates: Sequence[str]) -> np.ndarray:
        p = np.asarray(self.vw.predict(self.example(row, candidates)), dtype=float)
        return p / p.sum()

    def learn(
        self,
        row: Mapping[str, Any],
        candidates: Sequence[str],
        chosen: int,
        prob: float,
        reward: float,
    ) -> None:
        self.vw.learn(self.example(row, candidates, label=(chosen, reward, prob)))
        self.n_learned += 1

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.vw.save(str(path))
        return path


def _rows(frame: pd.DataFrame, spec: LogBanditSpec) -> list[dict[str, Any]]:
    cols = [c for c in (*spec.context, *spec.pair) if c in frame.columns]
    return frame[cols].to_dict("records") if cols else [{} for _ in range(len(frame))]


def train_from_log(
    bandit: LogBandit, log: DecisionLog, passes: int = 1, progress: bool = False
) -> int:
    """Learn from every row of ``log`` (with its logged probability); returns examples learned."""
    from tqdm.auto import tqdm

    rows = _rows(log.frame, bandit.spec)
    cands = log.candidates()
    n = 0
    for _ in range(passes):
        for i in tqdm(range(log.n), desc="vw train (log)", disable=not progress, mininterval=1):
            bandit.learn(
                rows[i], cands[i], int(log.action[i]), float(log.prob[i]), float(log.reward[i])
            )
            n += 1
    return n


def bandit_target(bandit: LogBandit, log: DecisionLog, progress: bool = False) -> np.ndarray:
    """The bandit's PMF over every row's candidates (zero-padded): the OPE target."""
    from tqdm.auto import tqdm

    rows = _rows(log.frame, bandit.spec)
    cands = log.candidates()
    out = np.zeros((log.n, log.width))
    for i in tqdm(range(log.n), desc="vw score (held out)", disable=not progress, mininterval=1):
        p = bandit.pmf(rows[i], cands[i])
        out[i, : len(p)] = p
    return out


# --- the job --------------------------------------------------------------------------------


@dataclass
class LogBanditResult:
    train_decisions: int
    held_out_decisions: int
    split: str
    report: ope_log.OPEReport
    value: float  # the bandit's DR value on the held-out slice
    logged_value: float
    uniform_value: float
    champion_value: float | None
    registered: str  # what happened
    model_uri: str | None = None
    warnings: list[str] = field(default_factory=list)


def time_split(
    frame: pd.DataFrame, share: float, time_col: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(train rows, held-out rows, description): the latest ``share`` of the log by time, or by
    row order when there is no time column (said in the description)."""
    n = len(frame)
    col = time_col or next((c for c in ("ts", "timestamp", "time") if c in frame.columns), None)
    if col is not None:
        if col not in frame.columns:
            raise LogError(f"--time-col {col!r} is not in the log")
        ts = pd.to_datetime(frame[col], errors="coerce")
        if ts.isna().any():
            raise LogError(
                f"column {col!r} has empty or unreadable times, first at row "
                f"{int(np.flatnonzero(ts.isna())[0])}"
            )
        order = np.argsort(ts.to_numpy(), kind="stable")
        cut = int(round(n * (1 - share)))
        split_at = ts.iloc[order[cut]] if cut < n else ts.max()
        train = np.flatnonzero((ts < split_at).to_numpy())
        held = np.flatnonzero((ts >= split_at).to_numpy())
        how = f"{col} >= {split_at}"
    else:
        cut = int(round(n * (1 - share)))
        train, held = np.arange(cut), np.arange(cut, n)
        how = f"rows {cut}.. (no time column: by row order)"
    if len(train) == 0 or len(held) == 0:
        raise LogError(f"the log's {n} rows leave nothing to train on or to hold out ({how})")
    return train, held, how


def run_log_training(
    log_path: Path | str,
    actions_path: Path | str,
    *,
    config: BanditConfig,
    context: Sequence[str] = (),
    action_features: Sequence[str] = (),
    pair_features: Sequence[str] = (),
    candidates: Path | str | None = None,
    held_out_share: float = 0.3,
    time_col: str | None = None,
    passes: int = 1,
    register: str | None = "nextoffer-log-bandit",
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    progress: bool = False,
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
) -> LogBanditResult:
    """Train the bandit on the log's earlier part, score it on the later part, maybe register."""
    say = echo or (lambda _m: None)
    frame = validate_log(_read_table(Path(log_path), "decision log"), Path(log_path).name)
    catalog, a_num, a_cat = read_actions(actions_path, action_features)
    unknown = sorted(set(frame["action"].unique()) - set(catalog.features.index))
    if unknown:
        first = int(np.flatnonzero(frame["action"].isin(unknown).to_numpy())[0])
        raise LogError(
            f"{Path(log_path).name}: action(s) {unknown[:5]} are not in the action catalog "
            f"{Path(actions_path).name} (first at row {first})"
        )
    ctx_cols = [c.strip() for col in context for c in str(col).split(",") if c.strip()]
    context_columns(frame, ctx_cols, MAX_CATEGORIES)  # refuses ids and timestamps by name
    ctx_cat = categorical_context(frame, ctx_cols)
    pairs = [c.strip() for col in pair_features for c in str(col).split(",") if c.strip()]
    missing = [c for c in pairs if c not in frame.columns]
    if missing:
        raise LogError(f"per-candidate feature column(s) {missing} are not in the log")
    spec = LogBanditSpec(
        context_numeric=tuple(c for c in ctx_cols if c not in ctx_cat),
        context_categorical=tuple(ctx_cat),
        action_numeric=tuple(a_num),
        action_categorical=tuple(a_cat),
        pair=tuple(pairs),
        interactions=("uo", "ua") if ctx_cols else (),
    )
    source: Any = candidates
    if source is None and "candidates" not in frame.columns and catalog.slots and "slot" in frame:
        source = catalog.slots
    dlog = build_log(frame, candidates=source, name=Path(log_path).name)
    unknown_c = sorted(set(dlog.offers.tolist()) - set(catalog.features.index))
    if unknown_c:
        raise LogError(f"candidate offer(s) {unknown_c[:5]} are not in the action catalog")
    train_rows, held_rows, how = time_split(dlog.frame, held_out_share, time_col)
    train, held = dlog.subset(train_rows), dlog.subset(held_rows)
    say(f"train {train.n:,} decisions, hold out {held.n:,} ({how})")
    bandit = LogBandit(config, spec, catalog)
    train_from_log(bandit, train, passes=passes, progress=progress)
    target = bandit_target(bandit, held, progress=progress)
    report = ope_log.evaluate(
        held,
        {"bandit": lambda f, c: target, "uniform": "uniform"},
        context=ctx_cols,
        seed=seed,
    )
    table = report.estimates.set_index(["policy", "estimator"])
    value = float(table.loc[("bandit", "dr"), "value"])
    uniform_value = float(table.loc[("uniform", "dr"), "value"])
    lo, hi = ope_log.fay_feuer(
        held.reward.clip(min=0), np.full(held.n, max(1.0, held.reward.max())), held.n, 0.05
    )
    logged_value = float(held.reward.mean())
    logged_row = pd.DataFrame(
        [
            {
                "policy": "logging",
                "estimator": "on-policy mean",
                "value": logged_value,
                "se": float(held.reward.std(ddof=1) / np.sqrt(held.n)),
                "ci_low": lo,
                "ci_high": hi,
                "interval": "Fay-Feuer gamma bound",
                "clipped": False,
            }
        ]
    )
    report.estimates = pd.concat([logged_row, report.estimates], ignore_index=True)
    result = LogBanditResult(
        train_decisions=train.n,
        held_out_decisions=held.n,
        split=how,
        report=report,
        value=value,
        logged_value=logged_value,
        uniform_value=uniform_value,
        champion_value=None,
        registered="not registered (--no-register)",
        warnings=list(report.warnings),
    )
    if register is None:
        return result
    from src.models.registry import current_champion, register_and_promote

    champion = current_champion(register, tracking_uri)
    if champion is not None:
        result.champion_value = _champion_value(register, held, ctx_cols, seed, tracking_uri)
        if result.champion_value is not None and value <= result.champion_value:
            result.registered = (
                f"not registered: DR {value:.5f} does not beat the champion "
                f"v{champion} ({result.champion_value:.5f}) on the same held-out slice"
            )
            return result
        if result.champion_value is None:
            result.registered = (
                f"not registered: the champion v{champion} of {register!r} cannot be scored on "
                "this log (a different kind of model); a human decides"
            )
            return result
    uri = log_log_bandit(
        bandit,
        metrics={
            "ope_dr_value": value,
            "logged_policy_value": logged_value,
            "uniform_dr_value": uniform_value,
            "train_decisions": float(train.n),
        },
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
    )
    champion_value = result.champion_value
    from src.models.model_card import version_description

    description = version_description(
        f"Vowpal Wabbit contextual bandit trained on a decision log; held out: {how}.",
        None,
        {
            "held-out value (doubly robust)": f"{value:.5f}",
            "logged policy's value": f"{logged_value:.5f}",
            "uniform policy's value (doubly robust)": f"{uniform_value:.5f}",
            "decisions": f"{train.n:,} train, {held.n:,} held out",
        },
    )
    promotion = register_and_promote(
        uri,
        register,
        metric="ope_dr_value",
        candidate_score=value,
        score_champion=(lambda _uri: float(champion_value)) if champion_value is not None else None,
        higher_is_better=True,
        tracking_uri=tracking_uri,
        description=description,
    )
    state = "champion" if promotion.promoted else "challenger"
    result.model_uri = uri
    result.registered = f"{register} v{promotion.version} -> {state}: {promotion.reason}"
    return result


def _champion_value(
    name: str, held: DecisionLog, context: Sequence[str], seed: int, tracking_uri: str | None
) -> float | None:
    """The champion's DR value on the same held-out slice, or None if it is not a log bandit."""
    import mlflow.pyfunc

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model()
    except Exception:  # noqa: BLE001 - any failure to load means "not comparable"
        return None
    bandit = getattr(model, "bandit", None)
    if not isinstance(bandit, LogBandit):
        return None
    target = bandit_target(bandit, held)
    report = ope_log.evaluate(held, {"champion": lambda f, c: target}, context=context, seed=seed)
    return float(report.estimates.set_index("estimator").loc["dr", "value"])


# --- MLflow ---------------------------------------------------------------------------------


def _pyfunc_class():
    import mlflow.pyfunc

    class LogBanditPyfunc(mlflow.pyfunc.PythonModel):
        """``predict(rows)``: context columns (and per-candidate feature columns) plus
        ``candidates`` (offer ids) -> ``offer_id``, ``prob`` and the PMF as JSON."""

        def load_context(self, context) -> None:
            a = context.artifacts
            meta = json.loads(Path(a["meta"]).read_text())
            catalog = ActionCatalog(
                pd.read_json(Path(a["actions"]), orient="split", convert_axes=False),
                {k: list(v) for k, v in meta["slots"].items()},
            )
            self.bandit = LogBandit(
                BanditConfig(**meta["config"]),
                LogBanditSpec.from_dict(meta["spec"]),
                catalog,
                model_file=Path(a["model"]),
            )

        def predict(
            self, context, model_input: pd.DataFrame, params: dict | None = None
        ) -> pd.DataFrame:
            return predict_log_frame(self.bandit, model_input)

    return LogBanditPyfunc


def predict_log_frame(bandit: LogBandit, rows: pd.DataFrame) -> pd.DataFrame:
    """Choose for every row; candidates deduplicated (an offer in two slots counts once)."""
    if "candidates" not in rows.columns:
        raise ValueError("model input needs a 'candidates' column (offer ids per row)")
    out = []
    known = set(bandit.catalog.features.index)
    for row in rows.to_dict("records"):
        ids = row["candidates"]
        ids = [s.strip() for s in ids.split(",")] if isinstance(ids, str) else [str(s) for s in ids]
        ids = list(dict.fromkeys(i for i in ids if i))
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"unknown candidate offer(s) {unknown}")
        p = bandit.pmf(row, ids)
        seed = zlib.crc32(str(row["decision_id"]).encode()) if "decision_id" in row else None
        k = int(np.random.default_rng(seed).choice(len(p), p=p))
        out.append(
            {
                "offer_id": ids[k],
                "prob": float(p[k]),
                "pmf": json.dumps(dict(zip(ids, p.round(6).tolist(), strict=True))),
            }
        )
    return pd.DataFrame(out)


def log_log_bandit(
    bandit: LogBandit,
    *,
    metrics: Mapping[str, float] | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    experiment: str = "log-bandit",
) -> str:
    """Log the bandit as an MLflow pyfunc; returns the model URI."""
    import mlflow

    from src.models.tracking import (
        pinned_requirements,
        project_code_paths,
        quiet_cloudpickle_notice,
    )

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name="log-bandit"):
        d = Path(tmp)
        model = bandit.save(d / "model.vw")
        meta = d / "meta.json"
        meta.write_text(
            json.dumps(
                {
                    "spec": bandit.spec.to_dict(),
                    "config": bandit.config.model_dump(),
                    "slots": bandit.catalog.slots,
                },
                indent=2,
            )
        )
        actions = d / "actions.json"
        bandit.catalog.features.to_json(actions, orient="split")
        mlflow.log_params(
            {
                "vw_args": bandit.vw_args(),
                "n_learned": bandit.n_learned,
                **{f"spec_{k}": ",".join(v) for k, v in bandit.spec.to_dict().items()},
            }
        )
        if metrics:
            mlflow.log_metrics(dict(metrics))
        with quiet_cloudpickle_notice():
            info = mlflow.pyfunc.log_model(
                name="bandit",
                python_model=_pyfunc_class()(),
                artifacts={"model": str(model), "meta": str(meta), "actions": str(actions)},
                pip_requirements=pinned_requirements("vowpalwabbit"),
                code_paths=project_code_paths(),
            )
        return info.model_uri
