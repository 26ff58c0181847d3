"""Shared-memory DDP all-reduce: exact averages, double buffering, DDP equivalence, cleanup.

Each world size (2 and 3) spawns one process group once (module fixture); the workers run
every check and return what they saw, the tests assert on it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparkvision.training.shm_allreduce import ShmAllReduce, supported
from sparkvision.training.shm_comm_hook import install_shm_allreduce, shm_allreduce_hook
from tests.spawned import run_ranks

pytestmark = pytest.mark.skipif(not supported(), reason="shared-memory all-reduce needs x86-64")

CAPACITY = 420_000 * 4  # a 420,000-float bucket fits exactly, 420,001 falls back to gloo
SIZES = [1, 2, 3, 17, 1000, 4099, 65_537, 100_000, 419_999, 420_000, 420_001]
JOIN_TIMEOUT_S = 150.0


class _Bucket:
    """Just enough of ``dist.GradBucket`` for the hook."""

    def __init__(self, buffer: torch.Tensor, index: int = 0, last: bool = True) -> None:
        self._buffer = buffer
        self._index = index
        self._last = last

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._last


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()


def _falls_back(t: torch.Tensor) -> bool:
    """Only float32 buckets up to the capacity are reduced in shared memory."""
    return t.dtype != torch.float32 or t.numel() * t.element_size() > CAPACITY


def _rank_order_mean(inputs: list[torch.Tensor]) -> torch.Tensor:
    """The documented result: sum in rank order, then divide (f16 accumulates in f32)."""
    arrays = [t.numpy() for t in inputs]
    acc_dtype = np.float32 if arrays[0].dtype == np.float16 else arrays[0].dtype
    acc = arrays[0].astype(acc_dtype)
    for a in arrays[1:]:
        acc = acc + a.astype(acc_dtype)
    acc = acc / np.array(len(arrays), dtype=acc_dtype)
    return torch.from_numpy(acc.astype(arrays[0].dtype))


# --------------------------------------------------------------------------- worker side


def _check_buckets(rank: int, world: int, name: str) -> dict[str, Any]:
    """Many random buckets, in bursts of back-to-back hook calls with uneven delays.

    Ranks run ahead of each other by up to a bucket (double buffering); float64/float16
    buckets and buckets over the capacity go through gloo.
    """
    import torch.distributed as dist

    failures: list[str] = []
    shm = ShmAllReduce.create(name, CAPACITY, timeout_s=30.0)
    shared = np.random.default_rng(1234)  # same on every rank: sizes, schedule
    local = np.random.default_rng(1000 + rank)  # this rank's data and delays

    def delay() -> None:
        if local.random() < 0.3:
            time.sleep(float(local.uniform(0, 2e-3)))

    # Jitter as a slow or descheduled rank has it: a random pause around each wait for the
    # peers (after publishing, after everyone arrived) and after reading the slots.
    wait_all, reduce_slot = shm._wait_all, shm._reduce_slot

    def slow_wait_all(*args: Any) -> None:
        delay()
        wait_all(*args)
        delay()

    def slow_reduce_slot(*args: Any) -> None:
        reduce_slot(*args)
        delay()

    def set_jitter(on: bool) -> None:
        shm._wait_all = slow_wait_all if on else wait_all
        shm._reduce_slot = slow_reduce_slot if on else reduce_slot

    digests: list[str] = []
    calls = fallbacks = 0
    for burst in range(10):
        jitter = burst >= 2  # the first two bursts run flat out
        set_jitter(jitter)
        n_calls = int(shared.integers(4, 12))
        inputs: list[torch.Tensor] = []
        futures: list[tuple[torch.Tensor, torch.futures.Future, bool]] = []
        for i in range(n_calls):
            n = int(shared.choice(SIZES))
            dtype = shared.choice(["f32"] * 8 + ["f64", "f16"])
            if burst == 0:  # shared-memory buckets, then a last bucket that goes through gloo
                n, dtype = (SIZES[-1] if i == n_calls - 1 else SIZES[4]), "f32"
            scale = float(10.0 ** shared.integers(-3, 4))
            x = local.standard_normal(n) * scale
            t = torch.from_numpy(
                x.astype({"f32": np.float32, "f64": np.float64}.get(dtype, np.float16))
            )
            inputs.append(t.clone())
            if jitter and local.random() < 0.5:
                time.sleep(float(local.uniform(0, 3e-3)))
            gen = shm.generation
            fut = shm_allreduce_hook(shm, _Bucket(t, i, last=i == n_calls - 1))
            fell_back = shm.generation == gen
            fallbacks += fell_back
            if fell_back != _falls_back(t):
                failures.append(f"{n} x {t.dtype}: fallback={fell_back}")
            futures.append((t, fut, fell_back))
            calls += 1
        set_jitter(False)
        outputs: list[torch.Tensor] = []
        for t, fut, fell_back in futures:
            if not fell_back and not fut.done():  # waiting would hang
                failures.append("a shared-memory future was not completed")
                outputs.append(t)
                continue
            out = fut.wait()
            if out.data_ptr() != t.data_ptr():
                failures.append(f"hook returned a new tensor for {t.numel()} elements")
            outputs.append(out)
        # References, computed after the burst so the burst itself has no gloo barrier.
        for x, out in zip(inputs, outputs, strict=True):
            gathered = [torch.empty_like(x) for _ in range(world)]
            dist.all_gather(gathered, x)
            fell_back = _falls_back(x)
            if not fell_back:
                expect = _rank_order_mean(gathered)
                if not torch.equal(out, expect):
                    bad = int((out != expect).sum())
                    failures.append(
                        f"{x.numel()} x {x.dtype}: {bad} elements differ from the rank-order mean"
                    )
            if x.dtype == torch.float32:
                ref = x.clone()
                dist.all_reduce(ref)
                ref = ref / world
                exact = world == 2 and not fell_back  # a+b == b+a; /2 is exact
                # world 3: gloo adds in another order; allow a few ulps of the largest input
                atol = 1e-6 * max(float(g.abs().max()) for g in gathered)
                ok = (
                    torch.equal(out, ref)
                    if exact
                    else torch.allclose(out, ref, rtol=1e-6, atol=atol)
                )
                if not ok:
                    diff = float((out - ref).abs().max())
                    failures.append(
                        f"{x.numel()} floats: differs from all_reduce/world by "
                        f"{diff} (exact={exact})"
                    )
            digests.append(_digest(out))
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, digests)
    if any(d != everyone[0] for d in everyone):
        failures.append("ranks got different results")
    generations = shm.generation
    shm.close()
    return {
        "failures": failures,
        "calls": calls,
        "fallbacks": fallbacks,
        "generations": generations,
    }


def _train(rank: int, hook: bool, bucket_view: bool, steps: int = 6) -> tuple[torch.Tensor, int]:
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sparkvision.models import build_model
    from sparkvision.training.loop import normalize

    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, (28, 28, 1))
    ddp = DDP(model, bucket_cap_mb=1, gradient_as_bucket_view=bucket_view)
    shm = install_shm_allreduce(ddp, timeout_s=30.0) if hook else None
    if hook and shm is None:
        raise AssertionError("install_shm_allreduce declined on one host")
    # SGD, not Adam: Adam is nearly invariant to the gradient's scale, so it would not
    # notice a sum where a mean belongs; SGD keeps ulp-level differences ulp-level.
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(steps):
        x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = F.cross_entropy(ddp(normalize(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    reductions = 0
    if shm is not None:
        reductions = shm.generation
        if shm._warned:
            raise AssertionError(f"hook fell back to gloo: {shm._warned}")
        shm.close()
    return params, reductions


def _check_ddp(rank: int, world: int) -> dict[str, Any]:
    import torch.distributed as dist

    failures: list[str] = []
    default, _ = _train(rank, hook=False, bucket_view=True)
    diffs: dict[str, float] = {}
    reductions: dict[str, int] = {}
    for bucket_view in (True, False):
        key = f"gradient_as_bucket_view={bucket_view}"
        params, reductions[key] = _train(rank, hook=True, bucket_view=bucket_view)
        gathered = [torch.empty_like(params) for _ in range(world)]
        dist.all_gather(gathered, params)
        if not all(torch.equal(g, gathered[0]) for g in gathered):
            failures.append(f"{key}: parameters differ across ranks")
        diffs[key] = float((params - default).abs().max())
        if not torch.allclose(params, default, rtol=1e-5, atol=1e-6):
            failures.append(f"{key}: hook vs default DDP max |diff| {diffs[key]}")
        if (params - torch.cat([p.reshape(-1) for p in _initial_params()])).abs().max() == 0:
            failures.append(f"{key}: parameters did not change")
    return {"failures": failures, "max_abs_diff_vs_default": diffs, "reductions": reductions}


def _initial_params() -> list[torch.Tensor]:
    from sparkvision.models import build_model

    torch.manual_seed(0)
    return [p.detach() for p in build_model("simple_cnn", 10, (28, 28, 1)).parameters()]


def _check_lifecycle(rank: int, world: int, name: str, calls: list[tuple]) -> dict[str, Any]:
    """Cleanup, tracker bookkeeping, timeouts and mismatched buckets."""
    import torch.distributed as dist

    failures: list[str] = []
    path = Path("/dev/shm") / name
    shm = ShmAllReduce.create(name, 4096, timeout_s=30.0)
    t = torch.full((10,), float(rank))
    shm.average_(t)
    if not torch.equal(t, torch.full((10,), (world - 1) / 2)):
        failures.append(f"average of ranks is {t.tolist()}")
    dist.barrier()
    in_dev_shm_while_open = path.exists()
    shm.close()
    shm.close()  # idempotent
    try:
        shm.average_(t)
        failures.append("average_ after close() did not raise")
    except RuntimeError:
        pass
    dist.barrier()
    in_dev_shm_after_close = path.exists()

    # A rank whose peers never come must time out, naming itself and the generation.
    shm = ShmAllReduce.create(name + "-t", 4096, timeout_s=0.5)
    timeout_message = ""
    if rank == 0:
        started = time.monotonic()
        try:
            shm.average_(torch.ones(4))
        except TimeoutError as e:
            timeout_message = str(e)
        if not 0.4 < time.monotonic() - started < 10:
            failures.append("timeout not honoured")
    dist.barrier()
    shm.close()

    # Ranks reducing different buckets must fail loudly, not mix them.
    shm = ShmAllReduce.create(name + "-m", 4096, timeout_s=10.0)
    mismatch_message = ""
    try:
        shm.average_(torch.ones(10 + rank))
    except RuntimeError as e:
        mismatch_message = str(e)
    dist.barrier()
    shm.close()
    dist.barrier()
    return {
        "failures": failures,
        "in_dev_shm_while_open": in_dev_shm_while_open,
        "in_dev_shm_after_close": in_dev_shm_after_close,
        "timeout_message": timeout_message,
        "mismatch_message": mismatch_message,
        "tracker_calls": [c for c in calls if c[2] == "shared_memory"],
        "names": [name, name + "-t", name + "-m"],
    }


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    from multiprocessing import resource_tracker

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Record what reaches the resource tracker (the real one still gets it).
    calls: list[tuple] = []
    real_register, real_unregister = resource_tracker.register, resource_tracker.unregister

    def register(name: str, rtype: str) -> None:
        calls.append(("register", name, rtype))
        real_register(name, rtype)

    def unregister(name: str, rtype: str) -> None:
        calls.append(("unregister", name, rtype))
        real_unregister(name, rtype)

    resource_tracker.register, resource_tracker.unregister = register, unregister
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    try:
        prefix = f"svtest-{os.getppid()}-{port}"
        result = {
            "buckets": _check_buckets(rank, world, f"{prefix}-b"),
            "ddp": _check_ddp(rank, world),
            "lifecycle": _check_lifecycle(rank, world, prefix + "-l", calls),
        }
    finally:
        dist.destroy_process_group()
    with open(os.path.join(outdir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)


# --------------------------------------------------------------------------- test side


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def ranks(request, tmp_path_factory) -> list[dict[str, Any]]:
    world = request.param
    outdir = tmp_path_factory.mktemp(f"shm-world{world}")
    run_ranks(_worker, (world, _free_port(), str(outdir)), world, JOIN_TIMEOUT_S,
              f"world {world}: workers")
    return [pickle.loads((outdir / f"rank{r}.pkl").read_bytes()) for r in range(world)]


def test_hook_average_equals_all_reduce_over_many_buckets(ranks):
    for rank, r in enumerate(ranks):
        b = r["buckets"]
        assert b["failures"] == [], f"rank {rank}: {b['failures'][:5]}"
        assert b["calls"] >= 60 and b["fallbacks"] >= 1, b
        assert b["generations"] == b["calls"] - b["fallbacks"] >= 40, b


def test_ddp_with_hook_matches_default_ddp(ranks):
    for rank, r in enumerate(ranks):
        d = r["ddp"]
        assert d["failures"] == [], f"rank {rank}: {d['failures']}"
        # Every bucket of every step went through shared memory (_train checks that no
        # bucket fell back): 1 bucket in the first step, 2 once DDP has rebuilt them.
        assert all(n >= 6 for n in d["reductions"].values()), d["reductions"]


def test_close_leaves_nothing_behind(ranks):
    for rank, r in enumerate(ranks):
        life = r["lifecycle"]
        assert life["failures"] == [], f"rank {rank}: {life['failures']}"
        assert not life["in_dev_shm_while_open"]  # unlinked as soon as all ranks attached
        assert not life["in_dev_shm_after_close"]
        for name in life["names"]:
            assert not (Path("/dev/shm") / name).exists()
        # Attaching ranks never touch the tracker; rank 0 registers and unregisters once.
        calls = life["tracker_calls"]
        if rank == 0:
            created = [c[1] for c in calls if c[0] == "register"]
            # bucket check, 2 DDP runs, lifecycle, timeout, mismatch segments
            assert len(created) == len(set(created)) == 6, created
            assert sorted(c[1] for c in calls if c[0] == "unregister") == sorted(
                c[1] for c in calls if c[0] == "register"
            )
        else:
            assert calls == []
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"svtest-{os.getpid()}-")]


def test_timeout_and_mismatch_raise(ranks):
    msg = ranks[0]["lifecycle"]["timeout_message"]
    assert "rank 0" in msg and "generation 1" in msg, msg
    for r in ranks:
        assert "not reducing the same buckets" in r["lifecycle"]["mismatch_message"]


def test_env_var_disables(monkeypatch):
    monkeypatch.setenv("SPARKVISION_SHM_ALLREDUCE", "0")
    assert not supported()
    monkeypatch.setenv("SPARKVISION_SHM_ALLREDUCE", "1")
    assert supported()


def test_futex_wait_returns_on_a_changed_counter_a_timeout_or_a_wake():
    """The blocking wait under a long all-reduce wait: returns at once when the counter
    already moved, after its timeout otherwise, and as soon as another thread stores and
    wakes (a liveness check: the join's bound is generous, not a measurement)."""
    import mmap
    import threading

    from sparkvision.training.shm_allreduce import _get_futex

    futex = _get_futex()
    if futex is None:
        pytest.skip("futex(2) not available here")
    segment = mmap.mmap(-1, 4096)
    counters = np.ndarray((2,), np.int64, buffer=segment)
    addr = int(counters.ctypes.data)
    counters[0] = 7
    futex.wait(addr, 6, 5.0)  # the counter is no longer 6: no sleep
    futex.wait(addr, 7, 1e-3)  # still 7: back after the timeout
    counters[0] = 2**32 + 5  # only the low 32 bits are compared
    futex.wait(addr, 4, 5.0)
    woke = threading.Event()

    def waiter() -> None:
        while counters[0] < 2**32 + 6:
            futex.wait(addr, int(counters[0]), 5.0)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    counters[0] = 2**32 + 6
    futex.wake(addr)
    thread.join(30)
    assert woke.is_set()
