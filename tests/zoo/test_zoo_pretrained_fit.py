"""A zoo network trained on Spark from ``pretrained`` weights: the weights reach the
training tasks (a frozen backbone comes back bit-identical), the head is trained for the
data's classes, and the history records what was loaded."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.zoo, pytest.mark.slow]


def test_timm_resnet18_from_pretrained_weights_trains_its_head_on_spark(
        spark, digits28_dir, resnet18_state):
    import torch
    from safetensors.torch import load

    from sparkvision import ImageClassifier, load_prepared

    train = load_prepared(spark, str(digits28_dir), "train")
    clf = ImageClassifier(model="timm:resnet18", pretrained=str(resnet18_state["safetensors"]),
                          freeze="backbone", epochs=1, numWorkers=1, batchSize=64, seed=3)
    model = clf.fit(train)
    transfer = model.history.transfer
    assert transfer.head == "fc" and transfer.init.head_reinitialised
    assert transfer.init.loaded == len(resnet18_state["state"]) - 2
    trained = load(model.weights)
    source = resnet18_state["state"]
    # digits are 1-channel: the pretrained first conv summed over its input channels
    torch.testing.assert_close(trained["conv1.weight"], source["conv1.weight"].sum(1, True))
    for key, tensor in source.items():
        if key.startswith("fc."):
            assert trained[key].shape[0] == 10, key
        elif key != "conv1.weight":  # weights and batch-norm statistics alike
            assert torch.equal(trained[key], tensor), key
    rows = model.transform(load_prepared(spark, str(digits28_dir), "test")).select(
        "prediction").limit(5).collect()
    assert len(rows) == 5
