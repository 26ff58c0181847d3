"""Never an endless hang: every rank reports its progress (heartbeats), the driver notices a
rank whose step stopped advancing — or one that never started — and fails the training with
an error naming the rank, its host and the last step it reached.

Executor side: :class:`Heartbeat` (a daemon thread per rank posting ``heartbeat`` events with
the rank's phase, epoch, global step and — when the shared-memory all-reduce is waiting for a
peer — that peer). Driver side: :class:`Watchdog` (fed by the progress endpoint, checked by
the launcher's watchdog thread).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]


class Heartbeat:
    """Posts ``{"type": "heartbeat", rank, host, task, phase, epoch, global_step,
    waiting_for}`` every ``interval_s`` through ``send`` (an EventSender's ``send``); ``task``
    is the Spark task attempt id (a retried stage's tasks have larger ones)."""

    def __init__(self, send: Callable[[Event], None], rank: int, host: str, task: int,
                 interval_s: float, waiting: Callable[[], int | None] = lambda: None) -> None:
        self._send = send
        self.rank, self.host, self.task = rank, host, task
        self.interval_s = interval_s
        self._waiting = waiting
        self.phase = "starting"
        self.epoch = 0
        self.global_step = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkvision-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        self._send({"type": "heartbeat", "rank": self.rank, "host": self.host,
                    "interval": self.interval_s,
                    "task": self.task, "phase": self.phase, "epoch": self.epoch,
                    "global_step": self.global_step, "waiting_for": self._waiting()})

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def stop(self) -> None:
        self._stop.set()


@dataclass
class _Rank:
    host: str
    phase: str
    epoch: int
    global_step: int
    waiting_for: int | None
    changed_at: float
    seen_at: float
    interval: float
    via: str  # the channel its latest report came through: "http" or "mailbox"


class Watchdog:
    """The driver's view of every rank's progress in the current stage attempt."""

    def __init__(self, world: int, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.world = world
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._tasks: dict[int, int] = {}  # rank → its latest task attempt id
        self._ranks: dict[int, _Rank] = {}
        self._since = clock()

    def observe(self, event: Event) -> None:
        """Take a heartbeat (other events are ignored)."""
        if event.get("type") != "heartbeat":
            return
        now = self._clock()
        with self._lock:
            rank, task = int(event["rank"]), int(event.get("task", 0))
            known = self._tasks.get(rank)
            if known is not None and task < known:
                return  # a late beat of a task that was replaced
            if known is not None and task > known:  # Spark retried the stage: start over
                self._ranks = {}
            if not self._ranks:
                self._since = now  # the first rank of this attempt reported
            self._tasks[rank] = task
            progress = (str(event.get("phase")), int(event.get("global_step", 0)))
            old = self._ranks.get(rank)
            changed = old is None or (old.phase, old.global_step) != progress
            self._ranks[rank] = _Rank(
                host=str(event.get("host", "?")), phase=progress[0],
                epoch=int(event.get("epoch", 0)), global_step=progress[1],
                waiting_for=event.get("waiting_for"),
                changed_at=now if changed else old.changed_at,  # type: ignore[union-attr]
                seen_at=now, interval=float(event.get("interval", 5.0)),
                via=str(event.get("via", "http")),
            )

    def check(self) -> str | None:
        """A message when some rank has made no progress for ``timeout_s``, else None."""
        now = self._clock()
        with self._lock:
            # A rank that stopped beating has ended or was killed (Spark retries the stage
            # and its new tasks report afresh): only live ranks can be stalled.
            live = {r: s for r, s in self._ranks.items()
                    if now - s.seen_at <= max(3 * s.interval, 5.0)}
            if not live:
                return None
            # Barrier tasks start together: once one rank of this attempt has reported, the
            # others have timeout_s to report too (before that, the stage is still waiting
            # for its input stages or slots — Spark's own checks cover slots).
            missing = [r for r in range(self.world) if r not in self._ranks]
            if missing and self._ranks and now - self._since > self.timeout_s:
                return (f"rank {missing[0]} did not start within {self.timeout_s:.0f} s "
                        f"(ranks that reported: {sorted(self._ranks) or 'none'}): the barrier "
                        "tasks or their process group could not form")
            stalled = {r: s for r, s in live.items() if now - s.changed_at > self.timeout_s}
            if not stalled:
                return None
            culprit = self._culprit(stalled, live, self._ranks)
            state = self._ranks[culprit]
            waiting = sorted(r for r, s in self._ranks.items() if s.waiting_for == culprit)
            also = (f"; rank(s) {', '.join(map(str, waiting))} waited for it in the gradient "
                    "all-reduce") if waiting else ""
            if culprit not in live:
                also += (f"; it stopped reporting {now - state.seen_at:.0f} s ago while the "
                         "others waited: its host or its link may be down")
            elif state.via == "mailbox" and any(s.via == "http" for s in live.values()):
                also += ("; its reports reach the driver only through the mailbox folder, "
                         "the others' over the network: its host's network link may be down")
            return (f"rank {culprit} on host {state.host} made no progress for "
                    f"{now - state.changed_at:.0f} s (last reached: step {state.global_step}, "
                    f"epoch {state.epoch}, {state.phase}){also}")

    @staticmethod
    def _culprit(stalled: dict[int, _Rank], live: dict[int, _Rank],
                 ranks: dict[int, _Rank]) -> int:
        """Who the others wait for: the rank a stalled one waits for (stalled itself, or
        silent: stuck so hard it stopped beating); else a rank that went silent while the
        others stalled; else a stalled rank cut off from the driver's endpoint (its reports
        come through the mailbox while the others' arrive over the network: its link is the
        broken one); else the stalled one with the fewest steps."""
        waited_for = {s.waiting_for for s in stalled.values() if s.waiting_for is not None}
        for rank in sorted(waited_for):
            if rank in ranks and (rank in stalled or rank not in live):
                return int(rank)
        silent = sorted(r for r in ranks if r not in live)
        if silent:
            return min(silent, key=lambda r: (ranks[r].global_step, r))
        cut_off = [r for r, s in stalled.items() if s.via == "mailbox"]
        if cut_off and len(cut_off) < len(live):
            stalled = {r: stalled[r] for r in cut_off}
        return min(stalled, key=lambda r: (stalled[r].global_step, r))
