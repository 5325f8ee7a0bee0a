"""The one command line: ``nextoffer <subcommand>``.

Subcommands are thin: they parse options into the settings object and call functions in
``src``; heavy imports happen inside each command so ``nextoffer --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from src.data.catalog import TableNotValidated
from src.settings import BanditSettings, ModelSettings, MonitorSettings, Settings

app = typer.Typer(
    name="nextoffer",
    help="Next best offer for every bank customer.",
    no_args_is_help=True,
    add_completion=False,
)

CustomersOpt = Annotated[int | None, typer.Option("--customers", help="Customers to simulate.")]
DaysOpt = Annotated[int | None, typer.Option("--days", help="Days to simulate.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (default: data/).")
]


@contextmanager
def _exit_on(*errors: type[BaseException]) -> Iterator[None]:
    """Expected failures (bad input, a step not run yet) as their message and exit 1, without a
    traceback: the message already names what to fix."""
    try:
        yield
    except errors as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error


def _settings(
    data_dir: Path | None = None,
    customers: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    **sections: dict[str, Any],
) -> Settings:
    """Settings from the environment, with the options that were given taking precedence:
    ``--customers/--days/--seed`` are the ``sim`` section's, ``sections`` name others'."""
    sim = {"customers": customers, "days": days, "seed": seed}
    return Settings.from_overrides(data_dir=data_dir, sim=sim, **sections)


@app.command()
def simulate(
    customers: CustomersOpt = None,
    days: DaysOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Simulate the synthetic bank: raw tables under data/raw, its truth under data/truth."""
    from src.pipeline import run_simulation

    settings = _settings(customers=customers, days=days, seed=seed, data_dir=data_dir)
    counts = run_simulation(settings, progress=not quiet)
    for table, rows in counts.items():
        typer.echo(f"{table:<14} {rows:>12,} rows")
    typer.echo(f"raw tables: {settings.raw_dir}\ntruth:      {settings.truth_dir}")


@app.command()
def ingest(
    mapping: Annotated[
        Path,
        typer.Option(
            "--mapping",
            help="YAML mapping of the bank's export to the contract "
            "(see examples/bank_export/mapping.yaml).",
        ),
    ],
    data_dir: DataDirOpt = None,
    allow_unmapped: Annotated[
        bool,
        typer.Option(
            "--allow-unmapped",
            help="Keep values the mapping does not cover as they are (validation then rejects "
            "them) instead of failing.",
        ),
    ] = False,
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source", help="TABLE=FILE: read TABLE from FILE instead of the mapping's source."
        ),
    ] = None,
) -> None:
    """Map a bank's own export (CSV/Parquet) onto the contract's raw tables in data/raw."""
    from src.data.ingest import MappingError, format_report
    from src.data.ingest import ingest as run_ingest

    settings = _settings(data_dir=data_dir)
    overrides: dict[str, Path] = {}
    for item in source or []:
        table, sep, file = item.partition("=")
        if not sep or not table or not file:
            typer.echo(f"--source {item!r}: want TABLE=FILE", err=True)
            raise typer.Exit(code=2)
        overrides[table.strip()] = Path(file)
    try:
        result = run_ingest(
            mapping, settings.catalog, allow_unmapped=allow_unmapped, sources=overrides
        )
    except MappingError as error:  # names table, column, value and count
        typer.echo(f"ingest failed: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(f"{'table':<14} {'rows':>10}  source")
    for table, rows in result.rows.items():
        typer.echo(f"{table:<14} {rows:>10,}  {result.sources[table]}")
        if result.dropped_columns[table]:
            typer.echo(f"{'':<14} {'':>10}  dropped: {', '.join(result.dropped_columns[table])}")
    typer.echo(f"raw tables: {settings.catalog.raw_dir}")
    if result.report.empty:
        typer.echo("unmapped values: none")
    else:
        total = int(result.report["count"].sum())
        typer.echo(f"unmapped values kept as they are ({total:,} row(s)):")
        typer.echo(format_report(result.report))
    for table, n in result.contract_rejects.items():
        typer.echo(f"{table}: {n:,} row(s) break the contract; `nextoffer validate` names them")
    for note in result.notes:
        typer.echo(f"note: {note}")


@app.command()
def validate(
    data_dir: DataDirOpt = None,
    quarantine: Annotated[
        bool,
        typer.Option(
            "--quarantine",
            help="Write rejected rows with reasons to data/rejects/ and publish the rest, "
            "instead of stopping on the first rejected row.",
        ),
    ] = False,
) -> None:
    """Validate the raw tables against the data contract and publish the accepted rows to
    data/validated, which everything downstream reads; bad input names table, column, rows."""
    from src.data.loaders import RawDataError
    from src.pipeline import run_validation

    settings = _settings(data_dir=data_dir)
    try:
        report = run_validation(settings, quarantine=quarantine)
    except (RawDataError, FileNotFoundError) as error:
        typer.echo(str(error), err=True)
        if not quarantine and isinstance(error, RawDataError):
            typer.echo("nothing published: fix the rows, or rerun with --quarantine", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(_format_validation(report))
    typer.echo(f"validated tables: {settings.validated_dir}")


def _format_validation(report: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'table':<14} {'accepted':>12} {'rejected':>10}  reject file"]
    for table, rows in report["accepted"].items():
        reject_file = report["reject_files"].get(table, "")
        lines.append(f"{table:<14} {rows:>12,} {report['rejected'][table]:>10,}  {reject_file}")
    return "\n".join(lines)


EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="duckdb (embedded, default) or spark: the same SQL stages, the same outputs.",
    ),
]
MasterOpt = Annotated[
    str | None,
    typer.Option(
        "--master",
        help="Spark master URL (--engine spark), e.g. local[2] or spark://host:7077; "
        "default: spark-submit's, else local[*].",
    ),
]
SparkConfOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--spark-conf", help="KEY=VALUE Spark setting (--engine spark); repeat for several."
    ),
]
ENGINES = ("duckdb", "spark")


def _spark(engine: str, master: str | None, spark_conf: list[str] | None) -> Any:
    """The Spark session for ``--engine spark`` (None for duckdb); bad options exit 2 by name."""
    if engine not in ENGINES:
        raise typer.BadParameter(f"{engine!r}: one of {', '.join(ENGINES)}", param_hint="--engine")
    if engine == "duckdb":
        if master or spark_conf:
            raise typer.BadParameter("only with --engine spark", param_hint="--master/--spark-conf")
        return None
    conf: dict[str, str] = {}
    for item in spark_conf or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: want KEY=VALUE", param_hint="--spark-conf")
        conf[key.strip()] = value.strip()
    from src.features.spark_session import spark_session

    with _exit_on(RuntimeError):  # pyspark missing: the message says what to install
        return spark_session(master, extra_conf=conf)


@app.command("build-view")
def build_view(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            help="View as of this date: only events strictly before it. "
            "Default: the day after the last simulated day.",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = None,
    spark_conf: SparkConfOpt = None,
) -> None:
    """Stitch identities and build the point-in-time customer view (DuckDB or Spark over the
    validated Parquet tables)."""
    from src.pipeline import default_as_of, run_customer_view

    settings = _settings(data_dir=data_dir)
    spark = _spark(engine, master, spark_conf)
    with _exit_on(TableNotValidated):
        if spark is None:
            result = run_customer_view(settings, as_of=as_of)
        else:
            from src.features.spark_view import run_customer_view_spark

            settings.catalog.manifest()  # the same "run validate first" as DuckDB's path
            when = as_of or default_as_of(settings)
            result = run_customer_view_spark(spark, settings.catalog, when)
    for name, path in result.items():
        typer.echo(f"{name:<16} {path}")


@app.command("feature-table")
def feature_table(
    as_of: Annotated[
        list[datetime] | None,
        typer.Option(
            "--as-of",
            help="An as_of date (repeat for several). Default: the time split's dates "
            "(train, validation, test) over the data period.",
        ),
    ] = None,
    window_days: Annotated[
        int | None,
        typer.Option(
            "--window-days",
            help="Label window after as_of; default: models.window_days "
            f"({ModelSettings().window_days}).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = None,
    spark_conf: SparkConfOpt = None,
) -> None:
    """The training table (customer x as_of: view features, then labels from the window after
    as_of) written to data/features/feature_table.parquet, on DuckDB or Spark."""
    from src.features.feature_table import (
        TooShortForTimeSplit,
        build_feature_table,
        data_period,
        plan_as_of_dates,
    )

    settings = _settings(data_dir=data_dir)
    catalog = settings.catalog
    window = window_days if window_days is not None else settings.models.window_days
    spark = _spark(engine, master, spark_conf)
    with _exit_on(TableNotValidated, TooShortForTimeSplit):
        catalog.manifest()
        if as_of:
            dates = tuple(as_of)
        else:
            plan = plan_as_of_dates(
                *data_period(catalog), window_days=window, embargo=settings.models.embargo
            )
            dates, window = plan.dates, plan.window_days
        path = catalog.path("feature_table")
        if spark is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            build_feature_table(catalog, dates, window, progress=True).to_parquet(path)
        else:
            from src.features.spark_view import FeatureTableSpec, write_feature_table_spark

            spec = FeatureTableSpec(tuple(pd_timestamp(d) for d in dates), window)
            write_feature_table_spark(spark, catalog, spec)
    stamps = ", ".join(f"{d:%Y-%m-%d}" for d in dates)
    typer.echo(f"feature_table    {path}  (as_of {stamps}; labels over {window} days)")


def pd_timestamp(value: Any) -> Any:
    """A pandas Timestamp (imported here: ``nextoffer --help`` stays instant)."""
    import pandas as pd

    return pd.Timestamp(value)


@app.command()
def detect(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            help="Evaluate events strictly before this time "
            "(default: the day after the last simulated day).",
        ),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="A rule file or directory of YAML rules.")
    ] = None,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = "local[2]",
    data_dir: DataDirOpt = None,
) -> None:
    """Run the behaviour rules over history: detections, step funnels, rule features.

    With --engine spark: detections, step funnels and rule features on Spark from the stitched
    events that build-view wrote for the same --as-of."""
    from src.features.detection import RuleError, load_rules
    from src.pipeline import default_as_of, run_detection

    settings = _settings(data_dir=data_dir)
    if engine.lower() not in ("duckdb", "spark"):
        typer.echo(f"--engine must be duckdb or spark, got {engine!r}", err=True)
        raise typer.Exit(code=1)
    with _exit_on(RuleError, TableNotValidated, FileNotFoundError, ValueError):
        if engine.lower() == "spark":
            from src.features.detection.spark_batch import (
                python_workers_session,
                run_detection_spark,
            )

            compiled = load_rules(rules) if rules else load_rules()
            spark = python_workers_session(master, app_name="nextoffer-detect")
            paths = run_detection_spark(
                spark, settings.catalog, compiled, as_of or default_as_of(settings)
            )
        else:
            paths = run_detection(settings, as_of=as_of, rules_path=rules)
    for name, path in paths.items():
        typer.echo(f"{name:<16} {path}")


@app.command()
def score(
    as_of: Annotated[
        datetime | None,
        typer.Option(
            "--as-of",
            help="Score the customer view of this date "
            "(default: the day after the last simulated day).",
        ),
    ] = None,
    engine: EngineOpt = "duckdb",
    master: MasterOpt = "local[2]",
    model: Annotated[
        str, typer.Option("--model", help="Registered propensity model to take the champion of.")
    ] = "nextoffer-propensity",
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", min=1, help="Customers per batch (embedded engine).")
    ] = 50_000,
    data_dir: DataDirOpt = None,
    cvr: Annotated[
        bool,
        typer.Option(
            "--cvr",
            help="Score the CVR champion (nextoffer-cvr) over customer x offer instead: writes "
            "cvr_scores (what cvr / expected_value campaign segments read). Embedded engine.",
        ),
    ] = False,
) -> None:
    """Score every customer of the view with the champion propensity model: writes the
    scores table (customer_id, product, score, model_version, as_of)."""
    from tqdm import tqdm

    from src.models.scoring import NoChampion, run_score
    from src.pipeline import default_as_of

    settings = _settings(data_dir=data_dir)
    when = as_of or default_as_of(settings)
    if cvr:
        from src.models.scoring import CVR_MODEL, run_score_cvr

        name = CVR_MODEL if model == "nextoffer-propensity" else model
        with _exit_on(NoChampion, FileNotFoundError, ValueError):
            path, champion = run_score_cvr(
                settings.catalog, when, settings.tracking_uri, name, chunk_rows=chunk_rows
            )
        typer.echo(f"cvr_scores       {path}  ({champion.label})")
        return
    with (
        _exit_on(NoChampion, FileNotFoundError, ValueError),
        tqdm(desc="scoring", unit=" customers", disable=engine != "duckdb") as bar,
    ):
        path, champion = run_score(
            settings.catalog,
            when,
            settings.tracking_uri,
            engine=engine.lower(),
            master=master,
            model_name=model,
            chunk_rows=chunk_rows,
            progress=bar.update,
        )
    typer.echo(f"scores           {path}  ({champion.label}, {len(champion.products)} products)")


@app.command("detect-stream")
def detect_stream(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="Directory of Parquet/JSON stitched-event files, or a Kafka topic with "
            "--kafka-bootstrap.",
        ),
    ],
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="Offsets and per-customer state (restartable).")
    ],
    output: Annotated[
        Path, typer.Option("--output", help="Directory the detections are appended to (Parquet).")
    ],
    fmt: Annotated[str, typer.Option("--format", help="parquet or json (files).")] = "parquet",
    watermark_seconds: Annotated[
        int,
        typer.Option(
            "--watermark-seconds",
            min=0,
            help="Allowed lateness; a timeout is reported this long after its deadline.",
        ),
    ] = 60,
    available_now: Annotated[
        bool,
        typer.Option("--available-now", help="Process what is there, then stop (else: run on)."),
    ] = False,
    max_files_per_trigger: Annotated[
        int | None, typer.Option("--max-files-per-trigger", min=1, help="Files per micro-batch.")
    ] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option("--kafka-bootstrap", help="Read --source as a Kafka topic.")
    ] = None,
    kafka_starting_offsets: Annotated[
        str,
        typer.Option(
            "--kafka-starting-offsets",
            help="earliest, latest or JSON offsets (a new checkpoint only); needs the "
            "spark-sql-kafka connector (spark-submit --packages).",
        ),
    ] = "latest",
    rules: Annotated[
        Path | None, typer.Option("--rules", help="A rule file or directory of YAML rules.")
    ] = None,
    master: MasterOpt = "local[2]",
) -> None:
    """Run the behaviour rules on a stream of events (Spark Structured Streaming): per-customer
    state, event-time timeouts; detections are appended to --output as Parquet."""
    from src.features.detection import RuleError, load_rules
    from src.features.detection import spark_stream as ss
    from src.features.detection.spark_batch import python_workers_session

    with _exit_on(RuleError, ValueError, FileNotFoundError, ss.KafkaConnectorMissing):
        compiled = load_rules(rules) if rules else load_rules()
        if kafka_bootstrap is None and not Path(source).is_dir():
            raise FileNotFoundError(f"--source {source}: no such directory")
        if kafka_bootstrap is not None:
            ss.kafka_options(kafka_bootstrap, source, kafka_starting_offsets)  # before the JVM
        spark = python_workers_session(master, app_name="nextoffer-detect-stream")
        events = (
            ss.read_kafka_events(spark, kafka_bootstrap, source, kafka_starting_offsets)
            if kafka_bootstrap
            else ss.read_event_files(spark, source, fmt, max_files_per_trigger)
        )
        query = ss.start_detection_query(
            ss.detect_stream(events, compiled, watermark_seconds),
            output,
            checkpoint,
            available_now=available_now,
        )
        try:
            query.awaitTermination()
        except KeyboardInterrupt:  # pragma: no cover - interactive
            query.stop()
    progress = query.recentProgress
    rows = sum(p["numInputRows"] for p in progress)
    dropped = sum(
        op.get("numRowsDroppedByWatermark", 0) for p in progress for op in p["stateOperators"]
    )
    typer.echo(
        f"events           {rows} in {len(progress)} micro-batches "
        f"({dropped} dropped as later than the watermark)"
    )
    typer.echo(f"detections       {output}")


@app.command()
def retrain(
    as_of: Annotated[
        datetime,
        typer.Option(
            "--as-of",
            help="Train with data strictly before this date (the day the scheduler runs).",
        ),
    ],
    max_staleness_days: Annotated[
        int | None,
        typer.Option(
            "--max-staleness-days",
            help="Refuse an --as-of more than this many days after the last event; "
            f"default: models.max_staleness_days ({ModelSettings().max_staleness_days}).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrain with papermill: the propensity and CVR notebooks, executed copies under reports/."""
    from src.models.retrain import RetrainError, StaleDataError
    from src.models.retrain import retrain as run_retrain

    settings = _settings(data_dir=data_dir, models={"max_staleness_days": max_staleness_days})
    try:
        result = run_retrain(settings, as_of, progress=True)
    except (
        RetrainError,
        StaleDataError,
        TableNotValidated,
    ) as error:  # one-line reason, then the notebook
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error
    for step in result.steps:
        typer.echo(f"{step.name:<22} {step.seconds:>7.1f}s  run {step.run_id}  {step.notebook}")
        promotion = step.info.get("promotion")
        if promotion:
            typer.echo(f"{'':<22} {promotion}")


@app.command()
def monitor(
    as_of: Annotated[
        datetime,
        typer.Option("--as-of", help="Compare the customer view as of this date."),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help=f"Registered model (default: monitor.model_name, {MonitorSettings().model_name}).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", help="Report folder (default: reports/monitor/<as_of>/)."),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Drift of the customer view and the champion's scores vs its training window (PSI);
    report under reports/monitor/, logged to MLflow; exit 3 past the alert threshold."""
    import os

    from src.models.monitor import ALERT_EXIT_CODE, MonitorError, run_monitor

    # a cron log: the verdict and the report's path, not MLflow's per-artifact download bar
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings = _settings(data_dir=data_dir)
    with _exit_on(MonitorError, TableNotValidated):
        result = run_monitor(settings, as_of, model_name=model, out_dir=out_dir)
    typer.echo(result.summary())
    typer.echo(f"report: {result.out_dir}  run {result.run_id}")
    if result.alert:
        raise typer.Exit(code=ALERT_EXIT_CODE)


@app.command("train-bandit")
def train_bandit(
    held_out_share: Annotated[
        float | None,
        typer.Option(
            help="Share of the log (latest by time) held out to score the bandit (doubly "
            f"robust); default: bandit.held_out_share ({BanditSettings().held_out_share})."
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="Train from this decision log (Parquet/CSV: action, prob, reward, context "
            "columns, candidates or slot, ts) instead of the simulated bank's exposures.",
        ),
    ] = None,
    actions: Annotated[
        Path | None,
        typer.Option(
            "--actions",
            help="With --log: the action catalog (offer_id, optional slot, feature columns).",
        ),
    ] = None,
    context: Annotated[
        list[str] | None,
        typer.Option("--context", help="With --log: context column(s) (repeat or comma-separate)."),
    ] = None,
    action_features: Annotated[
        list[str] | None,
        typer.Option(
            "--action-features", help="With --log: catalog column(s) that describe an action."
        ),
    ] = None,
    pair_features: Annotated[
        list[str] | None,
        typer.Option(
            "--pair-features",
            help="With --log: per-(context, action) column(s): offer -> number per row (JSON "
            "object) or a list aligned with the row's candidates.",
        ),
    ] = None,
    candidates: Annotated[
        Path | None,
        typer.Option("--candidates", help="With --log: offers eligible per slot (slot, offer_id)."),
    ] = None,
    time_col: Annotated[
        str | None,
        typer.Option("--time-col", help="With --log: the time column (default ts/timestamp)."),
    ] = None,
    register: Annotated[
        str,
        typer.Option("--register", help="With --log: registered model name."),
    ] = "nextoffer-log-bandit",
    no_register: Annotated[
        bool, typer.Option("--no-register", help="With --log: report only, register nothing.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="With --log: reward-model folds.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the content bandit from logged decisions (the bank's exposures, or any log with
    --log/--actions); score it off-policy on held-out time; register only if it is better."""
    settings = _settings(data_dir=data_dir, bandit={"held_out_share": held_out_share})
    if log is not None or actions is not None:
        if log is None or actions is None:
            typer.echo("train-bandit: --log and --actions go together", err=True)
            raise typer.Exit(code=1)
        _train_bandit_on_log(
            settings,
            log,
            actions,
            context=context or [],
            action_features=action_features or [],
            pair_features=pair_features or [],
            candidates=candidates,
            time_col=time_col,
            register=None if no_register else register,
            seed=seed,
            progress=not quiet,
        )
        return
    from src.pipeline import run_bandit_training

    with _exit_on(TableNotValidated):
        result = run_bandit_training(settings, progress=not quiet)
    typer.echo(
        f"trained on {result.train_decisions:,} logged decisions; held out "
        f"{result.held_out_decisions:,}: logged policy {result.logged_policy_value:.4f}, "
        f"bandit (DR) {result.held_out_dr_value:.4f}"
    )
    outcome = "champion" if result.promotion.promoted else "challenger"
    typer.echo(
        f"{result.promotion.name} v{result.promotion.version} -> {outcome}: {result.promotion.reason}"
    )


def _train_bandit_on_log(settings: Settings, log: Path, actions: Path, **options: Any) -> None:
    """``train-bandit --log``: the generic log path (:mod:`src.models.bandit_log`)."""
    from src.models.bandit import BanditConfig
    from src.models.bandit_log import run_log_training
    from src.models.ope import LogError, PolicyError

    try:
        result = run_log_training(
            log,
            actions,
            config=BanditConfig.of(settings.bandit),
            held_out_share=settings.bandit.held_out_share,
            tracking_uri=settings.tracking_uri,
            artifact_location=settings.artifact_root.as_uri(),
            echo=typer.echo,
            **options,
        )
    except (LogError, PolicyError, ValueError, FileNotFoundError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error
    typer.echo(result.report.to_text())
    champion = (
        f", champion {result.champion_value:.5f}" if result.champion_value is not None else ""
    )
    typer.echo(
        f"\nheld out {result.held_out_decisions:,} decisions ({result.split}): logging policy "
        f"{result.logged_value:.5f}, uniform (DR) {result.uniform_value:.5f}, bandit (DR) "
        f"{result.value:.5f}{champion}"
    )
    typer.echo(result.registered)


@app.command("train-table")
def train_table(
    file: Annotated[Path, typer.Argument(help="CSV (any separator) or Parquet file.")],
    target: Annotated[str, typer.Option("--target", help="The outcome column.")],
    positive: Annotated[
        str | None,
        typer.Option(
            "--positive",
            help="Target value that counts as positive (default: 0/1, booleans or yes/no).",
        ),
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", help="Column to leave out (e.g. one that leaks the outcome)."),
    ] = None,
    missing_value: Annotated[
        list[str] | None,
        typer.Option(
            "--missing-value",
            help="COL=VALUE: that value means missing (e.g. pdays=999); an indicator is added.",
        ),
    ] = None,
    time_col: Annotated[
        str | None,
        typer.Option(
            "--time-col", help="Time column: adds a time split (earlier rows train); not a feature."
        ),
    ] = None,
    time_order: Annotated[
        str | None,
        typer.Option(
            "--time-order",
            help="'rows': no time column, but the rows are in time order (time split by position).",
        ),
    ] = None,
    drift_cols: Annotated[
        list[str] | None,
        typer.Option(
            "--drift-cols",
            help="Comma-separated columns for the drift diagnostic (each alone, train vs test "
            "rows; the time split refitted without them). Needs a time split.",
        ),
    ] = None,
    folds: Annotated[int, typer.Option("--folds", help="Stratified CV folds.")] = 5,
    sep: Annotated[
        str | None, typer.Option("--sep", help="CSV separator (default: sniffed).")
    ] = None,
    sample: Annotated[
        int | None, typer.Option("--sample", help="Keep N evenly spaced rows (a quick run).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Folds and validation slices.")] = 7,
    register: Annotated[
        str | None,
        typer.Option(
            "--register",
            help="Register the final model under this name (challenger; champion if better).",
        ),
    ] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow.")] = True,
) -> None:
    """Propensity on any table: stratified CV AUC (LightGBM, logistic) and a time-split AUC."""
    from src.models.tabular import (
        TableError,
        TableSpec,
        format_result,
        parse_columns,
        parse_missing,
    )
    from src.models.tabular import train_table as run_train_table

    if time_order not in (None, "rows"):
        typer.echo(f"--time-order {time_order!r}: the only order is 'rows'", err=True)
        raise typer.Exit(code=1)
    if register and not track:
        typer.echo("--register needs the MLflow run: drop --no-track", err=True)
        raise typer.Exit(code=1)
    try:
        spec = TableSpec(
            target=target,
            positive=positive,
            drop=parse_columns(drop or []),
            missing=parse_missing(missing_value or []),
            time_col=time_col,
            time_order="rows" if time_order else None,
            drift_cols=parse_columns(drift_cols or []),
        )
        run = run_train_table(
            file,
            spec,
            sep=sep,
            n_folds=folds,
            seed=seed,
            sample=sample,
            settings=_settings(),
            track=track,
            register=register,
        )
    except TableError as error:  # names the column (and rows) at fault
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    typer.echo(format_result(run))


@app.command("evaluate-policy")
def evaluate_policy(
    log: Annotated[
        Path,
        typer.Argument(
            help="Decision log (Parquet or CSV): action, prob, reward; optionally decision_id, "
            "customer_id, slot, position, candidates (comma-separated) and context columns."
        ),
    ],
    policy: Annotated[
        list[str],
        typer.Option(
            "--policy",
            help="uniform | constant:OF07,OF14 | model:<mlflow uri> | file:<probabilities "
            "file, long (decision_id, action, prob) or wide (decision_id + one column per "
            "offer)>; repeat to compare several.",
        ),
    ] = ["uniform"],  # noqa: B006 - typer needs a literal default
    candidates: Annotated[
        Path | None,
        typer.Option(
            "--candidates",
            help="CSV/Parquet of the offers eligible per slot (slot, offer_id). Without it "
            "and without a candidates column they are derived from the logged actions "
            "(with a warning).",
        ),
    ] = None,
    context: Annotated[
        list[str] | None,
        typer.Option(
            "--context",
            help="Context column(s) for the reward model (repeat or comma-separate); none by "
            "default. Ids and timestamps are refused.",
        ),
    ] = None,
    positions: Annotated[
        str,
        typer.Option(
            "--positions",
            help="With a position column: per-position (one estimate per position) or "
            "independent (the slate's value, positions assumed independent).",
        ),
    ] = "per-position",
    reward_model: Annotated[
        bool,
        typer.Option(
            "--reward-model/--no-reward-model", help="Fit the reward model (DM, DR, SNDR, DR-OS)."
        ),
    ] = True,
    n_bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap replicates (percentile intervals).")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Reward-model folds and bootstrap.")] = 0,
    reward_range: Annotated[
        str | None,
        typer.Option(
            "--reward-range",
            help="LO,HI: the possible rewards (default [min(0, min r), max(1, max r)]).",
        ),
    ] = None,
    alpha: Annotated[float, typer.Option(help="1 - confidence level of the intervals.")] = 0.05,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Also write the estimates and diagnostics to this JSON file."),
    ] = None,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DM, DR, SNDR, DR-OS) of policies' value on a decision
    log, with diagnostics (max weight, effective sample size, mass on unlogged actions)."""
    import json

    from src.models.ope import LogError, PolicyError
    from src.models.ope_log import evaluate

    try:
        lo_hi = None
        if reward_range is not None:
            parts = [p.strip() for p in reward_range.split(",")]
            if len(parts) != 2:
                raise LogError(f"--reward-range {reward_range!r}: want LO,HI (e.g. 0,1)")
            try:
                lo_hi = (float(parts[0]), float(parts[1]))
            except ValueError as error:
                raise LogError(f"--reward-range {reward_range!r}: want two numbers") from error
        report = evaluate(
            log,
            {name: name for name in policy},
            candidates=candidates,
            context=context or [],
            reward_model=reward_model,
            positions=positions,
            alpha=alpha,
            n_bootstrap=n_bootstrap,
            seed=seed,
            reward_range=lo_hi,
        )
    except (LogError, PolicyError, ValueError, FileNotFoundError) as error:  # names the field
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error
    typer.echo(report.to_text())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "info": report.info,
            "estimates": report.estimates.to_dict("records"),
            "diagnostics": report.diagnostics.to_dict("records"),
            "warnings": report.warnings,
        }
        out.write_text(json.dumps(payload, indent=2, default=str))
        typer.echo(f"report -> {out}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: DataDirOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server processes on the port (above 1: needs the shared PostgreSQL log and "
            "Redis contact store, NEXTOFFER_SERVING__LOG_URL / __CONTACT_STORE_URL).",
        ),
    ] = None,
) -> None:
    """The scoring endpoint for the offer slot (OpenAPI at /docs); settings NEXTOFFER_SERVING__*."""
    from src.serving.service import check_workers
    from src.serving.service import serve as run_server

    settings = _settings(data_dir=data_dir)
    n = workers or settings.serving.workers
    if n > 1:
        with _exit_on(ValueError):
            check_workers(settings.serving, n)
    run_server(settings, host=host, port=port, workers=n)


@app.command("publish-view")
def publish_view(
    as_of: Annotated[
        datetime, typer.Option("--as-of", help="Publish customer_view_<as_of> (built before).")
    ],
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            help="PostgreSQL URL of the shared customer store; default: the "
            "customer_store_url setting, else the catalog's manifest file (one process).",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make the customer view (and scores_<as_of>, if scored) the one every replica serves; the
    replicas switch to it without a restart."""
    from psycopg import Error as DatabaseError

    from src.serving.customer_store_shared import publish_to_file, publish_to_postgres

    settings = _settings(data_dir=data_dir)
    url = store_url or settings.serving.customer_store_url
    catalog = settings.catalog
    with _exit_on(FileNotFoundError, ValueError, DatabaseError):
        if url is None:
            manifest = publish_to_file(catalog, as_of)
        else:
            view_path = catalog.path("customer_view", as_of)
            if not view_path.exists():
                raise FileNotFoundError(f"as_of: no customer view at {view_path}: run build-view")
            scores_path = catalog.path("scores", as_of)
            manifest = publish_to_postgres(
                url,
                settings.serving.customer_store_schema,
                catalog.read("customer_view", as_of),
                as_of,
                catalog.read("scores", as_of) if scores_path.exists() else None,
                progress=True,
            )
    typer.echo(
        f"published the customer view as of {manifest.as_of}: {manifest.customers:,} customers, "
        f"scores {manifest.scores_version or 'none'} -> {manifest.location}"
    )


@app.command("export-log")
def export_log(
    out_dir: Annotated[Path, typer.Argument(help="Directory for the Parquet files.")],
    reward: Annotated[
        str, typer.Option(help="click | conversion: the reward column for off-policy evaluation.")
    ] = "click",
    data_dir: DataDirOpt = None,
) -> None:
    """Decisions and rewards from the serving log to Parquet, for retraining and evaluate-policy."""
    from src.serving.service import export_log as export

    for name, path in export(_settings(data_dir=data_dir), out_dir, reward=reward).items():
        typer.echo(f"{name:<18} {path}")


@app.command("to-spark-sql")
def to_spark_sql(
    name: Annotated[str, typer.Argument(help="SQL file under src/features/sql (without .sql).")],
) -> None:
    """Print a feature SQL file transpiled to Spark SQL (sqlglot); ``$as_of`` becomes ``:as_of``."""
    from src.features.identity import load_sql, sql_files
    from src.features.spark import to_spark_sql as transpile

    if name not in sql_files():
        raise typer.BadParameter(
            f"no {name}.sql; one of {', '.join(sql_files())}", param_hint="NAME"
        )
    typer.echo(transpile(load_sql(name)))


@app.command("data-dictionary")
def data_dictionary(
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file (default: print).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="md (Markdown) or html.")] = "md",
) -> None:
    """The customer view's data dictionary (every column: meaning, window, source, unit),
    generated from the same constants as the SQL."""
    from src.features.data_dictionary import render

    if fmt not in ("md", "html"):
        raise typer.BadParameter("md or html", param_hint="--format")
    text = render(fmt)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"data dictionary ({fmt}) -> {out}")


@app.command()
def demo(
    customers: CustomersOpt = None,
    days: DaysOpt = None,
    seed: SeedOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """The main job end to end on embedded defaults: simulate, validate, stitch, build the view,
    detect, train, serve a few decisions."""
    import os

    from src.pipeline import run_demo

    # the demo prints its own progress; MLflow's per-artifact bars and INFO lines drown it out
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    settings = _settings(customers=customers, days=days, seed=seed, data_dir=data_dir)
    run_demo(settings, echo=typer.echo)


# -- campaigns: who, when, what, how, where and why ------------------------------------------
campaign_app = typer.Typer(
    help="Outbound campaigns: validate, dry-run, approve, run, tick, watch, receipts, report, "
    "rewards, why.",
    no_args_is_help=True,
)
app.add_typer(campaign_app, name="campaign")
SpecArg = Annotated[Path, typer.Argument(help="Campaign spec (YAML).")]
CampaignAsOfOpt = Annotated[
    datetime | None, typer.Option("--as-of", help="View date (default: the newest view).")
]
StepOpt = Annotated[str | None, typer.Option("--step", help="Step id (default: the first).")]


def _campaign_errors() -> Any:
    from src.campaigns.engine import ApprovalError
    from src.campaigns.segments import SegmentError
    from src.campaigns.spec import SpecError
    from src.contact.store import StoreUnavailable

    return _exit_on(SpecError, SegmentError, ApprovalError, StoreUnavailable, TableNotValidated)


def _campaigns(data_dir: Path | None, as_of: datetime | None) -> Any:
    from src.campaigns.api import Campaigns
    from src.data.catalog import as_of_stamp

    settings = _settings(data_dir=data_dir)
    if as_of is None:
        latest = settings.catalog.latest("customer_view")
        if latest is None:
            raise typer.BadParameter(
                "no customer view: run `nextoffer build-view`", param_hint="--as-of"
            )
        as_of = datetime.fromisoformat(latest.stem.removeprefix("customer_view_"))
    as_of_stamp(as_of)
    return Campaigns(settings, as_of)


@campaign_app.command("validate")
def campaign_validate(
    spec: SpecArg, as_of: CampaignAsOfOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Check a spec: fields, steps, channel rules, offers, template fields, the segment."""
    from src.campaigns.spec import SpecError, load_spec

    with _campaign_errors():
        parsed = load_spec(spec)
        problems = _campaigns(data_dir, as_of).validate(parsed)
        if problems:
            raise SpecError(f"{spec}: " + "; ".join(problems))
    typer.echo(f"{parsed.campaign_id}: valid ({len(parsed.steps)} step(s))")


@campaign_app.command("dry-run")
def campaign_dry_run(
    spec: SpecArg, as_of: CampaignAsOfOpt = None, step: StepOpt = None, data_dir: DataDirOpt = None
) -> None:
    """The audience funnel (segment, each exclusion, consent, quiet hours, holdout, fatigue)
    and the expected conversions, cost and ROAS; saved as JSON beside the campaign store."""
    import json

    with _campaign_errors():
        c = _campaigns(data_dir, as_of)
        result = c.dry_run(spec, step)
    for stage, n in result["funnel"].items():
        typer.echo(f"{stage:>28}: {n}")
    for key in ("requeued_quiet_hours", "expected_conversions", "cost_krw", "roas"):
        if key in result:
            typer.echo(f"{key:>28}: {result[key]}")
    out = c.settings.campaigns_dir / result["campaign_id"] / "dry_run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    typer.echo(f"funnel -> {out}")


@campaign_app.command("approve")
def campaign_approve(
    spec: SpecArg,
    user: Annotated[str, typer.Option("--user", help="Approver (not the spec's owner).")],
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Approve the content-hashed bundle (spec, segment version, caps, holdout)."""
    with _campaign_errors():
        h = _campaigns(data_dir, as_of).approve(spec, user)
    typer.echo(f"approved by {user}: bundle {h[:16]}")


@campaign_app.command("run")
def campaign_run(
    spec: SpecArg,
    as_of: CampaignAsOfOpt = None,
    step: StepOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Enqueue an approved step into the outbox (with its cap charges) and deliver it."""
    with _campaign_errors():
        result = _campaigns(data_dir, as_of).run(spec, step_id=step, progress=True)
    typer.echo(
        f"step {result.step_id}: enqueued {result.enqueued}, capped {result.capped}, "
        f"suppressed {result.suppressed}, sent {result.sent}"
    )


@campaign_app.command("report")
def campaign_report(
    spec: SpecArg, as_of: CampaignAsOfOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Per step and channel: members, suppressed, capped, sent and responses; reasons; the
    conversion lift (ITT, 95 % CI) overall and per step, channel and age band."""
    with _campaign_errors():
        rep = _campaigns(data_dir, as_of).report(spec)
    typer.echo(rep["primary_metric"])
    typer.echo(rep["steps"].to_string(index=False))
    typer.echo(rep["reasons"].to_string(index=False))
    if "lifts" in rep:
        cols = ["level", "key", "n_treatment", "n_control", "lift", "ci_low", "ci_high"]
        typer.echo(rep["lifts"][cols].to_string(index=False, float_format="{:.4f}".format))


@campaign_app.command("rewards")
def campaign_rewards(
    spec: SpecArg,
    now: Annotated[
        datetime | None,
        typer.Option("--now", help="Settlement time: expiry is judged against it (default: now)."),
    ] = None,
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Settle rewards: post on qualifying events, void on expiry, pay posted rewards (payouts
    file keyed by transfer id), then reconcile eligible vs pending vs posted vs voided vs failed."""
    with _campaign_errors():
        r = _campaigns(data_dir, as_of).rewards(spec, now or datetime.now())
    rec = r["reconciliation"]
    typer.echo(
        f"{r['campaign_id']}: eligible events {r['eligible_events']}, paid now {r['paid_now']}, "
        f"voided now {r['voided_now']}, refused by budget {r['refused_by_budget']}"
    )
    for state in ("pending", "posted", "voided"):
        typer.echo(
            f"{state:>8}: {rec.counts.get(state, 0):>6}  {rec.amounts.get(state, 0.0):>14,.0f} KRW"
        )
    typer.echo(f"{'paid':>8}: {rec.counts.get('paid', 0):>6}")
    typer.echo(f"{'failed':>8}: {rec.unpaid_posted:>6}  (posted, not yet paid)")
    typer.echo(
        f"ledger balance {rec.entries_sum:.2f}; problems: {'; '.join(rec.problems) or 'none'}"
    )
    if rec.problems:
        raise typer.Exit(code=1)


@campaign_app.command("tick")
def campaign_tick(
    at: Annotated[
        datetime | None,
        typer.Option("--at", help="The scheduler's time (local, naive; default: now)."),
    ] = None,
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run every approved campaign whose `when` (at / cron) is due, once per occurrence (call
    it from cron or a scheduler; a repeated tick runs nothing twice)."""
    with _campaign_errors():
        ran = _campaigns(data_dir, as_of).tick(at or datetime.now())
    _echo_tick(ran)


def _echo_tick(ran: list[tuple[str, str, Any]]) -> None:
    if not ran:
        typer.echo("nothing due")
    for campaign_id, occurrence, result in ran:
        if result is None:
            typer.echo(f"{campaign_id} @ {occurrence}: already ran")
            continue
        extra = ""
        if occurrence == "trigger":
            extra = (
                f"detections {result.detections} (not in segment {result.not_in_segment}, "
                f"stale {result.stale}), "
            )
        typer.echo(
            f"{campaign_id} @ {occurrence}: {extra}enqueued {result.enqueued}, capped "
            f"{result.capped}, suppressed {result.suppressed}, sent {result.sent}"
        )


@campaign_app.command("watch")
def campaign_watch(
    interval: Annotated[
        float, typer.Option("--interval", min=1.0, help="Seconds between ticks.")
    ] = 60.0,
    max_ticks: Annotated[
        int | None, typer.Option("--max-ticks", min=1, help="Stop after this many ticks.")
    ] = None,
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """`tick` every --interval seconds: trigger campaigns send within about that long of a
    detection (plus their delay); schedules fire as with `tick` from cron."""
    import time

    with _campaign_errors():
        c = _campaigns(data_dir, as_of)
        n = 0
        while max_ticks is None or n < max_ticks:
            if n:
                time.sleep(interval)
            _echo_tick(c.tick(datetime.now()))
            n += 1


@campaign_app.command("receipts")
def campaign_receipts(
    file: Annotated[Path, typer.Argument(help="Receipts: CSV or JSONL of message_id,status,ts.")],
    allow_invalid: Annotated[
        bool,
        typer.Option("--allow-invalid", help="Record the valid rows; report the invalid ones."),
    ] = False,
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Ingest a provider's delivery receipts (delivered, failed, opened, clicked): every row
    checked, idempotent; `campaign report` reconciles sends against them."""
    from src.campaigns.receipts import ReceiptError

    with _exit_on(ReceiptError), _campaign_errors():
        r = _campaigns(data_dir, as_of).receipts(file, allow_invalid=allow_invalid)
    typer.echo(
        f"{file}: {r.rows} row(s): recorded {r.recorded}, already stored {r.duplicates}, "
        f"rejected {r.rejected}, for messages not marked sent {r.not_marked_sent}"
    )
    for problem in r.problems:
        typer.echo(f"rejected: {problem}", err=True)


@campaign_app.command("why")
def campaign_why(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    customer: Annotated[str, typer.Argument(help="Customer id.")],
    as_of: CampaignAsOfOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Why a customer was (not) contacted, per step."""
    with _campaign_errors():
        table = _campaigns(data_dir, as_of).why(campaign, customer)
    if table.empty:
        typer.echo(f"{customer}: not in any run of campaign {campaign!r}", err=True)
        raise typer.Exit(code=1)
    typer.echo(table.to_string(index=False))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
