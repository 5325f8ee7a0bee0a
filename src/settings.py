"""One typed settings object for the whole project: a tree of sections.

``Settings`` holds the paths and four sections: ``sim`` (the simulated bank), ``serving`` (the
scoring process), ``models`` (propensity training) and ``bandit`` (the VW learner and its
training). Each default is stated once, here; the layers' config classes take theirs from these
sections (``PropensityConfig`` lives here, ``src.models.bandit.BanditConfig`` extends
:class:`BanditParams`, ``src.serving.config`` re-exports :class:`ServingSettings`).

Every path is resolved against the project root so the CLI, notebooks (which run with
``notebooks/`` as working directory) and tests all agree on where data lives.
Override a top-level field with ``NEXTOFFER_<FIELD>`` and a section's field with
``NEXTOFFER_<SECTION>__<FIELD>`` (e.g. ``NEXTOFFER_SIM__CUSTOMERS=100000``,
``NEXTOFFER_SERVING__VIEW_PATH=...``); ``MLFLOW_TRACKING_URI`` keeps its usual name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.data.catalog import Catalog

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class Section(BaseModel):
    """A settings section: unknown fields are errors, so a misspelt ``NEXTOFFER_SIM__CUSTOMER``
    fails loudly instead of leaving the default in place."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def of(cls, section: BaseModel) -> Self:
        """This class's fields taken from a wider section (e.g. the learner's part of
        ``Settings.bandit``), so a layer's config is built from the settings, not restated."""
        return cls(**{name: value for name, value in section if name in cls.model_fields})


class SimSettings(Section):
    """The simulated bank (``nextoffer simulate``/``demo``: ``--customers --days --seed``)."""

    seed: int = 7
    customers: int = 2_000
    days: int = 60
    start_date: date = date(2026, 1, 1)


class ServingSettings(Section):
    """Process settings of ``nextoffer serve``; nothing is read or opened when constructed.

    Relative paths are resolved against the project root (``Settings.resolve``).
    """

    view_path: Path | None = Field(
        None,
        description="Customer view Parquet; default: the newest features/customer_view_*.parquet.",
    )
    policy_path: Path | None = Field(
        None,
        description="Offer policy YAML/JSON; default: every offer of raw/offers.parquet, default rules.",
    )
    log_path: Path | None = Field(
        None,
        description="SQLite decision/reward log; default: <data_dir>/serving/decisions.sqlite.",
    )
    rules_dir: Path | None = Field(
        None, description="Detection rules for /v1/events; default: the shipped ones."
    )
    propensity_model: str | None = "nextoffer-propensity"
    bandit_model: str | None = "nextoffer-bandit"
    model_alias: str = "champion"
    model_poll_seconds: float = Field(30.0, gt=0, description="How often aliases are checked.")
    model_load_timeout_seconds: float = Field(60.0, gt=0)
    api_key: SecretStr | None = Field(
        None, description="If set, /v1/* need it in the API key header."
    )
    api_key_header: str = "X-API-Key"
    commit_max_batch: int = Field(512, ge=1, description="Most log writes in one group commit.")
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        "FULL",
        description="FULL: a decision survives power loss once answered; NORMAL: process crash only.",
    )
    fast_path: bool = Field(
        True,
        description="Answer valid decision requests before FastAPI's routing (same handler and "
        "validation); off: every request goes through the FastAPI route.",
    )
    timezone: str = Field("Asia/Seoul", description="Days of the contact caps are local days here.")
    seed: int | None = Field(
        None, description="Seeds the exploration draws (tests); default: OS entropy."
    )
    # -- hostile input and privacy (issue 15) --
    max_body_bytes: int = Field(
        16_384,
        ge=256,
        description="Largest request body accepted (413 above); a decision request is ~150 bytes.",
    )
    internal_api_key: SecretStr | None = Field(
        None,
        description="Key of internal callers (same header): only they see why offers were "
        "excluded and whether a customer id is known; also accepted wherever api_key is.",
    )
    protect_ops: bool = Field(
        False,
        description="/metrics, /docs, /redoc and /openapi.json need the internal API key.",
    )
    event_max_skew_seconds: float = Field(
        300.0,
        ge=0,
        description="An event stamped more than this past the server's clock is a 422 (it would "
        "move the detector's clock forward for its partition).",
    )
    event_allowed_lateness_seconds: float = Field(
        60.0,
        ge=0,
        description="With shared detection state: how long after its own time an event may "
        "arrive and still cancel a pending absence; the timeout sweeper fires a deadline once "
        "min(server clock, latest event time) minus this has passed it.",
    )
    detection_sweep_seconds: float = Field(
        5.0,
        gt=0,
        description="With shared detection state: how often each replica fires the pending "
        "timeouts of customers who sent no further event (each fires once across replicas).",
    )
    event_partitions: int = Field(
        64,
        ge=1,
        le=4096,
        description="Online detector clocks: customers are hashed into this many partitions, "
        "each with its own event-time clock.",
    )
    error_log_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="A failure with the same cause is logged (with its traceback) at most once "
        "per interval; the repeats are counted in the next line and in metrics.",
    )

    @model_validator(mode="after")
    def _ops_need_a_key(self) -> Self:
        if self.protect_ops and self.internal_api_key is None:
            raise ValueError("protect_ops needs internal_api_key (the key that opens them)")
        return self

    customer_store_url: str | None = Field(
        None,
        description="PostgreSQL URL of the published customer rows and scores shared by every "
        "replica (`nextoffer publish-view`); default: the view file, in process.",
    )
    customer_store_schema: str = Field(
        "nextoffer",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the published views and their manifest.",
    )
    customer_cache_size: int = Field(
        20_000, ge=1, description="Rows of a published view each replica keeps once read."
    )
    view_poll_seconds: float = Field(
        10.0, gt=0, description="How often the published view's manifest is checked."
    )
    view_max_age_days: float | None = Field(
        None,
        gt=0,
        description="/readyz is not ready while the served view's as_of is older than this.",
    )

    shared_state_url: str | None = Field(
        None,
        description="Redis URL for state every replica shares: the online detector's state and "
        "rule flags per customer, the online bandit's rewards and published weights; "
        "default: in process.",
    )
    shared_state_prefix: str = Field(
        "nextoffer",
        pattern=r"^[A-Za-z0-9_.:-]{1,100}$",
        description="Prefix of every shared Redis key (several deployments on one server).",
    )

    online_learning: bool = Field(
        False,
        description="The bandit learns from rewards in the service: one replica learns and "
        "publishes versions <champion>.<n> that every replica swaps in (needs shared_state_url).",
    )
    online_reward_window_seconds: float = Field(
        3600.0,
        ge=0,
        description="A decision is learned from once this long has passed (no reward by then: 0).",
    )
    online_publish_every: int = Field(
        1000, ge=1, description="Decisions learned between two published bandit versions."
    )
    log_url: SecretStr | None = Field(
        None,
        description="PostgreSQL decision/reward log shared by replicas (postgresql://...); "
        "default: the SQLite file at log_path.",
    )
    log_schema: str = Field(
        "nextoffer",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL schema of the log's tables (created if missing).",
    )
    log_pool_size: int = Field(
        4, ge=1, description="Most PostgreSQL connections of one replica's log."
    )
    contact_store_url: SecretStr | None = Field(
        None,
        description="Contact-cap store shared by replicas: redis://... (the slot only), or "
        "sqlite:///path / postgresql://... (the campaigns' store: caps counted across the slot "
        "and every campaign, and in-app campaign messages served in the slot); default: caps "
        "counted in the process, rebuilt from the log at start (one process only).",
    )
    contact_store_schema: str | None = Field(
        None, description="PostgreSQL schema of a SQL contact store (as campaigns.store_schema)."
    )
    contact_key_prefix: str = Field(
        "nextoffer:", description="Prefix of the contact store's Redis keys."
    )
    backend_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest wait on PostgreSQL or Redis before the request fails closed.",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes on one port (needs log_url and contact_store_url above 1).",
    )
    detections_url: SecretStr | None = Field(
        None,
        description="Where /v1/events records each rule detection for trigger campaigns: the "
        "campaign store (a SQLite path or postgresql:// URL, as campaigns.store_url); default: "
        "not recorded (no trigger campaign can fire).",
    )
    detections_schema: str | None = Field(
        None, description="PostgreSQL schema of the detections table (as campaigns.store_schema)."
    )
    detections_spool: Path | None = Field(
        None,
        description="Local file keeping detections while detections_url is unreachable (flushed "
        "on the next event); default: <data_dir>/serving/detections.spool.jsonl.",
    )

    def resolved(self, settings: Settings) -> ServingSettings:
        """A copy with every path absolute and the defaults that depend on data filled in."""
        view = self.view_path and settings.resolve(self.view_path)
        if view is None and self.customer_store_url is None:
            view = settings.catalog.latest("customer_view")
            if view is None:
                raise FileNotFoundError(
                    f"no customer view in {settings.features_dir}: run `nextoffer build-view` "
                    "or set NEXTOFFER_SERVING__VIEW_PATH"
                )
        return self.model_copy(
            update={
                "view_path": view,
                "policy_path": self.policy_path and settings.resolve(self.policy_path),
                "log_path": settings.resolve(self.log_path)
                if self.log_path
                else settings.resolve(settings.data_dir) / "serving" / "decisions.sqlite",
                "detections_spool": settings.resolve(self.detections_spool)
                if self.detections_spool
                else settings.resolve(settings.data_dir) / "serving" / "detections.spool.jsonl",
                "rules_dir": settings.resolve(self.rules_dir)
                if self.rules_dir
                else settings.root / "src" / "features" / "rules",
            }
        )


class PropensityConfig(Section):
    """The propensity model's settings (all logged as MLflow params); ``src.models.propensity``
    re-exports it."""

    n_estimators: int = 1000
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_child_samples: int = 100
    subsample: float = 0.8
    colsample_bytree: float = 0.5
    reg_lambda: float = 5.0
    early_stopping_rounds: int = 50
    # Platt, not isotonic: on the 100k x 180 bank (500-1,550 validation positives per product)
    # isotonic raised the test log loss on all 6 products and doubled the calibration error on 4,
    # while Platt kept the booster's log loss (within 0.0003) and beat isotonic's error on all 6.
    calibration: Literal["sigmoid", "isotonic"] = "sigmoid"
    isotonic_min_positives: int = (
        200  # fewer validation positives: Platt even when isotonic is asked for
    )
    val_customer_share: float = 0.2  # validation customers never train (see split_rows)
    logreg_c: float = 0.1
    seed: int = 7
    n_jobs: int = 1  # OpenMP threads spin: on a shared 2-core box 2 threads ran 15x slower than 1


class ModelSettings(PropensityConfig):
    """Model training: the propensity model's config plus the time split it is trained on, and
    the CVR model's snapshot spacing."""

    window_days: int = Field(
        30, ge=1, description="Label window (shortened on a bank too short for it)."
    )
    embargo: bool = Field(
        True,
        description="Every training label window closes before the test date "
        "(off leaks: see src/features/feature_table.py).",
    )
    cvr_step_days: int = Field(
        7, ge=1, description="CVR: days between snapshots (one week of exposures each)."
    )
    max_staleness_days: int = Field(
        3,
        ge=0,
        description="Retrain: refuse an as_of more than this many days after the last event "
        "(a stopped data feed is an error, not a silent retrain on old data).",
    )
    min_auc_gain: float = Field(
        0.002,
        ge=0.0,
        description="Promotion: the candidate's mean AUC must beat the champion's by at least "
        "this much on the same test rows (and significantly: paired bootstrap, p < 0.05).",
    )

    @property
    def propensity(self) -> PropensityConfig:
        """The model's part, without the split (what is passed to the trainer)."""
        return PropensityConfig.of(self)


class MonitorSettings(Section):
    """Drift monitoring (``nextoffer monitor``): PSI thresholds and which model to watch."""

    model_name: str = Field(
        "nextoffer-propensity", description="Registered model whose champion is monitored."
    )
    bins: int = Field(10, ge=2, description="Equal-mass bins of the reference per feature.")
    psi_warn: float = Field(0.1, ge=0.0, description="PSI from which a column is 'warn'.")
    psi_alert: float = Field(0.25, ge=0.0, description="PSI from which a column is 'alert'.")
    max_feature_alert_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Alert (exit 3) when more than this share of features is past psi_alert; "
        "any score past psi_alert alerts too.",
    )


RewardMetric = Literal["click", "convert", "value"]


class BanditParams(Section):
    """How the bandit explores and learns. ``reward`` is what it maximizes.

    ``src.models.bandit.BanditConfig`` extends this with the VW wiring. Default reward: the
    click. It is dense (about 1 in 20 exposures vs 1 in 100 for a conversion), immediate (a
    conversion can come days later), and it is what the A/B practice it replaces measures;
    ``value`` (conversion value / ``value_scale``) is there for a bank that wants margin, at the
    cost of a much noisier signal.
    """

    exploration: Literal["epsilon", "softmax", "squarecb"] = "epsilon"
    epsilon: float = Field(0.05, ge=0, le=1)
    softmax_lambda: float = Field(10.0, gt=0)
    gamma_scale: float = Field(400.0, gt=0, description="SquareCB: larger = greedier.")
    learning_rate: float = Field(
        2.0,
        gt=0,
        description="Measured on notebook 20's run: 0.1 -> 68 %, "
        "0.5 -> 73 %, 2 -> 74 % of the oracle (larger steps track drifting needs).",
    )
    bits: int = Field(20, ge=12, le=28)
    cb_type: Literal["mtr", "dr", "ips"] = "mtr"
    reward: RewardMetric = "click"
    value_scale: float = Field(100_000.0, gt=0)
    seed: int = 0


class BanditSettings(BanditParams):
    """The bandit learner plus how ``nextoffer train-bandit`` scores it."""

    held_out_share: float = Field(
        0.3, gt=0, lt=1, description="Share of the logged days held out to score the bandit (DR)."
    )


class CampaignSettings(Section):
    """The outbound sender (``nextoffer campaign ...``)."""

    store_url: str | None = Field(
        None,
        description="Contact store + campaign tables: a SQLite path or postgresql:// URL; "
        "default: SQLite at <data_dir>/campaigns/campaigns.sqlite.",
    )
    store_schema: str | None = Field(None, description="PostgreSQL schema of the tables.")
    outbox_path: Path | None = Field(
        None, description="JSONL delivery file; default: <data_dir>/campaigns/outbox.jsonl."
    )
    batch_size: int = Field(500, ge=1, description="Messages charged per transaction.")
    inapp_valid_hours: float = Field(
        168.0, gt=0, description="How long an in-app message waits in the slot's inbox."
    )


STALE_ENV = ("NEXTOFFER_SEED", "NEXTOFFER_CUSTOMERS", "NEXTOFFER_DAYS", "NEXTOFFER_START_DATE")


def stale_env_vars(environ: Mapping[str, str]) -> list[str]:
    """Variables of the flat form that nothing reads any more (``NEXTOFFER_CUSTOMERS``,
    ``NEXTOFFER_SERVING_API_KEY``): ignoring them would silently drop, say, an API key."""
    return sorted(
        name
        for name in environ
        if name.upper() in STALE_ENV
        or (
            name.upper().startswith("NEXTOFFER_SERVING_")
            and not name.upper().startswith("NEXTOFFER_SERVING__")
        )
    )


def _given(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides without the ones not given (None, ""), sections included."""
    out: dict[str, Any] = {}
    for name, value in overrides.items():
        if isinstance(value, Mapping):
            value = _given(value)
            if not value:
                continue
        elif value is None or value == "":
            continue
        out[name] = value
    return out


class Settings(BaseSettings):
    """Paths and the sections; nothing is read or created when this is constructed."""

    # extra="forbid": the environment source only reads declared names, so what this refuses is
    # init keywords, e.g. a ``Settings(customers=...)`` written before the sections existed.
    # validate_by_name: ``Settings(mlflow_tracking_uri=...)`` as well as the variable's name.
    model_config = SettingsConfigDict(
        env_prefix="NEXTOFFER_", env_nested_delimiter="__", extra="forbid", validate_by_name=True
    )

    root: Path = Field(default=PACKAGE_ROOT, description="Project root; other paths hang off it.")
    data_dir: Path = Path("data")
    mlruns_dir: Path = Path("mlruns")
    reports_dir: Path = Path("reports")
    benchmarks_dir: Path = Path("benchmarks/results")

    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="A tracking server; default: SQLite under mlruns/ (embedded).",
    )

    validation_chunk_rows: int | None = Field(
        default=250_000,
        ge=1,
        description="Rows per chunk when validating raw tables: a longer table is validated chunk "
        "by chunk so memory stays bounded (a 1M-customer export on a laptop); None = whole "
        "tables in memory.",
    )
    validation_memory_limit: str = Field(
        default="1GB",
        description="DuckDB memory limit of the whole-table id uniqueness check (spills beyond).",
    )

    sim: SimSettings = Field(default_factory=SimSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    bandit: BanditSettings = Field(default_factory=BanditSettings)
    campaigns: CampaignSettings = Field(default_factory=CampaignSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    @model_validator(mode="before")
    @classmethod
    def _no_stale_env(cls, data: Any) -> Any:
        stale = stale_env_vars(os.environ)
        if stale:
            raise ValueError(
                f"{', '.join(stale)}: settings are sections now, set NEXTOFFER_SIM__<FIELD> or "
                "NEXTOFFER_SERVING__<FIELD> (two underscores) instead"
            )
        return data

    @classmethod
    def from_overrides(cls, **overrides: Any) -> Settings:
        """Settings from the environment with the given values on top, section by section
        (``sim={"customers": 500}`` keeps ``NEXTOFFER_SIM__DAYS``); None and "" mean "not given",
        which is what CLI options and notebook parameters pass when left alone."""
        return cls(**_given(overrides))

    def resolve(self, path: Path) -> Path:
        """Absolute path: relative paths are taken from the project root."""
        return path if path.is_absolute() else self.root / path

    @property
    def tracking_uri(self) -> str:
        """MLflow tracking + registry: ``MLFLOW_TRACKING_URI`` if set, else SQLite in mlruns/."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.resolve(self.mlruns_dir) / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        """Where runs store artifacts when tracking is embedded: beside the SQLite store.

        MLflow 3 has no bare ./mlruns file store; keeping artifacts next to the database means a
        store pointed elsewhere (a test's temp dir) takes its artifacts with it.
        """
        uri = self.tracking_uri
        if uri.startswith("sqlite:///"):
            return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        return self.resolve(self.mlruns_dir) / "artifacts"

    @property
    def catalog(self) -> Catalog:
        """The named tables under the data directory; every reader goes through it."""
        return Catalog(self.resolve(self.data_dir))

    @property
    def raw_dir(self) -> Path:
        """Observable raw tables, as a bank would hand them over (read only by validation)."""
        return self.catalog.raw_dir

    @property
    def validated_dir(self) -> Path:
        """Accepted rows of the contract's tables: what everything downstream reads."""
        return self.catalog.validated_dir

    @property
    def truth_dir(self) -> Path:
        """The simulator's hidden truth (latent needs, true probabilities); never a model input."""
        return self.resolve(self.data_dir) / "truth"

    @property
    def campaigns_dir(self) -> Path:
        """The outbound sender's state (contact store, outbox file) when not configured."""
        return self.resolve(self.data_dir) / "campaigns"

    @property
    def features_dir(self) -> Path:
        """Derived tables: identity map, customer views, feature tables."""
        return self.catalog.features_dir

    @property
    def rejects_dir(self) -> Path:
        """Rows refused by validation in quarantine mode, with the reason."""
        return self.catalog.rejects_dir
