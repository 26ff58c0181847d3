"""A Spark Connect server for tests: pyspark's own ``SparkConnectServer`` run by
``bin/spark-submit`` in the foreground as a child process this module owns (its own process
group), on 127.0.0.1 and a free port, ``local[N]``, with the confs ``sparkvision.session``
sets for a classic session. ``connect_server()`` is a context manager; the ``connect_url``
fixture in ``tests/cluster/conftest.py`` starts one per module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sparkvision.session.conf import GLIBC_TUNABLES, session_conf

REPO = Path(__file__).resolve().parents[1]
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
LOG4J = REPO / "src" / "sparkvision" / "log4j2.properties"
#: The test server's ``spark.sql.shuffle.partitions``.
SERVER_SHUFFLE_PARTITIONS = 3


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_home() -> Path:
    """pip's pyspark: ``bin/spark-submit`` and ``jars/`` (incl. spark-connect) live here."""
    import pyspark

    return Path(pyspark.__file__).parent


def server_command(port: int, master: str = "local[2]") -> list[str]:
    """``spark-submit`` running the Connect server with sparkvision's session confs."""
    conf = session_conf(master)
    conf.update({
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",  # the port we chose, or fail
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{LOG4J}",
        # The server's own value, which a client must keep (not sparkvision's local 2).
        "spark.sql.shuffle.partitions": str(SERVER_SHUFFLE_PARTITIONS),
    })
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS,
           "--name", "sparkvision-connect-tests", "--master", master]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + ["spark-internal"]


def server_env() -> dict[str, str]:
    """The server's environment: local-mode Python workers inherit it."""
    env = dict(os.environ)
    for key in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "MASTER"):
        env.pop(key, None)
    env.update({
        "SPARK_HOME": str(spark_home()),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "GLIBC_TUNABLES": GLIBC_TUNABLES,
        "OMP_NUM_THREADS": "1",
        # executors import sparkvision (installed) and tests.nets (the repo root)
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    })
    return env


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 20 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def connect_server(log_path: Path, master: str = "local[2]",
                   start_timeout_s: float = 120.0) -> Iterator[str]:
    """Start a Spark Connect server; yield its ``sc://127.0.0.1:PORT`` URL; stop it (its
    whole process group) afterwards, also when it failed to start. Its output goes to
    ``log_path``."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(port, master), cwd=REPO, env=server_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _accepts(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited with {proc.returncode} "
                                   f"before listening; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Spark Connect server did not listen on port {port} "
                                   f"within {start_timeout_s:.0f} s; see {log_path}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        _stop(proc)
