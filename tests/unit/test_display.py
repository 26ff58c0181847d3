"""Progress display modes: bars only on a TTY, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import io
import sys

import pytest

from sparkvision import display


class _Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture()
def stderr(monkeypatch):
    def use(tty: bool, mode: str = "auto") -> _Stderr:
        fake = _Stderr(tty)
        monkeypatch.setattr(sys, "stderr", fake)
        display.set_mode(mode)
        return fake

    yield use
    display.set_mode("auto")


def test_auto_is_a_bar_on_a_tty_and_lines_otherwise(stderr):
    stderr(tty=True)
    assert display.mode() == "bar"
    stderr(tty=False)
    assert display.mode() == "lines"
    stderr(tty=True, mode="off")
    assert display.mode() == "off"


def test_lines_are_periodic_plain_and_end_with_the_final_count(stderr, monkeypatch):
    err = stderr(tty=False)
    clock = iter(float(t) for t in range(0, 1000, 3))
    monkeypatch.setattr(display.time, "monotonic", lambda: next(clock))
    bar = display.progress(100, "train", unit="step", interval_s=10.0)
    for _ in range(10):
        bar.update(10)
        bar.set_postfix(loss="0.5", val_acc=None)
    bar.close()
    bar.close()  # idempotent
    text = err.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\033" not in text
    assert 2 <= len(lines) < 10  # throttled: not one line per update
    assert lines[-1].startswith("train: 100/100 step (100%) · loss=0.5")
    assert "val_acc" not in text


def test_off_and_disabled_write_nothing(stderr):
    err = stderr(tty=True, mode="off")
    bar = display.progress(5, "tune", unit="trial")
    bar.update(5)
    bar.close()
    display.status_line("stream: batch 0")
    display.end_status()
    err2 = stderr(tty=False)
    quiet = display.progress(5, "tune", enabled=False)
    quiet.update(2)
    quiet.close()
    assert err.getvalue() == "" and err2.getvalue() == "" and quiet.n == 2


def test_status_line_redraws_on_a_tty_only(stderr):
    tty = stderr(tty=True)
    display.status_line("stream: batch 0")
    display.status_line("stream: batch 1")
    display.end_status()
    display.end_status()  # nothing open any more: no second newline
    assert tty.getvalue() == "\rstream: batch 0\033[K\rstream: batch 1\033[K\n"
    log = stderr(tty=False)
    display.status_line("stream: batch 0")
    display.end_status()
    assert log.getvalue() == "stream: batch 0\n"


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="progress mode 'loud'"):
        display.set_mode("loud")


def test_the_last_line_has_the_final_postfix(stderr):
    """Steps finish before the last epoch's numbers arrive: close() still shows them."""
    err = stderr(tty=False)
    bar = display.progress(10, "train", unit="step", interval_s=0.0)
    bar.update(10)
    bar.set_postfix(epoch="2/2")
    bar.close()
    assert err.getvalue().splitlines()[-1].startswith("train: 10/10 step (100%) · epoch=2/2")
