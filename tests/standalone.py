"""A real Spark standalone cluster on 127.0.0.1 for tests and benchmarks.

:class:`StandaloneCluster` starts a Master and N Workers (``--cores 1`` each by default) as
subprocesses with pip's ``pyspark/bin/spark-class``, each in its own process group, with
its own ``SPARK_WORKER_DIR`` / ``SPARK_LOCAL_DIRS`` under one temporary folder and an empty
``SPARK_CONF_DIR``. Every process of the cluster — Master, Workers, the executor JVMs the
Workers launch (``CoarseGrainedExecutorBackend``) and their pyspark daemons and Python
workers (which move to process groups of their own) — carries one environment variable,
``SPARKVISION_TEST_CLUSTER=<token>``, so :meth:`StandaloneCluster.processes` finds all of
them through ``/proc`` and :meth:`StandaloneCluster.stop` can kill each by PID, leaving
nothing behind.

    with StandaloneCluster(tmp_path, workers=2) as cluster:
        subprocess.run(["sparkvision", "train", ..., "--master", cluster.master_url])
        cluster.executor_pids()      # the executor JVMs running now
        cluster.start_worker()       # one more worker (e.g. a replacement)

``standalone_cluster`` is the same as a context manager function.

Workers can run elsewhere than the Master: ``start_worker(launch=WorkerLaunch(...))`` starts
one through a command prefix (``tests/netns.py``: ``ip netns exec NS unshare … sh -c …``, an
emulated host with its own network, host name and ``/dev/shm``), with its own ``--host`` (or
none: Spark picks the address as on a real machine) and environment changes; the Master then
listens on an address those hosts reach (``host=``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = "SPARKVISION_TEST_CLUSTER"
EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spark_class() -> Path:
    """pip's ``pyspark/bin/spark-class``."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "bin" / "spark-class"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:  # gone, or not ours
        return b""


def _environ_has(pid: int, entry: bytes) -> bool:
    return entry in _read(f"/proc/{pid}/environ").split(b"\0")


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed one may still run a moment)."""
    state = _read(f"/proc/{pid}/stat").rpartition(b")")[2].strip()[:1]
    return state not in (b"", b"Z")


def _cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")


def _ppid(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else 0


def _die_with_parent() -> None:
    """``preexec_fn``: SIGKILL this child when its parent (pytest, a benchmark) dies, even by
    SIGKILL, so an interrupted run cannot leave a cluster behind (kept across ``exec``)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


@dataclass(frozen=True)
class WorkerLaunch:
    """How to start one Worker elsewhere: ``prefix`` runs before ``spark-class`` (it must
    ``exec`` it, so the Worker JVM keeps the spawned PID); ``host`` its ``--host`` (None:
    none, Spark picks the address); ``env`` changes to its environment (None: removed)."""

    prefix: tuple[str, ...] = ()
    host: str | None = "127.0.0.1"
    env: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class _Daemon:
    """A Master or Worker JVM we started (``spark-class`` execs java: same PID)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


class ClusterError(RuntimeError):
    """The cluster did not come up (the message names the log to read)."""


class StandaloneCluster:
    """Spark standalone Master + Workers on 127.0.0.1 (the Master on ``host``), owned by this
    process.

    ``root``: a folder for logs, worker dirs and local dirs. ``env``: extra environment for
    every daemon (executors inherit the Worker's environment, e.g.
    ``SPARKVISION_COLLECTIVE_TIMEOUT_S``). ``python``: what the executors run for Python
    (``PYSPARK_PYTHON``; the driver's own ``PYSPARK_PYTHON`` still decides per app).
    ``host``: the address the Master (and its UI) listen on.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        workers: int = 2,
        cores: int = 1,
        memory: str = "2g",
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        start_timeout_s: float = 120.0,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root)
        self.initial_workers = workers
        self.cores = cores
        self.memory = memory
        self.python = python
        self.start_timeout_s = start_timeout_s
        self.token = secrets.token_hex(8)
        self.host = host
        self.port = free_port()
        self.ui_port = free_port()
        self.master_url = f"spark://{host}:{self.port}"
        self.ui_url = f"http://{host}:{self.ui_port}"
        self.master: _Daemon | None = None
        self.workers: list[_Daemon] = []
        conf_dir = self.root / "conf"  # empty: no spark-defaults.conf of the machine
        conf_dir.mkdir(parents=True, exist_ok=True)
        self._env = dict(os.environ)
        self._env.update({
            "SPARK_CONF_DIR": str(conf_dir),
            "SPARK_LOCAL_IP": host,
            "SPARK_LOG_DIR": str(self.root / "logs"),
            "PYSPARK_PYTHON": python,
            MARKER: self.token,
        })
        self._env.pop("SPARK_HOME", None)  # spark-class finds pip's pyspark
        self._env.update(env or {})

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> StandaloneCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the Master and the initial Workers; wait until they are all registered.
        Stops everything started so far if any of it fails."""
        try:
            self.master = self._spawn(
                "master", MASTER_CLASS,
                ["--host", self.host, "--port", str(self.port),
                 "--webui-port", str(self.ui_port)], {},
            )
            self._wait(lambda: self.state() is not None, "the master's JSON UI", self.master)
            for _ in range(self.initial_workers):
                self.start_worker(wait=False)
            self.wait_for_workers(self.initial_workers)
        except BaseException:
            self.stop()
            raise

    def start_worker(self, wait: bool = True, launch: WorkerLaunch | None = None) -> int:
        """Start one more Worker (``--cores``/``--memory`` as the others) with its own work
        and local dirs; return its PID. ``wait``: until the Master counts it alive.
        ``launch``: where and how (default: on 127.0.0.1, as the others)."""
        launch = launch or WorkerLaunch()
        index = len(self.workers)
        work = self.root / f"worker-{index}"
        (work / "work").mkdir(parents=True, exist_ok=True)
        (work / "local").mkdir(parents=True, exist_ok=True)
        alive = self.alive_workers()
        worker = self._spawn(
            f"worker-{index}", WORKER_CLASS,
            [*(["--host", launch.host] if launch.host else []), "--port", "0",
             "--webui-port", str(free_port()),
             "--cores", str(self.cores), "--memory", self.memory, self.master_url],
            {"SPARK_WORKER_DIR": str(work / "work"), "SPARK_LOCAL_DIRS": str(work / "local"),
             **launch.env},
            prefix=launch.prefix,
        )
        self.workers.append(worker)
        if wait:
            self.wait_for_workers(alive + 1)
        return worker.proc.pid

    def stop(self) -> None:
        """Kill every process of the cluster: the process group of each daemon we started,
        then, by PID, whatever still carries this cluster's marker (pyspark daemons and
        Python workers live in process groups of their own), and waits until each is gone or
        a zombie: a killed process drops its environment (so :meth:`processes` no longer sees
        it) before it stops running. Idempotent."""
        seen = set(self.processes())
        for daemon in [*self.workers, *([self.master] if self.master else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(daemon.proc.pid, signal.SIGKILL)
        for daemon in [*self.workers, *([self.master] if self.master else [])]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (left := self.processes()) and time.monotonic() < deadline:
            seen.update(left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        while any(_running(p) for p in seen) and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- what runs -----------------------------------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The Master's ``/json/`` (workers, apps, ``aliveworkers``…), None if unreachable."""
        try:
            with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError):
            return None

    def alive_workers(self) -> int:
        state = self.state()
        return int(state.get("aliveworkers", 0)) if state else 0

    def wait_for_workers(self, count: int, timeout_s: float | None = None) -> None:
        """Until the Master counts ``count`` alive workers."""
        self._wait(lambda: self.alive_workers() >= count, f"{count} alive workers",
                   timeout_s=timeout_s)

    def processes(self) -> list[int]:
        """PIDs of every live process of this cluster (JVMs, pyspark daemons, workers)."""
        entry = f"{MARKER}={self.token}".encode()
        me = os.getpid()
        return [p for p in _pids() if p != me and _environ_has(p, entry) and _running(p)]

    def worker_pids(self) -> list[int]:
        """PIDs of the Worker JVMs still running."""
        return [w.proc.pid for w in self.workers if w.proc.poll() is None]

    def executor_pids(self, worker_pid: int | None = None) -> list[int]:
        """PIDs of the executor JVMs (``CoarseGrainedExecutorBackend``, children of the
        Worker JVMs) running now; only ``worker_pid``'s children if given."""
        return sorted(
            p for p in self.processes()
            if EXECUTOR_CLASS in _cmdline(p) and (worker_pid is None or _ppid(p) == worker_pid)
        )

    def wait_for_executors(self, count: int, timeout_s: float = 120.0) -> list[int]:
        """Until ``count`` executor JVMs run; returns their PIDs."""
        self._wait(lambda: len(self.executor_pids()) >= count, f"{count} executor JVMs",
                   timeout_s=timeout_s)
        return self.executor_pids()

    def logs(self) -> str:
        """The daemons' output, for failure messages."""
        return "\n".join(f"--- {d.name} ({d.log})\n{d.log.read_text(errors='replace')[-3000:]}"
                         for d in [*([self.master] if self.master else []), *self.workers]
                         if d.log.exists())

    # -- helpers -------------------------------------------------------------------------

    def _spawn(self, name: str, main_class: str, args: list[str],
               extra_env: Mapping[str, str | None], prefix: tuple[str, ...] = ()) -> _Daemon:
        log = self.root / "logs" / f"{name}.out"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**self._env, **extra_env}
        with open(log, "wb") as sink:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [*prefix, str(spark_class()), main_class, *args], stdin=subprocess.DEVNULL,
                stdout=sink, stderr=subprocess.STDOUT,
                env={k: v for k, v in env.items() if v is not None},
                cwd=self.root, start_new_session=True, preexec_fn=_die_with_parent,
            )
        return _Daemon(name, proc, log)

    def _wait(self, ready: Any, what: str, daemon: _Daemon | None = None,
              timeout_s: float | None = None) -> None:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        while not ready():
            for d in [daemon] if daemon else []:
                if d.proc.poll() is not None:
                    raise ClusterError(f"{d.name} exited with {d.proc.returncode}: see {d.log}")
            if time.monotonic() > deadline:
                raise ClusterError(f"no {what} after {timeout_s or self.start_timeout_s:.0f} s; "
                                   f"logs:\n{self.logs()}")
            time.sleep(0.25)


@contextlib.contextmanager
def standalone_cluster(root: str | os.PathLike[str], workers: int = 2,
                       **kwargs: Any) -> Iterator[StandaloneCluster]:
    """``with standalone_cluster(tmp_path) as c:`` — a started :class:`StandaloneCluster`,
    stopped (every process killed) when the block ends."""
    cluster = StandaloneCluster(root, workers=workers, **kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
