"""Registered models load and predict in a Python process where the repository is not importable.

The subprocess runs isolated (``-I``: no PYTHONPATH, no script dir or cwd on ``sys.path``) in a
temp dir, and first removes the editable install's import hook (the venv resolves ``src`` to the
checkout through ``__editable___nextoffer_*_finder``) and the repository from ``sys.path``; it
asserts ``import src`` fails before loading. The models must bring their own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from src.models.propensity import PropensityConfig, PropensityModel, fit_product
from src.models.registry import register_and_promote
from src.settings import Settings

REPO = Path(__file__).resolve().parents[1]

ISOLATED = r"""
import json, sys
from pathlib import Path

repo = Path(sys.argv[1]).resolve()
jobs = json.loads(Path(sys.argv[2]).read_text())
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != repo]
sys.path_importer_cache.clear()
try:
    import src
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"src is importable from {src.__file__}: the test would prove nothing")

import mlflow
import pandas as pd

mlflow.set_tracking_uri(jobs["tracking_uri"])
mlflow.set_registry_uri(jobs["tracking_uri"])
for job in jobs["models"]:
    model = mlflow.pyfunc.load_model(job["uri"])
    rows = pd.read_parquet(job["rows"])
    pd.DataFrame(model.predict(rows)).to_parquet(job["out"])
import src
print(json.dumps({"src": src.__file__}))
"""


def _register(model_uri: str, name: str, tracking_uri: str) -> None:
    register_and_promote(
        model_uri,
        name,
        metric="auc",
        candidate_score=0.5,
        score_champion=None,
        tracking_uri=tracking_uri,
    )


def _propensity(settings: Settings) -> tuple[str, pd.DataFrame]:
    """A two-product propensity model on a toy frame, logged the way training logs it."""
    from src.models.tracking import configure_mlflow, log_pyfunc

    rng = np.random.default_rng(0)
    rows = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    X = rows.astype(float)
    model = PropensityModel(["a", "b", "c"], list(X.columns))
    config = PropensityConfig(n_estimators=30, min_child_samples=10, early_stopping_rounds=5)
    for product, column in (("loan", "a"), ("card", "b")):
        y = (rng.random(400) < 1 / (1 + np.exp(-2 * X[column]))).astype(int)
        model.products[product] = fit_product(
            product, X.iloc[:300], y[:300], X.iloc[300:], y[300:], config
        )
    with mlflow.start_run(experiment_id=configure_mlflow(settings, "portable-test")):
        uri = log_pyfunc(model, rows, model.raw_columns)
    _register(uri, "portable-propensity", settings.tracking_uri)
    return "models:/portable-propensity@champion", rows.head(6)


def _table(settings: Settings, tmp_path: Path) -> tuple[str, pd.DataFrame]:
    """``train-table``'s model (encoder + LightGBM + calibration) on a small generated file."""
    from test_tabular import FAST, campaign

    from src.models.tabular import TableSpec, train_table

    path = tmp_path / "campaign.parquet"
    campaign(300).to_parquet(path)
    spec = TableSpec(
        target="outcome",
        drop=("duration",),
        missing=(("pdays", "999"),),
        time_col="signup_date",
    )
    run = train_table(
        path,
        spec,
        n_folds=2,
        config=FAST,
        settings=settings,
        register="portable-table",
    )
    assert run.promotion is not None and run.promotion.promoted
    rows = run.result.data.features.head(6)
    return "models:/portable-table@champion", rows.astype({"age": float, "pdays": float})


def _bandit(settings: Settings, tmp_path: Path) -> tuple[str, pd.DataFrame]:
    from src.models.bandit import BanditConfig, ContextualBandit, log_bandit
    from src.models.bandit_features import FeatureSpec

    offers = pd.DataFrame(
        [
            {"offer_id": "OF01", "slot": "home_banner", "product": "loan", "creative": "a"},
            {"offer_id": "OF07", "slot": "home_banner", "product": "card", "creative": "b"},
        ]
    )
    spec = FeatureSpec(categorical=("life_stage",), age_column=None)
    bandit = ContextualBandit(BanditConfig(epsilon=0.2), spec)
    uri = log_bandit(
        bandit,
        offers,
        tracking_uri=settings.tracking_uri,
        artifact_location=settings.artifact_root.as_uri(),
        experiment="portable-test-bandit",
    )
    _register(uri, "portable-bandit", settings.tracking_uri)
    rows = pd.DataFrame(
        {
            "decision_id": ["d1", "d2", "d3"],
            "life_stage": ["student", "family", "retired"],
            "candidates": ["OF01,OF07", "OF07", "OF07,OF01"],
        }
    )
    return "models:/portable-bandit@champion", rows


@pytest.mark.slow
def test_registered_models_load_without_the_repository(tmp_path: Path):
    settings = Settings()  # the session's temp MLflow store (conftest)
    models = {
        "propensity": _propensity(settings),
        "table": _table(settings, tmp_path),
        "bandit": _bandit(settings, tmp_path),
    }
    jobs = {"tracking_uri": settings.tracking_uri, "models": []}
    for kind, (uri, rows) in models.items():
        rows.to_parquet(tmp_path / f"{kind}_in.parquet")
        jobs["models"].append(
            {
                "uri": uri,
                "rows": str(tmp_path / f"{kind}_in.parquet"),
                "out": str(tmp_path / f"{kind}_out.parquet"),
            }
        )
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    work = tmp_path / "elsewhere"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, str(REPO), str(tmp_path / "jobs.json")],
        cwd=work,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_from = Path(json.loads(done.stdout.strip().splitlines()[-1])["src"])
    assert REPO not in loaded_from.parents  # the model's own copy of the code, not the checkout
    assert "code" in loaded_from.parts

    for kind, (uri, rows) in models.items():
        got = pd.read_parquet(tmp_path / f"{kind}_out.parquet")
        expected = pd.DataFrame(mlflow.pyfunc.load_model(uri).predict(rows))
        assert len(got) == len(rows)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))


FRESH = r"""
import json, sys
from pathlib import Path

try:
    import src
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"src is importable from {src.__file__}: the test would prove nothing")

import mlflow
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
rows = pd.read_json(Path(sys.argv[2]), orient="split")
rows = rows.astype(json.loads(Path(sys.argv[3]).read_text()))  # JSON reads 34.0 back as int
print(json.dumps({"predictions": pd.DataFrame(model.predict(rows)).to_dict(orient="split"),
                  "src": sys.modules["src"].__file__}))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_registered_model_loads_and_serves_in_a_fresh_venv_of_its_own_requirements(
    tmp_path: Path, small_bank: Settings
):
    """The registered propensity and CVR models' folders (downloaded from the registry) in a
    new venv built *only* from each model's ``requirements.txt`` (uv, from PyPI or its cache):
    ``mlflow.pyfunc.load_model`` predicts the same as in this process, and ``mlflow models
    serve --env-manager local`` answers ``/invocations`` with the same numbers. The repository
    is not importable there: no editable install, another working directory, ``-I``."""
    import time
    import urllib.request

    settings = Settings()
    prop_uri, prop_rows = _propensity(settings)
    cvr_uri, cvr_rows = _cvr(settings, small_bank)
    uv = REPO / ".venv" / "bin" / "uv"
    if not uv.exists():
        pytest.skip(f"{uv} missing: run `make .venv/.installed-stamp`")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    for kind, uri, rows in (("propensity", prop_uri, prop_rows), ("cvr", cvr_uri, cvr_rows)):
        model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / kind)))
        requirements = (model_dir / "requirements.txt").read_text()
        assert "mlflow==" in requirements and "lightgbm==" in requirements
        venv = tmp_path / f"venv-{kind}"
        subprocess.run(
            [str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)],
            check=True,
            env=env,
            timeout=300,
        )
        python = venv / "bin" / "python"
        done = subprocess.run(
            [
                str(uv),
                "pip",
                "install",
                "--quiet",
                "--python",
                str(python),
                "-r",
                str(model_dir / "requirements.txt"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows_path = tmp_path / f"{kind}_rows.json"
        rows.to_json(rows_path, orient="split", index=False)
        dtypes_path = tmp_path / f"{kind}_dtypes.json"
        dtypes_path.write_text(json.dumps(rows.dtypes.astype(str).to_dict()))
        expected = pd.DataFrame(mlflow.pyfunc.load_model(uri).predict(rows))

        done = subprocess.run(
            [str(python), "-I", "-c", FRESH, str(model_dir), str(rows_path), str(dtypes_path)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert str(model_dir) in answer["src"]  # the code shipped in the model folder
        got = pd.DataFrame(**answer["predictions"])
        np.testing.assert_allclose(got.to_numpy(float), expected.to_numpy(float), rtol=1e-6)

        port = _free_port()
        serve_env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
        server = subprocess.Popen(
            [
                str(venv / "bin" / "mlflow"),
                "models",
                "serve",
                "-m",
                str(model_dir),
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "1",
            ],
            cwd=work,
            env=serve_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                        break
                except OSError:
                    assert server.poll() is None, server.stdout.read().decode()[-3000:]
                    assert time.monotonic() < deadline, "mlflow models serve did not start"
                    time.sleep(1)
            body = json.dumps(
                {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
            ).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                served = pd.DataFrame(json.loads(response.read())["predictions"])
            np.testing.assert_allclose(
                served[list(expected.columns)].to_numpy(float),
                expected.to_numpy(float),
                rtol=1e-6,
            )
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


def _cvr(settings: Settings, bank: Settings) -> tuple[str, pd.DataFrame]:
    """A CVR model on the small bank's customer view x two offers (random outcomes), logged
    and registered as training does."""
    import lightgbm as lgb

    from src.features.customer_view import build_customer_view
    from src.models.cvr import CvrModel, cvr_matrix
    from src.models.tracking import configure_mlflow, log_pyfunc, serving_frame

    rng = np.random.default_rng(1)
    rows = build_customer_view(bank.catalog, "2026-01-20")
    rows["offer_id"] = rng.choice(["OF01", "OF02"], len(rows))
    rows["channel"] = rng.choice(["app", "web"], len(rows))
    y = (rng.random(len(rows)) < 0.2 + 0.3 * (rows["offer_id"] == "OF01")).astype(int)
    booster = lgb.LGBMClassifier(n_estimators=20, min_child_samples=10, verbose=-1)
    booster.fit(cvr_matrix(rows, ["OF01", "OF02"]), y)
    model = CvrModel(booster, ["OF01", "OF02"], 20)
    with mlflow.start_run(experiment_id=configure_mlflow(settings, "portable-test")):
        uri = log_pyfunc(model, rows, model.raw_columns)
    _register(uri, "portable-cvr", settings.tracking_uri)
    return "models:/portable-cvr@champion", serving_frame(rows.head(6), model.raw_columns)
