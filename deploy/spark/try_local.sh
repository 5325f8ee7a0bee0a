#!/usr/bin/env bash
# The cluster path end to end on this machine: simulate and validate a small bank, build the
# wheel, spark-submit `build-view --engine spark` with it on local[2] (deploy/spark/submit.sh),
# then check the four tables it wrote equal DuckDB's for the same as_of.
#
#   deploy/spark/try_local.sh [WORK_DIR]      (default: a new temp dir; ~2-5 min)
#
# Run it from the repository's environment (make .venv/.installed-stamp): PYTHON defaults to
# .venv/bin/python, whose bin/ also holds uv and pyspark's spark-submit.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export PYTHON="${PYTHON:-$root/.venv/bin/python}"
export PATH="$(dirname "$PYTHON"):$PATH"
work="${1:-$(mktemp -d)}"
as_of="2026-01-09"
bank="$work/bank"

nextoffer simulate --customers 150 --days 10 --seed 3 --data-dir "$bank" >/dev/null
nextoffer validate --data-dir "$bank" >/dev/null
SPARK_DRIVER_MEMORY="${SPARK_DRIVER_MEMORY:-1g}" SPARK_SHUFFLE_PARTITIONS="${SPARK_SHUFFLE_PARTITIONS:-4}" \
NEXTOFFER_DIST="$work/dist" \
  "$here/submit.sh" build-view --engine spark --as-of "$as_of" --data-dir "$bank" \
  2>"$work/spark-submit.log"
echo "spark-submit log: $work/spark-submit.log"
"$PYTHON" "$here/compare_engines.py" "$bank" "$as_of"
