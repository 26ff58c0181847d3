"""What every subcommand shares: flags, ``--json`` output, exit codes, the Spark session."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def add_common(p: argparse.ArgumentParser) -> None:
    """``--master``, ``--json`` and ``-v``: on every subcommand."""
    p.add_argument("--master", default=None, help="Spark master URL (default: local[*])")
    p.add_argument("--json", action="store_true", help="print one JSON object as last line")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")


def emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    """Print the JSON payload (``--json``) or the human summary."""
    if args.json:
        print(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        print(human)


def spark_session(args: argparse.Namespace):
    """The SparkSession for ``--master`` (started on first use)."""
    from sparkvision.session import get_spark

    return get_spark(args.master)


def accuracy(df, label_col: str = "label", prediction_col: str = "prediction") -> float | None:
    """Share of labelled rows predicted right (None without labels)."""
    from pyspark.sql import functions as F

    if label_col not in df.columns:
        return None
    row = df.filter(F.col(label_col).isNotNull()).agg(
        F.avg((F.col(label_col) == F.col(prediction_col)).cast("double")).alias("acc"),
    ).first()
    return None if row is None or row.acc is None else float(row.acc)
