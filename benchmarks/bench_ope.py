"""Off-policy evaluation and bandit training on a generic decision log (no bank).

OPE: a generated log of ``rows`` decisions over ``actions`` candidate offers (softmax logging,
a rare click, a categorical and a numeric context column, customers as clusters). Each step runs
in a fresh (spawned) process that reads the log from Parquet, so its peak resident memory is its
own; ``read only`` is the same process reading the log and nothing else, the floor every other
step starts from. Steps: IPS/SNIPS + diagnostics for uniform and a constant policy
(``--no-reward-model``), the same with a per-decision probability file (long format), and the
full report with the cross-fitted reward model (DM, DR, SNDR, DR-OS). The baseline in the same
run is the closed-form numpy IPS/SNIPS on arrays already in memory: the price of the checks,
explicit candidates and diagnostics.

Training: :class:`src.models.bandit_log.LogBandit` on a generic log (context, 2 action
features, a per-candidate affinity), examples/s end to end vs VW alone on pre-formatted text.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import NO_BANK, Report


def make_log(rows: int, actions: int, seed: int = 0, rate: float = 0.005) -> pd.DataFrame:
    """A log over ``actions`` candidates per decision; logging softmax over offer scores."""
    rng = np.random.default_rng(seed)
    offers = np.array([f"O{i:03d}" for i in range(actions)])
    logit = rng.normal(0, 1, actions)
    p = np.exp(logit) / np.exp(logit).sum()
    a = rng.choice(actions, rows, p=p)
    segment = rng.integers(0, 5, rows)
    lift = 1 + 0.5 * (a % 5 == segment)
    reward = (rng.random(rows) < rate * lift).astype(np.float64)
    return pd.DataFrame(
        {
            "decision_id": np.char.add("d", np.arange(rows).astype(str)),
            "customer_id": np.char.add("c", (np.arange(rows) % max(rows // 10, 1)).astype(str)),
            "segment": np.array(["s0", "s1", "s2", "s3", "s4"])[segment],
            "tenure": rng.integers(0, 120, rows).astype(float),
            "slot": "home",
            "action": offers[a],
            "prob": p[a],
            "reward": reward,
        }
    )


def _child(step: str, log: str, catalog: str, policy_file: str, queue: Any) -> None:
    from src.models import ope_log

    start = time.perf_counter()
    frame = pd.read_parquet(log)
    read = time.perf_counter() - start
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    if step == "ips_snips":
        rep = ope_log.evaluate(
            frame, ["uniform", "constant:O000"], candidates=catalog, reward_model=False
        )
        out["ess_share_constant"] = float(rep.diagnostics["ess_share"].iloc[1])
    elif step == "policy_file":
        ope_log.evaluate(
            frame, {"file": f"file:{policy_file}"}, candidates=catalog, reward_model=False
        )
    elif step == "reward_model":
        rep = ope_log.evaluate(
            frame, ["uniform"], candidates=catalog, context=["segment", "tenure"]
        )
        out["dr_uniform"] = float(rep.estimates.set_index("estimator").loc["dr", "value"])
    out.update(
        seconds=time.perf_counter() - t0,
        read_seconds=read,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    queue.put(out)


def _measure(step: str, log: Path, catalog: Path, policy_file: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(step, str(log), str(catalog), str(policy_file), queue))
    proc.start()
    out = queue.get()
    proc.join()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def closed_form(frame: pd.DataFrame, actions: int) -> float:
    """The baseline: uniform IPS and SNIPS with numpy on arrays in memory (seconds)."""
    t0 = time.perf_counter()
    w = (1.0 / actions) / frame["prob"].to_numpy()
    r = frame["reward"].to_numpy()
    _ = (w * r).mean(), (w * r).sum() / w.sum()
    return time.perf_counter() - t0


def training(rows: int, candidates: int, seed: int = 0) -> dict[str, Any]:
    """LogBandit examples/s end to end vs VW alone on the same pre-formatted examples."""
    from src.models.bandit import BanditConfig
    from src.models.bandit_log import ActionCatalog, LogBandit, LogBanditSpec, train_from_log
    from src.models.decision_log import build_log
    from src.models.ope import validate_log

    rng = np.random.default_rng(seed)
    offers = [f"A{i}" for i in range(candidates)]
    feats = pd.DataFrame(
        {"price": rng.uniform(1, 100, candidates), "kind": rng.choice(["x", "y", "z"], candidates)},
        index=pd.Index(offers, name="offer_id"),
    )
    frame = make_log(rows, candidates, seed=seed, rate=0.05)
    frame["action"] = frame["action"].map(
        dict(zip(sorted(frame["action"].unique()), offers, strict=False))
    )
    frame["affinity"] = [
        json.dumps(
            {o: round(float(v), 3) for o, v in zip(offers, rng.random(candidates), strict=True)}
        )
        for _ in range(rows)
    ]
    frame["candidates"] = ",".join(offers)
    dlog = build_log(validate_log(frame), name="generic")
    spec = LogBanditSpec(("tenure",), ("segment",), ("price",), ("kind",), ("affinity",))
    catalog = ActionCatalog(feats)
    bandit = LogBandit(BanditConfig(seed=seed), spec, catalog)
    t0 = time.perf_counter()
    train_from_log(bandit, dlog)
    end_to_end = time.perf_counter() - t0
    rows_ = dlog.frame[["tenure", "segment", "affinity"]].to_dict("records")
    cands = dlog.candidates()
    texts = [
        bandit.example(
            rows_[i],
            cands[i],
            label=(int(dlog.action[i]), float(dlog.reward[i]), float(dlog.prob[i])),
        )
        for i in range(dlog.n)
    ]
    vw_only = LogBandit(BanditConfig(seed=seed), spec, catalog)
    t0 = time.perf_counter()
    for lines in texts:
        vw_only.vw.learn(lines)
    vw_seconds = time.perf_counter() - t0
    return {
        "train_rows": rows,
        "train_candidates": candidates,
        "train_examples_per_s": round(rows / end_to_end),
        "train_vw_only_examples_per_s": round(rows / vw_seconds),
        "vw_share_of_training": round(vw_seconds / end_to_end, 3),
        "vw_args": bandit.vw_args(),
    }


def run(
    rows: int = 1_000_000,
    actions: int = 80,
    train_rows: int = 50_000,
    train_candidates: int = 20,
    seed: int = 0,
    reward_model: bool = True,
    work: Path | None = None,
) -> Report:
    """OPE steps on a ``rows`` x ``actions`` log and bandit training on ``train_rows``."""
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp_dir = Path(tmp)
        frame = make_log(rows, actions, seed=seed)
        log, catalog, policy = (
            tmp_dir / "log.parquet",
            tmp_dir / "catalog.csv",
            tmp_dir / "p.parquet",
        )
        frame.to_parquet(log, index=False)
        pd.DataFrame({"slot": "home", "offer_id": [f"O{i:03d}" for i in range(actions)]}).to_csv(
            catalog, index=False
        )
        # a target policy file (long): each decision, its segment's favourite 3 offers
        fav = np.array([[f"O{(s * 7 + j) % actions:03d}" for j in range(3)] for s in range(5)])
        seg = frame["segment"].str[1:].astype(int).to_numpy()
        pd.DataFrame(
            {
                "decision_id": np.repeat(frame["decision_id"].to_numpy(), 3),
                "action": fav[seg].ravel(),
                "prob": np.tile([0.5, 0.3, 0.2], rows),
            }
        ).to_parquet(policy, index=False)
        baseline = closed_form(frame, actions)
        steps = {"read_only": None, "ips_snips": None, "policy_file": None}
        if reward_model:
            steps["reward_model"] = None
        measured = {name: _measure(name, log, catalog, policy) for name in steps}
        rewards = int(frame["reward"].sum())
        del frame
    results: dict[str, Any] = {
        "rows": rows,
        "actions": actions,
        "rewards": rewards,
        "closed_form_ips_snips_s": round(baseline, 4),
        "steps": measured,
        "ips_snips_vs_closed_form": round(
            measured["ips_snips"]["seconds"] / max(baseline, 1e-9), 1
        ),
    }
    results.update(training(train_rows, train_candidates, seed=seed))
    params = {
        "bank": NO_BANK,
        "rows": rows,
        "actions": actions,
        "train_rows": train_rows,
        "train_candidates": train_candidates,
        "seed": seed,
        "reward_model": reward_model,
        "log": "generated (bench_ope.make_log): softmax logging over actions, ~0.5 % reward, "
        "5 segments, 1 numeric context column, 10 decisions per customer",
    }
    return Report(params, results, notes(results))


def notes(r: dict[str, Any]) -> list[str]:
    s = r["steps"]
    out = [
        f"OPE on {r['rows']:,} decisions x {r['actions']} candidates: IPS/SNIPS + diagnostics for "
        f"two policies {s['ips_snips']['seconds']:.1f} s (peak {s['ips_snips']['peak_rss_mb']:,.0f} MB "
        f"vs {s['read_only']['peak_rss_mb']:,.0f} MB for reading the log alone); the closed-form "
        f"numpy IPS/SNIPS on arrays in memory {r['closed_form_ips_snips_s']:.3f} s",
        f"a per-decision probability file: {s['policy_file']['seconds']:.1f} s "
        f"(peak {s['policy_file']['peak_rss_mb']:,.0f} MB)",
    ]
    if "reward_model" in s:
        out.append(
            f"with the cross-fitted reward model (DM, DR, SNDR, DR-OS): "
            f"{s['reward_model']['seconds']:.1f} s (peak {s['reward_model']['peak_rss_mb']:,.0f} MB)"
        )
    out.append(
        f"bandit training on a generic log ({r['train_rows']:,} decisions x "
        f"{r['train_candidates']} candidates): {r['train_examples_per_s']:,} examples/s end to end, "
        f"{r['train_vw_only_examples_per_s']:,} in VW alone ({100 * r['vw_share_of_training']:.0f} % "
        "of the time)"
    )
    return out


if __name__ == "__main__":  # a quick run: python -m benchmarks.bench_ope
    print(json.dumps(run(rows=20_000, train_rows=2_000).results, indent=2, default=str))
