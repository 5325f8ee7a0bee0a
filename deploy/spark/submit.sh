#!/usr/bin/env bash
# Build the wheel and submit one nextoffer command to a Spark cluster.
#
#   deploy/spark/submit.sh build-view --engine spark --as-of 2026-04-01 --data-dir /mnt/bank
#
# Read from the environment:
#   SPARK_MASTER (default local[2]), SPARK_DEPLOY_MODE (client), SPARK_DRIVER_MEMORY (4g),
#   SPARK_EXECUTOR_MEMORY (8g), SPARK_SHUFFLE_PARTITIONS (200; 4 is right for local[2]),
#   SPARK_SUBMIT (spark-submit from the PATH, else the one pyspark installs beside python),
#   PYTHON (the Python that builds the wheel and runs the driver; default: python3 on the PATH),
#   PYSPARK_PYTHON (a Python on every node with the wheel's dependencies, see README.md;
#   default: $PYTHON, right for local masters),
#   NEXTOFFER_DIST (where the wheel is built; default: dist/ in the repository).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 <nextoffer command> [options]" >&2; exit 2; }
python="${PYTHON:-$(command -v python3)}"
dist="${NEXTOFFER_DIST:-$root/dist}"

# 1. the wheel: the package with its SQL files and rule YAMLs (package data). uv builds it in
#    an isolated environment; without uv, pip builds it with the setuptools already installed
#    (no build isolation: nothing is downloaded).
rm -rf "$dist" && mkdir -p "$dist"
uv="$(command -v uv || true)"
[[ -n "$uv" ]] || { [[ -x "$(dirname "$python")/uv" ]] && uv="$(dirname "$python")/uv"; }
if [[ -n "$uv" ]]; then
  "$uv" build --quiet --wheel --out-dir "$dist" "$root" >&2
else
  "$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$dist" "$root" >&2
fi
rm -rf "$root/build"  # setuptools' staging area: stale files there would end up in a later wheel
wheel="$(ls "$dist"/nextoffer-*.whl)"
"$python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ("src/features/sql/customer_view.sql", "src/features/rules/fx_remit_large.yaml", "src/cli.py")
missing = [n for n in need if n not in names]
sys.exit(f"the wheel lacks {missing}" if missing else 0)
PY

# 2. submit: the wheel on the driver's and executors' Python path, entry.py as the application
submit="${SPARK_SUBMIT:-$(command -v spark-submit || echo "$(dirname "$python")/spark-submit")}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$python}"
exec "$submit" \
  --master "${SPARK_MASTER:-local[2]}" \
  --deploy-mode "${SPARK_DEPLOY_MODE:-client}" \
  --name "nextoffer $1" \
  --driver-memory "${SPARK_DRIVER_MEMORY:-4g}" \
  --executor-memory "${SPARK_EXECUTOR_MEMORY:-8g}" \
  --conf spark.sql.shuffle.partitions="${SPARK_SHUFFLE_PARTITIONS:-200}" \
  --conf spark.sql.adaptive.enabled=true \
  --conf spark.ui.showConsoleProgress=false \
  --py-files "$wheel" \
  "$here/entry.py" "$@"
