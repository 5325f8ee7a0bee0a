"""Drift monitoring: is today's customer view still the population the champion was trained on?

Every propensity training run logs a seeded sample of its training rows (the raw customer-view
columns the model reads) as ``monitor/reference.parquet`` (:func:`log_reference`). ``nextoffer
monitor --as-of DATE`` builds the view as of DATE, scores it and that reference with the
champion, and compares the two with the **population stability index** per feature and per
product score (:func:`psi`). PSI is the usual credit-scoring yardstick: < 0.1 stable, 0.1-0.25
worth a look, > 0.25 shifted; the thresholds are settings (``monitor.psi_warn``,
``monitor.psi_alert``). The verdict is ``alert`` when any product's score shifts past
``psi_alert`` or more than ``monitor.max_feature_alert_share`` of the features do — one drifted
counter is a question for the data team, a drifted score is a model that no longer sees the
population it learned. A report (Markdown, CSV, plots) goes to ``reports/monitor/<as_of>/`` and
to an MLflow run in experiment ``monitor``; the CLI exits 3 on ``alert`` so cron can page.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.settings import MonitorSettings, Settings

REFERENCE_ARTIFACT = "monitor/reference.parquet"
EXPERIMENT = "monitor"
ALERT_EXIT_CODE = 3
"""``nextoffer monitor``'s exit code on drift (1 stays "the command failed")."""


class MonitorError(ValueError):
    """Monitoring cannot run (no champion, no reference); the message says what to do."""


# --- PSI ---------------------------------------------------------------------------------------
def _bins_numeric(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges at the reference's quantiles (ties merged): equal-mass bins."""
    finite = reference[np.isfinite(reference)]
    if len(finite) == 0:
        return np.array([])
    return np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def psi_from_shares(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """sum((a - e) * ln(a / e)) over bins; empty bins get ``eps`` so one new bin is finite."""
    e = np.clip(np.asarray(expected, float), eps, None)
    a = np.clip(np.asarray(actual, float), eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``.

    Numbers: ``bins`` equal-mass bins of the reference (edges at its quantiles), plus one bin for
    missing values. Anything else (strings, booleans, categories): one bin per value of either
    side, missing included. NaN when the reference is empty.
    """
    if len(reference) == 0:
        return float("nan")
    numeric = pd.api.types.is_numeric_dtype(reference) and not pd.api.types.is_bool_dtype(reference)
    if numeric:
        ref = pd.to_numeric(reference, errors="coerce").to_numpy(float, na_value=np.nan)
        cur = pd.to_numeric(current, errors="coerce").to_numpy(float, na_value=np.nan)
        edges = _bins_numeric(ref, bins)

        def counts(x: np.ndarray) -> np.ndarray:
            missing = ~np.isfinite(x)
            idx = np.searchsorted(edges, x[~missing], side="right")
            return np.append(np.bincount(idx, minlength=len(edges) + 1), missing.sum())

        return psi_from_shares(_shares(counts(ref)), _shares(counts(cur)))
    ref_s = reference.astype(object).where(reference.notna(), "<missing>").astype(str)
    cur_s = current.astype(object).where(current.notna(), "<missing>").astype(str)
    values = sorted(set(ref_s) | set(cur_s))
    e = ref_s.value_counts().reindex(values, fill_value=0).to_numpy()
    a = cur_s.value_counts().reindex(values, fill_value=0).to_numpy()
    return psi_from_shares(_shares(e), _shares(a))


def status_of(value: float, config: MonitorSettings) -> str:
    if math.isnan(value):
        return "n/a"
    return "alert" if value >= config.psi_alert else "warn" if value >= config.psi_warn else "ok"


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: list[str],
    config: MonitorSettings,
    kind: str = "feature",
) -> pd.DataFrame:
    """One row per column: PSI, status and the two means (numbers) or top values (others)."""
    rows = []
    for c in columns:
        value = psi(reference[c], current[c], config.bins)
        ref_mean = cur_mean = float("nan")
        if pd.api.types.is_numeric_dtype(reference[c]) and not pd.api.types.is_bool_dtype(
            reference[c]
        ):
            ref_mean = float(pd.to_numeric(reference[c], errors="coerce").mean())
            cur_mean = float(pd.to_numeric(current[c], errors="coerce").mean())
        rows.append(
            {
                "kind": kind,
                "column": c,
                "psi": value,
                "status": status_of(value, config),
                "reference_mean": ref_mean,
                "current_mean": cur_mean,
                "reference_missing": float(reference[c].isna().mean()),
                "current_missing": float(current[c].isna().mean()),
            }
        )
    return pd.DataFrame(rows)


@dataclass
class MonitorResult:
    as_of: str
    model: str
    version: str
    reference_run_id: str
    table: pd.DataFrame
    status: str
    reasons: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    run_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def summary(self) -> str:
        feats = self.table.loc[self.table["kind"] == "feature"]
        scores = self.table.loc[self.table["kind"] == "score"]
        worst = scores.sort_values("psi", ascending=False).head(1)
        worst_text = (
            f"worst score {worst['column'].iloc[0]} PSI {worst['psi'].iloc[0]:.3f}"
            if len(worst)
            else "no scores"
        )
        return (
            f"monitor {self.as_of}: {self.status.upper()} — {self.model} v{self.version}; "
            f"{(feats['status'] == 'alert').sum()} of {len(feats)} features past alert, "
            f"{(feats['status'] == 'warn').sum()} past warn; {worst_text}"
            + (f"; {'; '.join(self.reasons)}" if self.reasons else "")
        )


def verdict(table: pd.DataFrame, config: MonitorSettings) -> tuple[str, list[str]]:
    """``alert`` if a score or too many features are past ``psi_alert``; ``warn`` if anything
    is past ``psi_warn``; else ``ok``. The reasons name the columns."""
    scores = table.loc[table["kind"] == "score"]
    feats = table.loc[table["kind"] == "feature"]
    reasons = []
    bad_scores = scores.loc[scores["status"] == "alert", "column"].tolist()
    if bad_scores:
        reasons.append(f"scores past PSI {config.psi_alert:g}: {', '.join(bad_scores)}")
    bad_feats = feats.loc[feats["status"] == "alert"].sort_values("psi", ascending=False)
    share = len(bad_feats) / max(len(feats), 1)
    if share > config.max_feature_alert_share:
        reasons.append(
            f"{len(bad_feats)} features ({share:.0%} > {config.max_feature_alert_share:.0%}) past "
            f"PSI {config.psi_alert:g}: {', '.join(bad_feats['column'].head(5))}"
            + (" ..." if len(bad_feats) > 5 else "")
        )
    if reasons:
        return "alert", reasons
    return ("warn" if (table["status"] != "ok").any() else "ok"), []


# --- reference logged at training --------------------------------------------------------------
def log_reference(rows: pd.DataFrame, raw_columns: list[str], max_rows: int = 20_000) -> None:
    """Log a seeded sample of the training rows' model inputs as ``monitor/reference.parquet``
    in the active MLflow run: what monitoring compares the current view with. Scores are not
    stored: the champion re-scores the reference, so both sides use the same scorer."""
    import mlflow

    sample = rows[raw_columns]
    if len(sample) > max_rows:
        sample = sample.sample(max_rows, random_state=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        sample.reset_index(drop=True).to_parquet(path)
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))


def champion_reference(
    settings: Settings, model_name: str
) -> tuple[str, str, pd.DataFrame, dict[str, str]]:
    """(version, run id, reference rows, run params) of ``model_name``'s champion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from src.models.registry import CHAMPION, _client

    client = _client(settings.tracking_uri)
    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        raise MonitorError(
            f"monitor: model {model_name!r} has no champion in {settings.tracking_uri}: "
            "run `nextoffer retrain` first"
        ) from exc
    run_id = str(mv.run_id)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=REFERENCE_ARTIFACT,
                dst_path=tmp,
                tracking_uri=settings.tracking_uri,
            )
            reference = pd.read_parquet(local)
    except (MlflowException, OSError) as exc:
        raise MonitorError(
            f"monitor: run {run_id} of {model_name} v{mv.version} has no {REFERENCE_ARTIFACT} "
            "(trained before monitoring existed): retrain to log one"
        ) from exc
    params = client.get_run(run_id).data.params
    return str(mv.version), run_id, reference, params


# --- the job -----------------------------------------------------------------------------------
def score_frame(model: Any, rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The champion pyfunc's scores on raw rows, one ``score:<product>`` column each."""
    from src.models.tracking import serving_frame

    preds = pd.DataFrame(model.predict(serving_frame(rows, columns)))
    return preds.add_prefix("score:").reset_index(drop=True)


def run_monitor(
    settings: Settings,
    as_of: date | datetime | str,
    model_name: str | None = None,
    out_dir: Path | None = None,
    track: bool = True,
    current: pd.DataFrame | None = None,
) -> MonitorResult:
    """Compare the customer view as of ``as_of`` (or ``current``) and its champion scores with
    the champion's training reference; write the report, log it, return the verdict."""
    import mlflow

    from src.features.customer_view import build_customer_view

    config = settings.monitor
    model_name = model_name or config.model_name
    stamp = f"{pd.Timestamp(as_of):%Y-%m-%d}"
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    version, run_id, reference, params = champion_reference(settings, model_name)
    if current is None:
        current = build_customer_view(settings.catalog, pd.Timestamp(stamp))
        if "is_closed" in current:
            current = current.loc[~current["is_closed"].astype(bool)].reset_index(drop=True)
    columns = list(reference.columns)
    missing = [c for c in columns if c not in current.columns]
    if missing:
        raise MonitorError(
            f"monitor: the view as of {stamp} lacks the model's input columns: {missing[:5]}"
        )
    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    ref_scores = score_frame(model, reference, columns)
    cur_scores = score_frame(model, current, columns)
    table = pd.concat(
        [
            drift_table(reference, current, columns, config, "feature"),
            drift_table(ref_scores, cur_scores, list(ref_scores.columns), config, "score"),
        ],
        ignore_index=True,
    ).sort_values(["kind", "psi"], ascending=[False, False], ignore_index=True)
    status, reasons = verdict(table, config)
    result = MonitorResult(
        stamp,
        model_name,
        version,
        run_id,
        table,
        status,
        reasons,
        counts={"reference_rows": len(reference), "current_rows": len(current)},
    )
    result.figures = monitor_figures(table, ref_scores, cur_scores, config, stamp)
    out = Path(out_dir or settings.resolve(settings.reports_dir) / "monitor") / stamp
    write_report(result, out, params)
    if track:
        _track(result, settings, params)
    return result


def monitor_figures(
    table: pd.DataFrame,
    ref_scores: pd.DataFrame,
    cur_scores: pd.DataFrame,
    config: MonitorSettings,
    stamp: str,
    top: int = 20,
) -> dict[str, Any]:
    """PSI of the most shifted features (threshold lines) and each score's two histograms."""
    import matplotlib.pyplot as plt

    feats = table.loc[table["kind"] == "feature"].nlargest(top, "psi")[::-1]
    fig1, ax = plt.subplots(figsize=(7, 0.28 * len(feats) + 1.5))
    colors = feats["status"].map({"ok": "tab:green", "warn": "tab:orange", "alert": "tab:red"})
    ax.barh(feats["column"], feats["psi"], color=colors.fillna("grey").tolist())
    ax.axvline(config.psi_warn, color="tab:orange", ls=":", lw=1, label=f"warn {config.psi_warn}")
    ax.axvline(config.psi_alert, color="tab:red", ls="--", lw=1, label=f"alert {config.psi_alert}")
    ax.tick_params(axis="y", labelsize=7)
    ax.set(
        xlabel="PSI (current view vs training reference)",
        ylabel="feature",
        title=f"Most shifted features, as of {stamp}",
    )
    ax.legend(fontsize=8)
    fig1.tight_layout()

    cols = list(ref_scores.columns)
    n = max(len(cols), 1)
    width = min(3, n)
    height = int(np.ceil(n / width))
    fig2, axes = plt.subplots(height, width, figsize=(4 * width, 3 * height), squeeze=False)
    psis = table.loc[table["kind"] == "score"].set_index("column")["psi"]
    for ax2, c in zip(axes.flat, cols, strict=False):
        edges = np.quantile(ref_scores[c], np.linspace(0, 1, 21))
        edges = np.unique(np.concatenate([edges, [cur_scores[c].min(), cur_scores[c].max()]]))
        ax2.hist(ref_scores[c], bins=edges, density=True, alpha=0.5, label="training reference")
        ax2.hist(cur_scores[c], bins=edges, density=True, alpha=0.5, label=f"view {stamp}")
        ax2.set(
            title=f"{c.removeprefix('score:')} (PSI {psis.get(c, float('nan')):.3f})",
            xlabel="predicted probability",
            ylabel="density",
        )
    for ax2 in axes.flat[len(cols) :]:
        ax2.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig2.suptitle("Score distributions: training reference vs current view")
    fig2.tight_layout()
    return {"feature_psi": fig1, "score_distributions": fig2}


def report_markdown(result: MonitorResult, params: dict[str, str]) -> str:
    from src.models.model_card import markdown_table

    t = result.table
    scores = t.loc[t["kind"] == "score"].drop(columns="kind").set_index("column")
    feats = t.loc[t["kind"] == "feature"].drop(columns="kind").set_index("column")
    lines = [
        f"# Drift monitor — {result.as_of}: {result.status.upper()}",
        "",
        f"Champion {result.model} v{result.version} (run `{result.reference_run_id}`, trained "
        f"for as_of {params.get('as_of', '?')}, data {params.get('data_window_start', '?')} to "
        f"{params.get('data_window_end', '?')}). Reference: {result.counts['reference_rows']:,} "
        f"training rows; current: {result.counts['current_rows']:,} customers.",
        "",
        *(f"- {r}" for r in result.reasons),
        "",
        "## Scores",
        "",
        markdown_table(scores),
        "",
        "## Features (most shifted first)",
        "",
        markdown_table(feats.head(30)),
        "",
        f"{(feats['status'] == 'alert').sum()} alert, {(feats['status'] == 'warn').sum()} warn, "
        f"{(feats['status'] == 'ok').sum()} ok; every feature in `psi.csv`.",
        "",
        "![most shifted features](feature_psi.png)",
        "",
        "![score distributions](score_distributions.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(result: MonitorResult, out: Path, params: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "psi.csv", index=False)
    for name, fig in result.figures.items():
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    (out / "monitor.md").write_text(report_markdown(result, params))
    result.out_dir = out


def _track(result: MonitorResult, settings: Settings, params: dict[str, str]) -> None:
    import mlflow

    from src.models.tracking import configure_mlflow

    experiment_id = configure_mlflow(settings, EXPERIMENT)
    t = result.table
    feats = t.loc[t["kind"] == "feature"]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor {result.as_of}") as run:
        mlflow.log_params(
            {
                "as_of": result.as_of,
                "model": result.model,
                "model_version": result.version,
                "reference_run_id": result.reference_run_id,
                "reference_as_of": params.get("as_of", ""),
                "psi_warn": settings.monitor.psi_warn,
                "psi_alert": settings.monitor.psi_alert,
                "max_feature_alert_share": settings.monitor.max_feature_alert_share,
                **result.counts,
            }
        )
        metrics = {
            f"psi.{r.column.replace(':', '.')}": float(r.psi)
            for r in t.itertuples()
            if np.isfinite(r.psi)
        }
        metrics.update(
            {
                "max_feature_psi": float(feats["psi"].max()) if len(feats) else float("nan"),
                "features_alert": float((feats["status"] == "alert").sum()),
                "features_warn": float((feats["status"] == "warn").sum()),
            }
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.set_tags({"status": result.status, "reasons": "; ".join(result.reasons)[:5000]})
        if result.out_dir is not None:
            mlflow.log_artifacts(str(result.out_dir), "report")
        result.run_id = run.info.run_id
