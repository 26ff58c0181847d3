"""Ranks of a test as spawned processes (``torch.multiprocessing``), joined with a deadline:
a rank that hangs fails the test instead of the run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def run_ranks(worker: Callable[..., Any], args: tuple[Any, ...], nprocs: int,
              timeout_s: float, what: str = "ranks") -> None:
    """Start ``worker(rank, *args)`` in ``nprocs`` spawned processes and wait for all of
    them; ``pytest.fail`` naming ``what`` after ``timeout_s`` (the survivors are killed),
    and on a rank's failure (torch raises ``ProcessRaisedException``/``ProcessExitedException``)."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"{what} still running after {timeout_s:g} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()
