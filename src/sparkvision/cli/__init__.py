"""`sparkvision` command line. Each subcommand module only parses arguments and calls the
library; it registers itself with ``register(subparsers)``.

Conventions: ``--help`` everywhere, ``--master URL``, ``--json`` makes the last stdout line
one JSON object, user errors exit 2 with one line (what, value, fix) and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from sparkvision.cli import evaluate, export, predict, prepare, stream, train, tune
from sparkvision.cli.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, Parser
from sparkvision.errors import user_error_message

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = (prepare, train, predict, evaluate, tune, stream, export)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sparkvision",
        description="Train, evaluate and serve PyTorch image classifiers on Apache Spark.",
    )
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
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - turn user errors into one line
        message = user_error_message(exc)
        if message is None:
            raise
        sys.stderr.write(f"sparkvision {args.command}: error: {message}\n")
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
