"""``build_report``: one self-contained HTML file about a model, study, stream or run folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sparkvision.reporting.artefacts import find_artefacts
from sparkvision.reporting.html import page
from sparkvision.reporting.sections import build_sections


@dataclass(frozen=True)
class ReportResult:
    """What ``build_report`` wrote: the file, its section ids (in order), the number of
    inlined images, its size and how long it took."""

    out: str
    sections: list[str]
    images: int
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {"out": self.out, "sections": self.sections, "images": self.images,
                "bytes": self.bytes, "seconds": self.seconds}


def render_report(path: str | os.PathLike[str]) -> tuple[str, list[str]]:
    """(the HTML text, its section ids) of the report on the folder ``path``."""
    found = find_artefacts(path)
    sections = build_sections(found)
    root = found.root.resolve()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = page(f"sparkvision report — {root.name}", f"{root} · generated {stamp}", sections,
                "Written by `sparkvision report`; self-contained: every image is inlined.")
    return text, [s.id for s in sections]


def build_report(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> ReportResult:
    """Write the report on the folder ``path`` (a model folder, tuning study, stream output
    or a run folder holding any of them) to the HTML file ``out``, atomically (a temporary
    name beside it, then a rename). DataError when ``path`` holds nothing to report."""
    started = time.monotonic()
    text, ids = render_report(path)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ReportResult(str(target), ids, text.count("<img "), len(data),
                        round(time.monotonic() - started, 3))
