"""``dataset.json``: the manifest of a prepared folder (classes, shape, splits, counts)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sparkvision.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST = "dataset.json"


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / MANIFEST)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``dataset.json`` from a prepared folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.exists():
        raise DataError(
            f"no {MANIFEST} at {p}: point at a folder made by `sparkvision prepare`"
        )
    return json.loads(p.read_text(encoding="utf-8"))


def copy_manifest(data: str | os.PathLike[str], model_dir: str | os.PathLike[str]) -> Path:
    """Copy a prepared folder's ``dataset.json`` into a model folder (what the model was
    trained on: classes, counts, rejected files), adding ``data`` = the folder's path."""
    manifest = read_manifest(data)
    manifest["data"] = str(Path(data).resolve())
    out = Path(model_dir)
    write_manifest(out, manifest)
    return out / MANIFEST
