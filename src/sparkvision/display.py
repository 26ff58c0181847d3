"""How progress reaches the terminal: a live bar on a TTY, plain periodic lines otherwise,
nothing when quiet.

The mode is process-wide: ``auto`` (default: a bar when stderr is a terminal, else lines),
``bar``, ``lines`` or ``off``; the CLI's ``--quiet`` sets ``off`` and the
``SPARKVISION_PROGRESS`` environment variable sets any of them. Lines never contain
carriage returns, so log files stay readable.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol

MODES = ("auto", "bar", "lines", "off")
#: Seconds between two plain progress lines of one task (the last one is always written).
LINE_INTERVAL_S = 10.0

_mode: str | None = None
_status_open = False


def set_mode(mode: str) -> None:
    """Set the process-wide progress mode (one of MODES)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    _mode = mode


def mode() -> str:
    """The effective mode: ``bar``, ``lines`` or ``off`` (``auto`` resolved now)."""
    chosen = _mode or os.environ.get("SPARKVISION_PROGRESS", "auto")
    if chosen not in MODES:
        chosen = "auto"
    if chosen == "auto":
        return "bar" if _stderr_is_tty() else "lines"
    return chosen


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress(Protocol):
    """What every progress display offers (tqdm's subset we use)."""

    n: int
    total: int | float | None

    def update(self, k: int = 1) -> None: ...
    def set_postfix(self, **values: Any) -> None: ...
    def close(self) -> None: ...


class _Off:
    def __init__(self, initial: int = 0) -> None:
        self.n = initial
        self.total: int | float | None = None

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, **values: Any) -> None:
        return None

    def close(self) -> None:
        return None


class _Lines:
    """Plain ``desc: n/total unit (p%) · key=value`` lines, at most one per interval."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int,
                 interval_s: float) -> None:
        self.total: int | float | None = total
        self.desc, self.unit, self.n = desc, unit, initial
        self.interval_s = interval_s
        self.postfix: dict[str, Any] = {}
        self._started = time.monotonic()
        self._last = self._started
        self._written: tuple[Any, ...] | None = None
        self._closed = False

    def _line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" · {k}={v}" for k, v in self.postfix.items())
        elapsed = time.monotonic() - self._started
        return f"{self.desc}: {done} {self.unit}{pct}{extra} · {elapsed:.0f}s"

    def _state(self) -> tuple[Any, ...]:
        return (self.n, self.total, tuple(self.postfix.items()))

    def _write(self) -> None:
        sys.stderr.write(self._line() + "\n")
        sys.stderr.flush()
        self._last = time.monotonic()
        self._written = self._state()

    def update(self, k: int = 1) -> None:
        self.n += k
        if time.monotonic() - self._last >= self.interval_s:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = {k: v for k, v in values.items() if v is not None}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._written != self._state():  # the final state, once
                self._write()


def progress(total: int | None, desc: str, unit: str = "it", initial: int = 0,
             interval_s: float = LINE_INTERVAL_S, enabled: bool = True) -> Progress:
    """A progress display for ``total`` units in the current mode (none when not
    ``enabled``)."""
    current = mode() if enabled else "off"
    if current == "off":
        return _Off(initial)
    if current == "lines":
        return _Lines(total, desc, unit, initial, interval_s)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False,
                file=sys.stderr)


def status_line(text: str, transient: bool = True) -> None:
    """One status line: redrawn in place on a TTY (``transient``), a plain line otherwise,
    nothing when quiet."""
    global _status_open
    current = mode()
    if current == "off":
        return
    if current == "bar" and transient:
        sys.stderr.write(f"\r{text}\033[K")
        _status_open = True
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


def end_status() -> None:
    """Finish a transient status line (a newline on a TTY)."""
    global _status_open
    if _status_open:
        _status_open = False
        sys.stderr.write("\n")
        sys.stderr.flush()


def discard(bar: Progress) -> None:
    """Close ``bar`` without writing its final line (its counts are stale: the driver JVM
    died, say); a bar on a TTY clears its line as ``close`` does."""
    if isinstance(bar, _Lines):
        bar._closed = True
    else:
        bar.close()


def error_line(text: str) -> None:
    """Write ``text`` as one whole line on stderr, also while a transient status line or a
    live bar holds the terminal's current line (on a TTY: that line is cleared first)."""
    global _status_open
    prefix = "\r\033[K" if _stderr_is_tty() else ""
    _status_open = False
    sys.stderr.write(f"{prefix}{text}\n")
    sys.stderr.flush()
