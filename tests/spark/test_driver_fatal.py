"""No hang when the driver JVM dies: out of heap (it exits at its first OutOfMemoryError; when
a thread dies of one and the JVM lives on, wedged, the CLI stops it), or killed from outside
during a job. The command ends with one line on stderr — what happened, what to do — and
exit code 1, and leaves no process behind (the JVM, its Python daemon and workers).

The CLI runs as a subprocess (``tests.fatalcli``: the real ``main`` and Spark session, with
``prepare``'s work replaced by a job that drives the JVM there); the subprocess timeout is
only a hang guard."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The smallest driver heap Spark starts with (its memory manager wants 1.5 × 300 MiB).
HEAP = "512m"
#: A local value the driver JVM can hold once but not also serialize into a task.
SHIP_MB = 320
#: Hang guards (seconds), not timings under test.
HANG_GUARD_S = 180
GONE_GUARD_S = 60

PROGRESS = re.compile(r"^prepare: \d+(/\d+)? task")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(command name, parent pid, start time) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return name, int(rest[1]), int(rest[19])


def _descendants(root: int) -> dict[int, tuple[str, int]]:
    """{pid: (command name, start time)} of every live process under ``root``."""
    parents: dict[int, list[int]] = {}
    info: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents.setdefault(stat[1], []).append(int(entry))
            info[int(entry)] = (stat[0], stat[2])
    found: dict[int, tuple[str, int]] = {}
    todo = list(parents.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in info and pid not in found:
            found[pid] = info[pid]
            todo.extend(parents.get(pid, []))
    return found


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    #: every process seen under the CLI while it ran: {pid: (command name, start time)}
    seen: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()

    def java(self) -> list[int]:
        return [pid for pid, (name, _) in self.seen.items() if name == "java"]

    def left_behind(self) -> list[str]:
        """The processes seen under the CLI that still run (waiting up to a hang guard for
        the JVM's Python daemon and workers, which notice its end within a second)."""
        deadline = time.monotonic() + GONE_GUARD_S
        while True:
            alive = [f"{pid} {name}" for pid, (name, start) in self.seen.items()
                     if (stat := _stat(pid)) is not None and stat[2] == start]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)


def _run_cli(tmp_path: Path, work: str, flags: list[str], env: dict[str, str] | None = None,
             during: Callable[[int, dict[int, tuple[str, int]]], None] | None = None) -> Run:
    """``sparkvision prepare digits`` through ``tests.fatalcli`` with FATALCLI_WORK=work;
    ``during(cli_pid, processes seen)`` is called while it runs."""
    environ = dict(os.environ)
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_GATEWAY_PORT",
                "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS"):
        environ.pop(key, None)
    environ.update(FATALCLI_WORK=work, FATALCLI_MB=str(SHIP_MB),
                   FATALCLI_MARKER=str(tmp_path / "task-started"),
                   SPARKVISION_LOG_DIR=str(tmp_path / "logs"), **(env or {}))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fatalcli", "prepare", "digits", "--out",
             str(tmp_path / "out"), "--master", "local[2]", *flags],
            stdout=stdout, stderr=stderr, env=environ, cwd=REPO, start_new_session=True)
    seen: dict[int, tuple[str, int]] = {}
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen.update(_descendants(proc.pid))
            if during is not None:
                during(proc.pid, seen)
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            for pid in seen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            pytest.fail(f"the CLI still ran after {HANG_GUARD_S} s (hung); stderr:\n"
                        + err.read_text(errors="replace")[-3000:])
    return Run(proc.returncode, out.read_text(errors="replace"),
               err.read_text(errors="replace"), seen)


def _assert_one_line(run: Run, *needles: str) -> str:
    errors = [line for line in run.lines if not PROGRESS.match(line)]
    assert run.returncode == 1, run.stderr[-3000:]
    assert len(errors) == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    line = errors[0]
    assert line.startswith("sparkvision prepare: error: the Spark driver JVM "), line
    for needle in needles:
        assert needle in line, line
    assert run.lines[-1] == line  # nothing after it
    assert run.java(), run.seen  # the JVM was there ...
    assert run.left_behind() == []  # ... and is gone, with its Python daemon and workers
    return line


def test_driver_out_of_heap_ends_the_command_with_one_line(tmp_path):
    run = _run_cli(tmp_path, "ship", ["--driver-memory", HEAP, "-q"])
    _assert_one_line(
        run, "ran out of memory (java.lang.OutOfMemoryError: Java heap space) and exited",
        "give it more memory: --driver-memory 1g (now 512m)")
    assert run.stdout == ""  # HotSpot's "Terminating due to …" went to the JVM log
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))
    assert "Terminating due to java.lang.OutOfMemoryError: Java heap space" in logs


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_a_wedged_driver_is_stopped_when_exit_on_oom_is_turned_off(tmp_path):
    """The user's own -XX:-ExitOnOutOfMemoryError (after sparkvision's options, so it wins):
    the scheduler thread that serializes the task dies of the OutOfMemoryError and the JVM
    lives on, wedged; its log says so and the CLI stops it. Progress lines are on."""
    run = _run_cli(tmp_path, "ship", [
        "--driver-memory", HEAP, "--conf",
        "spark.driver.extraJavaOptions=-XX:-ExitOnOutOfMemoryError"],
        env={"SPARKVISION_PROGRESS": "lines"})
    _assert_one_line(run, "ran out of memory (java.lang.OutOfMemoryError: Java heap space in "
                     "its thread '", "and was stopped, wedged",
                     "--driver-memory 1g (now 512m)")


@pytest.mark.parametrize("work", [
    "sleep",  # the main thread waits in the Spark call: it fails and says so
    pytest.param("sleep-elsewhere", marks=pytest.mark.slow),  # it waits on something else:
])                                                             # the watch says so, ends it
def test_driver_killed_during_a_job_ends_the_command_with_one_line(tmp_path, work):
    marker = tmp_path / "task-started"
    killed: list[int] = []

    def kill_the_jvm_once_a_task_runs(cli: int, seen: dict[int, tuple[str, int]]) -> None:
        if killed or not marker.exists():
            return
        java = [pid for pid, (name, _) in seen.items()
                if name == "java" and (stat := _stat(pid)) is not None and stat[1] == cli]
        assert len(java) == 1, seen
        os.kill(java[0], signal.SIGKILL)
        killed.append(java[0])

    run = _run_cli(tmp_path, work, ["-q"], during=kill_the_jvm_once_a_task_runs)
    assert killed, run.stderr[-3000:]
    _assert_one_line(run, f"(pid {killed[0]}) was killed by SIGKILL from outside")
