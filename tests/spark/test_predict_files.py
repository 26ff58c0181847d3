"""Image files decoded and predicted in one Python runner per task (``inference/files.py``):
`sparkvision predict` / `evaluate` on an image folder and `sparkvision stream` of image
files reject exactly the files ``prepare``'s decoding rejects, with its reasons, and predict
the others exactly as ``transform`` predicts the decoded pixels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparkvision.cli import main
from tests.imagefolder import build_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, trained):
    """Good and bad files of every kind, a class folder named after one of the model's
    classes and a file outside any class folder."""
    root = tmp_path_factory.mktemp("files") / "imgs"
    good, bad = build_image_folder(root)
    classes = trained[0].getClasses()
    (root / classes[3]).mkdir()
    rng = np.random.default_rng(7)
    for i in range(4):
        p = root / classes[3] / f"digit_{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(p)
        good[str(p)] = classes[3]
    loose = root / "loose.png"
    Image.new("L", (30, 30), 200).save(loose)
    good[str(loose)] = ""
    return root, good, bad


@pytest.fixture(scope="module")
def reference(spark, trained, folder):
    """What the two-runner route gives: ``prepare``'s decoding of the folder
    (``decode_image_folder``), its rejected rows, and ``transform`` of the decoded
    pixels: ({path: reason}, {path: (label, prediction, probability)})."""
    from sparkvision.data.decoding import decode_image_folder, label_by_class, rejected_rows
    from sparkvision.data.images import ImageSpec

    model = trained[0]
    root = folder[0]
    decoded = decode_image_folder(spark, str(root.resolve()), ImageSpec(*model.getImageShape()),
                                  need_class=False)
    try:
        rejected = {r["path"]: r["reason"] for r in rejected_rows(decoded)}
        rows = model.transform(label_by_class(decoded, model.getClasses())).collect()
    finally:
        decoded.unpersist()
    return rejected, {r.path: (r.label, r.prediction, r.probability.toArray()) for r in rows}


def _same_predictions(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for path, (label, prediction, probability) in got.items():
        w_label, w_prediction, w_probability = want[path]
        assert (label, prediction) == (w_label, w_prediction), path
        np.testing.assert_allclose(probability, w_probability, rtol=0, atol=1e-6)
        assert abs(probability.sum() - 1) < 1e-9


def test_predict_an_image_folder_in_one_pass(spark, trained, trained_dir, folder, reference,
                                             tmp_path, capsys):
    root, good, bad = folder
    want_rejected, want = reference
    assert set(want_rejected) <= set(bad) and len(want_rejected) >= 3  # the folder is hard
    out = tmp_path / "pred"
    assert main(["predict", str(trained_dir), str(root), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the rejected files: the same, with the same reasons, in path order
    assert result["rejected"] == [{"path": p, "reason": want_rejected[p]}
                                  for p in sorted(want_rejected)]
    assert result["rows"] == len(want) == len(good)
    df = spark.read.parquet(str(out))
    assert df.columns == ["path", "label", "prediction", "predictedLabel", "confidence",
                          "probability", "rawPrediction"]
    rows = df.collect()
    _same_predictions({r.path: (r.label, r.prediction, r.probability.toArray())
                       for r in rows}, want)
    labelled = {r.path: r.label for r in rows if r.label is not None}
    assert labelled == {p: 3 for p, c in good.items() if c == "3"} and len(labelled) == 4
    classes = trained[0].getClasses()
    for r in rows:
        assert r.predictedLabel == classes[int(r.prediction)]
        assert int(np.argmax(r.rawPrediction.toArray())) == int(r.prediction)


def test_evaluate_an_image_folder_in_one_pass(trained, trained_dir, folder, reference,
                                              tmp_path, capsys):
    """evaluate on the folder: the labelled files only (class folder named after a class),
    the same rejected files; its sample grid is drawn from the decoded pixels."""
    root = folder[0]
    want_rejected, want = reference
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_dir), str(root), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["path"] for r in result["rejected"]] == sorted(want_rejected)
    labelled = {p: v for p, v in want.items() if v[0] is not None}
    assert result["n"] == len(labelled) == 4
    right = sum(v[0] == v[1] for v in labelled.values())
    assert result["accuracy"] == pytest.approx(right / len(labelled))
    assert (out / "samples.png").exists() and (out / "confusion_matrix.png").exists()


def test_stream_of_image_files_rejects_and_predicts_as_prepare_and_transform(
        spark, trained, folder, reference, tmp_path):
    from sparkvision.streaming import start

    model = trained[0]
    root = folder[0]
    want_rejected, want = reference
    inbox = tmp_path / "in"
    shutil.copytree(root, inbox, symlinks=True)
    q = start(model, str(inbox), str(tmp_path / "out"), str(tmp_path / "ckpt"),
              available_now=True, spark=spark)
    q.awaitTermination(180)
    assert not q.isActive and q.exception() is None

    def rel(path: str) -> str:
        return str(Path(path).relative_to(inbox))

    def ref(path: str) -> str:
        return str(Path(path).relative_to(root))

    got = {rel(r.path): (r.label, r.prediction, r.probability.toArray())
           for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    _same_predictions(got, {ref(p): v for p, v in want.items()})
    rejected = {rel(r.path): r.reason
                for r in spark.read.parquet(str(tmp_path / "out" / "_rejected")).collect()}
    assert rejected == {ref(p): reason for p, reason in want_rejected.items()}
    summary = q.sparkvision_writer.summary()
    assert summary["rows"] == len(got) + len(rejected)
    assert summary["rejected"] == len(rejected)
