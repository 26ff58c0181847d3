"""The folder ``explain`` writes, each file atomically through ``sparkvision.storage``:
``images/STEM.png`` (a chosen image's map over the image, upscaled with nearest-neighbour
to ≥ ``MIN_SIDE`` px), ``means/STEM.png`` (a class's mean map over its mean image),
``attributions.safetensors`` (every raw float32 (H, W) map, keyed by the PNG's stem) and
``explain.json`` (last)."""

from __future__ import annotations

import io
import json
import math
import re
import time
from typing import Any

import numpy as np

from sparkvision import storage
from sparkvision.inference.explain import SIGNED_METHODS, ExplainConfig

EXPLAIN_FILE = "explain.json"
ATTRIBUTIONS_FILE = "attributions.safetensors"
IMAGES_DIR = "images"
MEANS_DIR = "means"
EXPLAIN_FORMAT = "sparkvision-explain/1"
#: Overlays are upscaled (nearest-neighbour, an integer factor) until both sides reach this.
MIN_SIDE = 112
#: Groups of explained rows, by their ``grp`` number.
GROUPS = ("wrong", "right", "unlabelled")
#: Colour maps: non-negative maps (gradcam, saliency) and signed ones (red +, blue −).
CMAP, SIGNED_CMAP = "jet", "bwr"


def slug(name: str) -> str:
    """A class name as a file-name part: letters, digits, ``.``, ``_``, ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"


def _class_name(classes: list[str], index: int | None) -> str | None:
    if index is None:
        return None
    return classes[index] if 0 <= index < len(classes) else str(index)


def overlay_png(image_hwc: np.ndarray, amap: np.ndarray, signed: bool,
                min_side: int = MIN_SIDE) -> bytes:
    """PNG bytes of ``amap`` (H, W) colour-mapped over the uint8 image (H, W, C), upscaled
    with nearest-neighbour by an integer factor until both sides are ≥ ``min_side``.
    Colours span the map's 99th percentile m (of |map| for signed maps; larger values are
    clipped): non-negative maps ``jet`` over [0, m], opacity 0.2-0.7 growing with the value;
    signed maps ``bwr`` over [−m, m], opacity growing with |map|."""
    import matplotlib
    from PIL import Image

    h, w = amap.shape
    gray = image_hwc.astype(np.float32) / 255.0
    base = np.repeat(gray, 3, axis=2) if gray.shape[2] == 1 else gray[..., :3]
    finite = np.nan_to_num(amap.astype(np.float64))
    if signed:
        m = float(np.percentile(np.abs(finite), 99)) or float(np.abs(finite).max()) or 1.0
        v = np.clip(finite / m, -1.0, 1.0)
        heat = matplotlib.colormaps[SIGNED_CMAP]((v + 1.0) / 2.0)[..., :3]
        alpha = (0.7 * np.abs(v))[..., None]
    else:
        m = float(np.percentile(finite, 99)) or float(finite.max()) or 1.0
        v = np.clip(finite / m, 0.0, 1.0)
        heat = matplotlib.colormaps[CMAP](v)[..., :3]
        alpha = (0.2 + 0.5 * v)[..., None]
    rgb = np.clip((1.0 - alpha) * base + alpha * heat, 0.0, 1.0)
    picture = Image.fromarray(np.rint(rgb * 255).astype(np.uint8), "RGB")
    scale = max(1, math.ceil(min_side / max(1, min(h, w))))
    if scale > 1:
        picture = picture.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def write_folder(out: str, images: list[dict[str, Any]], means: dict[int, dict[str, Any]],
                 classes: list[str], config: ExplainConfig, layer: str, target: str,
                 per_class: int, seed: int, rows: int, source: dict[str, Any],
                 started: float) -> list[str]:
    """Write the folder ``out`` (see the module docstring) for the chosen ``images`` and
    the class ``means`` (as ``job.gather`` makes them); return the files written, relative
    to ``out``, ``explain.json`` last."""
    from safetensors.numpy import save

    signed = config.method in SIGNED_METHODS
    digits = len(str(max(1, len(classes) - 1)))
    arrays: dict[str, np.ndarray] = {}
    records, mean_records, files = [], [], []
    for folder in (IMAGES_DIR, MEANS_DIR):  # files of an earlier run there would mislead
        if storage.exists(storage.join(out, folder)):
            storage.remove(storage.join(out, folder))
    for item in images:
        name = _class_name(classes, item["cls"]) or str(item["cls"])
        stem = (f"{item['cls']:0{digits}d}-{slug(name)}-{GROUPS[item['grp']]}-"
                f"{item['index']:02d}")
        rel = f"{IMAGES_DIR}/{stem}.png"
        storage.write_bytes(storage.join(out, rel), overlay_png(item["image"], item["map"],
                                                                signed))
        arrays[stem] = np.ascontiguousarray(item["map"], dtype=np.float32)
        files.append(rel)
        label = item["label"]
        records.append({
            "file": rel, "key": stem, "path": item["path"],
            "true": _class_name(classes, None if label is None else int(label)),
            "predicted": _class_name(classes, item["prediction"]),
            "correct": None if label is None else int(label) == item["prediction"],
            "target": _class_name(classes, item["target"]),
            "score": item["score"],
        })
    for k, mean in means.items():
        name = _class_name(classes, k) or str(k)
        stem = f"mean-{k:0{digits}d}-{slug(name)}"
        rel = f"{MEANS_DIR}/{stem}.png"
        storage.write_bytes(storage.join(out, rel), overlay_png(mean["image"], mean["map"],
                                                                signed))
        arrays[stem] = np.ascontiguousarray(mean["map"], dtype=np.float32)
        files.append(rel)
        mean_records.append({"class": name, "index": k, "rows": mean["count"], "file": rel,
                             "key": stem})
    storage.write_bytes(storage.join(out, ATTRIBUTIONS_FILE),
                        save(arrays, metadata={"method": config.method, "layer": layer,
                                               "target": target}))
    files.append(ATTRIBUTIONS_FILE)
    h, w, c = config.image_shape
    summary = {
        "format": EXPLAIN_FORMAT, **source, "network": config.model, "method": config.method,
        "layer": layer or None, "target": target, "signed": signed, "per_class": per_class,
        "seed": seed, "classes": classes, "image_shape": [h, w, c],
        "attribution_shape": [h, w], "rows": rows, "attributions": ATTRIBUTIONS_FILE,
        "images": records, "class_means": mean_records,
        "seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(storage.join(out, EXPLAIN_FILE),
                       json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    files.append(EXPLAIN_FILE)
    return files
