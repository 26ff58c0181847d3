"""Plant leaks in a prepared Parquet folder: test images copied into train, some as they
are, some re-encoded as JPEG at quality 90, some shifted by one pixel (the audit tests and
``docs/guides/audit.md``)."""

from __future__ import annotations

import glob
import io
import json
from pathlib import Path

import numpy as np


def _jpeg(arr: np.ndarray) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0]).save(buf, format="JPEG", quality=90)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))[:, :, None]


def _shift(arr: np.ndarray, k: int) -> np.ndarray:
    dy, dx = ((0, 1), (0, -1), (1, 0), (-1, 0))[k % 4]
    out = np.zeros_like(arr)
    h, w = arr.shape[:2]
    out[max(0, dy): h + min(0, dy), max(0, dx): w + min(0, dx)] = \
        arr[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]
    return out


def plant_leaks(folder: Path, n: int = 50, seed: int = 0) -> dict[str, str]:
    """Copy ``n`` test images of the prepared Parquet ``folder`` into its train split (one
    new Parquet file): a third as they are, a third as JPEG at quality 90, a third shifted
    by one pixel. Returns {train copy's path: test original's path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    test = pa.concat_tables(pq.read_table(f) for f in sorted(glob.glob(f"{folder}/test/*.parquet")))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(test.num_rows, n, replace=False).tolist())
    rows = test.take(chosen).to_pylist()
    planted: dict[str, str] = {}
    for i, row in enumerate(rows):
        arr = np.frombuffer(row["image"], np.uint8).reshape(row["height"], row["width"],
                                                            row["channels"])
        how = ("copy", "jpeg", "shift")[i % 3]
        if how == "jpeg":
            arr = _jpeg(arr)
        elif how == "shift":
            arr = _shift(arr, i)
        copy = f"planted/{how}/{i:03d}"
        planted[copy] = row["path"]
        row.update(image=np.ascontiguousarray(arr).tobytes(), path=copy)
    pq.write_table(pa.Table.from_pylist(rows, schema=test.schema),
                   f"{folder}/train/part-planted.parquet")
    manifest_path = folder / "dataset.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"] += n
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return planted
