"""`sparkvision train` / `predict` end to end through the CLI on real data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from sparkvision.cli import main
from tests.imagefolder import build_image_folder


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def digits_dir(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    assert main(["prepare", "digits", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_train_then_predict_on_every_input_kind(spark, digits_dir, tmp_path, capsys):
    model_dir = tmp_path / "model"
    assert main(["train", str(digits_dir), "--out", str(model_dir), "--epochs", "4",
                 "--workers", "2", "--json"]) == 0
    result = _last_json(capsys)
    assert result["model"] == str(model_dir) and result["world_size"] == 2
    assert result["epochs"] == 4 and len(result["history"]) == 4
    for epoch in result["history"]:
        assert set(epoch) == {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds",
                              "steps_per_rank"}
        assert len(epoch["steps_per_rank"]) == 2
    assert result["val_accuracy"] >= 0.9 and result["seconds"] > 0
    assert (model_dir / "weights.safetensors").exists()

    # prepared folder (test split)
    out = tmp_path / "pred.parquet"
    assert main(["predict", str(model_dir), str(digits_dir), "--out", str(out), "--json"]) == 0
    pred = _last_json(capsys)
    manifest = json.loads((digits_dir / "dataset.json").read_text())
    assert pred["rows"] == manifest["splits"]["test"] and pred["out"] == str(out)
    assert pred["accuracy"] >= 0.9
    df = spark.read.parquet(str(out))
    assert df.columns == ["path", "label", "prediction", "predictedLabel", "confidence",
                          "probability", "rawPrediction"]

    # a TFRecord path
    out2 = tmp_path / "pred2.parquet"
    assert main(["predict", str(model_dir), str(digits_dir / "val"), "--out", str(out2),
                 "--json"]) == 0
    assert _last_json(capsys)["rows"] == manifest["splits"]["val"]

    # an image folder: decoded and resized to the model's 8x8x1 on executors
    good, bad = build_image_folder(tmp_path / "imgs")
    loose = tmp_path / "imgs" / "loose.png"  # not in a class folder: predicted, no label
    Image.new("L", (30, 30), 200).save(loose)
    good[str(loose)] = ""
    out3 = tmp_path / "pred3.parquet"
    assert main(["predict", str(model_dir), str(tmp_path / "imgs"), "--out", str(out3),
                 "--json"]) == 0
    folder = _last_json(capsys)
    assert folder["rows"] == len(good)
    assert {r["path"] for r in folder["rejected"]} <= set(bad)
    rows = spark.read.parquet(str(out3)).collect()
    assert {r.path for r in rows} == set(good)
    assert all(r.predictedLabel in manifest["classes"] for r in rows)
    assert [r.label for r in rows if r.path == str(loose)] == [None]


def test_predict_and_train_user_errors_exit_2(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), str(tmp_path), "--out", "x.parquet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.json" in err[0]



def test_url_of_a_filesystem_that_is_not_installed_exits_2(tmp_path, capsys):
    for argv in (["train", "gs://bucket/data", "--out", str(tmp_path / "m")],
                 ["report", "gs://bucket/model"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs gcsfs (pip install gcsfs" in err[0], err

def test_console_entry_points_have_help():
    for argv in (["-m", "sparkvision", "--help"], ["-m", "sparkvision", "train", "--help"],
                 ["-m", "sparkvision", "predict", "--help"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0 and "usage: sparkvision" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "sparkvision", "prepare"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--out" in proc.stderr
