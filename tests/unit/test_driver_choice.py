"""The backend chosen once on the driver (``inference/batch.py``: ``choose_on_driver``): the
network exported to ONNX there, so a Python worker opens an ONNX Runtime session of that
graph without importing torch, and gets the same logits as ``build_runner``'s own runner."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparkvision.config import PredictConfig
from sparkvision.inference.batch import DriverChoice, build_runner, choose_on_driver
from sparkvision.models.registry import build_model
from sparkvision.models.weights import state_dict_bytes, trained_network

pytest.importorskip("onnxruntime")
SHAPE = (8, 8, 1)

WORKER = """
import pickle, sys
import numpy as np
from sparkvision.inference.batch import chosen_runner
from sparkvision.inference.network_cache import NETWORKS, TrainedNetwork
config, choice, images = pickle.loads(sys.stdin.buffer.read())
trained = TrainedNetwork.of(config)
run = chosen_runner(config, trained, choice)
assert chosen_runner(config, trained, choice) is run  # cached in this worker
sys.stdout.buffer.write(pickle.dumps((run(images), "torch" in sys.modules, len(NETWORKS))))
"""


def _config(backend: str) -> PredictConfig:
    torch.manual_seed(0)
    weights = state_dict_bytes(build_model("cnn", 3, SHAPE))
    return PredictConfig(model="cnn", num_classes=3, image_shape=SHAPE, weights=weights,
                         classes=("a", "b", "c"), batch_size=4, backend=backend)


def _in_a_fresh_worker(config, choice, images):
    done = subprocess.run([sys.executable, "-c", WORKER], check=True, capture_output=True,
                          input=pickle.dumps((config, choice, images)))
    return pickle.loads(done.stdout)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_a_worker_runs_the_drivers_graph_without_torch(backend):
    config = _config(backend)
    choice = choose_on_driver(config)
    assert choice.backend == "onnxruntime" and choice.graph
    images = np.random.default_rng(1).integers(0, 256, (10, *SHAPE), dtype=np.uint8)
    logits, imported_torch, cached = _in_a_fresh_worker(config, choice, images)
    assert not imported_torch and cached == 1
    net = trained_network(config.model, config.num_classes, SHAPE, config.weights)
    chosen, own = build_runner(config, net)  # what a worker would build by itself
    assert chosen == "onnxruntime"
    np.testing.assert_array_equal(logits, own(images))


def test_torch_stays_torch_and_without_a_choice_the_worker_decides():
    config = _config("torch")
    assert choose_on_driver(config) == DriverChoice("torch")
    images = np.random.default_rng(2).integers(0, 256, (6, *SHAPE), dtype=np.uint8)
    logits, imported_torch, _ = _in_a_fresh_worker(config, DriverChoice("torch"), images)
    net = trained_network(config.model, config.num_classes, SHAPE, config.weights)
    assert imported_torch
    np.testing.assert_allclose(logits, build_runner(config, net)[1](images), atol=1e-5)
    auto = _config("auto")
    logits, _, _ = _in_a_fresh_worker(auto, DriverChoice(), images)  # decided by the worker
    np.testing.assert_allclose(logits, build_runner(auto, net)[1](images), atol=1e-4)
