"""The one way a trained network runs on executors: built once per Python worker, keyed by
the weights' content, LRU-bounded (pyspark's ``ml/model_cache.py`` is the small model of
it). Prediction (``batch.py``), features (``features.py``) and attributions
(``explain.py``, and the ``explaining`` job) all go through it.

A ``TrainedNetwork`` says what a network is: its name, number of classes, input shape and
safetensors weights. Its ``key`` (the SHA-256 of the weights plus the other three) is
computed once, where it is made (on the driver), and travels with it, so a task does not
hash the weights again. ``NETWORKS.part(trained, name, build)`` gives what ``build(network)``
returned the first time ``name`` was asked for that network in this worker: the network is
built once (eval mode) and shared by what is built on it (a torch runner, an ONNX Runtime
session, a feature extractor, a Captum method …), each under its own part name (e.g.
``predict:onnxruntime:1024``, where the backend and batch size tell runners apart);
``NETWORKS.extra(trained, name, build)`` caches what needs no ``nn.Module`` (an ONNX Runtime
session of the graph the driver exported: the worker imports no torch). At most
``CAPACITY`` networks stay in a worker; the least recently used one goes first, with
everything built on it.

Spark reuses a Python worker across tasks (``spark.python.worker.reuse``, on by default), so
a network is built once per worker, not once per task."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: Networks a Python worker keeps (pyspark's ``ModelCache`` keeps 3 too): enough for a
#: stream's old and new model during a hot swap, or a model and a featurizer of another.
CAPACITY = 3


def network_key(model: str, num_classes: int, image_shape: tuple[int, int, int],
                weights: bytes, mean: tuple[float, ...] = (),
                std: tuple[float, ...] = ()) -> str:
    """``SHA256-of-weights:model:classes:HxWxC[:mean:std]``: equal exactly when two
    networks are the same (same code, same head, same input, same weights, same input
    normalisation)."""
    h, w, c = image_shape
    key = f"{hashlib.sha256(weights).hexdigest()}:{model}:{num_classes}:{h}x{w}x{c}"
    return f"{key}:{list(mean)}:{list(std)}" if mean or std else key


@dataclass(frozen=True)
class TrainedNetwork:
    """A network and its safetensors weights, with its content ``key`` (hashed here, once)."""

    model: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (height, width, channels)
    weights: bytes = field(repr=False)
    key: str = field(init=False, compare=False)
    #: the network's input normalisation (``inputMean``/``inputStd``; empty: [-1, 1])
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        shape = (int(self.image_shape[0]), int(self.image_shape[1]), int(self.image_shape[2]))
        object.__setattr__(self, "image_shape", shape)
        object.__setattr__(self, "key", network_key(self.model, self.num_classes, shape,
                                                    self.weights, self.input_mean,
                                                    self.input_std))

    @classmethod
    def of(cls, config: Any) -> TrainedNetwork:
        """The network of a task config (anything with ``model``, ``num_classes``,
        ``image_shape`` and ``weights``: ``PredictConfig``, ``FeatureConfig``,
        ``ExplainConfig``)."""
        return cls(config.model, config.num_classes, tuple(config.image_shape),
                   config.weights, input_mean=tuple(config.input_mean),
                   input_std=tuple(config.input_std))

    def build(self) -> Any:
        """A new ``nn.Module`` with the weights loaded, in eval mode (not cached)."""
        from sparkvision.models.weights import trained_network

        return trained_network(self.model, self.num_classes, self.image_shape, self.weights)


class NetworkCache:
    """Built networks by content key, least recently used first out beyond ``capacity``;
    each with the parts built on it (or for it: ``extra``)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be 1 or more, not {capacity}")
        self.capacity = capacity
        # key → [the nn.Module (None until a part needs it), {part name: part}]
        self._entries: OrderedDict[str, list[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, trained: TrainedNetwork) -> bool:
        return trained.key in self._entries

    def network(self, trained: TrainedNetwork) -> Any:
        """The ``nn.Module`` of ``trained`` (eval mode), built the first time."""
        return self.part(trained, "network", lambda net: net)

    def part(self, trained: TrainedNetwork, name: str, build: Callable[[Any], T]) -> T:
        """``build(network)`` for ``trained``, called once per ``name`` while the network
        stays cached. A build that raises caches nothing."""
        return self._part(trained, name, build, needs_network=True)

    def extra(self, trained: TrainedNetwork, name: str, build: Callable[[], T]) -> T:
        """``build()`` for ``trained``, called once per ``name`` while the network stays
        cached, without building the ``nn.Module`` (e.g. an ONNX Runtime session of a graph
        exported on the driver: no torch in this worker). A build that raises caches
        nothing."""
        return self._part(trained, name, lambda _net: build(), needs_network=False)

    def _part(self, trained: TrainedNetwork, name: str, build: Callable[[Any], T],
              needs_network: bool) -> T:
        with self._lock:
            entry = self._entries.get(trained.key)
            if entry is None:
                entry = [trained.build() if needs_network else None, {}]
                self._entries[trained.key] = entry
                while len(self._entries) > self.capacity:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(trained.key)
            parts = entry[1]
            if name not in parts:
                try:
                    if needs_network and entry[0] is None:
                        entry[0] = trained.build()
                    parts[name] = build(entry[0])
                except BaseException:
                    if entry[0] is None and not parts:  # nothing built: no entry left
                        self._entries.pop(trained.key, None)
                    raise
            return parts[name]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: This Python worker's networks.
NETWORKS = NetworkCache()
