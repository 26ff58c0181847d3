"""Drift alarms in the stream: a fit with validation data saves a reference profile in the
model folder; `sparkvision stream` compares every window of micro-batches with it, and a
stream fed test images, then the same digits inverted (255 − x), warns within 3 micro-batches
of the switch and not before it — in the summary, ``_stream.json`` and the report."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sparkvision.cli import main

BATCH = 59  # files per micro-batch (the digits test split has 179 images)


def _write_pngs(rows, folder: Path, shape, prefix: str, mtime0: float, invert: bool
                ) -> list[str]:
    """Each row's image as ``folder/<label>/<prefix>_<i>.png`` (inverted when asked), with
    modification times mtime0, mtime0 + 1, … (the file source takes the oldest first)."""
    h, w, c = shape
    paths = []
    for i, row in enumerate(rows):
        pixels = np.frombuffer(row.image, np.uint8).reshape(h, w, c)
        if invert:
            pixels = 255 - pixels
        target = folder / str(row.label) / f"{prefix}_{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp_{prefix}_{i}.png"
        Image.fromarray(pixels[:, :, 0] if c == 1 else pixels).save(tmp)
        os.utime(tmp, (mtime0 + i, mtime0 + i))
        os.replace(tmp, target)
        paths.append(str(target))
    return paths


def test_fit_with_validation_saves_a_reference_profile(trained, trained_dir, digits):
    from sparkvision import ImageClassificationModel
    from sparkvision.evaluation.drift import PROFILE_FILE, feature_names

    profile = trained[0].drift_profile
    assert profile is not None and profile.source == "validation split"
    assert profile.rows == digits[1].count()  # every validation image
    assert [f.name for f in profile.features] == feature_names(1)
    for f in profile.features:
        assert sum(f.counts) == profile.rows
        if f.name != "class":  # reference deciles: no bin holds most of the rows
            assert len(f.counts) == len(f.edges) + 1 >= 5, f
            assert max(f.counts) < 0.5 * profile.rows, f
    assert (trained_dir / PROFILE_FILE).exists()
    assert ImageClassificationModel.load(str(trained_dir)).drift_profile == profile


def test_stream_warns_within_3_batches_of_inverted_images_and_not_before(
        spark, trained_dir, digits, tmp_path, capsys):
    from sparkvision.reporting import build_report

    test = digits[2].select("image", "label").orderBy("path").limit(3 * BATCH).collect()
    assert len(test) == 3 * BATCH
    shape = (8, 8, 1)
    inbox, out = tmp_path / "in", tmp_path / "out"
    now = time.time() - 10_000
    normal = _write_pngs(test, inbox, shape, "test", now, invert=False)
    inverted = _write_pngs(test, inbox, shape, "inv", now + 1_000, invert=True)
    code = main(["stream", str(trained_dir), "--input", str(inbox), "--out", str(out),
                 "--checkpoint", str(tmp_path / "ckpt"), "--available-now",
                 "--max-files-per-trigger", str(BATCH), "--timeout", "180", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["batches"] == 6 and summary["rows"] == 6 * BATCH

    # the micro-batches hold what we think: three of test images, then three inverted
    rows = spark.read.parquet(str(out)).select("path", "batch").collect()
    by_batch = {b: {r.path for r in rows if r.batch == b} for b in range(6)}
    assert set().union(*(by_batch[b] for b in (0, 1, 2))) == set(normal)
    assert set().union(*(by_batch[b] for b in (3, 4, 5))) == set(inverted)

    stats = json.loads((out / "_stream.json").read_text())
    windows = {b["batch"]: b["drift"] for b in stats["batches"]}
    assert sorted(windows) == list(range(6))
    # test images against the validation profile: no warning (their PSI, 0.13-0.17 here,
    # is the noise of 59-177 rows against 179 in 10 bins; no p-value under 0.05)
    for b in (0, 1, 2):
        assert not windows[b]["warning"], windows[b]
    warned = [b for b in (3, 4, 5) if windows[b]["warning"]]
    assert warned, windows  # within 3 micro-batches of the switch (here: the first)
    assert all(windows[b]["warning"] for b in range(warned[0], 6))
    first = windows[warned[0]]
    assert first["score"] > 0.2 and first["feature"] in ("pixel_mean_c0", "confidence",
                                                         "class")
    assert first["score"] > max(windows[b]["score"] for b in (0, 1, 2))
    assert windows[5]["psi"]["pixel_mean_c0"] > 1  # all inverted: far from the reference
    drift = summary["drift"]
    assert drift["watched"] and drift["threshold"] == 0.2 and drift["window"] == 3
    assert drift["first_warning_batch"] == warned[0] and drift["warnings"] == 6 - warned[0]
    assert stats["summary"]["drift"] == drift
    assert f"first at batch {warned[0]}" not in captured.out  # --json: the JSON line only
    # the live lines (plain lines when stderr is not a terminal) carry the drift
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("stream: batch")]
    if lines:  # progress lines are off in some modes; when shown, the warning is in them
        assert any("DRIFT" in ln for ln in lines)
        assert not any("DRIFT" in ln for ln in lines if re.match(r"stream: batch [012] ", ln))

    report = build_report(str(out), str(tmp_path / "report.html"))
    html = Path(report.out).read_text()
    assert "Drift" in html and "stream drift" in html and "⚠" in html


def test_stream_without_a_profile_takes_drift_reference_or_says_why(
        spark, trained, digits_dir, digits, tmp_path):
    from sparkvision.streaming import start

    model = trained[0].copy()
    model.drift_profile = None  # as a model trained without validation data
    test = digits[2].select("image", "label").orderBy("path").limit(40).collect()
    inbox = tmp_path / "in"
    _write_pngs(test, inbox, (8, 8, 1), "t", time.time() - 100, invert=False)

    q = start(model, str(inbox), str(tmp_path / "o1"), str(tmp_path / "c1"),
              available_now=True, spark=spark, warm_up=False)
    q.awaitTermination(120)
    drift = q.sparkvision_writer.summary()["drift"]
    assert not drift["watched"] and "--drift-reference" in drift["note"]
    assert all(r.drift is None for r in q.sparkvision_writer.records)

    q = start(model, str(inbox), str(tmp_path / "o2"), str(tmp_path / "c2"),
              available_now=True, spark=spark, warm_up=False,
              drift_reference=str(digits_dir))  # a prepared folder: its val split
    q.awaitTermination(120)
    drift = q.sparkvision_writer.summary()["drift"]
    assert drift["watched"] and drift["reference"]["rows"] == digits[1].count()
    assert drift["warnings"] == 0
    assert [r.drift["rows"] for r in q.sparkvision_writer.records] == [40]


def test_stream_drift_flags_are_checked_before_spark(trained_dir, tmp_path, capsys):
    inbox = tmp_path / "in"
    inbox.mkdir()
    base = ["stream", str(trained_dir), "--input", str(inbox), "--out", str(tmp_path / "o"),
            "--checkpoint", str(tmp_path / "c"), "--available-now"]
    for extra, word in ((["--drift-threshold", "0"], "drift_threshold"),
                        (["--drift-window", "0"], "drift_window"),
                        (["--drift-reference", str(tmp_path / "nope")], "does not exist")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err, err
