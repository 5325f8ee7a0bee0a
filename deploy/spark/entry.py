"""spark-submit entry point: run one ``nextoffer`` command inside the submitted application.

    spark-submit --master yarn --py-files dist/nextoffer-*.whl deploy/spark/entry.py \
        build-view --engine spark --as-of 2026-04-01 --data-dir /mnt/bank

The arguments are the CLI's (``nextoffer --help``). Under spark-submit the session is the
application's: ``--master`` is left out so spark-submit's master and ``--conf`` settings apply
(``src.features.spark_session`` only adds the TIMESTAMP_NTZ and time-zone settings, which do not
depend on the cluster). The package, its SQL files (package data) and its Python dependencies
come from the wheel; see deploy/spark/README.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    if "--engine" in argv and "--master" in argv:
        raise SystemExit("under spark-submit give the master to spark-submit, not to nextoffer")
    import src
    from src.cli import app

    # the log shows which package ran: the submitted wheel, not a copy installed on the node
    print(f"nextoffer: package src from {src.__file__}", file=sys.stderr, flush=True)
    app(argv, prog_name="nextoffer")


if __name__ == "__main__":
    main(sys.argv[1:])
