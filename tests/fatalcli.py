"""``python -m tests.fatalcli ARGV…``: the `sparkvision` CLI (its ``main``, its Spark
session, its error handling), with the work of ``prepare`` replaced by one Spark job that
puts the driver JVM in a fatal state at a known moment (``FATALCLI_WORK``):

- ``ship``: what ``prepare`` of a built-in data set once did — everything shipped from
  the driver in one task: one local value of ``FATALCLI_MB`` MiB, which the driver JVM
  holds and then serializes into the task (out of heap when that is under twice the
  value);
- ``sleep``: two tasks that write their Python worker's pid to ``FATALCLI_MARKER`` and
  sleep (a job surely running while the test kills the JVM from outside)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def _ship(spark: Any) -> None:
    size = int(os.environ["FATALCLI_MB"]) << 20
    spark.sparkContext.parallelize([b"\0" * size], 1).count()


def _sleep_in_tasks(rows: Any) -> Any:
    Path(os.environ["FATALCLI_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)
    yield from rows


def _sleep(spark: Any) -> None:
    spark.sparkContext.parallelize(range(2), 2).mapPartitions(_sleep_in_tasks).count()


def _prepare(spark: Any, config: Any) -> Any:
    {"ship": _ship, "sleep": _sleep}[os.environ["FATALCLI_WORK"]](spark)
    raise AssertionError("the job ended: the driver JVM lived through it")


def main(argv: list[str]) -> int:
    import sparkvision.cli.prepare as cli_prepare
    import sparkvision.data.prepare as data_prepare
    from sparkvision.cli import main as cli_main

    data_prepare.prepare = _prepare  # type: ignore[assignment]
    if hasattr(cli_prepare, "prepare"):  # imported at module level
        cli_prepare.prepare = _prepare  # type: ignore[attr-defined]
    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
