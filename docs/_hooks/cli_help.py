"""MkDocs hook: replaces each line ``<!-- sparkvision-help: COMMAND -->`` with the current
``sparkvision COMMAND --help`` text, taken from the CLI's own argparse parser at build time
(``<!-- sparkvision-help: -->`` gives the top-level help). The docs never hold a copy of the
help that could go stale; building them imports ``sparkvision.cli`` (no Spark, no JVM)."""

from __future__ import annotations

import os
import re
from typing import Any

HELP_LINE = re.compile(r"^<!-- sparkvision-help:\s*([a-z-]*)\s*-->$", re.MULTILINE)


def help_text(command: str) -> str:
    """``sparkvision [COMMAND] --help`` as printed 100 columns wide."""
    os.environ["COLUMNS"] = "100"
    from sparkvision.cli import build_parser

    parser = build_parser()
    if command:
        actions = [a for a in parser._actions if a.dest == "command"]
        parser = actions[0].choices[command]
    return parser.format_help().rstrip("\n")


def on_page_markdown(markdown: str, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        command = match.group(1)
        shown = f"sparkvision {command} --help" if command else "sparkvision --help"
        return f"```text\n$ {shown}\n{help_text(command)}\n```"

    return HELP_LINE.sub(replace, markdown)
