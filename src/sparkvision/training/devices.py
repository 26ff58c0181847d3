"""Which device (and collective backend) a training rank uses: pure decisions, no Spark and
no torch at import, so every rule is unit-tested without a GPU.

``process_group.task_device`` feeds these with what the task sees
(``torch.cuda.device_count()``, the task's Spark ``gpu`` resource, ``CUDA_VISIBLE_DEVICES``,
its rank among the tasks on its host) and sets the chosen CUDA device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sparkvision.errors import InvalidParameterError, TrainingError

#: What to do when a task's GPU address does not fit what torch sees.
GPU_CONF_FIX = (
    "set spark.task.resource.gpu.amount=1 and a discovery script that lists the GPUs this "
    "executor sees"
)


@dataclass(frozen=True)
class DeviceChoice:
    """One rank's device: ``kind`` cuda or cpu, the torch CUDA ``index`` (None on CPU), the
    process-group ``backend`` and ``source``, why (for the log). ``fallback`` is True when a
    GPU was there or asked for but the rank runs on CPU (worth a warning)."""

    kind: Literal["cuda", "cpu"]
    index: int | None
    backend: Literal["nccl", "gloo"]
    source: str
    fallback: bool = False


def _cpu(source: str, fallback: bool = False) -> DeviceChoice:
    return DeviceChoice("cpu", None, "gloo", source, fallback)


def visible_devices(env_value: str | None) -> list[str] | None:
    """The ids ``CUDA_VISIBLE_DEVICES`` lists (indices or ``GPU-…``/``MIG-…`` UUIDs), in
    order; None when it is unset. Torch's CUDA index ``i`` is the ``i``-th of them."""
    if env_value is None:
        return None
    return [part.strip() for part in env_value.split(",") if part.strip()]


def torch_index(address: str, cuda_count: int, visible: str | None) -> tuple[int, str]:
    """(torch CUDA index, how it was found) of the GPU Spark assigned as ``address``.

    Spark's address is the id its discovery script printed (usually the physical
    ``nvidia-smi`` index). When ``CUDA_VISIBLE_DEVICES`` lists ids, torch numbers only those:
    the address's position in that list is the index. Otherwise the address is the index."""
    address = address.strip()
    ids = visible_devices(visible)
    if ids:
        if address in ids and ids.index(address) < cuda_count:
            index = ids.index(address)
            how = "" if address == str(index) else (
                f" (torch index {index} via CUDA_VISIBLE_DEVICES={visible})")
            return index, how
        raise TrainingError(
            f"Spark gave this task GPU address {address!r}, which is not among the "
            f"{cuda_count} GPU(s) this process sees (CUDA_VISIBLE_DEVICES={visible}): "
            f"{GPU_CONF_FIX}"
        )
    if address.isdigit() and int(address) < cuda_count:
        return int(address), ""
    raise TrainingError(
        f"Spark gave this task GPU address {address!r} but torch sees only {cuda_count} CUDA "
        f"GPU(s) (indices 0..{cuda_count - 1}, CUDA_VISIBLE_DEVICES unset): {GPU_CONF_FIX}"
    )


def choose_device(
    use_gpu: str,
    cuda_count: int,
    task_gpus: list[str] | None,
    local_rank: int,
    local_world: int = 1,
    visible: str | None = None,
) -> DeviceChoice:
    """One rank's device and backend.

    ``use_gpu`` is the ``useGpu`` param (auto | true | false); ``cuda_count`` the CUDA GPUs
    torch sees (0 on a CPU-only torch build); ``task_gpus`` the addresses of the task's Spark
    ``gpu`` resource (None or empty: none assigned); ``local_rank``/``local_world`` this
    task's rank among, and the number of, training tasks on its host; ``visible`` the value
    of ``CUDA_VISIBLE_DEVICES`` (None: unset).

    Raises TrainingError when ``useGpu=true`` cannot be honoured or Spark's GPU address does
    not fit what torch sees."""
    if use_gpu not in ("auto", "true", "false"):
        raise InvalidParameterError("useGpu", use_gpu, "use auto, true or false")
    if use_gpu == "false":
        return _cpu("useGpu=false")
    if task_gpus:
        first = task_gpus[0]
        given = f"spark task resource gpu={','.join(task_gpus)}"
        if cuda_count == 0:
            why = f"{given} but torch sees no CUDA GPU (a CPU-only torch build, or no driver)"
            if use_gpu == "true":
                raise TrainingError(
                    f"useGpu=true but {why}: install a CUDA build of torch on the executors, "
                    "or set useGpu=auto"
                )
            return _cpu(f"{why}: training on CPU", fallback=True)
        index, how = torch_index(first, cuda_count, visible)
        return DeviceChoice("cuda", index, "nccl", f"{given}{how}")
    if cuda_count == 0:
        if use_gpu == "true":
            raise TrainingError(
                "useGpu=true but this task sees no CUDA GPU: set useGpu=auto (or false) to "
                "train on CPU, or give the executors GPUs and a CUDA build of torch "
                f"({GPU_CONF_FIX})"
            )
        return _cpu("no GPU")
    if local_world > cuda_count:
        # NCCL refuses two ranks on one GPU ("Duplicate GPU detected").
        why = (f"{local_world} training tasks on this host share its {cuda_count} GPU(s) and "
               "NCCL needs one GPU per task")
        if use_gpu == "true":
            raise TrainingError(f"useGpu=true but {why}: {GPU_CONF_FIX}, or use fewer workers")
        return _cpu(f"{why}: training on CPU ({GPU_CONF_FIX})", fallback=True)
    index = local_rank % cuda_count
    return DeviceChoice("cuda", index, "nccl", f"local rank {local_rank} of {cuda_count} GPUs")


def agree(choice: DeviceChoice, backends: list[str], use_gpu: str) -> DeviceChoice:
    """This rank's device once every rank's backend is known (``backends``, one per rank):
    all ranks must use one backend, so when some ranks have a GPU and others not, under
    ``useGpu=auto`` all of them train on CPU (gloo)."""
    if len(set(backends)) <= 1:
        return choice
    on_cpu = backends.count("gloo")
    why = (f"{on_cpu} of {len(backends)} training tasks have no usable GPU and all ranks "
           "must use one backend")
    if use_gpu == "true":
        raise TrainingError(f"useGpu=true but {why}: {GPU_CONF_FIX}")
    return _cpu(f"{why}: training on CPU", fallback=choice.kind == "cuda")


def task_gpu_addresses(ctx: Any) -> list[str] | None:
    """The addresses of the Spark ``gpu`` resource assigned to the task of ``ctx`` (a
    ``TaskContext``), or None when there is no context, no such resource or no address."""
    if ctx is None:
        return None
    try:
        resources = ctx.resources()
    except Exception:  # noqa: BLE001 - a context without resources means "none assigned"
        return None
    gpu = resources.get("gpu") if resources else None
    addresses = getattr(gpu, "addresses", None) if gpu is not None else None
    return [str(a) for a in addresses] if addresses else None


def local_rank(task_addresses: list[str], rank: int) -> tuple[int, int]:
    """(rank among the tasks on this task's host, number of tasks on that host), from the
    barrier tasks' ``host:port`` addresses (``BarrierTaskContext.getTaskInfos()``)."""
    hosts = [address.rsplit(":", 1)[0] for address in task_addresses]
    mine = hosts[rank]
    return hosts[:rank].count(mine), hosts.count(mine)
