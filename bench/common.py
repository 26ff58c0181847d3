"""Shared helpers for the benchmarks: machine info, results file, glibc tunables."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from sparkvision.session import GLIBC_TUNABLES

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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
