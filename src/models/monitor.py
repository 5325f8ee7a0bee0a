"""Drift monitoring: is today's customer view still the population the champion was validated on?

Every propensity training run logs a seeded sample of its **test snapshot** (the raw
customer-view columns the model reads, on the latest labelled as_of date of its plan) as
``monitor/reference.parquet``, with ``monitor/reference.json`` saying which snapshot that is and
when the bank's history starts (:func:`log_reference`). ``nextoffer monitor --as-of DATE`` builds
the view as of DATE, scores it and that reference with the champion, and compares the two with
the **population stability index** per feature and per product score (:func:`psi`).

PSI is the usual credit-scoring yardstick: < 0.1 stable, 0.1-0.25 worth a look, > 0.25 shifted;
the thresholds are settings (``monitor.psi_warn``, ``monitor.psi_alert``). The verdict is
``alert`` when any product's score shifts past ``psi_alert`` or more than
``monitor.max_feature_alert_share`` of the counted features do — one drifted counter is a
question for the data team, a drifted score is a model that no longer sees the population it was
validated on. A report (Markdown, CSV, plots) goes to ``reports/monitor/<as_of>/`` and to an
MLflow run in experiment ``monitor``; the CLI exits 3 on ``alert`` so cron can page.

Why the test snapshot and not the pooled training rows (the reference until this was measured):
the training snapshots are the plan's earliest dates, so on a young bank their 30- and 90-day
windows hold a fraction of the window (on the 2k x 60-day demo bank the one training snapshot
had 18 days of history). Compared with them, the view on the retraining day itself alerted: 35
of 188 features and the savings (PSI 0.78) and fx (0.45) scores past 0.25 — every day, after
every retrain, so the alert meant nothing. The test snapshot is the newest view the plan has
(42 days of history on the demo bank), it is the population the champion's held-out AUC and its
promotion were measured on (so "no drift" means "the card's metrics still describe today"), and
it holds every customer. Against it the same view gives scores <= 0.05 and 10 features past
0.25, 7 of them 90-day windows (WARN).

**History truncation.** A feature with a window of W days on a snapshot with h < W days of
history holds min(W, h) days of events; when that differs between the reference and the current
view, its PSI measures the bank's age, not drift. Those features (windows from the SQL's own
constants, via :mod:`src.features.data_dictionary`) are reported in their own section and do not
count toward the verdict, with one exception: a count, amount or duration can only grow with
more history, so one that is past ``psi_alert`` and moved the other way (e.g. lower today with
more history) is drift truncation cannot explain, and it counts. Nothing is hidden otherwise:
each truncated feature's source is still watched through its 7-day sibling (every windowed stem
exists at every window), the scores always count, and the report lists the features the
champion learned from truncated windows, with the date from which a retrain sees full windows.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src.settings import MonitorSettings, Settings

REFERENCE_ARTIFACT = "monitor/reference.parquet"
REFERENCE_META = "monitor/reference.json"
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


# --- history truncation ------------------------------------------------------------------------
_WINDOW = re.compile(r"last (\d+) days before T")
_GROWS_WITH_HISTORY = ("count", "KRW", "seconds")
"""Units (data dictionary) of windowed sums: more days of history can only make them larger."""


def feature_windows(columns: list[str]) -> dict[str, tuple[int, bool]]:
    """``column -> (window in days, grows with history)`` for the windowed view columns among
    ``columns``, read off the data dictionary (the SQL's own ``WINDOWS``), not guessed from
    names here. Columns over "all history" (``days_since_last_*``) are left out on purpose:
    for anyone active their value comes from recent events, and calling them truncated on every
    bank younger than its oldest customer would hide them for good."""
    from src.features.data_dictionary import dictionary_rows

    wanted = set(columns)
    out = {}
    for doc in dictionary_rows():
        m = _WINDOW.fullmatch(doc.window)
        if m and doc.column in wanted:
            out[doc.column] = (int(m[1]), doc.unit.startswith(_GROWS_WITH_HISTORY))
    return out


def mark_truncation(
    table: pd.DataFrame,
    windows: dict[str, tuple[int, bool]],
    reference_history: int | None,
    current_history: int | None,
) -> pd.DataFrame:
    """``table`` with ``window_days``, ``truncated`` and ``counted`` columns.

    A feature is truncated when its effective window, min(window, days of history), differs
    between the reference snapshot and the current view: its PSI then measures how old the bank
    is. It is not ``counted`` toward the verdict unless it is a windowed sum past ``alert``
    whose mean moved against the history (lower with more days to sum over): truncation cannot
    explain that, a broken feed can. Unknown history (a legacy reference): nothing truncated.
    """
    out = table.copy()
    out["window_days"] = [float(windows[c][0]) if c in windows else np.nan for c in out["column"]]
    out["truncated"] = False
    out["counted"] = True
    if reference_history is None or current_history is None:
        return out
    for i, row in out.iterrows():
        if row["kind"] != "feature" or row["column"] not in windows:
            continue
        window, grows = windows[row["column"]]
        ref_days = min(window, max(reference_history, 0))
        cur_days = min(window, max(current_history, 0))
        if ref_days == cur_days:
            continue
        out.at[i, "truncated"] = True
        moved = np.sign(row["current_mean"] - row["reference_mean"])
        against = grows and row["status"] == "alert" and moved == -np.sign(cur_days - ref_days)
        out.at[i, "counted"] = bool(against)
    return out


def full_window_retrain_date(
    data_start: pd.Timestamp, longest: int, settings: Settings
) -> pd.Timestamp | None:
    """The first retraining as_of whose earliest training snapshot has ``longest`` days of
    history (the plan as :func:`src.features.feature_table.plan_as_of_dates` would cut it with
    the ``models`` settings): from then on the champion learns every window in full."""
    from src.features.feature_table import TooShortForTimeSplit, plan_as_of_dates

    day = pd.Timedelta(days=1)
    for n in range(longest, longest + 2 * 366):
        try:
            plan = plan_as_of_dates(
                data_start,
                data_start + n * day,
                window_days=settings.models.window_days,
                embargo=settings.models.embargo,
            )
        except TooShortForTimeSplit:
            continue
        if (min(plan.train) - data_start).days >= longest:
            return data_start + n * day
    return None


@dataclass(frozen=True)
class ReferenceInfo:
    """What the reference rows are (``monitor/reference.json``): the snapshot they were taken
    on, the first day of the bank's data, the training snapshots. A reference logged before the
    JSON existed is the pooled training rows, with no dates (``legacy``)."""

    kind: str
    snapshot: str | None = None
    data_start: str | None = None
    train_snapshots: tuple[str, ...] = ()
    snapshot_rows: int | None = None

    @property
    def legacy(self) -> bool:
        return self.snapshot is None

    def history_days(self, day: str | pd.Timestamp | None) -> int | None:
        """Days of data before ``day`` (None when the data start is unknown)."""
        if self.data_start is None or day is None:
            return None
        return int((pd.Timestamp(day).normalize() - pd.Timestamp(self.data_start)).days)

    @property
    def train_history(self) -> int | None:
        """Days of history at the earliest training snapshot."""
        days = [self.history_days(d) for d in self.train_snapshots]
        return min((d for d in days if d is not None), default=None)


LEGACY_REFERENCE = ReferenceInfo("pooled training rows (logged before monitor/reference.json)")


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
    reference: ReferenceInfo = LEGACY_REFERENCE
    learned_truncated: dict[int, list[str]] = field(default_factory=dict)
    """Window -> features the champion learned with less history than that window."""
    full_window_retrain: str | None = None

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def summary(self) -> str:
        t = self.table
        counted = t["counted"].astype(bool) if "counted" in t else pd.Series(True, index=t.index)
        feats = t.loc[(t["kind"] == "feature") & counted]
        truncated = t.loc[(t["kind"] == "feature") & ~counted]
        scores = t.loc[t["kind"] == "score"]
        worst = scores.sort_values("psi", ascending=False).head(1)
        worst_text = (
            f"worst score {worst['column'].iloc[0]} PSI {worst['psi'].iloc[0]:.3f}"
            if len(worst)
            else "no scores"
        )
        return (
            f"monitor {self.as_of}: {self.status.upper()} — {self.model} v{self.version}; "
            f"{(feats['status'] == 'alert').sum()} of {len(feats)} features past alert, "
            f"{(feats['status'] == 'warn').sum()} past warn"
            + (
                f" ({len(truncated)} history-truncated not counted, "
                f"{(truncated['status'] == 'alert').sum()} of them past alert)"
                if len(truncated)
                else ""
            )
            + f"; {worst_text}"
            + (f"; {'; '.join(self.reasons)}" if self.reasons else "")
        )


def verdict(table: pd.DataFrame, config: MonitorSettings) -> tuple[str, list[str]]:
    """``alert`` if a score or too many features are past ``psi_alert``; ``warn`` if anything
    is past ``psi_warn``; else ``ok``. The reasons name the columns. Rows whose ``counted`` is
    False (history-truncated, :func:`mark_truncation`) are left out of both."""
    if "counted" in table:  # history-truncated features the verdict does not count
        table = table.loc[table["counted"].astype(bool)]
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
def log_reference(
    rows: pd.DataFrame,
    raw_columns: list[str],
    snapshot: str | None = None,
    data_start: str | None = None,
    train_snapshots: list[str] | tuple[str, ...] = (),
    max_rows: int = 20_000,
) -> None:
    """Log a seeded sample of the model inputs on ``snapshot`` (the run's test date: why, in
    the module docstring) as ``monitor/reference.parquet`` in the active MLflow run, and
    ``monitor/reference.json`` with the snapshot, the data start and the training snapshots, so
    the monitor knows how much history each window had. ``rows`` with an ``as_of`` column are
    cut to ``snapshot``. Scores are not stored: the champion re-scores the reference, so both
    sides use the same scorer."""
    import mlflow

    if snapshot is not None and "as_of" in rows:
        rows = rows.loc[pd.to_datetime(rows["as_of"]) == pd.Timestamp(snapshot)]
        if rows.empty:
            raise ValueError(f"log_reference: no rows with as_of {snapshot}")
    sample = rows[raw_columns]
    if len(sample) > max_rows:
        sample = sample.sample(max_rows, random_state=0)
    meta = {
        "kind": "test snapshot" if snapshot else "training rows",
        "snapshot": snapshot,
        "data_start": data_start,
        "train_snapshots": list(train_snapshots),
        "snapshot_rows": len(rows),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
        sample.reset_index(drop=True).to_parquet(path)
        (Path(tmp) / Path(REFERENCE_META).name).write_text(json.dumps(meta, indent=2) + "\n")
        mlflow.log_artifact(str(path), str(Path(REFERENCE_ARTIFACT).parent))
        mlflow.log_artifact(str(Path(tmp) / Path(REFERENCE_META).name), "monitor")


def champion_reference(
    settings: Settings, model_name: str
) -> tuple[str, str, pd.DataFrame, dict[str, str], ReferenceInfo]:
    """(version, run id, reference rows, run params, what the reference is) of ``model_name``'s
    champion."""
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
    info = LEGACY_REFERENCE
    try:
        meta = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{REFERENCE_META}"))
        info = ReferenceInfo(
            kind=str(meta.get("kind", "")),
            snapshot=meta.get("snapshot"),
            data_start=meta.get("data_start"),
            train_snapshots=tuple(meta.get("train_snapshots") or ()),
            snapshot_rows=meta.get("snapshot_rows"),
        )
    except (MlflowException, OSError, ValueError):
        pass  # a reference from before the JSON: pooled training rows, no truncation analysis
    params = client.get_run(run_id).data.params
    return str(mv.version), run_id, reference, params, info


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
    version, run_id, reference, params, info = champion_reference(settings, model_name)
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
    windows = feature_windows(columns)
    table = mark_truncation(
        table, windows, info.history_days(info.snapshot), info.history_days(stamp)
    )
    status, reasons = verdict(table, config)
    result = MonitorResult(
        stamp,
        model_name,
        version,
        run_id,
        table,
        status,
        reasons,
        counts={
            "reference_rows": len(reference),
            "current_rows": len(current),
            "features_truncated": int(table["truncated"].sum()),
            "features_not_counted": int((~table["counted"].astype(bool)).sum()),
        },
        reference=info,
    )
    learned_at = info.train_history
    if learned_at is not None and info.data_start is not None:
        short = {c: w for c, (w, _) in windows.items() if w > learned_at}
        result.learned_truncated = {
            w: sorted(c for c, cw in short.items() if cw == w) for w in sorted(set(short.values()))
        }
        if short:
            when = full_window_retrain_date(
                pd.Timestamp(info.data_start), max(short.values()), settings
            )
            result.full_window_retrain = None if when is None else f"{when:%Y-%m-%d}"
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
    if "counted" in feats:  # history-truncated, not counted toward the verdict
        colors = colors.where(feats["counted"].astype(bool), "tab:gray")
    ax.barh(feats["column"], feats["psi"], color=colors.fillna("tab:gray").tolist())
    ax.axvline(config.psi_warn, color="tab:orange", ls=":", lw=1, label=f"warn {config.psi_warn}")
    ax.axvline(config.psi_alert, color="tab:red", ls="--", lw=1, label=f"alert {config.psi_alert}")
    ax.tick_params(axis="y", labelsize=7)
    ax.set(
        xlabel="PSI (current view vs reference snapshot)",
        ylabel="feature",
        title=f"Most shifted features, as of {stamp} (grey: history-truncated, not counted)",
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
        ax2.hist(ref_scores[c], bins=edges, density=True, alpha=0.5, label="reference snapshot")
        ax2.hist(cur_scores[c], bins=edges, density=True, alpha=0.5, label=f"view {stamp}")
        ax2.set(
            title=f"{c.removeprefix('score:')} (PSI {psis.get(c, float('nan')):.3f})",
            xlabel="predicted probability",
            ylabel="density",
        )
    for ax2 in axes.flat[len(cols) :]:
        ax2.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig2.suptitle("Score distributions: reference snapshot vs current view")
    fig2.tight_layout()
    return {"feature_psi": fig1, "score_distributions": fig2}


def report_markdown(result: MonitorResult, params: dict[str, str]) -> str:
    from src.models.model_card import markdown_table

    t = result.table
    info = result.reference
    counted = t["counted"].astype(bool) if "counted" in t else pd.Series(True, index=t.index)
    scores = (
        t.loc[t["kind"] == "score"]
        .drop(columns=["kind", "window_days", "truncated", "counted"], errors="ignore")
        .set_index("column")
    )
    feature_rows = t.loc[(t["kind"] == "feature") & counted]
    feats = feature_rows.drop(columns="kind").set_index("column")
    cut = t.loc[(t["kind"] == "feature") & ~counted].drop(columns="kind").set_index("column")
    if info.legacy:
        reference_text = (
            f"Reference: {result.counts['reference_rows']:,} pooled training rows (logged before "
            "`monitor/reference.json`: no history analysis; retrain to log the test snapshot)"
        )
    else:
        reference_text = (
            f"Reference: {result.counts['reference_rows']:,} rows of the {info.kind} "
            f"{info.snapshot} ({info.history_days(info.snapshot)} days of history since "
            f"{info.data_start})"
        )
    lines = [
        f"# Drift monitor — {result.as_of}: {result.status.upper()}",
        "",
        f"Champion {result.model} v{result.version} (run `{result.reference_run_id}`, trained "
        f"for as_of {params.get('as_of', '?')}, data {params.get('data_window_start', '?')} to "
        f"{params.get('data_window_end', '?')}). {reference_text}; current: "
        f"{result.counts['current_rows']:,} customers"
        + (
            f" ({info.history_days(result.as_of)} days of history)."
            if info.data_start is not None
            else "."
        ),
        "",
        *(f"- {r}" for r in result.reasons),
        "",
        "## Scores",
        "",
        markdown_table(scores),
        "",
        "## Features counted toward the verdict (most shifted first)",
        "",
        markdown_table(feats.head(30)),
        "",
        f"{(feats['status'] == 'alert').sum()} alert, {(feats['status'] == 'warn').sum()} warn, "
        f"{(feats['status'] == 'ok').sum()} ok; every feature in `psi.csv`.",
        "",
    ]
    if len(cut):
        lines += [
            "## History-truncated features (not counted)",
            "",
            f"Their window is longer than the history at the reference snapshot "
            f"({info.history_days(info.snapshot)} days) or today "
            f"({info.history_days(result.as_of)} days) and the two differ, so their PSI "
            "measures the bank's age, not drift. A windowed count or amount past alert that is "
            "lower today despite more history is not explained by that and is counted above. "
            "Their sources are still watched through the 7-day columns.",
            "",
            markdown_table(cut.head(30)),
            "",
            f"{len(cut)} features, {(cut['status'] == 'alert').sum()} past alert.",
            "",
        ]
    if result.learned_truncated:
        learned = info.train_history
        lines += [
            "## Learned from truncated windows",
            "",
            f"The earliest training snapshot ({min(info.train_snapshots)}) had {learned} days "
            "of history, so the champion learned these windows from fewer days than they "
            "cover in serving (a train/serve skew in its inputs, not drift): "
            + "; ".join(
                f"{w}-day windows: {len(cols)} features"
                for w, cols in result.learned_truncated.items()
            )
            + ". Retrain when history allows"
            + (
                f": from as_of {result.full_window_retrain} the earliest training snapshot has "
                f"{max(result.learned_truncated)} days of history."
                if result.full_window_retrain
                else "."
            ),
            "",
        ]
    lines += [
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
    counted = t["counted"].astype(bool) if "counted" in t else pd.Series(True, index=t.index)
    feats = t.loc[(t["kind"] == "feature") & counted]
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor {result.as_of}") as run:
        mlflow.log_params(
            {
                "as_of": result.as_of,
                "model": result.model,
                "model_version": result.version,
                "reference_run_id": result.reference_run_id,
                "reference_as_of": params.get("as_of", ""),
                "reference_kind": result.reference.kind,
                "reference_snapshot": result.reference.snapshot or "",
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
