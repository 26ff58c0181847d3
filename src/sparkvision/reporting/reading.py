"""Reading the files commands leave behind: JSON documents, a model's Params metadata and a
tuning study's direction, without a Spark session."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from sparkvision.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; DataError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot read {path}: {exc}; re-run the command that wrote it, or move the file "
            "out of the folder"
        ) from None


def read_params(model_dir: Path) -> tuple[dict[str, Any], set[str]]:
    """A saved model's Params: (every Param, defaults overlaid by the set ones; names of
    the set ones). Parses ``metadata/part-*`` as pyspark's ``DefaultParamsReader`` does
    (one JSON object on the first line), so no Spark session is needed."""
    parts = sorted(p for p in (model_dir / "metadata").glob("part-*") if p.is_file())
    for part in parts:
        line = part.read_text(encoding="utf-8").strip().splitlines()
        if not line:
            continue
        try:
            meta = json.loads(line[0])
        except json.JSONDecodeError as exc:
            raise DataError(
                f"model metadata {part} is not JSON ({exc}): save the model again with "
                "`sparkvision train --out` or ImageClassificationModel.save"
            ) from None
        params = dict(meta.get("defaultParamMap") or {})
        explicit = dict(meta.get("paramMap") or {})
        params.update(explicit)
        return params, set(explicit)
    return {}, set()


def read_png(path: Path) -> bytes | None:
    """The bytes of the PNG at ``path``; None when it is unreadable or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if data.startswith(PNG_SIGNATURE) else None


def study_metric(study_dir: Path) -> tuple[str | None, str | None]:
    """(metric, direction) of the Optuna study in ``study_dir/study.db`` (read-only SQLite;
    (None, None) without one, e.g. when the study used another ``--storage``)."""
    db = study_dir / "study.db"
    if not db.is_file():
        return None, None
    metric = direction = None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT direction FROM study_directions LIMIT 1").fetchone()
            direction = str(row[0]).lower() if row else None
            row = conn.execute("SELECT value_json FROM study_user_attributes "
                               "WHERE key = 'metric' LIMIT 1").fetchone()
            metric = json.loads(row[0]) if row else None
    except (sqlite3.Error, json.JSONDecodeError):
        return None, None
    return metric, direction
