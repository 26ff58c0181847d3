"""The report's section of a data audit (``sparkvision audit``'s ``audit.json``): the
counts, the worst pairs (leaks and label conflicts first) and outliers as thumbnails, and
the first pairs and outliers as tables."""

from __future__ import annotations

from pathlib import Path

from sparkvision.reporting.artefacts import Audit
from sparkvision.reporting.html import Section, cards, heading, kv_table, paragraph, table, thumbs
from sparkvision.reporting.reading import read_png
from sparkvision.reporting.section_common import section_id, where

#: Pairs and outliers listed in the section's tables (audit.json lists up to 50 of each).
MAX_ROWS = 20


def audit(found: Audit, index: int, root: Path) -> Section:
    """Counts, thumbnails of the worst cases, the first pairs and outliers."""
    s = found.summary
    parts = [cards([
        ("images", s.get("images")), ("exact pairs", s.get("exact_pairs")),
        ("near pairs", s.get("near_pairs")), ("groups leaking across splits",
                                              s.get("leaking_groups")),
        ("groups with conflicting labels", s.get("conflicting_groups")),
        ("outliers", s.get("outliers")),
    ]), kv_table([
        ("found at", where(found.path, root)),
        ("data", s.get("source")),
        ("images per split", ", ".join(f"{k} {v}" for k, v in (s.get("splits") or {}).items())),
        ("unreadable files", s.get("unreadable")),
        ("settings", ", ".join(f"{k} {v}" for k, v in (s.get("config") or {}).items())),
        ("candidate pairs within the radius", s.get("candidates")),
        ("duplicates a deduplicated copy drops", s.get("duplicates")),
        ("images with a copy in another split",
         ", ".join(f"{k} {v}" for k, v in (s.get("leaked") or {}).items()) or "none"),
        ("outlier reasons",
         ", ".join(f"{k} {v}" for k, v in (s.get("outlier_reasons") or {}).items()) or "none"),
        ("seconds", s.get("seconds")),
    ])]
    drawn = []
    for item in s.get("worst") or []:
        png = found.png(item.get("file"))
        data = read_png(png) if png is not None else None
        if data:
            drawn.append((data, str(item.get("file")), str(item.get("caption", "")), ""))
    parts.append(heading(3, "Worst cases", "leaks and label conflicts first"))
    parts.append(thumbs(drawn) if drawn else paragraph("none", "muted"))
    pairs = s.get("top_pairs") or []
    parts.append(heading(3, "Duplicate pairs", f"the first {min(len(pairs), MAX_ROWS)}; all "
                         "in pairs.parquet"))
    if pairs:
        parts.append(table(("kind", "Hamming", "pixels", "leak", "conflict", "a", "b"), [
            (p.get("kind"), p.get("hamming"), p.get("pixel_distance"), p.get("leak"),
             p.get("conflict"), f"{p.get('split_a')}: {p.get('path_a')} ({p.get('class_name_a')})",
             f"{p.get('split_b')}: {p.get('path_b')} ({p.get('class_name_b')})")
            for p in pairs[:MAX_ROWS]]))
    else:
        parts.append(paragraph("none", "muted"))
    odd = s.get("top_outliers") or []
    parts.append(heading(3, "Outliers", f"the first {min(len(odd), MAX_ROWS)}; all in "
                         "outliers.parquet"))
    if odd:
        parts.append(table(("score", "why", "class", "split", "file"), [
            (o.get("score"), ", ".join(o.get("reasons") or []), o.get("class_name"),
             o.get("split"), o.get("path")) for o in odd[:MAX_ROWS]]))
    else:
        parts.append(paragraph("none", "muted"))
    return Section(section_id("audit", index), "Data audit", "\n".join(parts))
