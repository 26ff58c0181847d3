"""The executors' one trained-network path: networks cached by the weights' content and
LRU-bounded (``inference/network_cache.py``), and the Arrow list encoder the UDFs share
(``inference/arrays.py``)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors import SafetensorError

from sparkvision.inference.arrays import list_array
from sparkvision.inference.network_cache import NetworkCache, TrainedNetwork, network_key
from sparkvision.models.registry import build_model
from sparkvision.models.weights import state_dict_bytes

SHAPE = (8, 8, 1)


def _trained(seed: int, model: str = "cnn", num_classes: int = 3) -> TrainedNetwork:
    torch.manual_seed(seed)
    weights = state_dict_bytes(build_model(model, num_classes, SHAPE))
    return TrainedNetwork(model, num_classes, SHAPE, weights)


def test_same_content_is_the_same_network_and_parts_are_built_once():
    cache = NetworkCache()
    first = _trained(0)
    again = TrainedNetwork("cnn", 3, [8, 8, 1], bytes(bytearray(first.weights)))
    assert again.weights is not first.weights and again.key == first.key
    net = cache.network(first)
    assert cache.network(again) is net and not net.training
    built: list[object] = []

    def build(n: torch.nn.Module) -> tuple[str, torch.nn.Module]:
        built.append(n)
        return ("runner", n)

    part = cache.part(first, "predict:torch:64", build)
    assert cache.part(again, "predict:torch:64", build) is part and part[1] is net
    other = cache.part(again, "predict:onnxruntime:64", build)
    assert other is not part and built == [net, net] and len(cache) == 1


def test_different_weights_or_network_are_different_networks():
    cache = NetworkCache()
    a, b = _trained(0), _trained(1)
    assert a.weights != b.weights and a.key != b.key
    net_a, net_b = cache.network(a), cache.network(b)
    assert net_a is not net_b and len(cache) == 2
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    assert any(not torch.equal(state_a[k], state_b[k]) for k in state_a)
    # the same bytes under another name, head or input shape are other networks too
    assert network_key("cnn", 3, SHAPE, a.weights) == a.key
    assert len({a.key, network_key("lenet5", 3, SHAPE, a.weights),
                network_key("cnn", 4, SHAPE, a.weights),
                network_key("cnn", 3, (8, 8, 3), a.weights),
                network_key("cnn", 3, SHAPE, a.weights, (0.4,), (0.2,))}) == 5


def test_the_bound_evicts_the_least_recently_used():
    cache = NetworkCache(capacity=2)
    a, b, c = _trained(0), _trained(1), _trained(2)
    net_a = cache.network(a)
    cache.network(b)
    assert cache.network(a) is net_a  # a is now the most recently used
    cache.network(c)
    assert len(cache) == 2 and a in cache and c in cache and b not in cache
    assert cache.network(b) is not None and len(cache) == 2 and a not in cache
    rebuilt = cache.network(a)
    assert rebuilt is not net_a and len(cache) == 2  # evicted, so built again
    with pytest.raises(ValueError, match="capacity"):
        NetworkCache(capacity=0)


def test_a_failed_build_caches_nothing():
    cache = NetworkCache()
    bad = TrainedNetwork("cnn", 3, SHAPE, b"\x00" * 16)
    with pytest.raises(SafetensorError):
        cache.network(bad)
    assert len(cache) == 0 and bad not in cache
    good = _trained(0)

    def fails(_net: torch.nn.Module) -> None:
        raise RuntimeError("no runner")

    with pytest.raises(RuntimeError, match="no runner"):
        cache.part(good, "predict:onnxruntime:64", fails)
    assert cache.part(good, "predict:onnxruntime:64", lambda n: "built") == "built"


def test_the_key_travels_with_the_network():
    """Hashed once where it is made (the driver); a task gets it with the pickled closure."""
    a = _trained(0)
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and copy.key == a.key and copy.image_shape == (8, 8, 1)
    assert "weights" not in repr(a) and a.key in repr(a)


def test_list_array_rows_dtypes_and_bounds():
    values = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    got = list_array(values, pa.float64())
    assert got.type == pa.list_(pa.float64())
    assert got.to_pylist() == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0],
                               [8.0, 9.0, 10.0, 11.0]]
    f32 = list_array(np.full((2, 3), 1 / 3, dtype=np.float64), pa.float32())
    assert f32.type == pa.list_(pa.float32())
    assert np.array_equal(f32.flatten().to_numpy(), np.full(6, 1 / 3, dtype=np.float32))
    assert list_array(np.zeros((0, 0), np.float32), pa.float32()).to_pylist() == []
    assert list_array(np.zeros((2, 0), np.float32), pa.float32()).to_pylist() == [[], []]
    big = np.broadcast_to(np.float32(0), (2, 2**30 + 1))  # 2³¹ + 2 numbers: no int32 offset
    with pytest.raises(pa.ArrowInvalid):
        list_array(big, pa.float32())
