"""The package as users get it (``make test-wheel``, a CI leg of its own): the sdist and the
wheel are built and pass ``twine check``; the wheel (not an editable install) goes into a
clean venv with only the core, where the CLI runs prepare → train (1 epoch) → predict →
evaluate on generated images, the built-in data sets fail with one line naming
``[datasets]`` and ``doctor`` lists what is missing; a second install adds the extras and runs
``report`` and ``prepare digits`` (what docs/install.md shows).

Versions come from the runtime and dev locks as constraints (``-c``), as a user pins their
own torch; nothing is downloaded that this machine's indexes do not hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.package
TIMEOUT_S = 600


def _run(argv: list[str], cwd: Path, timeout: int = TIMEOUT_S,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env=env)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and wheel of this checkout, built in isolation and checked by twine."""
    out = tmp_path_factory.mktemp("dist")
    _ok(_run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
              str(ROOT)], ROOT))
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 2 and {f.rsplit(".", 2)[-1] for f in files} == {"whl", "gz"}, files
    _ok(_run([sys.executable, "-m", "twine", "check", "--strict", *map(str, out.iterdir())],
             ROOT))
    return out


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory, dist) -> Path:
    """A new venv holding the wheel and its core dependencies only."""
    where = tmp_path_factory.mktemp("venv") / "v"
    venv.create(where, with_pip=True)
    wheel = next(dist.glob("*.whl"))
    _ok(_run([str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel),
              "-c", str(ROOT / "requirements-runtime.lock")], ROOT))
    return where


def _cli(venv_dir: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK", "SPARK_"))}
    env.update(SPARK_LOCAL_IP="127.0.0.1", SPARKVISION_LOG_DIR=str(cwd / "logs"))
    return _run([str(venv_dir / "bin" / "sparkvision"), *argv], cwd, env=env)


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(_ok(proc).strip().splitlines()[-1])


def _images(root: Path, per_class: int = 150) -> Path:
    """Two classes anyone can tell apart: dark and bright 24×24 RGB PNGs with noise."""
    rng = np.random.default_rng(0)
    for cls, base in (("dark", 40), ("bright", 210)):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(root / cls / f"{i:03d}.png")
    return root


def test_the_wheel_installs_the_core_only(clean_venv):
    python = str(clean_venv / "bin" / "python")
    where = _ok(_run([python, "-c", "import sparkvision, sys; print(sparkvision.__file__)"],
                     clean_venv))
    assert str(clean_venv) in where and "site-packages" in where  # the wheel, not the source
    freeze = _ok(_run([python, "-m", "pip", "freeze"], clean_venv)).lower()
    assert "scikit-learn" not in freeze and "mlflow" not in freeze and "optuna" not in freeze


def test_core_smoke_and_one_line_for_a_missing_extra(clean_venv, tmp_path):
    work = tmp_path
    _ok(_cli(clean_venv, ["--version"], work))
    doctor = _json(_cli(clean_venv, ["doctor", "--no-spark", "--json"], work))
    status = {c["name"]: c["status"] for c in doctor["checks"]}
    assert status["pyspark"] == status["torch"] == status["java"] == "ok"
    assert status["[datasets]"] == status["[tune]"] == status["[mlflow]"] == "missing"

    missing = _cli(clean_venv, ["prepare", "digits", "--out", str(work / "d")], work)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sparkvision[datasets]'" in lines[0], lines

    folder = _images(work / "images")
    common = ["--master", "local[2]", "--json", "-q"]
    data = _json(_cli(clean_venv, ["prepare", str(folder), "--out", str(work / "data"),
                                   *common], work))
    assert sum(data["splits"].values()) == 300, data
    _json(_cli(clean_venv, ["train", str(work / "data"), "--out", str(work / "model"),
                            "--epochs", "1", "--workers", "2", *common], work))
    assert (work / "model" / "weights.safetensors").exists()
    predicted = _json(_cli(clean_venv, ["predict", str(work / "model"), str(folder), "--out",
                                        str(work / "pred"), *common], work))
    assert predicted["rows"] == 300, predicted
    evaluated = _json(_cli(clean_venv, ["evaluate", str(work / "model"), str(work / "data"),
                                        *common], work))
    assert evaluated["accuracy"] >= 0.9, evaluated


def test_extras_add_datasets_and_report(clean_venv, dist, tmp_path):
    python = str(clean_venv / "bin" / "python")
    wheel = next(dist.glob("*.whl"))
    _ok(_run([python, "-m", "pip", "install", "--quiet", f"sparkvision[datasets,onnx] @ "
              f"{wheel.as_uri()}", "-c", str(ROOT / "requirements.lock")], tmp_path))
    common = ["--master", "local[2]", "--json", "-q"]
    data = _json(_cli(clean_venv, ["prepare", "digits", "--out", str(tmp_path / "digits"),
                                   *common], tmp_path))
    assert sum(data["splits"].values()) == 1797, data
    _json(_cli(clean_venv, ["train", str(tmp_path / "digits"), "--out",
                            str(tmp_path / "model"), "--epochs", "1", *common], tmp_path))
    evaluated = _json(_cli(clean_venv, ["evaluate", str(tmp_path / "model"),
                                        str(tmp_path / "digits"), "--backend", "onnxruntime",
                                        *common], tmp_path))
    assert evaluated["accuracy"] >= 0.5, evaluated
    report = _json(_cli(clean_venv, ["report", str(tmp_path / "model"), *common], tmp_path))
    assert report["sections"] and Path(report["out"]).stat().st_size == report["bytes"]
    assert "accuracy" in Path(report["out"]).read_text().lower()
