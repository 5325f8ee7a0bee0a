"""The contextual bandit: Vowpal Wabbit ``cb_explore_adf`` over (customer context, candidate offers).

Every choice is sampled from VW's probability mass function and returned with the probability
it was chosen with, so every decision can later be evaluated off-policy and learned from.
It trains offline from the logged decisions (``exposures`` with ``logged_prob``, joined with the
customer view as of the decision's day) and keeps learning online from rewards. It is saved to
MLflow as a pyfunc (VW model file + feature spec + catalog as artifacts, the ``src`` code as
``code_paths`` so it loads without the repository) and registered through
:func:`src.models.registry.register_and_promote`, scored by an off-policy value estimate.
"""

from __future__ import annotations

import json
import tempfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.models.bandit_features import (
    CustomerViews,
    FatigueTracker,
    FeatureSpec,
    ResponseHistory,
    as_array,
    candidate_index,
    default_feature_spec,
    request_context,
    slot_candidates,
    vw_example,
)
from src.settings import BanditParams


class BanditConfig(BanditParams):
    """How the bandit explores and learns (fields and defaults: :class:`src.settings.BanditParams`,
    the learner's part of ``Settings.bandit``; ``BanditConfig.of(settings.bandit)``), and how
    that becomes VW arguments and rewards."""

    def vw_args(self, spec: FeatureSpec) -> str:
        explore = {
            "epsilon": f"--epsilon {self.epsilon}",
            "softmax": f"--softmax --lambda {self.softmax_lambda}",
            "squarecb": f"--squarecb --gamma_scale {self.gamma_scale}",
        }[self.exploration]
        interactions = " ".join(f"-q {pair}" for pair in spec.interactions)
        return (
            f"--cb_explore_adf --cb_type {self.cb_type} {explore} {interactions} -b {self.bits} "
            f"-l {self.learning_rate} --random_seed {self.seed} --quiet"
        )

    def reward_of(self, click: bool, convert: bool, value: float) -> float:
        """The scalar reward of an outcome under this config's metric."""
        if self.reward == "click":
            return float(click)
        if self.reward == "convert":
            return float(convert)
        return float(value) / self.value_scale


@dataclass(frozen=True)
class Decision:
    """A choice among the candidates and the probability it was chosen with."""

    index: int
    offer_id: str
    prob: float
    pmf: np.ndarray


class ContextualBandit:
    """A VW ``cb_explore_adf`` workspace plus the feature spec that formats its examples."""

    def __init__(
        self,
        config: BanditConfig | None = None,
        spec: FeatureSpec | None = None,
        model_file: Path | None = None,
    ) -> None:
        from vowpalwabbit import Workspace

        self.config = config or BanditConfig()
        self.spec = spec or default_feature_spec()
        args = self.config.vw_args(self.spec)
        if model_file is not None:
            args += f" -i {model_file}"
        self.vw = Workspace(args, quiet=True)
        self.n_learned = 0

    def pmf(
        self, context: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> np.ndarray:
        """Probability of choosing each candidate (exploration included)."""
        return as_array(self.vw.predict(vw_example(context, candidates, self.spec)))

    def choose(
        self,
        context: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        rng: np.random.Generator,
    ) -> Decision:
        """Sample a candidate from the PMF; its probability travels with the decision."""
        p = self.pmf(context, candidates)
        index = int(rng.choice(len(p), p=p))
        return Decision(index, str(candidates[index]["offer_id"]), float(p[index]), p)

    def learn(
        self,
        context: Mapping[str, Any],
        candidates: Sequence[Mapping[str, Any]],
        chosen: int,
        prob: float,
        reward: float,
    ) -> None:
        """One update from (context, candidates, chosen index, its probability, reward)."""
        self.vw.learn(vw_example(context, candidates, self.spec, label=(chosen, reward, prob)))
        self.n_learned += 1

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.vw.save(str(path))
        return path

    def copy(self) -> ContextualBandit:
        """An independent bandit with the same weights (e.g. to freeze one for evaluation)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.save(Path(tmp) / "model.vw")
            clone = ContextualBandit(self.config, self.spec, model_file=path)
        clone.n_learned = self.n_learned
        return clone

    def finish(self) -> None:
        self.vw.finish()


# --- offline training from the decision log ----------------------------------------------


def logged_decisions(
    exposures: pd.DataFrame,
    views: CustomerViews,
    offers: pd.DataFrame,
    config: BanditConfig,
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    extra: Callable[[str, pd.Timestamp], Mapping[str, Any]] | None = None,
    responses: bool = False,
) -> pd.DataFrame:
    """The ``exposures`` log as bandit training rows: context, candidates, choice, prob, reward.

    Each decision gets the customer view as of its day (the latest view before it), its hour,
    weekday and channel, the customer's exposures in the fatigue window before it and, with
    ``responses``, their responses to every earlier offer per product (both counted from the
    whole log, so decisions near ``start`` see the history just before it). Off by default: the
    serving path does not supply it yet, and a model trained on it would be served without it.
    ``extra(customer_id, ts)`` adds context (e.g. propensity scores; diagnostics use it to
    inject the simulator's truth)
    """
    exposures = exposures.sort_values(["ts", "decision_id"]).reset_index(drop=True)
    values = offers.set_index("offer_id")["value_krw"]
    product = offers.set_index("offer_id")["product"].astype(str).to_dict()
    by_slot = slot_candidates(offers)
    index = {slot: candidate_index(c) for slot, c in by_slot.items()}
    tracker = FatigueTracker()
    history = ResponseHistory()
    rows = []
    lo = pd.Timestamp(start) if start is not None else exposures["ts"].min()
    hi = pd.Timestamp(end) if end is not None else exposures["ts"].max() + pd.Timedelta(seconds=1)
    for r in exposures.itertuples(index=False):
        if r.ts >= hi:
            break
        fatigue = tracker.counts(r.customer_id, r.ts)
        past = history.get(r.customer_id)
        tracker.record(r.customer_id, r.ts, r.offer_id)
        history.record(r.customer_id, product[r.offer_id], bool(r.click))
        if r.ts < lo:
            continue
        context = request_context(
            views.lookup(r.customer_id, r.ts),
            r.ts,
            r.channel,
            fatigue,
            extra(r.customer_id, r.ts) if extra else None,
            responses=past if responses else None,
        )
        value = float(values[r.offer_id]) if r.convert else 0.0
        rows.append(
            {
                "decision_id": r.decision_id,
                "ts": r.ts,
                "customer_id": r.customer_id,
                "slot": r.slot,
                "channel": r.channel,
                "offer_id": r.offer_id,
                "action": index[r.slot][r.offer_id],
                "prob": float(r.logged_prob),
                "click": bool(r.click),
                "convert": bool(r.convert),
                "value": value,
                "reward": config.reward_of(bool(r.click), bool(r.convert), value),
                "context": context,
            }
        )
    return pd.DataFrame(rows)


def train_offline(
    bandit: ContextualBandit,
    log: pd.DataFrame,
    offers: pd.DataFrame,
    passes: int = 1,
    progress: bool = False,
) -> int:
    """Learn from a logged-decision frame (:func:`logged_decisions`); returns examples learned."""
    from tqdm.auto import tqdm

    by_slot = slot_candidates(offers)
    n = 0
    for _ in range(passes):
        for r in tqdm(
            log.itertuples(index=False), total=len(log), desc="vw offline", disable=not progress
        ):
            bandit.learn(r.context, by_slot[r.slot], int(r.action), float(r.prob), float(r.reward))
            n += 1
    return n


def policy_probs(
    bandit: ContextualBandit, log: pd.DataFrame, offers: pd.DataFrame, greedy: bool = False
) -> np.ndarray:
    """The bandit's PMF over each logged decision's candidates (rows padded with 0), for OPE."""
    by_slot = slot_candidates(offers)
    width = max(len(c) for c in by_slot.values())
    out = np.zeros((len(log), width))
    for i, r in enumerate(log.itertuples(index=False)):
        p = bandit.pmf(r.context, by_slot[r.slot])
        if greedy:
            p = np.eye(len(p))[int(np.argmax(p))]
        out[i, : len(p)] = p
    return out


# --- MLflow ---------------------------------------------------------------------------------


def _pyfunc_class():
    import mlflow.pyfunc

    class BanditPyfunc(mlflow.pyfunc.PythonModel):
        """``predict(rows)``: each row a request context plus its ``candidates`` (offer ids,
        a list or a comma-separated string) -> ``offer_id``, ``prob`` and the full PMF.

        A ``decision_id`` column makes the draw reproducible (the rng is seeded from it).
        """

        def load_context(self, context) -> None:
            artifacts = context.artifacts
            meta = json.loads(Path(artifacts["meta"]).read_text())
            self.spec = FeatureSpec.from_dict(meta["spec"])
            self.config = BanditConfig(**meta["config"])
            self.offers = pd.read_json(Path(artifacts["offers"]), orient="records")
            self.bandit = ContextualBandit(
                self.config, self.spec, model_file=Path(artifacts["model"])
            )

        def predict(
            self, context, model_input: pd.DataFrame, params: dict | None = None
        ) -> pd.DataFrame:
            return predict_frame(self.bandit, self.offers, model_input)

    return BanditPyfunc


def predict_frame(
    bandit: ContextualBandit, offers: pd.DataFrame, rows: pd.DataFrame
) -> pd.DataFrame:
    """Choose for every row (context columns + ``candidates``); the pyfunc's ``predict``."""
    if "candidates" not in rows.columns:
        raise ValueError("model input needs a 'candidates' column (offer ids per row)")
    # an offer eligible in several slots has one row per slot in the catalog: one candidate
    catalog = offers.drop_duplicates("offer_id").set_index("offer_id", drop=False)
    out = []
    for _, row in rows.iterrows():
        ids = row["candidates"]
        ids = [s.strip() for s in ids.split(",")] if isinstance(ids, str) else [str(s) for s in ids]
        ids = list(dict.fromkeys(i for i in ids if i))
        unknown = [i for i in ids if i not in catalog.index]
        if unknown:
            raise ValueError(f"unknown candidate offer(s) {unknown}")
        candidates = catalog.loc[ids].to_dict("records")
        context = {k: v for k, v in row.items() if k != "candidates"}
        if isinstance(context.get("seen"), str):
            context["seen"] = json.loads(context["seen"])
        seed = zlib.crc32(str(row["decision_id"]).encode()) if "decision_id" in row else None
        d = bandit.choose(context, candidates, np.random.default_rng(seed))
        out.append(
            {
                "offer_id": d.offer_id,
                "prob": d.prob,
                "pmf": json.dumps(dict(zip(ids, d.pmf.round(6).tolist(), strict=False))),
            }
        )
    return pd.DataFrame(out)


def pyfunc_input_example(log: pd.DataFrame, offers: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The first ``n`` logged decisions as the pyfunc's input rows: the context's scalar fields,
    ``seen`` as JSON, the slot's ``candidates`` and a ``decision_id`` (so the draw is fixed).
    Logged with the model as its input example, and its signature is inferred from them."""
    by_slot = slot_candidates(offers)
    rows = []
    for i, r in enumerate(log.head(n).itertuples(index=False)):
        context = {k: v for k, v in r.context.items() if not isinstance(v, Mapping)}
        rows.append(
            {
                **context,
                "seen": json.dumps(dict(r.context.get("seen", {}))),
                "candidates": ",".join(str(o["offer_id"]) for o in by_slot[r.slot]),
                "decision_id": f"example-{i}",
            }
        )
    frame = pd.DataFrame(rows)
    # numbers as float: any of them may be missing in a request, and an int column in the
    # signature would then fail MLflow's schema check; a column of nulls only is numeric too
    numeric = [
        c
        for c in frame.columns
        if frame[c].isna().all()
        or (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
    ]
    return frame.astype({c: float for c in numeric})


def log_bandit(
    bandit: ContextualBandit,
    offers: pd.DataFrame,
    *,
    run_name: str = "bandit",
    metrics: Mapping[str, float] | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    experiment: str = "bandit",
    input_example: pd.DataFrame | None = None,
) -> str:
    """Log the bandit as an MLflow pyfunc run; returns the logged model's URI (``models:/m-<id>``).

    ``input_example`` (see :func:`pyfunc_input_example`): logged with the model, and the model's
    signature is inferred from it and the bandit's answer to it.
    """
    import mlflow
    from mlflow.models import infer_signature

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
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=run_name):
        tmp_dir = Path(tmp)
        model = bandit.save(tmp_dir / "model.vw")
        meta = tmp_dir / "meta.json"
        meta.write_text(
            json.dumps(
                {"spec": bandit.spec.to_dict(), "config": bandit.config.model_dump()}, indent=2
            )
        )
        offer_file = tmp_dir / "offers.json"
        cols = [c for c in ("offer_id", "slot", "product", "creative") if c in offers.columns]
        offers[cols].to_json(offer_file, orient="records")
        mlflow.log_params(
            {
                "exploration": bandit.config.exploration,
                "reward": bandit.config.reward,
                "n_learned": bandit.n_learned,
                "vw_args": bandit.config.vw_args(bandit.spec),
            }
        )
        if metrics:
            mlflow.log_metrics(dict(metrics))
        signature = None
        if input_example is not None:
            signature = infer_signature(input_example, predict_frame(bandit, offers, input_example))
        with quiet_cloudpickle_notice():  # the pickle is our wrapper only (see tracking)
            info = mlflow.pyfunc.log_model(
                name="bandit",
                python_model=_pyfunc_class()(),
                artifacts={"model": str(model), "meta": str(meta), "offers": str(offer_file)},
                signature=signature,
                input_example=input_example,
                pip_requirements=pinned_requirements("vowpalwabbit"),
                code_paths=project_code_paths(),  # loads without the repository (see tracking)
            )
        return info.model_uri  # models:/m-<id>: MLflow 3 logs models apart from run artifacts


def register_bandit(
    model_uri: str,
    name: str,
    score: float,
    score_champion: Callable[[str], float] | None,
    tracking_uri: str | None = None,
    description: str | None = None,
):
    """Register as ``challenger``; promote to ``champion`` only if it beats the current champion
    on the same held-out log (score = off-policy value estimate, higher is better).
    ``description`` goes on the version so the registry says what it is and how it scored."""
    from src.models.registry import register_and_promote

    return register_and_promote(
        model_uri,
        name,
        metric="ope_dr_value",
        candidate_score=score,
        score_champion=score_champion,
        higher_is_better=True,
        tracking_uri=tracking_uri,
        description=description,
    )
