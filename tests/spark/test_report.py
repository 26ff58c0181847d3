"""`sparkvision evaluate`'s plots and `sparkvision report`: one self-contained HTML page
about a model folder, and about a run folder holding a data set, models, a tuning study and a
stream output."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from sparkvision.cli import main
from sparkvision.errors import DataError
from sparkvision.reporting import build_report, find_artefacts

PNG = b"\x89PNG\r\n\x1a\n"
NEW_PLOTS = ("confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.png",
             "reliability.png", "samples.png")


class _Page(HTMLParser):
    """Section ids, their <h2> texts, <img> srcs, href/src values and the first tags."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.h2: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.meta_charset: str | None = None
        self.title = ""
        self._in: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.tags.append(f"!{decl.lower()}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "meta" and "charset" in a:
            self.meta_charset = a["charset"]
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag in ("h2", "title"):
            self._in = tag
            if tag == "h2":
                self.h2.append("")

    def handle_endtag(self, tag):
        if tag == self._in:
            self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.h2[-1] += data
        elif self._in == "title":
            self.title += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _check_self_contained(text: str) -> _Page:
    page = _parse(text)
    assert page.tags[0] == "!doctype html" and page.meta_charset == "utf-8" and page.title
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    assert len(page.h2) == len(page.sections) and len(set(page.sections)) == len(page.sections)
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png.startswith(PNG)
        with Image.open(io.BytesIO(png)) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    for link in page.links:
        assert link.startswith(("data:image/png;base64,", "#")), link[:60]
    return page


def _section(text: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert match, sid
    return match.group(1)


@pytest.fixture(scope="module")
def evaluated(trained_dir, digits_dir, tmp_path_factory):
    """A copy of the trained model (without evaluations) with digits' dataset.json beside
    it, as `train` leaves it; the first test evaluates it."""
    model = tmp_path_factory.mktemp("report") / "model"
    shutil.copytree(trained_dir, model, ignore=shutil.ignore_patterns("evaluation"))
    shutil.copy(digits_dir / "dataset.json", model / "dataset.json")
    return model


def test_evaluate_writes_every_plot(evaluated, digits_dir, capsys):
    assert main(["evaluate", str(evaluated), str(digits_dir), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = evaluated / "evaluation" / "test"
    assert got["plots"] == [str(folder / name) for name in NEW_PLOTS]
    for name in NEW_PLOTS:
        with Image.open(folder / name) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 150, name
            low, high = im.convert("L").getextrema()
            assert high - low > 100, name  # not a blank canvas


def test_report_on_a_model_folder(evaluated, digits_dir, tmp_path, monkeypatch, capsys):
    if not (evaluated / "evaluation" / "test" / "samples.png").exists():
        assert main(["evaluate", str(evaluated), str(digits_dir)]) == 0
    import sparkvision.session

    def no_spark(*_a, **_k):
        raise AssertionError("report must not start Spark")

    monkeypatch.setattr(sparkvision.session, "get_spark", no_spark)
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(evaluated), "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["out"] == str(out) and got["bytes"] == out.stat().st_size
    assert got["sections"] == ["summary", "dataset", "training", "evaluation"]
    text = out.read_text(encoding="utf-8")
    page = _check_self_contained(text)
    assert page.sections == got["sections"] and len(page.images) == got["images"]
    # curves + class distribution + the evaluation's five PNGs
    assert got["images"] == 7
    manifest = json.loads((digits_dir / "dataset.json").read_text())
    dataset = _section(text, "dataset")
    for name in manifest["classes"]:
        assert f"<td>{name}</td>" in dataset
    assert f"{sum(manifest['splits'].values())}</td>" in dataset
    history = json.loads((evaluated / "history.json").read_text())
    training = _section(text, "training")
    per_epoch = training.split("<h3>Per epoch</h3>")[1].split("</table>")[0]
    assert per_epoch.count("<tr>") == len(history["epochs"]) + 1  # + the header row
    assert "world_size" in training and "learningRate" in training
    from sparkvision.settings import TrainSettings, rows

    for row in rows(TrainSettings):  # every setting is in the Params table, new ones too
        assert f"<td>{row.param}</td>" in training, row.param
    metrics = json.loads((evaluated / "evaluation" / "test" / "metrics.json").read_text())
    evaluation = _section(text, "evaluation")
    assert f'<th>accuracy</th><td>{metrics["accuracy"]:.4f}</td>' in evaluation
    assert f'<th>expected calibration error</th><td>{metrics["ece"]:.4f}</td>' in evaluation
    assert 'alt="reliability"' in evaluation  # the reliability diagram, inlined
    assert f"{metrics['accuracy']:.4f}" in _section(text, "summary")
    assert f"{metrics['macro_f1']:.4f}" in _section(text, "summary")
    # the default --out is MODEL_DIR/report.html; a second report does not pick it up
    assert main(["report", str(evaluated)]) == 0
    assert (evaluated / "report.html").exists()
    assert "report.html" in capsys.readouterr().out
    (evaluated / "report.html").unlink()


def _fake_study(folder, png: bytes) -> None:
    folder.mkdir(parents=True)
    trials = [
        {"number": 0, "params": {"learningRate": 0.003}, "metric_per_epoch": [0.5, 0.8],
         "value": 0.8, "state": "complete", "epochs_run": 2, "epochs": 2, "workers": 1,
         "seconds": 3.5, "error": None},
        {"number": 1, "params": {"learningRate": 0.03}, "metric_per_epoch": [0.6, 0.91],
         "value": 0.91, "state": "complete", "epochs_run": 2, "epochs": 2, "workers": 1,
         "seconds": 3.1, "error": None},
        {"number": 2, "params": {"learningRate": 0.3}, "metric_per_epoch": [0.1],
         "value": 0.1, "state": "pruned", "epochs_run": 1, "epochs": 2, "workers": 1,
         "seconds": 1.2, "error": None},
        {"number": 3, "params": {"learningRate": 9.0}, "metric_per_epoch": [],
         "value": None, "state": "failed", "epochs_run": None, "epochs": 2, "workers": 1,
         "seconds": 0.4, "error": "training diverged <script>alert(1)</script> & more"},
    ]
    (folder / "trials.json").write_text(json.dumps(trials), encoding="utf-8")
    (folder / "optimization_history.png").write_bytes(png)


def _fake_stream(folder) -> dict:
    batches = [{"batch": i, "rows": 10 + i, "ms": 400 + 37 * i, "rows_per_s": 20.0 + i,
                "rejected": i % 2, "model_version": "abc123def456"} for i in range(6)]
    stats = {"model": "models/digits", "input": "landing/", "format": "image",
             "checkpoint": "ckpt/",
             "summary": {"batches": 6, "rows": sum(b["rows"] for b in batches), "rejected": 3,
                         "model_versions": ["abc123def456"], "p50_ms": 492.5,
                         "p95_ms": 585.0, "rows_per_s": 22.4, "stopped": "done",
                         "seconds": 4.2},
             "batches": batches}
    (folder / "batch=0").mkdir(parents=True)
    (folder / "batch=0" / "metrics.json").write_text("not json: must never be read")
    (folder / "_stream.json").write_text(json.dumps(stats), encoding="utf-8")
    return stats


def test_report_on_a_run_folder(evaluated, trained_dir, digits_dir, tmp_path):
    if not (evaluated / "evaluation" / "test" / "metrics.json").exists():
        assert main(["evaluate", str(evaluated), str(digits_dir), "--no-plots"]) == 0
    run = tmp_path / "run"
    shutil.copytree(evaluated, run / "model")
    (run / "data" / "train").mkdir(parents=True)  # a shard folder: never searched
    (run / "data" / "train" / "trials.json").write_text("not json: must never be read")
    shutil.copy(digits_dir / "dataset.json", run / "data" / "dataset.json")
    png = (evaluated / "evaluation" / "test" / "confusion_matrix.png").read_bytes()
    _fake_study(run / "studies" / "digits", png)
    shutil.copytree(trained_dir, run / "studies" / "digits" / "best",
                    ignore=shutil.ignore_patterns("evaluation"))
    stats = _fake_stream(run / "stream-out")

    found = find_artefacts(run)
    assert len(found.datasets) == 1 and len(found.datasets[0].paths) == 2  # one, seen twice
    assert [m.role for m in found.all_models()] == ["model", "best model of study digits"]
    result = build_report(run, tmp_path / "run.html")
    assert result.sections == ["summary", "dataset", "training", "training-2", "evaluation",
                               "tuning", "streaming"]
    text = (tmp_path / "run.html").read_text(encoding="utf-8")
    page = _check_self_contained(text)
    assert page.sections == result.sections and len(page.images) == result.images
    assert "Training — studies/digits/best" in page.h2

    tuning = _section(text, "tuning")
    assert "<script>" not in tuning and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in tuning
    assert "unknown (no study.db)" in tuning
    best = tuning.split("best trial</th><td>")[1].split("</td>")[0]
    assert best == "1"  # the complete trial with the largest value
    assert tuning.count('src="data:image/png') == 2  # optuna's PNG + the trial curves
    assert "0.9100" in _section(text, "summary")

    streaming = _section(text, "streaming")
    assert "492.5" in streaming and "abc123def456" in streaming and "image" in streaming
    assert streaming.count("<tr>") >= len(stats["batches"]) + 1
    assert streaming.count('src="data:image/png') == 1


def test_nothing_to_report_is_a_user_error(tmp_path, capsys):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="nothing to report in .*empty.*history.json"):
        find_artefacts(tmp_path / "empty")
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to report" in err[0] and "empty" in err[0], err
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no folder at" in err[0], err


def test_report_renders_in_headless_chromium(evaluated, trained_dir, digits_dir, tmp_path):
    """The run-folder report opened in a real browser (Debian's chromium, headless): every
    image decodes to a non-zero natural size, no console errors, a full-page screenshot."""
    from tests.browser import inspect_page

    if not (evaluated / "evaluation" / "test" / "samples.png").exists():
        assert main(["evaluate", str(evaluated), str(digits_dir)]) == 0
    run = tmp_path / "run"
    shutil.copytree(evaluated, run / "model")
    png = (evaluated / "evaluation" / "test" / "confusion_matrix.png").read_bytes()
    _fake_study(run / "studies" / "digits", png)
    _fake_stream(run / "stream-out")
    result = build_report(run, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    page = inspect_page(tmp_path / "report.html", screenshot=shot)
    assert page.console_errors == []
    assert len(page.images) == result.images >= 8
    assert all(i.loaded and i.natural_width > 0 and i.natural_height > 0 for i in page.images)
    assert page.section_ids == result.sections and page.dangling_anchors == []
    import numpy as np
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 2000
        assert len(np.unique(np.asarray(image.convert("L")))) > 20  # not blank
