"""A network's head/backbone split, freezing, parameter groups, feature capture and the
starting weights of transfer learning (plain PyTorch, no Spark)."""

from __future__ import annotations

import pytest
import torch

from sparkvision.errors import InvalidParameterError
from sparkvision.models import build_model
from sparkvision.models.parts import (
    capture_features,
    freeze_backbone,
    head_name,
    hold_backbone_still,
    is_head_key,
    parameter_groups,
    starting_state,
)
from tests.nets import conv_head

SHAPE = (28, 28, 1)


@pytest.mark.parametrize("name", ["cnn", "simple_cnn", "lenet5", "resnet8"])
def test_every_builtin_network_has_a_linear_head_with_one_output_per_class(name):
    net = build_model(name, 7, SHAPE)
    head = dict(net.named_modules())[head_name(net, 7)]
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7


def test_timm_style_get_classifier_names_the_head():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.extra = torch.nn.Linear(3, 3)  # the last layer, but not the classifier

        def get_classifier(self):
            return self.fc

    assert head_name(Net(), 3) == "fc"


def test_a_network_without_a_recognisable_head_is_a_clear_error():
    with pytest.raises(InvalidParameterError, match="no recognisable backbone/head split.*"
                       "Conv2d.*--freeze none"):
        head_name(conv_head(5, SHAPE), 5)
    with pytest.raises(InvalidParameterError, match="nn.Linear with one output per class"):
        head_name(build_model("cnn", 5, SHAPE), 4)  # the last Linear has 5 outputs


def test_frozen_backbone_stays_bit_identical_while_the_head_learns():
    torch.manual_seed(0)
    net = build_model("cnn", 3, SHAPE)  # batch norm and dropout in the backbone
    head = head_name(net, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    frozen = freeze_backbone(net, head)
    opt = torch.optim.Adam(parameter_groups(net, head, 1.0), lr=0.01)
    assert frozen == sum(1 for k, _ in net.named_parameters() if not is_head_key(k, head))
    for _ in range(3):
        net.train()
        hold_backbone_still(net, head)
        loss = torch.nn.functional.cross_entropy(net(torch.randn(8, 1, 28, 28)),
                                                 torch.randint(0, 3, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = net.state_dict()
    for key, value in before.items():
        if is_head_key(key, head):
            assert not torch.equal(value, after[key]), key
        else:
            assert torch.equal(value, after[key]), key  # weights and BN statistics


def test_parameter_groups_put_the_head_first_and_scale_the_backbone():
    net = build_model("simple_cnn", 4, SHAPE)
    head = head_name(net, 4)
    groups = parameter_groups(net, head, 0.1)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    head_ids = {id(p) for p in dict(net.named_modules())[head].parameters()}
    assert {id(p) for p in groups[0]["params"]} == head_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))


def test_captured_features_are_the_heads_input_or_a_named_layers_output():
    torch.manual_seed(0)
    net = build_model("cnn", 10, SHAPE).eval()
    x = torch.randn(5, 1, 28, 28)
    with capture_features(net, num_classes=10) as feats:
        logits = net(x)
    head = dict(net.named_modules())[head_name(net, 10)]
    assert feats[0].shape == (5, 128)
    assert torch.allclose(head(feats[0]), logits)
    with capture_features(net, layer="0") as feats:  # the convolutional features, flattened
        net(x)
    assert feats[0].shape == (5, 64 * 7 * 7)
    with pytest.raises(InvalidParameterError, match="layer.*no module of that name"):
        with capture_features(net, layer="nope"):
            pass


def test_starting_state_strict_and_lenient():
    torch.manual_seed(0)
    net = build_model("cnn", 10, SHAPE)
    other = build_model("cnn", 5, SHAPE).state_dict()  # another head size
    other["extra.weight"] = torch.zeros(2)
    with pytest.raises(InvalidParameterError, match="initWeights.*shape-mismatched.*"
                       "--init-strict false"):
        starting_state(net, other, "w.safetensors", True, "initWeights")
    kept, report = starting_state(net, other, "w.safetensors", False, "initWeights")
    head = head_name(net, 10)
    assert report.unexpected == ["extra.weight"]
    assert {k.split(" ")[0] for k in report.shape_mismatched} == {f"{head}.weight",
                                                                   f"{head}.bias"}
    assert report.loaded == len(kept) == len(net.state_dict()) - 2
    assert "2 shape-mismatched" in report.summary()
    del other["extra.weight"]
    kept, report = starting_state(net, other, "m", True, "initFrom", drop=(head,))
    assert report.head_reinitialised and not any(is_head_key(k, head) for k in kept)
    with pytest.raises(InvalidParameterError, match="no tensor in it fits"):
        starting_state(net, {"x": torch.zeros(1)}, "w", False, "initWeights")
