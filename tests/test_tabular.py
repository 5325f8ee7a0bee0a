"""``nextoffer train-table``: any table, options instead of dataset quirks, errors that name columns."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from src.cli import app
from src.models.propensity import PropensityConfig
from src.models.tabular import (
    TableEncoder,
    TableError,
    TableSpec,
    evaluate_table,
    parse_columns,
    parse_missing,
    prepare,
    read_table,
    sniff_separator,
    target_vector,
)

FAST = PropensityConfig(n_estimators=60, min_child_samples=20, early_stopping_rounds=10)


def campaign(n: int = 600, seed: int = 3) -> pd.DataFrame:
    """A small campaign table: a date column (rows shuffled), numeric and text inputs, a
    ``pdays`` with the 999 "never contacted" sentinel, a leaking ``duration``, yes/no outcome."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    segment = rng.choice(["retail", "premium", "student"], n)
    contacted = rng.random(n) < 0.3
    pdays = np.where(contacted, rng.integers(0, 30, n), 999)
    logit = -2.2 + 0.03 * (age - 45) + 1.2 * (segment == "premium") + 1.0 * contacted
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "signup_date": pd.Timestamp("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 365, n), unit="D"),
            "age": age,
            "segment": segment,
            "pdays": pdays,
            "duration": np.where(y, 400, 100) + rng.integers(0, 50, n),
            "outcome": np.where(y, "yes", "no"),
        }
    )


@pytest.fixture(scope="module")
def campaign_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("table") / "campaign.csv"
    frame = campaign()
    frame["signup_date"] = frame["signup_date"].dt.strftime("%Y-%m-%d")
    frame.to_csv(path, sep=";", index=False)
    return path


def test_train_table_command_reports_aucs_and_tracks_the_run(campaign_csv: Path):
    import mlflow

    args = [
        "train-table",
        str(campaign_csv),
        "--target",
        "outcome",
        "--drop",
        "duration",
        "--missing-value",
        "pdays=999",
        "--time-col",
        "signup_date",
        "--drift-cols",
        "age",
        "--folds",
        "3",
        "--register",
        "table-cli-test",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "lightgbm" in out and "logreg" in out
    assert re.search(r"cv \(3-fold, stratified\)\s+0\.\d{3} ± 0\.\d{3}", out)
    assert "time split (by 'signup_date')" in out
    assert "missing value pdays=999" in out and "dropped duration" in out
    assert "registered table-cli-test v1: no champion yet" in out

    run_id = re.search(r"mlflow run (\w+)", out).group(1)
    run = mlflow.MlflowClient().get_run(run_id)
    params, metrics = run.data.params, run.data.metrics
    assert params["target"] == "outcome" and params["drop"] == "duration"
    assert params["missing_values"] == "pdays=999" and params["time_col"] == "signup_date"
    assert params["rows"] == "600" and params["file"].endswith("campaign.csv")
    assert 0 < float(params["positive_rate"]) < 1
    assert params["missing_value_rows"].startswith("pdays=999:")
    for key in ("cv_auc.lightgbm.mean", "cv_auc.lightgbm.std", "cv_auc.logreg.mean"):
        assert key in metrics
    assert 0.6 < metrics["cv_auc.lightgbm.mean"] <= 1  # the generated signal is learnable
    assert "time_split_auc.lightgbm" in metrics and "time_split_auc.logreg" in metrics
    version = mlflow.MlflowClient().get_model_version_by_alias("table-cli-test", "champion")
    assert version.run_id == run_id


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--drop", "no_such_column"),
        ("--missing-value", "no_such_column=1"),
        ("--time-col", "no_such_column"),
    ],
)
def test_a_named_column_missing_from_the_file_is_an_error_naming_it(
    campaign_csv: Path, option: str, value: str
):
    args = ["train-table", str(campaign_csv), "--target", "outcome", option, value, "--no-track"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert f"no column 'no_such_column' ({option})" in result.output
    assert "its columns are: signup_date, age, segment, pdays, duration, outcome" in result.output


def test_missing_target_and_drift_columns_are_errors_too():
    frame = campaign(50)
    with pytest.raises(TableError, match=r"no column 'y' \(--target\)"):
        prepare(frame, TableSpec(target="y"))
    spec = TableSpec(target="outcome", time_col="signup_date", drift_cols=("euribor3m",))
    with pytest.raises(TableError, match=r"no column 'euribor3m' \(--drift-cols\)"):
        prepare(frame, spec)
    with pytest.raises(TableError, match="give a time column"):
        TableSpec(target="outcome", drift_cols=("age",))


def test_sentinel_becomes_missing_with_an_indicator_and_is_counted():
    frame = campaign(200)
    spec = TableSpec(target="outcome", missing=(("pdays", "999"),), drop=("signup_date",))
    data = prepare(frame, spec)
    n_sentinel = int((frame["pdays"] == 999).sum())
    assert data.sentinel_counts == {"pdays=999": n_sentinel} and not data.notes
    encoder = TableEncoder.fit(data.features, spec.missing)
    X = encoder.transform(data.features)
    assert X["pdays"].isna().sum() == n_sentinel
    assert (
        X.loc[frame["pdays"] != 999, "pdays"].tolist()
        == frame.loc[frame["pdays"] != 999, "pdays"].astype(float).tolist()
    )
    assert (X["pdays_is_999"] == (frame["pdays"] == 999)).all()
    assert {"segment_premium", "segment_retail", "segment_student"} <= set(X.columns)

    # a text sentinel removes the level and flags it; one that never occurs is a note
    text = TableEncoder.fit(frame[["segment"]], [("segment", "student")])
    Xt = text.transform(frame[["segment"]])
    assert "segment_student" not in Xt.columns
    assert (Xt["segment_is_student"] == (frame["segment"] == "student")).all()
    never = prepare(frame, TableSpec(target="outcome", missing=(("pdays", "-1"),)))
    assert never.sentinel_counts == {"pdays=-1": 0}
    assert never.notes == ["--missing-value pdays=-1: the value never occurs in 'pdays'"]
    with pytest.raises(TableError, match="'pdays' is numeric and 'never' is not a number"):
        prepare(frame, TableSpec(target="outcome", missing=(("pdays", "never"),)))
    with pytest.raises(TableError, match="expected COLUMN=VALUE"):
        parse_missing(["pdays"])
    assert parse_missing(["a==b"]) == (("a", "=b"),)
    assert parse_columns(["a,b", "c", "a"]) == ("a", "b", "c")


def test_target_auto_detection_and_its_errors():
    assert target_vector(pd.Series(["yes", "No", "YES "], name="y")).tolist() == [1, 0, 1]
    assert target_vector(pd.Series([0, 1, 1], name="y")).tolist() == [0, 1, 1]
    assert target_vector(pd.Series([True, False], name="y")).tolist() == [1, 0]
    assert target_vector(pd.Series(["a", "b", "a"], name="y"), positive="b").tolist() == [0, 1, 0]
    with pytest.raises(TableError, match=r"target 'y' is not 0/1.*'maybe' \(1\).*--positive"):
        target_vector(pd.Series(["yes", "no", "maybe"], name="y"))
    with pytest.raises(TableError, match="never equals the positive value 'z'"):
        target_vector(pd.Series(["a", "b"], name="y"), positive="z")
    with pytest.raises(TableError, match="one class only"):
        target_vector(pd.Series(["no", "no"], name="y"))
    with pytest.raises(TableError, match="target 'y' is missing on line"):
        target_vector(pd.Series(["no", None, "yes"], name="y"))


def test_time_split_trains_on_earlier_rows_of_a_shuffled_file():
    frame = campaign(400)
    spec = TableSpec(target="outcome", time_col="signup_date", drop=("duration",))
    data = prepare(frame, spec)
    assert "signup_date" not in data.features.columns  # the clock is not a feature
    assert (np.diff(data.times.astype("int64")) >= 0).all()
    result = evaluate_table(data, n_folds=3, config=FAST, final_model=False)
    ordered = frame.sort_values("signup_date", kind="stable")
    y = (ordered["outcome"] == "yes").to_numpy()
    rates = result.time_rates["positive_rate"]
    a = int(0.6 * len(y))
    a = int(np.searchsorted(data.times, data.times[a]))  # cut before the tie
    assert rates["train"] == pytest.approx(y[:a].mean())
    assert set(result.time.index) == {"lightgbm", "logreg"}
    assert len(result.cv) == 6


def test_separators_bom_and_parquet(tmp_path: Path):
    frame = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"], "t": [0, 1, 0]})
    for sep in (",", ";", "\t", "|"):
        path = tmp_path / "t.csv"
        path.write_text("\ufeff" + frame.to_csv(sep=sep, index=False))
        assert sniff_separator(path) == sep
        pd.testing.assert_frame_equal(read_table(path), frame)
    frame.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), frame)
    with pytest.raises(TableError, match="no file at"):
        read_table(tmp_path / "nope.csv")


def test_bad_feature_columns_are_named():
    frame = campaign(60)
    with pytest.raises(TableError, match="column 'signup_date' holds dates/times"):
        TableEncoder.fit(frame.drop(columns="outcome"))
    ids = frame.assign(customer=[f"C{i}" for i in range(60)])[["customer", "age"]]
    with pytest.raises(TableError, match="'customer' has 60 distinct values"):
        TableEncoder.fit(ids, max_levels=50)
    encoder = TableEncoder.fit(frame[["age", "segment"]])
    with pytest.raises(ValueError, match="column 'age' is numeric but row"):
        encoder.transform(pd.DataFrame({"age": ["old"], "segment": ["retail"]}))
    unseen = encoder.transform(pd.DataFrame({"age": [30.0], "segment": ["vip"]}))
    assert unseen.filter(like="segment_").sum(axis=1).iloc[0] == 0  # unseen level: all zeros


@pytest.mark.slow
def test_a_second_run_on_the_same_file_is_compared_with_the_champion(campaign_csv: Path):
    from src.models.tabular import train_table

    spec = TableSpec(target="outcome", drop=("duration", "signup_date"))
    kwargs = {"n_folds": 3, "config": FAST, "register": "table-compare-test"}
    first = train_table(campaign_csv, spec, **kwargs)
    assert first.promotion.promoted and first.promotion.reason == "no champion yet"
    again = train_table(campaign_csv, spec, **kwargs)  # same data, same folds: same score
    assert not again.promotion.promoted and "vs champion v1" in again.promotion.reason
    other = train_table(campaign_csv, spec, sample=500, **kwargs)  # not like for like
    assert not other.promotion.promoted and "no way to score" in other.promotion.reason
    rows = first.result.data.features.head(4)
    pd.testing.assert_frame_equal(
        first.result.model.predict_proba(rows), again.result.model.predict_proba(rows)
    )
