"""The driver JVM's health (``sparkvision.session.health``) without a JVM: the one-line
reasons, the memory advice, and the watch on a stand-in process (a thread's
OutOfMemoryError in its log gets it killed; any end is reported once); the CLI's
``--conf`` / ``--driver-memory`` flags."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sparkvision.cli import build_parser, main
from sparkvision.cli.common import spark_confs
from sparkvision.session.health import (
    Death,
    DriverWatch,
    last_oom,
    memory_bytes,
    more_memory,
    start_failure,
)

HANG_GUARD_S = 60


def test_memory_sizes_and_the_advice():
    assert memory_bytes("512m") == 512 << 20
    assert memory_bytes("2g") == 2 << 30
    assert memory_bytes("1024") == 1 << 30  # no unit: MiB, as Spark reads it
    assert memory_bytes("4GB") == 4 << 30
    assert memory_bytes("lots") is None
    assert more_memory("512m") == "1g"
    assert more_memory(None) == "2g"  # Spark's default 1g
    assert more_memory("768m") == "1536m"
    assert more_memory("nonsense") == "2g"


def test_death_lines():
    fix = "--driver-memory 2g (now 1g)"
    oom = Death(7, 3, "java.lang.OutOfMemoryError: Java heap space")
    assert oom.describe(fix) == (
        "the Spark driver JVM ran out of memory (java.lang.OutOfMemoryError: Java heap "
        "space) and exited; give it more memory: --driver-memory 2g (now 1g)")
    wedged = Death(7, -9, "java.lang.OutOfMemoryError: Java heap space", "dag-scheduler")
    assert "Java heap space in its thread 'dag-scheduler') and was stopped, wedged" in (
        wedged.describe(fix))
    killed = Death(7, -9, log="/tmp/x.log").describe(fix)
    assert killed.startswith("the Spark driver JVM (pid 7) was killed by SIGKILL from outside")
    assert killed.endswith("; its log: /tmp/x.log")
    assert Death(7, 13).describe(fix) == (
        "the Spark driver JVM (pid 7) exited unexpectedly with code 13")
    for line in (oom.describe(fix), killed):
        assert "\n" not in line


def test_last_oom_skips_sparks_own_memory_errors():
    text = ("org.apache.spark.memory.SparkOutOfMemoryError: Unable to acquire 1 bytes\n"
            "Terminating due to java.lang.OutOfMemoryError: Metaspace\n")
    assert last_oom(text) == "java.lang.OutOfMemoryError: Metaspace"
    assert last_oom("SparkOutOfMemoryError: no\n") is None


def test_a_jvm_that_did_not_start_is_named_with_its_reason(tmp_path):
    log = tmp_path / "jvm.log"
    log.write_text("an earlier run: Error: something else\n")
    offset = log.stat().st_size
    with open(log, "a") as fh:
        fh.write("WARNING: Using incubator modules: jdk.incubator.vector\n"
                 "To adjust logging level use sc.setLogLevel(newLevel).\n"
                 "Error occurred during initialization of VM\n"
                 "Could not reserve enough space for 104857600000KB object heap\n"
                 "Error: Could not create the Java Virtual Machine.\n")
    assert str(start_failure(str(log), offset)) == (
        "the Spark driver JVM exited while starting (Could not reserve enough space for "
        f"104857600000KB object heap); its log: {log}")
    assert str(start_failure(None)) == "the Spark driver JVM exited while starting"
    killed = tmp_path / "killed.log"
    killed.write_text("To adjust logging level use sc.setLogLevel(newLevel).\n")
    assert str(start_failure(str(killed))) == (
        f"the Spark driver JVM exited while starting; its log: {killed}")


def _stand_in(log: Path) -> subprocess.Popen:
    """A process standing in for the JVM, its stderr going to ``log``."""
    with open(log, "ab") as sink:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                stderr=sink)


def test_the_watch_stops_a_jvm_whose_thread_died_of_an_oom(tmp_path):
    log = tmp_path / "jvm.log"
    log.write_text("before the watch: Exception in thread \"old\" "
                   "java.lang.OutOfMemoryError: not this one\n")
    proc = _stand_in(log)
    deaths: list[Death] = []
    done = threading.Event()
    watch = DriverWatch(proc, str(log), on_death=lambda d: (deaths.append(d), done.set()),
                        poll_s=0.05).start()
    try:
        assert watch.death() is None
        with open(log, "a") as fh:  # in two writes: a line is only read whole
            fh.write('Exception in thread "dispatcher-event-loop-1" java.lang.OutOf')
            fh.flush()
            fh.write("MemoryError: Java heap space\n\tat java.base/java.util.Arrays\n")
        assert done.wait(HANG_GUARD_S)
    finally:
        proc.kill()
        proc.wait()
    assert deaths == [Death(proc.pid, -9, "java.lang.OutOfMemoryError: Java heap space",
                            "dispatcher-event-loop-1", str(log))]


def test_a_stopped_watch_reports_nothing(tmp_path):
    proc = _stand_in(tmp_path / "jvm.log")
    called: list[Death] = []
    watch = DriverWatch(proc, None, on_death=called.append, poll_s=0.05).start()
    watch.stop()
    proc.kill()
    proc.wait()
    watch._thread.join(HANG_GUARD_S)
    assert called == []
    assert watch.death() == Death(proc.pid, -9)


def test_conf_and_driver_memory_flags():
    args = build_parser().parse_args(
        ["prepare", "digits", "--out", "x", "--conf", "spark.a=1=2", "--conf", "spark.b=",
         "--conf", "spark.driver.memory=3g", "--driver-memory", "4g"])
    assert spark_confs(args) == {"spark.a": "1=2", "spark.b": "", "spark.driver.memory": "4g"}
    assert spark_confs(build_parser().parse_args(["prepare", "digits", "--out", "x"])) == {}


@pytest.mark.parametrize("flags", [["--conf", "spark.a"], ["--conf", "=1"],
                                   ["--driver-memory", "lots"]])
def test_bad_conf_flags_are_usage_errors(flags, capsys):
    assert main(["prepare", "digits", "--out", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "error: argument --" in err


def test_only_unanswered_spark_calls_wait_for_the_jvms_end():
    """A failed Spark call waits a moment for a dying JVM to be reaped; an answer from
    the JVM (a Java exception, also behind pyspark's own) is no sign of its end."""
    from py4j.protocol import Py4JError, Py4JJavaError, Py4JNetworkError

    from sparkvision.cli.common import _spark_call_failed

    class Answered(Py4JJavaError):
        def __init__(self) -> None:
            Exception.__init__(self, "answered")

        def __str__(self) -> str:
            return "answered"

    try:
        try:
            raise Answered()
        except Py4JJavaError:
            raise ValueError("converted by pyspark") from None
    except ValueError as converted:
        assert not _spark_call_failed(converted)
    for exc in (Py4JNetworkError("Answer from Java side is empty"),
                Py4JError("An error occurred while calling o1.count"),
                ConnectionRefusedError(111, "Connection refused"), EOFError()):
        assert _spark_call_failed(exc), exc
    assert not _spark_call_failed(ValueError("x"))
