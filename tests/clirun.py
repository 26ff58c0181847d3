"""Run the `sparkvision` CLI in a subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def log_tails(log_dir: Path, chars: int = 4000) -> str:
    """The tail of every sparkvision log in ``log_dir`` (for failure messages)."""
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-chars:]}"
                     for p in sorted(log_dir.glob("*.log")))


def cli_json(argv: list[str], env: dict[str, str], log_dir: Path,
             timeout_s: float = 240) -> dict[str, Any]:
    """Run ``sparkvision ARGV --json -q`` (its own process group, killed on timeout) with
    ``env`` plus ``SPARKVISION_LOG_DIR=log_dir``; assert exit 0 (else stderr and the logs);
    return the JSON it printed last."""
    proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv, "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(env, SPARKVISION_LOG_DIR=str(log_dir)),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == 0, (
        f"{argv[0]} exited {proc.returncode}\n{err.decode()[-3000:]}\n{log_tails(log_dir)}")
    return json.loads(out.decode().strip().splitlines()[-1])
