"""Every code block of README.md and docs/**/*.md is run, checked or says why it is not.

The line right before a fenced block (blank lines between are allowed) is one of these
HTML comments, invisible on the rendered page:

``<!-- run -->``
    This test runs each line (``sparkvision ... --help``, ``sparkvision --version``,
    ``sparkvision models ...``: commands that start no Spark and no JVM) in this process
    and expects exit code 0.
``<!-- parsed, not run: REASON -->``
    Each ``sparkvision`` command in the block (``\\`` continuations joined, ``#`` comments
    dropped) is parsed by the CLI's real argparse parser, so a wrong flag, choice or
    missing argument fails here; the commands are not run, for REASON (e.g. they start
    Spark). Every line of such a block must be a ``sparkvision`` command.
``<!-- run by: tests/PATH.py::test_name -->``
    That test (which must exist) runs the block, and its file names this page, so it
    reads the block from here.
``<!-- not run: REASON -->``
    Not run, for REASON (a cluster it needs, output shown as printed, a file layout).

Every ``python`` block must also compile. The README must start with exactly the two
set-up commands ``make demo`` and ``make test``. No Spark session: this is a unit test.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparkvision import display
from sparkvision.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md")
                                     if "_hooks" not in p.parts)]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(run by:|parsed, not run:|not run:|run)\s*(.*?)\s*-->\s*$")
HELP_PLACEHOLDER = re.compile(r"^<!-- sparkvision-help:\s*([a-z-]*)\s*-->$", re.MULTILINE)


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    kind: str | None  # the marker's keyword, None when unmarked
    detail: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, each with the marker comment before it."""
    lines = page.read_text(encoding="utf-8").split("\n")
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, lang = opening.groups()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line.lstrip()
                         for line in lines[i + 1:j])
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = MARKER.match(lines[k]) if k >= 0 else None
        found.append(Block(page, i + 1, lang, body,
                           marker.group(1) if marker else None,
                           marker.group(2) if marker else ""))
        i = j + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]


def ids(items: list[Block]) -> list[str]:
    return [b.where for b in items]


def commands(body: str) -> list[list[str]]:
    """The shell commands of a block as argument lists: continuations joined, comments
    and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", body)
    out = []
    for line in joined.split("\n"):
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def test_the_pages_have_code_blocks():
    assert len(PAGES) > 20 and len(ALL) > 30


@pytest.mark.parametrize("block", ALL, ids=ids(ALL))
def test_every_block_is_marked(block):
    assert block.kind is not None, (
        f"{block.where}: put <!-- run -->, <!-- parsed, not run: why -->, "
        "<!-- run by: tests/...::test_x --> or <!-- not run: why --> before this block")
    if block.kind in ("not run:", "parsed, not run:"):
        assert len(block.detail) >= 10, f"{block.where}: say why it is not run"


PYTHON = [b for b in ALL if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=ids(PYTHON))
def test_python_blocks_compile(block):
    ast.parse(block.body, filename=block.where)


PARSED = [b for b in ALL if b.kind == "parsed, not run:"]


@pytest.mark.parametrize("block", PARSED, ids=ids(PARSED))
def test_parsed_blocks_parse_with_the_cli_parser(block):
    found = commands(block.body)
    assert found, f"{block.where}: no command to parse"
    for argv in found:
        assert argv[0] == "sparkvision", f"{block.where}: not a sparkvision command: {argv}"
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            pytest.fail(f"{block.where}: {shlex.join(argv)} does not parse "
                        f"(exit {exc.code}): {err.getvalue().strip()}")


RUN = [b for b in ALL if b.kind == "run"]


@pytest.fixture
def cli_state():
    """``main`` sets the process-wide progress mode and two loggers' levels: put them back."""
    mode = display.mode()
    levels = {name: logging.getLogger(name).level for name in ("py4j", "pyspark")}
    yield
    display.set_mode(mode)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.parametrize("block", RUN, ids=ids(RUN))
def test_run_blocks_exit_0(block, cli_state):
    found = commands(block.body)
    assert found, f"{block.where}: nothing to run"
    for argv in found:
        assert argv[0] == "sparkvision" and (
            "--help" in argv or argv[1:] == ["--version"] or argv[1] == "models"
        ), f"{block.where}: only commands without Spark run here: {argv}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = main(argv[1:])
            except SystemExit as exc:  # --version exits through argparse
                code = int(exc.code or 0)
        assert code == 0, f"{block.where}: {shlex.join(argv)} exited {code}: {out.getvalue()}"
        assert out.getvalue().strip(), f"{block.where}: {shlex.join(argv)} printed nothing"


RUN_BY = [b for b in ALL if b.kind == "run by:"]


@pytest.mark.parametrize("block", RUN_BY, ids=ids(RUN_BY))
def test_run_by_names_a_test_that_reads_this_page(block):
    path, _, name = block.detail.partition("::")
    test_file = ROOT / path
    assert test_file.is_file(), f"{block.where}: {path} does not exist"
    source = test_file.read_text(encoding="utf-8")
    assert re.search(rf"^def {re.escape(name)}\(", source, re.MULTILINE), (
        f"{block.where}: {path} has no test {name}")
    page = block.page.relative_to(ROOT).as_posix()
    assert page in source or f'"{block.page.name}"' in source, (
        f"{block.where}: {path} does not read {page}")


def test_help_placeholders_name_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for page in PAGES:
        for name in HELP_PLACEHOLDER.findall(page.read_text(encoding="utf-8")):
            assert name == "" or name in sub.choices, f"{page}: no subcommand {name!r}"


def test_readme_starts_with_the_two_set_up_commands():
    first = blocks(ROOT / "README.md")[0]
    lines = [shlex.split(line, comments=True) for line in first.body.split("\n")]
    assert [w for w in lines if w] == [["make", "demo"], ["make", "test"]]


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").split("\n")) <= 250
