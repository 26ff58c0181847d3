"""Thumbnails of an audit's worst cases (``worst/*.png``): each pair side by side, each
outlier alone, at least ``SIDE`` pixels high. Only these few images reach the driver."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from sparkvision import storage

WORST_DIR = "worst"
SIDE = 96
_GAP = 6


def _images(spark, source: str, kind: str, keys: set[tuple[str, str]]) -> dict[
        tuple[str, str], np.ndarray]:
    """The uint8 HWC pixels of the (split, path) ``keys`` of ``source``."""
    from sparkvision.data.images import ImageRejected, decode_image, stored_to_array, to_mode

    found: dict[tuple[str, str], np.ndarray] = {}
    if kind == "prepared":
        from pyspark.sql import functions as F

        from sparkvision.data.prepared_splits import load_prepared

        for split in sorted({s for s, _ in keys}):
            paths = [p for s, p in keys if s == split]
            rows = (load_prepared(spark, source, split).filter(F.col("path").isin(paths))
                    .select("path", "image", "height", "width", "channels").collect())
            for r in rows:
                found[(split, r.path)] = stored_to_array(
                    r.image, (int(r.height), int(r.width), int(r.channels)))
        return found
    for split, path in keys:
        try:
            img = decode_image(storage.read_bytes(path), path)
        except (OSError, ImageRejected):
            continue
        arr = np.asarray(to_mode(img, 3), dtype=np.uint8)
        found[(split, path)] = arr
    return found


def _rgb(arr: np.ndarray) -> np.ndarray:
    """HWC uint8 → RGB HWC, scaled (nearest) to at least ``SIDE`` pixels high."""
    from PIL import Image

    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB")
    if img.height < SIDE:
        scale = max(1, round(SIDE / img.height))
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return np.asarray(img)


def _png(parts: list[np.ndarray]) -> bytes:
    from PIL import Image

    tiles = [_rgb(p) for p in parts]
    h = max(t.shape[0] for t in tiles)
    w = sum(t.shape[1] for t in tiles) + _GAP * (len(tiles) - 1)
    canvas = np.full((h, w, 3), 255, np.uint8)
    x = 0
    for t in tiles:
        canvas[: t.shape[0], x: x + t.shape[1]] = t
        x += t.shape[1] + _GAP
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def _pair_caption(p: dict[str, Any]) -> str:
    what = [p["kind"]]
    if p.get("leak"):
        what.append(f"leak {p['split_a']}↔{p['split_b']}")
    if p.get("conflict"):
        what.append(f"labels {p['class_name_a']}≠{p['class_name_b']}")
    return (f"{', '.join(what)} (Hamming {p['hamming']}, pixels "
            f"{p['pixel_distance']:.4f}): {p['path_a']} · {p['path_b']}")


def draw_worst(spark, source: str, kind: str, out: str, pairs: list[dict[str, Any]],
               odd: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Write ``worst/pair-NN.png`` and ``worst/outlier-NN.png``; return their relative
    paths with a caption each."""
    keys = {(p[f"split_{s}"], p[f"path_{s}"]) for p in pairs for s in ("a", "b")}
    keys |= {(o["split"], o["path"]) for o in odd}
    if not keys:
        return []
    pixels = _images(spark, source, kind, keys)
    folder = storage.join(out, WORST_DIR)
    storage.makedirs(folder)
    drawn = []
    for i, p in enumerate(pairs, 1):
        a, b = pixels.get((p["split_a"], p["path_a"])), pixels.get((p["split_b"], p["path_b"]))
        if a is None or b is None:
            continue
        name = f"{WORST_DIR}/pair-{i:02d}.png"
        storage.write_bytes(storage.join(out, name), _png([a, b]))
        drawn.append({"file": name, "caption": _pair_caption(p)})
    for i, o in enumerate(odd, 1):
        arr = pixels.get((o["split"], o["path"]))
        if arr is None:
            continue
        name = f"{WORST_DIR}/outlier-{i:02d}.png"
        storage.write_bytes(storage.join(out, name), _png([arr]))
        drawn.append({"file": name, "caption": f"{', '.join(o['reasons'])} in class "
                                                f"{o['class_name']}: {o['path']}"})
    return drawn
