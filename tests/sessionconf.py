"""Read the confs of sessions that ``get_spark`` builds, in a fresh Python process (a new
driver JVM, so the process's environment — ``SPARK_CONF_DIR``, ``PYSPARK_SUBMIT_ARGS`` —
is what Spark's launcher reads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from sparkvision.session import get_spark
master, keys = sys.argv[1], json.loads(sys.argv[2])

def value(spark, key):  # spark.conf.get(key): a SQL conf's default, or an error when unset
    try:
        return spark.conf.get(key)
    except Exception:
        return None

for given in json.loads(sys.argv[3]):
    spark = get_spark(master, conf=given)
    print("CONF " + json.dumps({k: value(spark, k) for k in keys}), flush=True)
    spark.stop()
"""


def session_confs(master: str, keys: Sequence[str], confs: Sequence[Mapping[str, str]],
                  env: Mapping[str, str] | None = None,
                  timeout_s: float = 240) -> list[dict[str, str | None]]:
    """For each of ``confs`` in turn: ``get_spark(master, conf=…)`` in one new process,
    the session's ``spark.conf.get(key)`` for each of ``keys`` (a SQL conf's default when
    unset; None for an unset non-SQL conf), then ``spark.stop()``."""
    environ = dict(os.environ if env is None else env)
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_GATEWAY_PORT",
                "PYSPARK_GATEWAY_SECRET"):
        environ.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, master, json.dumps(list(keys)),
         json.dumps([dict(c) for c in confs])],
        capture_output=True, text=True, timeout=timeout_s, env=environ, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = [json.loads(line[5:]) for line in proc.stdout.splitlines()
             if line.startswith("CONF ")]
    assert len(found) == len(confs), proc.stdout[-2000:] + proc.stderr[-2000:]
    return found
