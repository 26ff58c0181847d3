"""A `sparkvision tune` killed with SIGKILL after its first finished trial continues where
it stopped when run again: earlier trials kept, the requested total reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sparkvision.cli import main


@pytest.mark.slow
def test_tune_survives_sigkill_and_resumes(spark, digits_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["tune", str(digits_dir), "--out", str(out), "--strategy", "random",
            "--trials", "3", "--space", '{"learningRate": {"log": [0.002, 0.02]}}',
            "--epochs", "3", "--workers", "1", "--pruner", "none", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    trials_file = out / "trials.json"
    deadline = time.monotonic() + 300
    first: list[dict] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if trials_file.exists():
                first = [t for t in json.loads(trials_file.read_text())
                         if t["state"] == "complete"]
                if first:
                    break
            time.sleep(0.5)
        assert first, "no trial finished before the deadline"
        # The next trial is running now: kill the whole process group (driver + JVM).
        time.sleep(3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trials = json.loads(trials_file.read_text())
    finished = [t for t in trials if t["state"] in ("complete", "pruned", "failed")]
    assert len(finished) == 3 and result["trials"]["complete"] == 3
    kept = {t["number"]: t for t in trials}
    for t in first:  # the trials finished before the kill are still there, unchanged
        assert kept[t["number"]]["value"] == t["value"]
        assert kept[t["number"]]["params"] == t["params"]
    interrupted = [t for t in trials if t["state"] == "interrupted"]
    retried = [t for t in trials if t["retry_of"] is not None]
    assert len(interrupted) <= 1 and len(retried) == len(interrupted)
    for t in retried:
        assert t["params"] == kept[t["retry_of"]]["params"]
    assert os.path.isdir(result["best_model"])


@pytest.mark.slow
def test_ctrl_c_interrupts_tune_and_the_running_trial_is_queued_again(spark, digits_dir,
                                                                       tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["tune", str(digits_dir), "--out", str(out), "--strategy", "random",
            "--trials", "2", "--space", '{"learningRate": {"log": [0.002, 0.02]}}',
            "--epochs", "4", "--workers", "1", "--pruner", "none", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    trials_file = out / "trials.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if trials_file.exists() and json.loads(trials_file.read_text()):
                break
            time.sleep(0.5)
        time.sleep(4)  # the second trial is training now
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130
    trials = json.loads(trials_file.read_text())
    assert [t["state"] for t in trials][:1] == ["complete"]
    assert all(t["state"] != "failed" for t in trials)  # an interrupted trial is no result
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["trials"]["complete"] == 2
