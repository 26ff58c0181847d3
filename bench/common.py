"""Shared helpers for the benchmarks: machine info, results file, glibc tunables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sparkvision.session.conf import GLIBC_TUNABLES

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def cli_env(log_dir: Path) -> dict[str, str]:
    """This environment for `sparkvision` subprocesses: logs in ``log_dir``, and no
    SPARK_MASTER / SPARK_REMOTE / PYSPARK_SUBMIT_ARGS leaking in from the shell."""
    env = dict(os.environ, SPARKVISION_LOG_DIR=str(log_dir))
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_SUBMIT_ARGS"):
        env.pop(key, None)
    return env


def run_cli(argv: list[str], env: dict[str, str], timeout_s: float = 900) -> float:
    """Run ``sparkvision ARGV -q`` in a new process from the repository root; return its
    wall seconds (a non-zero exit stops the benchmark with the command's stderr)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sparkvision", *argv, "-q"], env=env,
                          cwd=REPO, capture_output=True, timeout=timeout_s, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sparkvision {argv[0]} exited {done.returncode}:\n"
                         f"{done.stderr.decode()[-3000:]}")
    return seconds


def ensure_glibc_tunables() -> None:
    """Re-exec with the malloc tunables so the driver-side baselines get them too."""
    if os.environ.get("GLIBC_TUNABLES") != GLIBC_TUNABLES:
        os.environ["GLIBC_TUNABLES"] = GLIBC_TUNABLES
        os.execv(sys.executable, [sys.executable, *sys.argv])


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(), **payload}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
