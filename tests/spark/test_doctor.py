"""`sparkvision doctor` with a session: what the executors of local[2] see."""

from __future__ import annotations

import json
import os

from sparkvision.cli import main


def test_doctor_reports_what_the_executors_see(spark, capsys):
    assert main(["doctor", "--master", "local[2]", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    checks = {c["name"]: c for c in payload["checks"]}
    assert payload["problems"] == 0
    assert checks["spark"]["detail"].startswith(spark.version)
    assert checks["task slots"]["detail"].startswith("2 ")
    assert checks["executor hosts"]["detail"] == f"1: {os.uname().nodename}"
    assert checks["executor torch"] == {"name": "executor torch", "status": "ok",
                                        "detail": checks["torch"]["detail"], "fix": ""}
    assert checks["executor GPUs"]["detail"].endswith(" 0")
