"""The settings object and the CLI's wiring (no heavy work)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jupytext
import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from src.cli import app
from src.settings import PACKAGE_ROOT, BanditSettings, ModelSettings, Settings, SimSettings


def test_paths_are_relative_to_project_root(monkeypatch):
    monkeypatch.delenv("NEXTOFFER_DATA_DIR", raising=False)
    settings = Settings()
    assert settings.raw_dir == PACKAGE_ROOT / "data" / "raw"
    assert settings.truth_dir == PACKAGE_ROOT / "data" / "truth"


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTOFFER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTOFFER_SIM__CUSTOMERS", "123")
    monkeypatch.setenv("NEXTOFFER_SERVING__FAST_PATH", "false")
    monkeypatch.setenv("NEXTOFFER_SERVING__VIEW_PATH", "elsewhere/view.parquet")
    monkeypatch.setenv("NEXTOFFER_MODELS__WINDOW_DAYS", "14")
    monkeypatch.setenv("NEXTOFFER_BANDIT__EPSILON", "0.2")
    settings = Settings()
    assert settings.raw_dir == tmp_path / "raw"
    assert settings.sim.customers == 123
    assert settings.sim.days == SimSettings().days  # the rest of the section keeps its defaults
    assert settings.serving.fast_path is False
    assert settings.serving.view_path == Path("elsewhere/view.parquet")
    assert settings.models.window_days == 14
    assert settings.bandit.epsilon == 0.2


def test_unknown_fields_are_errors(monkeypatch):
    """Sections forbid extras: only our sections read NEXTOFFER_<SECTION>__*, so an unknown name
    there is a typo, and ignoring it would leave the default in place without a word. At the top
    the environment source reads declared names only; what extra="forbid" refuses is init
    keywords such as the flat ``Settings(customers=...)`` of before the sections."""
    monkeypatch.setenv("NEXTOFFER_SIM__CUSTOMER", "5")
    with pytest.raises(ValidationError, match="sim.customer"):
        Settings()
    monkeypatch.delenv("NEXTOFFER_SIM__CUSTOMER")
    with pytest.raises(ValidationError, match="customers"):
        Settings(customers=5)
    monkeypatch.setenv("NEXTOFFER_SOMETHING_ELSE", "1")  # not a field: not read, not an error
    assert Settings().sim == SimSettings()


@pytest.mark.parametrize("name", ["NEXTOFFER_CUSTOMERS", "NEXTOFFER_SERVING_API_KEY"])
def test_flat_variables_of_before_are_refused(monkeypatch, name):
    """An API key set the old way must not be dropped silently: the service would run open."""
    monkeypatch.setenv(name, "x")
    with pytest.raises(ValidationError, match=f"{name}: settings are sections now"):
        Settings()


def test_cli_options_override_the_environment(monkeypatch, tmp_path):
    import src.pipeline

    seen: list[Settings] = []
    monkeypatch.setattr(src.pipeline, "run_simulation", lambda s, progress: seen.append(s) or {})
    env = {"NEXTOFFER_SIM__CUSTOMERS": "123", "NEXTOFFER_SIM__DAYS": "9"}
    args = ["simulate", "--customers", "50", "--data-dir", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert (seen[0].sim.customers, seen[0].sim.days) == (50, 9)
    assert seen[0].data_dir == tmp_path

    def train(settings: Settings, **_: object) -> SimpleNamespace:  # progress=... from the CLI
        seen.append(settings)
        promotion = SimpleNamespace(promoted=True, name="b", version=1, reason="r")
        return SimpleNamespace(
            train_decisions=1,
            held_out_decisions=1,
            logged_policy_value=0.0,
            held_out_dr_value=0.0,
            promotion=promotion,
        )

    monkeypatch.setattr(src.pipeline, "run_bandit_training", train)
    env = {"NEXTOFFER_BANDIT__HELD_OUT_SHARE": "0.2", "NEXTOFFER_BANDIT__EPSILON": "0.1"}
    result = CliRunner().invoke(app, ["train-bandit", "--held-out-share", "0.5"], env=env)
    assert result.exit_code == 0, result.output
    assert (seen[1].bandit.held_out_share, seen[1].bandit.epsilon) == (0.5, 0.1)
    result = CliRunner().invoke(app, ["train-bandit"], env=env)
    assert seen[2].bandit.held_out_share == 0.2


def test_layer_configs_take_their_defaults_from_the_sections():
    from src.data.synthetic import SimConfig
    from src.models.bandit import BanditConfig
    from src.models.propensity import PropensityConfig
    from src.serving.config import ServingSettings

    assert ModelSettings().propensity == PropensityConfig()
    assert BanditConfig.of(BanditSettings()) == BanditConfig()
    assert BanditConfig.of(BanditSettings(epsilon=0.3)).epsilon == 0.3
    assert ServingSettings is Settings.model_fields["serving"].annotation
    # the simulator keeps its own config (src.data sits below the settings); they must agree
    assert SimConfig(**SimSettings().model_dump()) == SimConfig()


def test_serving_env_round_trips(monkeypatch, tmp_path):
    """What ``serving_env`` hands a server process is read back as the same section."""
    from src.serving.service import serving_env

    serving = Settings().serving.model_copy(
        update={"view_path": tmp_path / "v.parquet", "bandit_model": None, "seed": 3}
    )
    for name, value in serving_env(Settings(), serving).items():
        monkeypatch.setenv(name, value)
    read = Settings().serving
    assert (read.view_path, read.seed, read.fast_path) == (tmp_path / "v.parquet", 3, True)
    assert not read.bandit_model


def _settings_fields() -> set[str]:
    names = set(Settings.model_fields)
    for field in Settings.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            names |= set(field.annotation.model_fields)
    return names


@pytest.mark.parametrize(
    "script", sorted((PACKAGE_ROOT / "notebooks").glob("*.py")), ids=lambda p: p.stem
)
def test_notebook_parameters_do_not_restate_settings(script: Path):
    """A parameter named like a settings field is None ("" for paths) and resolved from
    ``Settings`` in the next cell; its comment names the field (``section.field``)."""
    cell = next(
        c
        for c in jupytext.read(script).cells
        if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    fields, lines = _settings_fields(), cell.source.splitlines()
    for node in ast.parse(cell.source).body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), (
            f"{script.name}:{node.lineno}: parameters must be literal assignments"
        )
        name, value = node.targets[0].id, node.value.value  # type: ignore[attr-defined]
        if name in fields:
            assert value in (None, ""), f"{script.name}: {name} = {value!r} restates a setting"
        if value is None:
            comment = lines[node.lineno - 1].partition("#")[2].strip()
            section, _, field = comment.split(":")[0].split(" ")[0].partition(".")
            named = Settings.model_fields.get(section)
            assert named and field in named.annotation.model_fields, (  # type: ignore[union-attr]
                f"{script.name}: {name}'s comment should name its settings field (section.field)"
            )


def test_settings_import_no_upper_layer():
    code = (
        "import sys, src.settings; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['src', 'models'], ['src', 'serving'], ['src', 'features'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_construction_touches_no_files(tmp_path):
    settings = Settings(root=tmp_path)
    _ = settings.raw_dir, settings.features_dir, settings.rejects_dir
    assert list(tmp_path.iterdir()) == []


def test_cli_lists_subcommands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "validate", "build-view", "demo", "to-spark-sql"):
        assert command in result.output


def test_cli_import_is_light():
    """Heavy libraries load inside commands, so `nextoffer --help` stays instant."""
    code = "import sys, src.cli; print(sorted(m for m in ('pandas', 'duckdb', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_artifacts_live_beside_the_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    assert Settings().artifact_root == tmp_path / "store" / "artifacts"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert Settings().artifact_root == PACKAGE_ROOT / "mlruns" / "artifacts"
    assert Settings().tracking_uri == f"sqlite:///{PACKAGE_ROOT / 'mlruns' / 'mlflow.db'}"
