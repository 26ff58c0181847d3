"""The SparkSession, built from what the cluster and the user say: a classic or Spark
Connect session with the confs ``sparkvision.session.conf`` picks for its master and with
sparkvision's data sources (``get_spark``), and facts about the cluster read from a session
of either kind (master, task slots, partitions, the driver's callback address). Job tags
and cancellation: ``sparkvision.session.jobs``."""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from sparkvision.errors import ClusterUnreachableError, InvalidParameterError
from sparkvision.session.conf import GLIBC_TUNABLES, is_loopback, launch_conf, session_conf

log = logging.getLogger(__name__)


def _prepare_environment(master: str) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if is_loopback(master):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers forked by the local daemon inherit the driver's environment.
    os.environ.setdefault("GLIBC_TUNABLES", GLIBC_TUNABLES)


def get_spark(
    master: str | None = None,
    app_name: str = "sparkvision",
    conf: Mapping[str, str] | None = None,
    jvm_log: str | None = None,
    remote: str | None = None,
):  # -> pyspark.sql.SparkSession
    """Return a SparkSession (creating one if needed) with sparkvision's data sources
    (``tfrecords``: on a classic session registered when a reader, writer or SQL statement
    first names it, :func:`register_when_named`; over Spark Connect at once).

    ``master`` defaults to the ``SPARK_MASTER`` environment variable, then ``local[*]``.
    ``remote``: a Spark Connect URL (``sc://HOST:PORT``; default: the ``SPARK_REMOTE``
    environment variable unless ``master`` is given) for a Spark Connect client session
    instead of a driver JVM in this process; ``master`` and ``remote`` exclude each other.
    ``conf``: Spark confs, set over sparkvision's (``session_conf`` says which it sets for
    which master: small-machine defaults only for an embedded ``local[…]``; a value in
    spark-defaults.conf or ``PYSPARK_SUBMIT_ARGS`` stays).
    ``jvm_log``: a file that receives the JVM's own stderr (its start-up banner, log4j
    output, executor stack traces in local mode) instead of the terminal; only used when
    this call starts the JVM (never over Spark Connect, which has no local JVM).
    """
    if remote and master:
        raise InvalidParameterError(
            "remote", remote, f"a Spark Connect URL and a master URL ({master}) exclude each "
            "other: give --remote (or SPARK_REMOTE) for a Spark Connect server, or --master "
            "for a driver in this process")
    remote = remote or (None if master else os.environ.get("SPARK_REMOTE"))
    if remote:
        return _connect(remote, conf)
    if os.environ.get("SPARK_REMOTE"):
        raise InvalidParameterError(
            "master", master, f"SPARK_REMOTE={os.environ['SPARK_REMOTE']} is set too, and "
            "pyspark refuses both: unset SPARK_REMOTE for a classic session, or drop --master")
    from pyspark.sql import SparkSession

    master = master or os.environ.get("SPARK_MASTER") or "local[*]"
    _prepare_environment(master)
    builder = SparkSession.builder.master(master).appName(app_name)
    settings = session_conf(master, conf, launch_conf())
    for key, value in settings.items():
        builder = builder.config(key, value)
    if jvm_log:
        _start_jvm_logging_to(jvm_log, master, app_name, settings)
    spark = builder.getOrCreate()
    set_log_level(spark, "ERROR")
    register_when_named()
    return spark


#: Spark Connect's default port (``sc://host`` without one).
CONNECT_PORT = 15002
#: Seconds to wait for the Connect server's TCP port before giving up (env override).
CONNECT_TIMEOUT_S = 10.0


def connect_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of a Spark Connect URL ``sc://HOST[:PORT][/;param=value...]``."""
    parts = urlsplit(url)
    try:
        port = parts.port or CONNECT_PORT
    except ValueError:
        port = None
    if parts.scheme != "sc" or not parts.hostname or port is None:
        raise InvalidParameterError(
            "remote", url, "use a Spark Connect URL sc://HOST:PORT (e.g. sc://localhost:15002)")
    return parts.hostname, port


def check_reachable(url: str, timeout_s: float | None = None) -> None:
    """Fail in seconds, with one clear error, when nothing accepts TCP connections at the
    Connect URL's host and port (pyspark's client would retry for about 10 minutes)."""
    host, port = connect_address(url)
    if timeout_s is None:
        timeout_s = float(os.environ.get("SPARKVISION_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterUnreachableError(
            f"cannot reach the Spark Connect server at {url} ({reason}; waited at most "
            f"{timeout_s:g} s): start it (sbin/start-connect-server.sh) or fix --remote / "
            "SPARK_REMOTE") from None


def _connect(url: str, conf: Mapping[str, str] | None):
    """A Spark Connect client session for ``url`` with the runtime (SQL) confs among
    ``session_conf(url, conf)``: ``REQUIRED_CONF`` + ``conf``, none of the small-machine
    defaults (the server's stay); static and launch-time confs (scheduler, executor env)
    belong to the server and are skipped (logged at debug level)."""
    from pyspark.sql import SparkSession

    check_reachable(url)
    from sparkvision import extras

    extras.import_from("connect", "pyspark.sql.connect.session", f"Spark Connect (--remote {url})")
    spark = SparkSession.builder.remote(url).getOrCreate()
    settings = session_conf(url, conf)
    for key, value in settings.items():
        try:
            modifiable = spark.conf.isModifiable(key)
        except Exception as exc:  # noqa: BLE001 - judged by the server; skip when unsure
            log.debug("Spark Connect: cannot tell whether %s is modifiable: %s", key, exc)
            modifiable = False
        if modifiable:
            spark.conf.set(key, value)
        else:
            log.debug("Spark Connect: %s=%s is a server (static/launch) conf; skipped",
                      key, value)
    register_data_sources(spark)
    return spark


def is_connect(spark) -> bool:
    """True for a Spark Connect client session (no SparkContext, no JVM in this process)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _start_jvm_logging_to(path: str, master: str, app_name: str,
                          settings: Mapping[str, str]) -> None:
    """Start the driver JVM (py4j gateway) with its stderr going to ``path``, unless a JVM
    already runs. pyspark's ``launch_gateway`` takes ``popen_kwargs`` for this; the
    SparkContext made here is the one ``getOrCreate`` then returns."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._active_spark_context is not None or SparkContext._gateway is not None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conf = SparkConf(loadDefaults=False).setMaster(master).setAppName(app_name)
    for key, value in settings.items():
        conf.set(key, value)
    with open(path, "ab") as sink:  # the child keeps its own descriptor
        gateway = launch_gateway(conf, popen_kwargs={"stderr": sink})
    SparkContext(conf=conf, gateway=gateway)


#: The name sparkvision's Python data source is registered under (lower case).
DATA_SOURCE = "tfrecords"
_registered: weakref.WeakSet = weakref.WeakSet()  # classic sessions that have it
_register_lock = threading.Lock()


def register_data_sources(spark) -> None:
    """Register the ``tfrecords`` Python data source on ``spark`` (once per session)."""
    from sparkvision.data.datasource import TFRecordDataSource

    with _register_lock:
        if spark in _registered:
            return
        spark.dataSource.register(TFRecordDataSource)
        _registered.add(spark)


def register_when_named() -> None:
    """Register the ``tfrecords`` data source on a classic session when a reader or
    writer first names it (``format("tfrecords")``, also through ``load(format=…)``,
    ``save(format=…)``, ``saveAsTable(format=…)``, ``start(format=…)``) or a SQL
    statement mentions it, instead of when the session starts.

    Registering costs ~1 s of a command's start here (it makes the JVM look for Python
    data sources in a new Python process); ``prepare`` of an image folder and most
    commands never read that format. Installed once per process (idempotent)."""
    from pyspark.sql import readwriter
    from pyspark.sql.session import SparkSession
    from pyspark.sql.streaming import readwriter as stream_readwriter

    for cls in (readwriter.DataFrameReader, readwriter.DataFrameWriter,
                stream_readwriter.DataStreamReader, stream_readwriter.DataStreamWriter):
        if not getattr(cls.format, "_sparkvision_lazy", False):
            setattr(cls, "format", _registering_format(cls.format))  # noqa: B010
    if not getattr(SparkSession.sql, "_sparkvision_lazy", False):
        setattr(SparkSession, "sql", _registering_sql(SparkSession.sql))  # noqa: B010


def _registering_format(original):
    @functools.wraps(original)
    def format(self, source: str):  # noqa: A001 - pyspark's name
        if isinstance(source, str) and source.strip().lower() == DATA_SOURCE:
            register_data_sources(self._spark)
        return original(self, source)

    setattr(format, "_sparkvision_lazy", True)  # noqa: B010
    return format


def _registering_sql(original):
    @functools.wraps(original)
    def sql(self, sqlQuery: str, *args, **kwargs):  # noqa: N803 - pyspark's name
        if isinstance(sqlQuery, str) and DATA_SOURCE in sqlQuery.lower():
            register_data_sources(self)
        return original(self, sqlQuery, *args, **kwargs)

    setattr(sql, "_sparkvision_lazy", True)  # noqa: B010
    return sql


def master_url(spark) -> str:
    """The cluster's master URL (``local[2]``, ``spark://…``); over Spark Connect the
    server's, read from its conf ("unknown" if it does not say)."""
    if not is_connect(spark):
        return str(spark.sparkContext.master)
    return str(spark.conf.get("spark.master", "unknown"))


def _local_cores(master: str) -> int | None:
    """Cores of a ``local`` / ``local[N]`` / ``local[N,F]`` / ``local-cluster[E,C,M]``
    master; None for ``local[*]`` (the server machine's cores) and cluster masters."""
    if master == "local":
        return 1
    match = re.fullmatch(r"local\[(\d+)(?:,\s*\d+)?\]", master)
    if match:
        return int(match.group(1))
    match = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    if match:
        return int(match.group(1)) * int(match.group(2))
    return None


#: Rows of the probe that measures a Connect server's default parallelism.
_PROBE_ROWS = 1 << 16


def default_parallelism(spark) -> int:
    """Cores (task slots at one CPU per task) the cluster offers right now.

    Classic: ``sparkContext.defaultParallelism`` (1 for master ``local``). Spark Connect has
    no SparkContext, so, in order: the cores of a ``local`` / ``local[N]`` /
    ``local-cluster`` master (the server's ``spark.master``); the server's
    ``spark.default.parallelism`` conf when set (what ``defaultParallelism`` returns then);
    otherwise one tiny job: ``spark.range`` without a partition count gets the server's
    default parallelism as its number of partitions, and the largest
    ``spark_partition_id`` + 1 over 65,536 generated rows counts them (``local[*]``: the
    server machine's cores; standalone/YARN/k8s: the executors' total cores at that moment,
    as the classic value)."""
    master = master_url(spark)
    if master == "local":
        return 1
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    cores = _local_cores(master)
    if cores is not None:
        return cores
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    return probe_parallelism(spark)


def probe_parallelism(spark) -> int:
    """The cluster's default parallelism measured by one tiny job (both kinds of session):
    the number of partitions ``spark.range`` gets without being told."""
    from pyspark.sql import functions as F

    ids = spark.range(0, _PROBE_ROWS).select(F.spark_partition_id().alias("p"))
    row = ids.agg(F.max("p").alias("p")).first()
    return 1 if row is None or row.p is None else int(row.p) + 1


def task_cpus(spark) -> int:
    """``spark.task.cpus`` (cores one task takes; default 1), on both kinds of session."""
    if is_connect(spark):
        value = spark.conf.get("spark.task.cpus", None)
    else:
        value = spark.sparkContext.getConf().get("spark.task.cpus", None)
    return max(1, int(value or 1))


def _partition_marker(batches):  # runs on the executors: one row per partition
    import pyarrow as pa
    from pyspark import TaskContext

    del batches  # not read: only the partition counts
    yield pa.RecordBatch.from_pydict({"p": [TaskContext.get().partitionId()]},
                                     schema=pa.schema([("p", pa.int32())]))


def num_partitions(df) -> int:
    """Partitions of ``df``: ``df.rdd.getNumPartitions()`` on a classic session; Spark
    Connect has no RDDs, so ``count_partitions`` (one job)."""
    if not is_connect(df.sparkSession):
        return int(df.rdd.getNumPartitions())
    return count_partitions(df)


def count_partitions(df) -> int:
    """Partitions of ``df`` counted by one job whose tasks each emit one row, also for an
    empty partition (works on both kinds of session). It plans ``df`` and starts its
    tasks, so it costs what starting to read every partition costs."""
    return int(df.mapInArrow(_partition_marker, "p int").count())


def client_host(spark) -> str:
    """An address of this process that the executors can use to call back (training
    progress events). Classic: ``spark.driver.host``. Spark Connect: the local address of
    a TCP connection to the server, i.e. this machine's interface on the route to the
    cluster (127.0.0.1 for a server on this machine); whether executors can reach it
    depends on the network (firewalls, NAT)."""
    if not is_connect(spark):
        return spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")
    host, port = _server_address(spark)
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            return str(sock.getsockname()[0])
    except OSError:
        log.debug("cannot connect to %s:%s to find this client's address; using 127.0.0.1",
                  host, port)
        return "127.0.0.1"


def _server_address(spark) -> tuple[str, int]:
    """The Connect server's host and port, from the session's client."""
    client = spark.client
    endpoint = getattr(getattr(client, "_builder", None), "endpoint", "")
    host, _, port = str(endpoint).rpartition(":")
    if host and port.isdigit():
        return host, int(port)
    return str(client.host), CONNECT_PORT


def set_log_level(spark, level: str = "ERROR") -> None:
    """The driver's log level; classic only (a Connect server's logging is its own)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)
