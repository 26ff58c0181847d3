"""Photo-sized images end to end: a folder of 640x480 JPEGs (decoded in draft mode) →
`prepare --image-size 224` → a 224x224x3 `resnet8` trained on 2 workers → `predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sparkvision.cli import main

pytestmark = pytest.mark.slow


def _photos(root, per_class: int = 16) -> None:
    """Two classes told apart by color (warm vs cool), with noise and a random gradient."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    for label, base in enumerate(((200, 90, 40), (40, 110, 210))):
        folder = root / ("warm", "cool")[label]
        folder.mkdir(parents=True)
        for i in range(per_class):
            grad = (xx * rng.uniform(-0.1, 0.1) + yy * rng.uniform(-0.1, 0.1))[..., None]
            noise = rng.normal(0, 18, (480, 640, 3))
            pixels = np.clip(np.array(base, np.float32) + grad + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / f"photo_{i:02d}.jpg", quality=90)


def test_photo_folder_to_a_224_resnet_and_predictions(spark, tmp_path, capsys):
    _photos(tmp_path / "photos")
    data, model, preds = tmp_path / "data", tmp_path / "model", tmp_path / "preds.parquet"
    assert main(["prepare", str(tmp_path / "photos"), "--out", str(data), "--image-size",
                 "224", "--channels", "3", "--split", "0.75,0.125,0.125", "--json"]) == 0
    prepared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert prepared["image_shape"] == [224, 224, 3] and prepared["rejected_count"] == 0
    assert main(["train", str(data), "--out", str(model), "--model", "resnet8", "--workers",
                 "2", "--epochs", "4", "--batch-size", "8", "--lr", "0.01", "--seed", "1",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["world_size"] == 2 and len(trained["history"]) == 4
    assert main(["predict", str(model), str(data), "--out", str(preds), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert predicted["rows"] == prepared["splits"]["test"]
    assert predicted["accuracy"] >= 0.75, (trained["history"], predicted)
