"""`sparkvision audit`: planted leaks in MNIST found (exact, JPEG q90, one-pixel shift), no
false pair in the top 50, a deduplicated copy without them; an image folder's leak, label
conflict and near-constant outlier; bad input before the JVM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparkvision.cli import main
from tests.leaks import plant_leaks

pytest.importorskip("imagehash")


@pytest.fixture(scope="module")
def planted(spark, tmp_path_factory):
    """Prepared MNIST (Parquet) with 50 test images copied into train; (folder, planted)."""
    from sparkvision import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("planted") / "mnist"
    prepare(spark, PrepareConfig(source="mnist", out=str(out), seed=1, fmt="parquet"))
    return out, plant_leaks(out, n=50, seed=0)


def _is_planted(pair: dict, planted: dict[str, str]) -> bool:
    a, b = pair["path_a"], pair["path_b"]
    return planted.get(a) == b or planted.get(b) == a


def test_audit_finds_planted_leaks_and_dedupe_out_removes_them(spark, planted, tmp_path,
                                                               capsys):
    folder, leaks = planted
    out, deduped = tmp_path / "audit", tmp_path / "deduped"
    code = main(["audit", str(folder), "--out", str(out), "--dedupe-out", str(deduped),
                 "--json", "-q"])
    assert code == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "audit.json").read_text())
    assert summary["images"] == 5050 and summary["splits"]["train"] == 4050

    pairs = spark.read.parquet(str(out / "pairs.parquet")).collect()
    found = {p.path_a if p.path_a in leaks else p.path_b for p in pairs
             if _is_planted(p.asDict(), leaks)}
    recall = len(found) / len(leaks)
    by_kind = {k: sum(1 for c in found if c.split("/")[1] == k) for k in ("copy", "jpeg", "shift")}
    top = summary["top_pairs"]
    false_in_top = [p for p in top if not _is_planted(p, leaks)]
    print(f"\naudit: {recall:.0%} of {len(leaks)} planted leaks found {by_kind}; "
          f"{len(false_in_top)} false among the top {len(top)}; {summary['candidates']} "
          f"candidates within radius {summary['config']['radius']}; {summary['seconds']} s")
    assert recall >= 0.95, (recall, by_kind)
    assert len(top) == 50 and not false_in_top, false_in_top[:3]
    assert all(p["leak"] and {p["split_a"], p["split_b"]} == {"train", "test"} for p in top)
    assert summary["leaked"]["test"] >= 48 and summary["conflicting_groups"] == 0
    assert [p["kind"] for p in top[:summary["exact_pairs"]]] == ["exact"] * summary["exact_pairs"]
    drawn = [w for w in summary["worst"] if w["file"].startswith("worst/pair-")]
    assert drawn and all((out / w["file"]).stat().st_size > 100 for w in summary["worst"])

    # The report on the audit folder shows the section with the worst cases drawn.
    from sparkvision.reporting.report import build_report

    report = build_report(str(out), str(tmp_path / "report.html"))
    assert "audit" in report.sections
    html = (tmp_path / "report.html").read_text()
    assert "Data audit" in html and html.count("data:image/png") >= len(summary["worst"])

    # --dedupe-out: the leaked training copies are gone, the test split is whole.
    record = got["dedupe"]
    assert record["removed"] == summary["duplicates"] >= 48
    assert record["removed_per_split"] == {"train": record["removed"]}
    manifest = json.loads((deduped / "dataset.json").read_text())
    assert manifest["splits"] == {"train": 4050 - record["removed"], "val": 500, "test": 500}
    train = {r.path for r in spark.read.parquet(str(deduped / "train")).select("path").collect()}
    assert len(train & set(found)) == 0 and len(train) == manifest["splits"]["train"]
    assert sum(manifest["per_class"]["train"].values()) == manifest["splits"]["train"]


def _png(path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_leak_conflict_and_constant_outlier(tmp_path, capsys):
    """SPLIT/CLASS folders of digits (scaled to 32x32): one image also in test under
    another class (a leak with a conflicting label), one all-grey image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "images"
    for i in range(60):
        arr = np.asarray(Image.fromarray((digits.images[i] * 16).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BILINEAR))
        split = "train" if i < 50 else "test"
        _png(root / split / str(digits.target[i]) / f"{i}.png", arr)
        if i == 7:  # the same pixels as JPEG in test, filed under another class
            other = str((digits.target[i] + 1) % 10)
            (root / "test" / other).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / "test" / other / "leak.jpg", quality=95)
    _png(root / "train" / "3" / "grey.png", np.full((32, 32), 128, np.uint8))
    (root / "train" / "3" / "notes.txt").write_text("not an image")

    code = main(["audit", str(root), "--json", "-q"])
    assert code == 0, capsys.readouterr().err
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["out"] == str(tmp_path / "images-audit") and got["kind"] == "folder"
    assert got["images"] == 62 and got["unreadable"] == 1
    leaks = [p for p in got["top_pairs"] if p["leak"]]
    assert len(leaks) == 1 and leaks[0]["conflict"] and leaks[0]["kind"] == "near"
    assert {leaks[0]["path_a"], leaks[0]["path_b"]} == {str(root / "train" / str(
        digits.target[7]) / "7.png"), str(root / "test" / str((digits.target[7] + 1) % 10)
                                           / "leak.jpg")}
    assert got["conflicting_groups"] == 1 and got["leaking_groups"] == 1
    grey = [o for o in got["top_outliers"] if o["path"].endswith("grey.png")]
    assert grey and "near-constant" in grey[0]["reasons"]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import sparkvision.session

    def no_spark(*_a, **_k):
        raise AssertionError("no Spark session may start for these errors")

    monkeypatch.setattr(sparkvision.session, "get_spark", no_spark)
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    cases = [
        (["audit", str(tmp_path / "missing")], "neither a prepared folder"),
        (["audit", str(tmp_path / "imgs"), "--radius", "64"], "radius"),
        (["audit", str(tmp_path / "imgs"), "--max-pixel-distance", "2"], "max-pixel-distance"),
        (["audit", str(tmp_path / "imgs"), "--dedupe-out", str(tmp_path / "d")],
         "dedupe-out"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
