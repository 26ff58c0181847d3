"""``dataset.json``: the manifest of a prepared folder (classes, shape, splits, counts)."""

from __future__ import annotations

import json
import os
from typing import Any

from sparkvision import storage
from sparkvision.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST = "dataset.json"


def write_manifest(out: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Write ``dataset.json`` into the folder ``out`` (a local path or any fsspec URL),
    atomically."""
    storage.write_text(storage.join(out, MANIFEST),
                       json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``dataset.json`` from a prepared folder (or the file itself), local or URL."""
    p = os.fspath(path)
    if storage.basename(p) != MANIFEST or storage.isdir(p):
        p = storage.join(p, MANIFEST)
    if not storage.exists(p):
        raise DataError(
            f"no {MANIFEST} at {p}: point at a folder made by `sparkvision prepare`"
        )
    return json.loads(storage.read_text(p))


def copy_manifest(data: str | os.PathLike[str], model_dir: str | os.PathLike[str]) -> str:
    """Copy a prepared folder's ``dataset.json`` into a model folder (what the model was
    trained on: classes, counts, rejected files), adding ``data`` = the folder's path."""
    manifest = read_manifest(data)
    manifest["data"] = storage.absolute(data)
    write_manifest(model_dir, manifest)
    return storage.join(model_dir, MANIFEST)
