"""Which Spark confs sparkvision sets for which master, and the user's own that stay.

Three groups (the user's value for any key always wins):

- needed on every master (``REQUIRED_CONF`` + the driver JVM's options): the barrier
  stage's slot check that fails in seconds instead of hanging ~10 minutes, Arrow batches
  small enough for image rows, reused Python workers (the per-worker network cache), the
  executors' glibc malloc tunables and one OpenMP thread per task, no console progress bar
  over sparkvision's own, quiet JVM logging, a driver JVM that exits at its first
  OutOfMemoryError instead of living on wedged (``driver_java_options``). Over Spark
  Connect only the runtime (SQL) ones can be set from the client: Arrow on, 16 MB batches;
- a loopback master (driver and executors on this machine): the driver's address is
  127.0.0.1 (``LOOPBACK_CONF``);
- small-machine tuning, for an embedded ``local`` / ``local[N]`` / ``local[*]`` only
  (``LOCAL_CONF``): 2 shuffle partitions, no web UI. A cluster master (``spark://``,
  ``yarn``, ``k8s://``) and a Connect server keep Spark's and the cluster's defaults.

``session_conf`` is the one decision (a pure function: a master, the caller's confs and
the launcher's confs in, the confs to set out); ``launch_conf`` reads what the user gave
Spark's launcher (spark-defaults.conf, ``PYSPARK_SUBMIT_ARGS``), which pyspark's session
builder would otherwise override."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

# glibc malloc settings that nearly double batch inference speed (fewer page faults).
GLIBC_TUNABLES = (
    "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
)

#: Spark's JVM log settings (quiet by default), shipped in the package.
LOG4J_CONFIG = Path(__file__).resolve().parents[1] / "log4j2.properties"

#: What sparkvision needs on every master, Spark Connect included (a user's value wins).
REQUIRED_CONF: dict[str, str] = {
    # Arrow between the JVM and Python (pandas conversions of results and metrics).
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Arrow batches into Python tasks: at most 16 MB (photos: ~100 per batch, not 10,000),
    # so a training or inference task reads images batch by batch within its memory.
    "spark.sql.execution.arrow.maxBytesPerBatch": str(16 << 20),
    # Fail fast (instead of waiting ~10 minutes) when a barrier stage cannot get its slots.
    "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "2s",
    "spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures": "2",
    # The per-Python-worker network cache of inference lives as long as the worker.
    "spark.python.worker.reuse": "true",
    # Python workers: glibc malloc without page-fault churn; one thread per task slot.
    "spark.executorEnv.GLIBC_TUNABLES": GLIBC_TUNABLES,
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    # sparkvision draws its own progress; Spark's console bar would write over it.
    "spark.ui.showConsoleProgress": "false",
}

#: Spark's driver JVM options that sparkvision's go in: Spark puts them before
#: ``spark.driver.extraJavaOptions``, so a user's extra options add to sparkvision's (and win
#: where both set one: the JVM takes the last) instead of replacing them.
DRIVER_JAVA_OPTIONS = "spark.driver.defaultJavaOptions"
#: HotSpot's exit code under ``-XX:+ExitOnOutOfMemoryError``.
OOM_EXIT_CODE = 3


def driver_java_options() -> str:
    """sparkvision's driver JVM options: quiet log4j (the packaged config); exit at the first
    OutOfMemoryError (code ``OOM_EXIT_CODE``) instead of living on wedged — a scheduler
    thread dead of it leaves every job waiting forever while the JVM answers Python; and
    HotSpot's own messages ("Terminating due to java.lang.OutOfMemoryError: Java heap
    space") on stderr, i.e. the run's JVM log, not on this command's stdout."""
    options = ["-XX:+ExitOnOutOfMemoryError", "-XX:+DisplayVMOutputToStderr"]
    if LOG4J_CONFIG.exists():
        options.insert(0, f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}")
    return " ".join(options)


#: When the driver and every executor run on this machine (``local…``, a master URL on
#: 127.0.0.1 / localhost): executors call the driver back on the loopback address.
LOOPBACK_CONF: dict[str, str] = {
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
}

#: Small-machine defaults, for an embedded ``local`` / ``local[N]`` / ``local[*]`` only:
#: 2 shuffle partitions (Spark's 200 are 200 tiny tasks for a few thousand images on a
#: few cores), no web UI (a port and memory a one-process run does not need).
LOCAL_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "2",
    "spark.ui.enabled": "false",
}


def is_embedded(master: str) -> bool:
    """True for an embedded master: ``local``, ``local[N]``, ``local[*]``, ``local[N,F]``
    (not ``local-cluster[…]``, which starts separate worker JVMs like a cluster)."""
    return re.fullmatch(r"local(\[[^\]]*\])?", master.strip()) is not None


def is_loopback(master: str) -> bool:
    """True when the driver and every executor run on this machine."""
    return master.startswith("local") or "127.0.0.1" in master or "localhost" in master


def session_conf(master: str, conf: Mapping[str, str] | None = None,
                 launched: Mapping[str, str] | None = None) -> dict[str, str]:
    """The confs ``get_spark`` sets on a session for ``master`` (a master URL, or a Spark
    Connect URL ``sc://…``), the user's own values winning:

    - every master: ``REQUIRED_CONF`` (what sparkvision needs to work as documented) and,
      for a classic driver, ``driver_java_options()`` in ``DRIVER_JAVA_OPTIONS`` (the log4j
      config, exit on OutOfMemoryError), with any value the launcher or ``conf`` gives that
      key after sparkvision's (a user's ``spark.driver.extraJavaOptions`` comes after both);
    - a loopback master (``local…``, ``spark://127.0.0.1:…``): ``LOOPBACK_CONF``;
    - an embedded ``local`` / ``local[N]`` / ``local[*]`` only: ``LOCAL_CONF``, the
      small-machine defaults. A cluster master (``spark://``, ``yarn``, ``k8s://``) and a
      Connect server keep Spark's and the cluster's defaults (200 shuffle partitions, the UI).

    ``launched``: the confs the user gave Spark's launcher (``launch_conf()``:
    spark-defaults.conf, ``PYSPARK_SUBMIT_ARGS``); sparkvision's value for such a key is
    left out so theirs stays. ``conf``: the caller's own confs, set last (they always win).
    Over Connect only the runtime (SQL) confs among these can be set from the client
    (``get_spark`` skips the rest)."""
    connect = master.startswith("sc://")
    settings = dict(REQUIRED_CONF)
    if not connect:
        settings[DRIVER_JAVA_OPTIONS] = driver_java_options()
        if is_loopback(master):
            settings.update(LOOPBACK_CONF)
        if is_embedded(master):
            settings.update(LOCAL_CONF)
    given = launched or {}
    ours = settings.get(DRIVER_JAVA_OPTIONS)
    settings = {k: v for k, v in settings.items() if k not in given}
    settings.update(conf or {})
    if ours is not None:  # added to, never replaced: theirs last (the JVM takes the last)
        theirs = (given.get(DRIVER_JAVA_OPTIONS), (conf or {}).get(DRIVER_JAVA_OPTIONS))
        settings[DRIVER_JAVA_OPTIONS] = " ".join(
            [ours, *(t.strip() for t in theirs if t and t.strip())])
    return settings


def read_properties(text: str) -> dict[str, str]:
    """The ``spark.*`` entries of a Java properties file such as ``spark-defaults.conf``
    (``key value``, ``key=value`` or ``key: value``; ``#`` and ``!`` comments; a line
    ending in ``\\`` continues on the next), values stripped as Spark does."""
    found: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        pending = ""
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^\s=:]+)(?:\s*[=:]\s*|\s+|$)(.*)$", line)
        if match and match.group(1).startswith("spark."):
            found[match.group(1)] = match.group(2).strip()
    return found


def _submit_args(environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """``--conf K=V`` (``-c``) values and the ``--properties-file`` of
    ``PYSPARK_SUBMIT_ARGS``, which pyspark passes to ``spark-submit``."""
    try:
        args = shlex.split(environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError:  # unbalanced quotes: spark-submit would not start either
        return {}, None
    confs: dict[str, str] = {}
    properties = None
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=") if args[i].startswith("--") else (
            args[i], "", "")
        if name in ("--conf", "-c", "--properties-file"):
            if not eq:
                i += 1
                value = args[i] if i < len(args) else ""
            if name == "--properties-file":
                properties = value
            else:
                key, _, val = value.partition("=")
                if key:
                    confs[key] = val
        i += 1
    return confs, properties


def launch_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The confs the user gave Spark's launcher, as ``spark-submit`` reads them when
    pyspark starts the driver JVM: ``PYSPARK_SUBMIT_ARGS``' ``--conf K=V`` over the
    properties file (its ``--properties-file``, else ``spark-defaults.conf`` in
    ``$SPARK_CONF_DIR``, else in ``$SPARK_HOME/conf``, else in pip's pyspark ``conf/``)."""
    environ = os.environ if environ is None else environ
    confs, properties = _submit_args(environ)
    if properties is None:
        conf_dir = environ.get("SPARK_CONF_DIR")
        if not conf_dir:
            home = environ.get("SPARK_HOME")
            if not home:
                import pyspark

                home = str(Path(pyspark.__file__).resolve().parent)
            conf_dir = os.path.join(home, "conf")
        properties = os.path.join(conf_dir, "spark-defaults.conf")
    try:
        text = Path(properties).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    return {**read_properties(text), **confs}
