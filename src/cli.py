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
from src.settings import BanditSettings, ModelSettings, Settings

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
    from src.data.loaders import RawDataError, validate_raw

    settings = _settings(data_dir=data_dir)
    try:
        report = validate_raw(settings.catalog, quarantine=quarantine)
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
    data_dir: DataDirOpt = None,
) -> None:
    """Run the behaviour rules over history: detections, step funnels, rule features."""
    from src.features.detection import RuleError
    from src.pipeline import run_detection

    settings = _settings(data_dir=data_dir)
    with _exit_on(RuleError, TableNotValidated):
        paths = run_detection(settings, as_of=as_of, rules_path=rules)
    for name, path in paths.items():
        typer.echo(f"{name:<16} {path}")


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
        result = run_retrain(settings, as_of)
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


@app.command("train-bandit")
def train_bandit(
    held_out_share: Annotated[
        float | None,
        typer.Option(
            help="Share of the logged days held out to score the bandit (doubly robust); "
            f"default: bandit.held_out_share ({BanditSettings().held_out_share})."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the content bandit from the logged exposures; register it, promote only if better."""
    from src.pipeline import run_bandit_training

    settings = _settings(data_dir=data_dir, bandit={"held_out_share": held_out_share})
    with _exit_on(TableNotValidated):
        result = run_bandit_training(settings)
    typer.echo(
        f"trained on {result.train_decisions:,} logged decisions; held out "
        f"{result.held_out_decisions:,}: logged policy {result.logged_policy_value:.4f}, "
        f"bandit (DR) {result.held_out_dr_value:.4f}"
    )
    outcome = "champion" if result.promotion.promoted else "challenger"
    typer.echo(
        f"{result.promotion.name} v{result.promotion.version} -> {outcome}: {result.promotion.reason}"
    )


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
            help="Decision log (Parquet or CSV): action, prob, "
            "reward and candidates (comma-separated) or slot."
        ),
    ],
    policy: Annotated[
        list[str],
        typer.Option(
            "--policy",
            help="uniform | constant:OF07,OF14 | model:<mlflow uri>; repeat to compare several.",
        ),
    ] = ["uniform"],  # noqa: B006 - typer needs a literal default
    alpha: Annotated[float, typer.Option(help="1 - confidence level of the intervals.")] = 0.05,
) -> None:
    """Off-policy estimates (IPS, SNIPS, DM, DR) of policies' value from a logged decision file."""
    from src.models.ope import evaluate_policy_file

    try:
        table = evaluate_policy_file(log, {name: name for name in policy}, alpha=alpha)
    except (ValueError, FileNotFoundError) as error:  # the message names the file and field
        typer.echo(str(error), err=True)
        raise typer.Exit(code=1) from error
    typer.echo(table.to_string(index=False))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    data_dir: DataDirOpt = None,
) -> None:
    """The scoring endpoint for the offer slot (OpenAPI at /docs); settings NEXTOFFER_SERVING__*."""
    from src.serving.service import serve as run_server

    run_server(_settings(data_dir=data_dir), host=host, port=port)


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


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
