"""``sparkvision --version``: its own version and those of pyspark, torch and Python, from the
installed packages, exit 0, without importing torch."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import sparkvision


def test_version_names_sparkvision_pyspark_torch_and_python():
    code = ("import sys; from sparkvision.cli import main; rc = main(['--version']); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    line, imported = done.stdout.strip().splitlines()
    assert line == (f"sparkvision {sparkvision.__version__} (pyspark "
                    f"{metadata.version('pyspark')}, torch {metadata.version('torch')}, "
                    f"Python {sys.version.split()[0]})")
    assert imported == "no torch"
    assert metadata.version("sparkvision") == sparkvision.__version__
