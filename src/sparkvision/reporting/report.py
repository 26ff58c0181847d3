"""``build_report``: one self-contained HTML file about a model, study, stream or run folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sparkvision import storage
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


def render_report(path: str | os.PathLike[str],
                  shown_as: str | None = None) -> tuple[str, list[str]]:
    """(the HTML text, its section ids) of the report on the folder ``path``; ``shown_as``:
    the folder's name in the page (its URL when ``path`` is a local copy)."""
    found = find_artefacts(os.fspath(path))
    sections = build_sections(found)
    root = shown_as or str(found.root.resolve())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = page(f"sparkvision report — {storage.basename(root)}", f"{root} · generated {stamp}",
                sections,
                "Written by `sparkvision report`; self-contained: every image is inlined.")
    return text, [s.id for s in sections]


def build_report(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> ReportResult:
    """Write the report on the folder ``path`` (a model folder, tuning study, stream output
    or a run folder holding any of them) to the HTML file ``out``, atomically. Both may be
    local paths or fsspec URLs (a remote folder is read through a temporary local copy).
    DataError when ``path`` holds nothing to report."""
    started = time.monotonic()
    with storage.local_copy(path) as local:
        shown = None if storage.is_local(path) else os.fspath(path)
        text, ids = render_report(local, shown)
    data = text.encode("utf-8")
    target = storage.absolute(out)
    storage.write_bytes(target, data)
    return ReportResult(target, ids, text.count("<img "), len(data),
                        round(time.monotonic() - started, 3))
