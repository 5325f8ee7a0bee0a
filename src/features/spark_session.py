"""One way to get a Spark session whose results do not depend on the cluster's time zone.

Every timestamp in the contract is a naive local (Asia/Seoul) wall-clock time. Spark's default
``TIMESTAMP`` is an instant rendered in the session zone, so the same Parquet file would give a
different view on a cluster set to another zone; with ``spark.sql.timestampType=TIMESTAMP_NTZ``
and Parquet's NTZ inference, timestamps stay wall-clock times whatever the session zone is.
pyspark is imported lazily: it is an optional dependency (``pip install .[spark]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_CONF: dict[str, str] = {
    "spark.sql.timestampType": "TIMESTAMP_NTZ",
    "spark.sql.parquet.inferTimestampNTZ.enabled": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_session(
    master: str | None = "local[2]",
    session_time_zone: str = "UTC",
    app_name: str = "nextoffer",
    shuffle_partitions: int | None = None,
    extra_conf: dict[str, Any] | None = None,
) -> SparkSession:
    """A (possibly existing) session with :data:`SPARK_CONF`; ``shuffle_partitions`` defaults
    to 4 in local mode (Spark's 200 only adds overhead on one machine).

    ``master=None`` leaves the master to ``spark-submit --master`` / ``spark-defaults.conf``
    (a job submitted to a cluster, see deploy/spark/); ``extra_conf`` wins over everything.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as error:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "the Spark engine needs pyspark: pip install 'nextoffer[spark]' (and Java 17)"
        ) from error
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    conf = dict(SPARK_CONF)
    conf["spark.sql.session.timeZone"] = session_time_zone
    if shuffle_partitions is not None:
        conf["spark.sql.shuffle.partitions"] = str(shuffle_partitions)
    conf.update({k: str(v) for k, v in (extra_conf or {}).items()})
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    running = session.sparkContext.master or ""
    if "spark.sql.shuffle.partitions" not in conf and running.startswith("local"):
        conf["spark.sql.shuffle.partitions"] = "4"
    for key, value in conf.items():  # an existing session takes the runtime settings too
        if key.startswith("spark.sql."):
            session.conf.set(key, value)
    return session
