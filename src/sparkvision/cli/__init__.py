"""`sparkvision` command line. Each subcommand module only parses arguments and calls the
library; it registers itself with ``register(subparsers)``.

Conventions: ``--help`` everywhere, ``--master URL``, ``--json`` makes the last stdout line
one JSON object, user errors exit 2 with one line (what, value, fix) and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from sparkvision import display
from sparkvision.cli import (
    audit,
    demo,
    doctor,
    evaluate,
    explain,
    export,
    featurize,
    models,
    predict,
    prepare,
    report,
    stream,
    train,
    tune,
)
from sparkvision.cli.common import (
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USER_ERROR,
    Parser,
    driver_died,
    end_driver_watch,
    log_file,
)
from sparkvision.errors import user_error_message

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (prepare, audit, train, predict, featurize, evaluate, explain, tune, stream, export,
            report, models, doctor, demo)


def version_line() -> str:
    """``sparkvision X (pyspark Y, torch Z, Python P)``: from the installed packages'
    metadata, without importing pyspark or torch."""
    from importlib import metadata

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (f"sparkvision {installed('sparkvision')} (pyspark {installed('pyspark')}, torch "
            f"{installed('torch')}, Python {sys.version.split()[0]})")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparkvision",
        description="Train, evaluate and serve PyTorch image classifiers on Apache Spark.",
    )
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print sparkvision's version and those of pyspark, torch and "
                        "Python, then exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, one line already written)
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # py4j and pyspark's own Python loggers only repeat what the exception says.
        for name in ("py4j", "pyspark"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    display.set_mode("off" if args.quiet else os.environ.get("SPARKVISION_PROGRESS", "auto"))
    args.log_file = log_file(args.command)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return EXIT_INTERNAL_ERROR if driver_died(args) else EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - turn user errors into one line
        if driver_died(args, exc):  # the driver JVM's end, whatever the call raised
            return EXIT_INTERNAL_ERROR
        message = user_error_message(exc)
        if message is not None:
            sys.stderr.write(f"sparkvision {args.command}: error: {message}\n")
            return EXIT_USER_ERROR
        if args.verbose:
            raise
        return _internal_error(args, exc)
    finally:
        end_driver_watch()


def _internal_error(args: argparse.Namespace, exc: BaseException) -> int:
    """Not a user error (a bug, a crashed executor): one line naming the log file that
    holds the full traceback, exit 1."""
    path = Path(args.log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(exc)))
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    sys.stderr.write(f"sparkvision {args.command}: internal error: {type(exc).__name__}: "
                     f"{first} (full traceback in {path}; -v shows it here)\n")
    return EXIT_INTERNAL_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
