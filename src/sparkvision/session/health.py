"""The driver JVM's health, for a classic session whose JVM pyspark started in this process:
why it died, in one line (``Death``), and a watch (``DriverWatch``) that notices within a
second that it died — out of memory (``-XX:+ExitOnOutOfMemoryError``, see
``sparkvision.session.conf.driver_java_options``), killed from outside, crashed — or that
one of its threads died of an OutOfMemoryError that it survived wedged (an error Java code
throws itself, which that option does not cover; seen in the JVM's log), which it then ends.

A Spark call waiting on a dead JVM raises (py4j's connection closes); a thread waiting on
anything else does not, hence the watch's ``on_death`` callback."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sparkvision.session.conf import OOM_EXIT_CODE

log = logging.getLogger(__name__)

#: Spark's exit code after an OutOfMemoryError in an executor thread (``SparkExitCode.OOM``;
#: a local master's tasks run in the driver JVM).
SPARK_OOM_EXIT_CODE = 52
#: Bytes of the JVM log's end read to find what it said about running out of memory.
LOG_TAIL_BYTES = 1 << 16
#: Spark's default ``spark.driver.memory``.
DEFAULT_DRIVER_MEMORY = "1g"

#: A JVM thread killed by an OutOfMemoryError (the JVM's uncaught-exception message).
_DEAD_THREAD = re.compile(
    r'Exception in thread "([^"\r\n]*)" (java\.lang\.OutOfMemoryError(?:: [^\r\n]*)?)')
_OOM = re.compile(r"java\.lang\.OutOfMemoryError(?:: [^\r\n]*)?")
_SIZE = re.compile(r"(\d+)\s*([kmgtp]?)b?", re.IGNORECASE)


@dataclass(frozen=True)
class Death:
    """How the driver JVM ended: its ``pid`` and exit status (``returncode``: negative for a
    signal), the OutOfMemoryError it reported (``oom``, e.g. "java.lang.OutOfMemoryError:
    Java heap space") and, when it lived on wedged and the watch ended it, the ``thread``
    that died of it; ``log``: its log file, when it writes one."""

    pid: int
    returncode: int
    oom: str | None = None
    thread: str | None = None
    log: str | None = None

    def describe(self, memory_fix: str) -> str:
        """One line: what happened and what to do; ``memory_fix`` says how to give the
        driver more memory (e.g. "--driver-memory 2g (now 1g)")."""
        if self.oom is not None:
            what, how = ((f"{self.oom} in its thread {self.thread!r}", "was stopped, wedged")
                         if self.thread is not None else (self.oom, "exited"))
            return (f"the Spark driver JVM ran out of memory ({what}) and {how}; give it "
                    f"more memory: {memory_fix}")
        where = f"; its log: {self.log}" if self.log else ""
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return (f"the Spark driver JVM (pid {self.pid}) was killed by {name} from outside "
                    "this command (the kernel's out-of-memory killer — see dmesg — or a kill)"
                    + where)
        return (f"the Spark driver JVM (pid {self.pid}) exited unexpectedly with code "
                f"{self.returncode}{where}")


class DriverStartError(Exception):
    """The driver JVM exited while starting (before it answered Python): bad JVM options,
    a heap the machine cannot reserve, killed meanwhile."""


#: HotSpot's closing lines after the reason it could not start (the reason comes first).
_GENERIC_START_LINES = ("Error: Could not create the Java Virtual Machine.",
                        "Error: A fatal exception has occurred. Program will exit.",
                        "Error occurred during initialization of VM")


#: A line of the JVM's output that says what went wrong (not its banner).
_START_ERROR = re.compile(r"error|exception|invalid|could not|unrecognized|improperly|"
                          r"cannot|failed|denied|not found", re.IGNORECASE)


def start_failure(log: str | None, offset: int = 0) -> DriverStartError:
    """Why the driver JVM did not start, from what it wrote to ``log`` after ``offset``
    (its last line that says something: "Could not reserve enough space for …", "Invalid
    maximum heap size: …", "Unrecognized VM option …")."""
    text = ""
    if log:
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                text = fh.read(LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        except OSError:
            text = ""
    said = [line.strip() for line in text.splitlines()
            if _START_ERROR.search(line) and not line.startswith((" ", "\t"))
            and line.strip() not in _GENERIC_START_LINES]
    reason = f" ({said[-1][:300]})" if said else ""
    where = f"; its log: {log}" if log else ""
    return DriverStartError(f"the Spark driver JVM exited while starting{reason}{where}")


def log_tail(path: str | None, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of ``path`` as text ('' when there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - size))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def last_oom(text: str) -> str | None:
    """The last ``java.lang.OutOfMemoryError[: what]`` named in ``text``."""
    found = _OOM.findall(text)
    return found[-1].strip() if found else None


def memory_bytes(value: str | None) -> int | None:
    """Bytes of a JVM memory size as Spark reads ``spark.driver.memory`` ("512m", "2g",
    "1024" = MiB); None when it does not parse."""
    match = _SIZE.fullmatch((value or "").strip())
    if match is None:
        return None
    unit = match.group(2).lower() or "m"
    return int(match.group(1)) << (10 * " kmgtp".index(unit))


def more_memory(value: str | None) -> str:
    """Twice the driver memory ``value`` (Spark's default when None), as a size string."""
    size = memory_bytes(value or DEFAULT_DRIVER_MEMORY) or memory_bytes(DEFAULT_DRIVER_MEMORY)
    double = 2 * (size or 1 << 30)
    if double % (1 << 30) == 0:
        return f"{double >> 30}g"
    return f"{-(-double // (1 << 20))}m"


class DriverWatch:
    """Watches the driver JVM process ``proc`` (pyspark's ``gateway.proc``) from a daemon
    thread: every ``poll_s`` seconds, whether it still runs and, with ``log`` (the file
    its stderr goes to), whether one of its threads died of an OutOfMemoryError — then the
    JVM cannot be trusted to finish any job, and the watch kills it. When the JVM has ended
    (and ``stop`` was not called), ``on_death`` runs once, on the watch's thread, with the
    ``Death``."""

    def __init__(self, proc, log: str | None = None,
                 on_death: Callable[[Death], None] | None = None, poll_s: float = 0.25):
        self.proc = proc
        self.log = log
        self.on_death = on_death
        self.poll_s = poll_s
        self._stopped = threading.Event()
        self._oom_thread: tuple[str, str] | None = None  # (thread, error) the watch ended it for
        self._offset = self._log_size()
        self._partial = ""
        self._thread = threading.Thread(target=self._run, name="sparkvision-driver-watch",
                                        daemon=True)

    def start(self) -> DriverWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the JVM's end from now on is expected: no ``on_death``)."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def death(self, wait_s: float = 0.0) -> Death | None:
        """How the JVM ended, or None while it runs (after waiting up to ``wait_s`` seconds
        for it to end: a Spark call fails the moment the JVM's connection closes, a moment
        before the process can be reaped)."""
        code = self.proc.poll()
        if code is None and wait_s > 0:
            try:
                code = self.proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            return None
        if self._oom_thread is not None:
            thread, error = self._oom_thread
            return Death(self.proc.pid, code, error, thread, self.log)
        oom = None
        if code in (OOM_EXIT_CODE, SPARK_OOM_EXIT_CODE):
            oom = last_oom(log_tail(self.log)) or "java.lang.OutOfMemoryError"
        return Death(self.proc.pid, code, oom, None, self.log)

    def _log_size(self) -> int:
        try:
            return os.path.getsize(self.log) if self.log else 0
        except OSError:
            return 0

    def _scan_log(self) -> None:
        """Look at what the JVM logged since the last look for a thread killed by an
        OutOfMemoryError; on one, kill the JVM (it lives on, but wedged)."""
        if not self.log or self._oom_thread is not None:
            return
        size = self._log_size()
        if size <= self._offset:
            return
        start = max(self._offset, size - LOG_TAIL_BYTES)
        try:
            with open(self.log, "rb") as fh:
                fh.seek(start)
                text = fh.read(size - start).decode("utf-8", errors="replace")
        except OSError:
            return
        self._offset = size
        text, self._partial = self._partial + text, ""
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith(("\n", "\r")):
            self._partial = lines.pop()[-4096:]
        match = _DEAD_THREAD.search("".join(lines))
        if match is not None:
            self._oom_thread = (match.group(1), match.group(2).strip())
            log.info("the driver JVM's thread %r died of %s: stopping the JVM",
                     *self._oom_thread)
            self.proc.kill()

    def _run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            if self.proc.poll() is not None:
                break
            try:
                self._scan_log()
            except Exception:  # noqa: BLE001 - the watch must never fail the command
                log.debug("driver watch: cannot read %s", self.log, exc_info=True)
        if self._stopped.is_set() or self.on_death is None:
            return
        death = self.death()
        if death is not None:
            self.on_death(death)
