"""What a user sees in a terminal (or a log file): no JVM banner, no carriage-return frames
when stderr is not a TTY, one line for a failure inside a Spark task, ``--json`` last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BANNER = ("WARNING: Using incubator modules", "Setting default log level",
          "To adjust logging level", "log4j", "NativeCodeLoader")


def _cli(args: list[str], log_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``sparkvision ARGS`` in a new process, stdout and stderr captured (not a TTY)."""
    env = {k: v for k, v in os.environ.items() if k != "SPARKVISION_PROGRESS"}
    env["SPARKVISION_LOG_DIR"] = str(log_dir)
    return subprocess.run([sys.executable, "-m", "sparkvision", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _assert_quiet(stderr: str) -> None:
    for marker in BANNER:
        assert marker not in stderr, f"JVM noise {marker!r} on stderr:\n{stderr}"
    assert "\r" not in stderr, f"carriage-return frames on a non-TTY stderr:\n{stderr!r}"


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_prepare_prints_no_jvm_banner_and_json_is_last(tmp_path):
    run = _cli(["prepare", "digits", "--out", str(tmp_path / "d"), "--json"], tmp_path / "logs")
    assert run.returncode == 0, run.stderr
    _assert_quiet(run.stderr)
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert payload["splits"]["train"] > 1000
    # the JVM's output went to the run's log file instead
    logs = list((tmp_path / "logs").glob("prepare-*.log"))
    assert len(logs) == 1 and "Using incubator modules" in logs[0].read_text()


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_failure_inside_a_spark_task_is_one_line_and_exit_2(digits_dir, tmp_path,
                                                            monkeypatch):
    """The network builder imports and builds on the driver but raises on the executors:
    the user gets our one line (exit 2) after one stage attempt (each rank builds once: a
    deterministic error is not retried); the executors' tracebacks go to the log."""
    from tests.nets import BUILD_MARKER_ENV

    marker = tmp_path / "builds.txt"
    monkeypatch.setenv(BUILD_MARKER_ENV, str(marker))
    run = _cli(["train", str(digits_dir), "--out", str(tmp_path / "m"), "--epochs", "1",
                "--workers", "2", "--model", "tests.nets:fails_in_task"], tmp_path / "logs")
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("sparkvision train: error: the network builder")
    assert "raised inside a Spark task: RuntimeError: CUDA driver not found" in lines[0]
    _assert_quiet(run.stderr)
    builds = marker.read_text().splitlines()  # one line per build inside a task
    assert sorted(b.split(" task ")[0] for b in builds) == ["partition 0", "partition 1"], \
        builds
    log = next((tmp_path / "logs").glob("train-*.log")).read_text()
    assert "RuntimeError: CUDA driver not found on this executor" in log
    assert "ModelBuildError" in log  # the task's traceback, printed by the rank
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_verbose_keeps_spark_output_on_stderr(tmp_path):
    run = _cli(["prepare", "digits", "--out", str(tmp_path / "d"), "-v", "--num-shards", "1"],
               tmp_path / "logs")
    assert run.returncode == 0, run.stderr
    assert "Using incubator modules" in run.stderr and " INFO " in run.stderr


@pytest.mark.slow
def test_demo_runs_the_whole_mission_quietly(tmp_path):
    """`sparkvision demo` on digits: every step, a report, plain progress lines on a
    non-TTY stderr, one summary line per step and the JSON summary last with --json."""
    out = tmp_path / "demo"
    run = _cli(["demo", "--source", "digits", "--epochs", "3", "--out", str(out),
                "--stream-images", "10"], tmp_path / "logs", timeout=600)
    assert run.returncode == 0, run.stderr
    _assert_quiet(run.stderr)
    assert "train: " in run.stderr and "stream: batch 0" in run.stderr  # lines, not bars
    lines = run.stdout.strip().splitlines()
    steps = [line.split()[1] for line in lines if line.startswith("[")]
    assert steps == ["prepare", "train", "evaluate", "predict", "stream", "report"]
    assert lines[-1].startswith("demo done in") and "test accuracy" in lines[-1]
    accuracy = float(lines[-1].split("test accuracy ")[1].split()[0])
    assert accuracy > 0.8
    assert (out / "report.html").stat().st_size > 10_000
    assert (out / "stream" / "_stream.json").exists()
    metrics = json.loads((out / "model" / "evaluation" / "test" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=5e-5)
    # a second demo into the same folder starts clean; a foreign folder is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    refused = _cli(["demo", "--out", str(foreign)], tmp_path / "logs")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert (foreign / "keep.txt").read_text() == "mine"
