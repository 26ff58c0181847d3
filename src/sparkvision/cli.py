"""`sparkvision` command line. Each subcommand only parses arguments and calls the library.

Conventions: ``--help`` everywhere, ``--master URL``, ``--json`` makes the last stdout line
one JSON object, user errors exit 2 with one line (what, value, fix) and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sparkvision.errors import user_error_message

EXIT_USER_ERROR = 2
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USER_ERROR)


def _emit(args: argparse.Namespace, payload: dict[str, Any], human: str) -> None:
    if args.json:
        print(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        print(human)


def _spark(args: argparse.Namespace):
    from sparkvision.session import get_spark

    return get_spark(args.master)


# ----------------------------------------------------------------------------- prepare


def cmd_prepare(args: argparse.Namespace) -> int:
    from sparkvision.data.prepare import (
        PrepareConfig,
        check_source,
        parse_image_size,
        parse_split,
        prepare,
    )

    config = PrepareConfig(
        source=args.source,
        out=args.out,
        split=parse_split(args.split),
        seed=args.seed,
        fmt=args.format,
        image_size=parse_image_size(args.image_size),
        channels=args.channels,
        num_shards=args.num_shards,
    )
    check_source(args.source)  # before Spark starts
    result = prepare(_spark(args), config)
    payload = {
        "out": result.out,
        "classes": result.classes,
        "splits": result.splits,
        "per_class": result.per_class,
        "rejected": result.rejected,
        "image_shape": result.image_shape,
        "format": result.format,
        "seconds": result.seconds,
    }
    lines = [
        f"prepared {args.source} → {result.out} ({result.format})",
        f"  classes: {len(result.classes)}  image shape: {tuple(result.image_shape)}",
        "  " + "  ".join(f"{k}: {v}" for k, v in result.splits.items()),
        f"  rejected files: {len(result.rejected)}",
    ]
    lines += [f"    {r['path']}: {r['reason']}" for r in result.rejected]
    _emit(args, payload, "\n".join(lines))
    return 0


# ----------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", default=None, help="Spark master URL (default: local[*])")
    p.add_argument("--json", action="store_true", help="print one JSON object as last line")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparkvision",
        description="Train, evaluate and serve PyTorch image classifiers on Apache Spark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("prepare", help="images / built-in data set → split shards + dataset.json")
    p.add_argument("source", help="digits | mnist | faces | IMAGE_FOLDER | TFRECORD_PATH")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", choices=["tfrecords", "parquet"], default="tfrecords")
    p.add_argument("--image-size", default=None, help="N or HxW (default: source size; 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=None)
    p.add_argument("--num-shards", type=int, default=2, help="files per split")
    _common(p)
    p.set_defaults(func=cmd_prepare)

    from sparkvision.cli_train import add_train_commands

    add_train_commands(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - turn user errors into one line
        message = user_error_message(exc)
        if message is None:
            raise
        sys.stderr.write(f"sparkvision {args.command}: error: {message}\n")
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
