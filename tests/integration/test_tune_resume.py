"""A `sparkvision tune` stopped mid-trial (SIGKILL, or Ctrl-C) continues where it stopped
when run again: earlier trials kept, the interrupted one queued again, the total reached."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparkvision.cli import main


def _argv(digits_dir: Path, out: Path, trials: int, epochs: int) -> list[str]:
    return ["tune", str(digits_dir), "--out", str(out), "--strategy", "random",
            "--trials", str(trials), "--space", '{"learningRate": {"log": [0.002, 0.02]}}',
            "--epochs", str(epochs), "--workers", "1", "--pruner", "none", "--json"]


def _start_and_stop_mid_trial(argv: list[str], out: Path, sig: int) -> tuple[int, list[dict]]:
    """Run `sparkvision tune` in a subprocess, wait for its first finished trial, let the
    next one start training, send ``sig``; return the exit code and the finished trials."""
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    trials_file = out / "trials.json"
    deadline = time.monotonic() + 300
    first: list[dict] = []
    try:
        while time.monotonic() < deadline and proc.poll() is None and not first:
            if trials_file.exists():
                first = [t for t in json.loads(trials_file.read_text())
                         if t["state"] == "complete"]
            time.sleep(0.5)
        assert first, "no trial finished before the deadline"
        time.sleep(3)  # the next trial is training now
        if sig == signal.SIGKILL:  # the whole process group: driver and JVM
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        return proc.wait(timeout=120), first
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.mark.slow
def test_tune_survives_sigkill_and_resumes(spark, digits_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = _argv(digits_dir, out, trials=3, epochs=3)
    code, first = _start_and_stop_mid_trial(argv, out, signal.SIGKILL)
    assert code == -signal.SIGKILL

    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trials = json.loads((out / "trials.json").read_text())
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
    argv = _argv(digits_dir, out, trials=2, epochs=4)
    code, _ = _start_and_stop_mid_trial(argv, out, signal.SIGINT)
    assert code == 130
    trials = json.loads((out / "trials.json").read_text())
    assert [t["state"] for t in trials][:1] == ["complete"]
    assert all(t["state"] != "failed" for t in trials)  # an interrupted trial is no result
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["trials"]["complete"] == 2
