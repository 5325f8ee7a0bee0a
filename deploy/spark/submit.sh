#!/usr/bin/env bash
# Build the wheel and submit one nextoffer command to a Spark cluster.
#
#   deploy/spark/submit.sh build-view --engine spark --as-of 2026-04-01 --data-dir /mnt/bank
#
# SPARK_MASTER (default local[2]), SPARK_DEPLOY_MODE (client), SPARK_DRIVER_MEMORY (4g),
# SPARK_EXECUTOR_MEMORY (8g), SPARK_SHUFFLE_PARTITIONS (200) and PYSPARK_PYTHON (a Python on
# every node with the wheel's dependencies, see README.md) are read from the environment.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# 1. the wheel: the package with its SQL files (src/features/sql/*.sql are package data)
rm -rf "$root/dist" && python -m pip wheel --no-deps --wheel-dir "$root/dist" "$root" >/dev/null
wheel="$(ls "$root"/dist/nextoffer-*.whl)"
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("src/features/sql/customer_view.sql", "src/cli.py") if n not in names]
sys.exit(f"the wheel lacks {missing}" if missing else 0)
PY

# 2. submit: the wheel on the executors' and driver's Python path, entry.py as the application
exec spark-submit \
  --master "${SPARK_MASTER:-local[2]}" \
  --deploy-mode "${SPARK_DEPLOY_MODE:-client}" \
  --name "nextoffer $1" \
  --driver-memory "${SPARK_DRIVER_MEMORY:-4g}" \
  --executor-memory "${SPARK_EXECUTOR_MEMORY:-8g}" \
  --conf spark.sql.shuffle.partitions="${SPARK_SHUFFLE_PARTITIONS:-200}" \
  --conf spark.sql.adaptive.enabled=true \
  --py-files "$wheel" \
  "$here/entry.py" "$@"
