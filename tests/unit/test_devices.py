"""The device choice of a training rank (pure: no Spark, no GPU)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from sparkvision.errors import InvalidParameterError, TrainingError
from sparkvision.training.devices import (
    DeviceChoice,
    agree,
    choose_device,
    local_rank,
    task_gpu_addresses,
    torch_index,
    visible_devices,
)


def test_module_imports_neither_spark_nor_torch():
    import importlib
    import subprocess

    importlib.import_module("sparkvision.training.devices")  # imports cleanly here
    code = ("import sys, sparkvision.training.devices; "
            "print(any(m in sys.modules for m in ('torch', 'pyspark')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("gpus", [None, ["0"]])
def test_use_gpu_false_is_cpu_whatever_there_is(gpus):
    c = choose_device("false", 4, gpus, 1)
    assert c == DeviceChoice("cpu", None, "gloo", "useGpu=false")


def test_spark_task_resource_wins_over_local_rank():
    c = choose_device("auto", 4, ["2", "3"], local_rank=0)
    assert (c.kind, c.index, c.backend) == ("cuda", 2, "nccl")
    assert c.source == "spark task resource gpu=2,3" and not c.fallback


def test_spark_address_mapped_through_cuda_visible_devices():
    c = choose_device("true", 2, ["3"], 0, visible="2,3")
    assert (c.kind, c.index, c.backend) == ("cuda", 1, "nccl")
    assert "torch index 1 via CUDA_VISIBLE_DEVICES=2,3" in c.source


def test_cuda_visible_devices_with_uuids():
    assert torch_index("GPU-b", 2, "GPU-a, GPU-b")[0] == 1


def test_same_position_needs_no_note():
    assert torch_index("1", 4, "0,1,2,3") == (1, "")


def test_address_beyond_visible_gpus_is_a_clear_error():
    with pytest.raises(TrainingError) as err:
        choose_device("auto", 2, ["5"], 0)
    msg = str(err.value)
    assert "'5'" in msg and "only 2 CUDA GPU" in msg
    assert "spark.task.resource.gpu.amount=1" in msg and "discovery script" in msg


def test_address_not_in_cuda_visible_devices_is_a_clear_error():
    with pytest.raises(TrainingError, match=r"'1'.*CUDA_VISIBLE_DEVICES=2,3.*discovery script"):
        choose_device("auto", 2, ["1"], 0, visible="2,3")


def test_non_numeric_address_without_mapping_is_an_error():
    with pytest.raises(TrainingError, match="GPU-x"):
        torch_index("GPU-x", 1, None)


@pytest.mark.parametrize("rank,expected", [(0, 0), (1, 1), (2, 0), (3, 1)])
def test_without_task_resources_local_rank_modulo_gpus(rank, expected):
    c = choose_device("auto", 2, None, rank)
    assert (c.kind, c.index, c.backend) == ("cuda", expected, "nccl")
    assert c.source == f"local rank {rank} of 2 GPUs"


def test_empty_task_resource_is_no_resource():
    assert choose_device("auto", 2, [], 1).index == 1


def test_no_gpu_auto_is_cpu_quietly():
    c = choose_device("auto", 0, None, 0)
    assert c == DeviceChoice("cpu", None, "gloo", "no GPU")


def test_no_gpu_true_is_an_error_with_the_fix():
    with pytest.raises(TrainingError, match=r"useGpu=true but this task sees no CUDA GPU.*"
                                            r"useGpu=auto"):
        choose_device("true", 0, None, 0)


def test_spark_gpu_but_cpu_only_torch_auto_falls_back_and_says_so():
    c = choose_device("auto", 0, ["0"], 0)
    assert (c.kind, c.backend, c.fallback) == ("cpu", "gloo", True)
    assert "spark task resource gpu=0" in c.source and "CPU-only torch" in c.source


def test_spark_gpu_but_cpu_only_torch_true_is_an_error():
    with pytest.raises(TrainingError, match="useGpu=true but spark task resource gpu=0.*"
                                            "CUDA build of torch"):
        choose_device("true", 0, ["0"], 0)


def test_more_tasks_than_gpus_on_a_host():
    c = choose_device("auto", 1, None, 1, local_world=2)
    assert (c.kind, c.fallback) == ("cpu", True) and "NCCL needs one GPU per task" in c.source
    with pytest.raises(TrainingError, match="2 training tasks on this host share its 1 GPU"):
        choose_device("true", 1, None, 0, local_world=2)
    # with Spark resources each task has its own GPU: the host count does not matter
    assert choose_device("auto", 1, ["0"], 1, local_world=2).kind == "cuda"


def test_bad_use_gpu_value():
    with pytest.raises(InvalidParameterError, match="useGpu"):
        choose_device("yes", 1, None, 0)


def test_ranks_agree_on_one_backend():
    gpu = DeviceChoice("cuda", 0, "nccl", "local rank 0 of 1 GPUs")
    assert agree(gpu, ["nccl", "nccl"], "auto") is gpu
    cpu = agree(gpu, ["nccl", "gloo", "gloo"], "auto")
    assert (cpu.kind, cpu.backend, cpu.fallback) == ("cpu", "gloo", True)
    assert "2 of 3 training tasks have no usable GPU" in cpu.source
    with pytest.raises(TrainingError):
        agree(gpu, ["nccl", "gloo"], "true")


def test_visible_devices_parsing():
    assert visible_devices(None) is None
    assert visible_devices("") == []
    assert visible_devices(" 2, 3 ,") == ["2", "3"]
    # an empty CUDA_VISIBLE_DEVICES maps nothing: the address is taken as the index
    assert torch_index("0", 1, "") == (0, "")


class _Ctx:
    def __init__(self, resources):
        self._resources = resources

    def resources(self):
        if isinstance(self._resources, Exception):
            raise self._resources
        return self._resources


def test_task_gpu_addresses():
    assert task_gpu_addresses(None) is None
    assert task_gpu_addresses(_Ctx({})) is None
    assert task_gpu_addresses(_Ctx(RuntimeError("no resources"))) is None
    assert task_gpu_addresses(_Ctx({"gpu": SimpleNamespace(addresses=[])})) is None
    assert task_gpu_addresses(_Ctx({"fpga": SimpleNamespace(addresses=["0"])})) is None
    assert task_gpu_addresses(_Ctx({"gpu": SimpleNamespace(addresses=["1", "3"])})) == [
        "1", "3"]


def test_task_gpu_addresses_from_a_real_resource_information():
    from pyspark.resource import ResourceInformation

    ctx = _Ctx({"gpu": ResourceInformation("gpu", ["2"])})
    assert task_gpu_addresses(ctx) == ["2"]


def test_local_rank_counts_tasks_on_the_same_host():
    addresses = ["10.0.0.1:4040", "10.0.0.2:4040", "10.0.0.1:4041", "10.0.0.1:4042"]
    assert [local_rank(addresses, r) for r in range(4)] == [(0, 3), (0, 1), (1, 3), (2, 3)]


class _BarrierCtx(_Ctx):
    def __init__(self, resources, hosts, backends=None):
        super().__init__(resources)
        self._hosts = hosts
        self._backends = backends
        self.gathered: list[str] = []

    def getTaskInfos(self):
        return [SimpleNamespace(address=h) for h in self._hosts]

    def allGather(self, message):
        self.gathered.append(message)
        return self._backends or [message] * len(self._hosts)


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as if this machine had ``count`` GPUs; records set_device."""
    import torch

    state = {"count": 0, "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: state["count"] > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: state["set"].append(i))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return state


def _config(use_gpu):
    from sparkvision.config import TrainConfig

    return TrainConfig(model="mlp", num_classes=2, image_shape=(4, 4, 1), use_gpu=use_gpu)


def test_worker_device_uses_the_task_gpu(fake_cuda, monkeypatch):
    from sparkvision.training.process_group import task_device as _device

    fake_cuda["count"] = 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    ctx = _BarrierCtx({"gpu": SimpleNamespace(addresses=["3"])}, ["h:1", "h:2"])
    device, backend = _device(_config("auto"), ctx, 1)
    assert (str(device), backend, fake_cuda["set"]) == ("cuda:1", "nccl", [1])
    assert ctx.gathered == ["nccl"]


def test_worker_device_local_rank_without_resources(fake_cuda):
    from sparkvision.training.process_group import task_device as _device

    fake_cuda["count"] = 2
    ctx = _BarrierCtx({}, ["a:1", "b:1", "a:2"])
    assert str(_device(_config("true"), ctx, 2)[0]) == "cuda:1"
    assert ctx.gathered == []  # useGpu=true: no agreement round needed


def test_worker_device_falls_back_to_cpu_when_another_rank_has_no_gpu(fake_cuda):
    from sparkvision.training.process_group import task_device as _device

    fake_cuda["count"] = 1
    ctx = _BarrierCtx({}, ["a:1", "b:1"], backends=["nccl", "gloo"])
    device, backend = _device(_config("auto"), ctx, 0)
    assert (str(device), backend, fake_cuda["set"]) == ("cpu", "gloo", [])


def test_worker_device_cpu_only(fake_cuda):
    from sparkvision.training.process_group import task_device as _device

    ctx = _BarrierCtx({"gpu": SimpleNamespace(addresses=["0"])}, ["a:1"])
    assert _device(_config("auto"), ctx, 0)[1] == "gloo"
    with pytest.raises(TrainingError, match="CUDA build of torch"):
        _device(_config("true"), ctx, 0)
