"""`sparkvision doctor`: is this environment ready? Python, the core packages against the
installed package's own ranges, Java, each extra (present or missing, with its install
command) and — unless ``--no-spark`` — what the executors see: task slots, hosts, CPU cores,
GPUs, and their torch and Python next to the driver's. Each problem comes with its fix; exit 1
when there is one, 0 otherwise (a missing extra is not a problem)."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from sparkvision.cli.common import EXIT_INTERNAL_ERROR, EXIT_OK, add_common, emit, spark_session

#: Spark 4 runs on Java 17 and 21.
MIN_JAVA = 17
MIN_PYTHON = (3, 11)


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok, missing (an extra) or problem."""

    name: str
    status: str
    detail: str
    fix: str = ""


def _python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", "ok", found)
    return Check("python", "problem", found, f"use Python {'.'.join(map(str, MIN_PYTHON))} or "
                 "newer")


def _core_packages() -> list[Check]:
    """Each core requirement of the installed sparkvision against what is installed."""
    from packaging.requirements import Requirement

    checks = []
    for text in metadata.requires("sparkvision") or []:
        req = Requirement(text)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            checks.append(Check(req.name, "problem", "not installed",
                                f"pip install '{req}'"))
            continue
        if req.specifier and not req.specifier.contains(found, prereleases=True):
            checks.append(Check(req.name, "problem", f"{found}, outside {req.specifier}",
                                f"pip install '{req}'"))
        else:
            checks.append(Check(req.name, "ok", found))
    return checks


def _java() -> Check:
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    fix = (f"install a JDK {MIN_JAVA} or 21 (e.g. apt-get install openjdk-{MIN_JAVA}-jre-"
           "headless) and put its java on PATH or set JAVA_HOME")
    if not java or not os.access(java, os.X_OK):
        where = f"JAVA_HOME={home} has no bin/java" if home else "no java on PATH"
        return Check("java", "problem", where, fix)
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("java", "problem", f"{java} does not run ({exc})", fix)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return Check("java", "problem", f"{java} -version says no version", fix)
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
    if major < MIN_JAVA:
        return Check("java", "problem", f"{major} ({java})", fix)
    return Check("java", "ok", f"{major} ({java})")


def _extras() -> list[Check]:
    from sparkvision.extras import EXTRAS, install_hint, missing_modules

    checks = []
    for name, extra in EXTRAS.items():
        missing = missing_modules(name)
        if missing:
            checks.append(Check(f"[{name}]", "missing", f"{extra.purpose}: "
                                f"{', '.join(missing)} not installed", install_hint(name)))
        else:
            checks.append(Check(f"[{name}]", "ok", extra.purpose))
    return checks


def _executor_probe(batches: Any) -> Any:
    """What one task sees (runs on an executor): one row per task."""
    import platform
    import socket

    import pyarrow as pa

    for _ in batches:
        pass
    try:
        import torch

        torch_version, gpus = str(torch.__version__), torch.cuda.device_count()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        torch_version, gpus = f"cannot import ({type(exc).__name__}: {exc})", 0
    yield pa.RecordBatch.from_pylist([{
        "host": socket.gethostname(), "cores": len(os.sched_getaffinity(0)), "gpus": gpus,
        "torch": torch_version, "python": platform.python_version()}])


def _spark(args: argparse.Namespace) -> list[Check]:
    from sparkvision.session import default_parallelism, master_url, task_cpus

    spark = spark_session(args)
    slots = max(1, default_parallelism(spark) // task_cpus(spark))
    seen = [r.asDict() for r in spark.range(0, slots, 1, slots).mapInArrow(
        _executor_probe, "host string, cores bigint, gpus bigint, torch string, python string"
    ).collect()]
    hosts = sorted({s["host"] for s in seen})
    checks = [
        Check("spark", "ok", f"{spark.version}, {master_url(spark)}"),
        Check("task slots", "ok", f"{slots} (a training of N workers needs N free slots)"),
        Check("executor hosts", "ok", f"{len(hosts)}: {', '.join(hosts)}"),
        Check("executor cores", "ok", ", ".join(
            f"{h} {max(s['cores'] for s in seen if s['host'] == h)}" for h in hosts)),
    ]
    gpus = {h: max(s["gpus"] for s in seen if s["host"] == h) for h in hosts}
    gpu_conf = spark.conf.get("spark.executor.resource.gpu.amount", None) or ""
    if any(gpus.values()) and not gpu_conf:
        checks.append(Check("executor GPUs", "problem", ", ".join(f"{h} {n}" for h, n in
                            gpus.items()), "set spark.executor.resource.gpu.amount and "
                            "spark.task.resource.gpu.amount so Spark hands each task a GPU"))
    else:
        checks.append(Check("executor GPUs", "ok", ", ".join(f"{h} {n}" for h, n in gpus.items())
                            + (f" (spark.executor.resource.gpu.amount={gpu_conf})"
                               if gpu_conf else "")))
    for what, here in (("torch", _installed("torch")),
                       ("python", ".".join(map(str, sys.version_info[:3])))):
        there = sorted({s[what] for s in seen})
        if there == [here]:
            checks.append(Check(f"executor {what}", "ok", here))
        else:
            checks.append(Check(f"executor {what}", "problem", f"{', '.join(there)} on the "
                                f"executors, {here} on the driver", f"install the same {what} "
                                "on the driver and every executor (spark.pyspark.python / a "
                                "packed environment)"))
    return checks


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(args: argparse.Namespace) -> int:
    checks = [_python(), *_core_packages(), _java(), *_extras()]
    ready = not any(c.status == "problem" for c in checks if c.name in ("java", "pyspark"))
    if not args.no_spark and ready:
        checks.extend(_spark(args))
    problems = [c for c in checks if c.status == "problem"]
    payload = {"checks": [asdict(c) for c in checks], "problems": len(problems)}
    width = max(len(c.name) for c in checks)
    lines = [f"{c.status:<8} {c.name:<{width}}  {c.detail}" + (f"  → {c.fix}" if c.fix else "")
             for c in checks]
    lines.append(f"{len(problems)} problem(s)" if problems else "ready")
    emit(args, payload, "\n".join(lines))
    return EXIT_INTERNAL_ERROR if problems else EXIT_OK


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check this environment: Python, packages, Java, "
                       "extras, and what the executors see (slots, cores, GPUs, torch)")
    p.add_argument("--no-spark", action="store_true",
                   help="check only this machine; start no Spark session")
    add_common(p)
    p.set_defaults(func=run)
