"""User errors that need no Spark fail before the JVM starts: the real CLI, run as a
subprocess, exits 2 with one stderr line naming the bad value, and never launches Java.

How "never launches Java" is seen: the command runs with ``JAVA_HOME`` (and the front of
``PATH``) pointing at a fake JDK whose ``bin/java`` only appends to a marker file and
exits 1. Spark's launcher scripts run ``$JAVA_HOME/bin/java`` first thing, so any attempt
to start a session leaves the marker; ``test_a_command_that_starts_spark_leaves_the_marker``
shows the probe sees a launch."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 180


@pytest.fixture
def fake_java(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment whose ``java`` is the fake one, its marker file)."""
    jdk = tmp_path / "fake-jdk"
    (jdk / "bin").mkdir(parents=True)
    marker = tmp_path / "java-was-launched"
    java = jdk / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho \"$*\" >> '{marker}'\nexit 1\n")
    java.chmod(java.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ, JAVA_HOME=str(jdk), PATH=f"{jdk / 'bin'}{os.pathsep}"
               f"{os.environ.get('PATH', '')}", SPARKVISION_LOG_DIR=str(tmp_path / "logs"))
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_SUBMIT_ARGS", "PYSPARK_GATEWAY_PORT",
                "PYSPARK_GATEWAY_SECRET"):
        env.pop(key, None)
    return env, marker


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A prepared folder as far as the checks read it (its dataset.json)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "dataset.json").write_text(json.dumps({
        "classes": ["a", "b"], "image_shape": [8, 8, 1],
        "splits": {"train": 8, "val": 2, "test": 2}}))
    return folder


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A folder that passes the model-folder check (it has a weights file)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"")
    return folder


def _cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sparkvision", *argv, "--master", "local[2]"],
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)


def _cases(tmp: Path, data: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    """name → (argv, the bad value the error line must name)."""
    missing = str(tmp / "no-such-folder")
    out = ["--out", str(tmp / "out")]
    stream = ["--out", str(tmp / "stream-out"), "--checkpoint", str(tmp / "ckpt"),
              "--available-now"]
    return {
        "train_bad_import_path": (
            ["train", str(data), *out, "--model", "sv_no_such_pkg.mod:build"],
            "sv_no_such_pkg.mod:build"),
        "train_import_path_without_function": (
            ["train", str(data), *out, "--model", "json:no_such_builder"],
            "json:no_such_builder"),
        "train_missing_data": (["train", missing, *out], missing),
        "prepare_missing_folder": (["prepare", missing, *out], missing),
        "prepare_no_class_folders": (["prepare", str(tmp / "loose"), *out], "loose"),
        "train_unknown_network": (["train", str(data), *out, "--model", "nosuchnet"],
                                  "nosuchnet"),
        "train_unknown_zoo_network": (["train", str(data), *out, "--model", "timm:nosuch"],
                                      "timm:nosuch"),
        "tune_bad_import_path": (
            ["tune", str(data), *out, "--space", '{"learningRate": [0.01]}', "--model",
             "sv_no_such_pkg.mod:build"], "sv_no_such_pkg.mod:build"),
        "predict_missing_input": (["predict", str(model), missing, *out], missing),
        "predict_missing_model": (["predict", missing, str(data), *out], missing),
        "evaluate_missing_model": (["evaluate", missing, str(data)], missing),
        "evaluate_missing_input": (["evaluate", str(model), missing], missing),
        "export_missing_model": (["export", missing, "--out", str(tmp / "m.onnx")], missing),
        "explain_missing_model": (["explain", missing, str(data)], missing),
        "featurize_missing_model": (["featurize", missing, str(data), *out], missing),
        "featurize_missing_input": (["featurize", str(model), missing, *out], missing),
        "stream_missing_model": (["stream", missing, "--input", str(data), *stream],
                                 missing),
        "stream_missing_input": (["stream", str(model), "--input", missing, *stream],
                                 missing),
    }


CASES = list(_cases(Path("t"), Path("d"), Path("m")))


@pytest.mark.parametrize("case", CASES)
def test_user_error_fails_before_the_jvm(case, fake_java, data, model, tmp_path):
    env, marker = fake_java
    argv, bad = _cases(tmp_path, data, model)[case]
    if argv[0] == "explain":
        pytest.importorskip("captum")  # without it, explain's first check names captum
    loose = tmp_path / "loose"  # images, but none inside a class sub-folder
    loose.mkdir()
    (loose / "a.png").write_bytes(b"\x89PNG not really")
    done = _cli(argv, env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"sparkvision {argv[0]}: error: "), lines[0]
    assert bad in lines[0], lines[0]
    assert not marker.exists(), f"java was launched: {marker.read_text()}"


def test_a_command_that_starts_spark_leaves_the_marker(fake_java, data, tmp_path):
    """The probe works: a good command reaches the session start and runs the fake java
    (which fails, so the command fails, not with exit 2)."""
    env, marker = fake_java
    done = _cli(["train", str(data), "--out", str(tmp_path / "out")], env)
    assert marker.exists(), done.stderr
    assert done.returncode not in (0, 2), done.stderr


# The same checks from the Python API: one SparkVisionError naming the thing, no session.

def test_api_classifier_with_an_import_path_that_does_not_import_fails_in_validate():
    from sparkvision.errors import InvalidParameterError
    from sparkvision.ml.classifier import ImageClassifier

    with pytest.raises(InvalidParameterError) as info:
        ImageClassifier(model="no_such_pkg_sv.nets:build").validateParams()
    assert info.value.name == "model" and "cannot be imported" in str(info.value)
    with pytest.raises(InvalidParameterError, match="has no callable 'nothing_here'"):
        ImageClassifier(model="dp:json:nothing_here").validateParams()
    ImageClassifier(model="json:loads").validateParams()  # importable and callable: passes


def test_api_tuning_space_imports_every_searched_network():
    from sparkvision.errors import InvalidParameterError
    from sparkvision.tuning.space import parse_space

    with pytest.raises(InvalidParameterError, match="no_such_pkg_sv"):
        parse_space({"model": ["simple_cnn", "no_such_pkg_sv:net"]})


def test_api_stream_of_a_missing_folder_fails_before_any_session(tmp_path: Path):
    from sparkvision.errors import DataError
    from sparkvision.streaming import start

    missing = tmp_path / "incoming"
    # the model argument is never looked at: the input is checked first
    with pytest.raises(DataError, match="stream input folder .*incoming.* does not exist"):
        start(str(tmp_path / "model"), str(missing), str(tmp_path / "out"),
              str(tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists()


def test_api_prediction_input_that_does_not_exist_names_it(tmp_path: Path):
    from sparkvision.data.prediction_input import load_prediction_input
    from sparkvision.errors import DataError

    with pytest.raises(DataError, match="prediction input .*nowhere.* does not exist"):
        load_prediction_input(None, str(tmp_path / "nowhere"), (8, 8, 1), ["a"], "test")
