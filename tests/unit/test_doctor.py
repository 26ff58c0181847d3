"""`sparkvision doctor --no-spark` (docs/cli/doctor.md): every core package checked against
the installed metadata's ranges, each extra listed as present or missing with its install
command, and a machine without Java is a problem with its fix (exit 1) — all without a JVM."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata

from sparkvision.cli import main
from sparkvision.extras import EXTRAS


def _checks(out: str) -> dict[str, dict[str, str]]:
    payload = json.loads(out.strip().splitlines()[-1])
    return {c["name"]: c for c in payload["checks"]}


def test_doctor_lists_packages_java_and_extras(capsys):
    assert main(["doctor", "--no-spark", "--json"]) == 0
    checks = _checks(capsys.readouterr().out)
    assert checks["python"]["status"] == "ok" and checks["java"]["status"] == "ok"
    for name in ("pyspark", "torch", "pyarrow", "numpy", "Pillow"):
        assert checks[name] == {"name": name, "status": "ok",
                                "detail": metadata.version(name), "fix": ""}
    for name, extra in EXTRAS.items():
        check = checks[f"[{name}]"]
        installed = all(importlib.util.find_spec(m) for m in extra.modules)
        assert check["status"] == ("ok" if installed else "missing"), check
        if not installed:
            assert check["fix"] == f"pip install 'sparkvision[{name}]'"
    assert "spark" not in checks  # --no-spark


def test_no_java_is_a_problem_with_its_fix(tmp_path):
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-jdk"))
    proc = subprocess.run([sys.executable, "-m", "sparkvision", "doctor", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    checks = _checks(proc.stdout)
    java = checks["java"]
    assert java["status"] == "problem" and "no-jdk" in java["detail"]
    assert "JAVA_HOME" in java["fix"] and "openjdk-17" in java["fix"]
    assert "spark" not in checks  # no session is tried without Java
    assert json.loads(proc.stdout.strip().splitlines()[-1])["problems"] == 1
