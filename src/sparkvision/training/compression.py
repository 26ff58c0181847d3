"""Gradient compression between hosts (``gradCompression``): which of DDP's communication
hooks averages the gradient buckets, and whether one applies at all.

- :func:`compression_used`: the compression a training actually uses. Only an all-reduce
  through the process group (gloo between hosts, nccl) is compressed: ranks on one host
  that average through shared memory (``shm_comm_hook``), ``privacy="dp"`` (Opacus's
  all-reduce per parameter) and a single rank (nothing travels) use "none", whatever was
  asked for.
- :func:`register_compression`: registers the hook on a ``DistributedDataParallel``:
  ``fp16`` / ``bf16`` (:func:`cast_hook`: each bucket cast to half precision, divided by
  the world size, all-reduced, cast back) or ``powersgd`` (DDP's ``powerSGD_hook``: rank-1
  approximations of each gradient matrix with error feedback, after
  :data:`POWERSGD_START_STEP` plain all-reduces; vectors such as biases travel
  uncompressed).

:func:`cast_hook` is DDP's ``fp16_compress_hook`` for either format: DDP refuses its
``bf16_compress_hook`` without CUDA and NCCL 2.10+, while gloo all-reduces float16 and
bfloat16 on the CPU (torch 2.13) as nccl does on GPUs, so no choice needs a check before
the job. (No ``from __future__ import annotations`` here: DDP checks a hook's annotations
against the real types.)
"""

import logging
from typing import Any

import torch
import torch.distributed as dist

from sparkvision.errors import InvalidParameterError

log = logging.getLogger(__name__)

#: What ``gradCompression`` may say and what a history records when nothing is compressed.
NONE = "none"
#: Steps PowerSGD averages uncompressed first: DDP rebuilds its buckets after the first
#: step, and PowerSGD's error feedback and warm start need the final buckets.
POWERSGD_START_STEP = 2
#: Rank of PowerSGD's approximation of each gradient matrix.
POWERSGD_RANK = 1
#: The format each casting choice sends.
CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def compression_used(choice: str, *, world: int, shared_memory: bool, private: bool) -> str:
    """The compression a training with ``gradCompression=choice`` uses: ``choice`` when its
    ``world`` ranks average gradients through the process group, else "none" (logged when
    something else was asked for): ``shared_memory`` (all ranks on one host), ``private``
    (``privacy="dp"``) or a single rank."""
    if choice == NONE:
        return NONE
    reason = ("the ranks share a host and average through shared memory" if shared_memory
              else "privacy='dp' all-reduces each parameter through Opacus" if private
              else "a single rank exchanges no gradients" if world < 2 else None)
    if reason is None:
        return choice
    log.info("gradCompression=%s not applied: %s", choice, reason)
    return NONE


def cast_hook(state: torch.dtype,
              bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the mean over ranks of ``bucket``, sent as ``state`` (a
    floating-point dtype): the bucket cast to it and divided by the world size, all-reduced
    (summed) in that format, and copied back into the bucket."""
    buffer = bucket.buffer()
    compressed = buffer.to(state).div_(dist.get_world_size())

    def decompress(fut: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        buffer.copy_(fut.value()[0])
        return buffer

    return dist.all_reduce(compressed, async_op=True).get_future().then(decompress)


def register_compression(ddp: Any, choice: str, seed: int = 0) -> Any:
    """Register the communication hook of ``choice`` (not "none") on ``ddp`` (a
    ``DistributedDataParallel`` over the default process group); the hook's state (the
    dtype sent, or PowerSGD's, seeded with ``seed`` alike on every rank)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    state: Any
    hook: Any
    if choice in CAST_DTYPES:
        state, hook = CAST_DTYPES[choice], cast_hook
    elif choice == "powersgd":
        hook = powerSGD_hook.powerSGD_hook
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=POWERSGD_RANK,
            start_powerSGD_iter=POWERSGD_START_STEP, use_error_feedback=True, warm_start=True,
            random_seed=seed)
    else:  # settings.py refuses other values before any job
        raise InvalidParameterError("gradCompression", choice,
                                    "use none, fp16, bf16 or powersgd")
    ddp.register_comm_hook(state=state, hook=hook)
    return state
