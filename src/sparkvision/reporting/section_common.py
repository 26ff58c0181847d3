"""What every section builder of the report shares: a section's id (``training``,
``training-2``, …), where a path is (relative to the report's folder) and a PNG file as a
figure."""

from __future__ import annotations

from pathlib import Path

from sparkvision.reporting.html import Markup, image
from sparkvision.reporting.reading import read_png


def section_id(base: str, index: int) -> str:
    """``base`` for the first of a kind, ``base-2``, ``base-3``, … after it."""
    return base if index == 0 else f"{base}-{index + 1}"


def where(path: Path, root: Path) -> str:
    """``path`` relative to the report's folder (``.`` for the folder itself)."""
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return str(path)
    return str(rel) if str(rel) != "." else f". ({root.resolve().name})"


def figure(path: Path, root: Path) -> Markup:
    """The PNG at ``path`` as an inlined figure captioned with its place (empty when it
    cannot be read)."""
    png = read_png(path)
    return image(png, path.stem.replace("_", " "), where(path, root)) if png else Markup("")
