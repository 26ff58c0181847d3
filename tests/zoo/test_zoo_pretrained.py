"""``pretrained`` weights as timm, torchvision and the Hugging Face hub save them: every
backbone tensor loads bit-identical, the head is replaced for the data's classes, and a
file of code or of another architecture is one error naming ``pretrained``."""

from __future__ import annotations

import pytest

from sparkvision.errors import InvalidParameterError

pytestmark = pytest.mark.zoo

CLASSES = ["cat", "dog", "fox"]


def _start(network, pretrained, shape=(32, 32, 3), **kw):
    from safetensors.torch import load

    from sparkvision.ml.transfer import starting_weights

    args = dict(init_weights="", init_from="", strict=True, freeze="none",
                backbone_lr_scale=1.0)
    args.update(kw)
    data, record = starting_weights(network, CLASSES, shape, pretrained=str(pretrained),
                                    **args)
    return load(data), record


def _assert_backbone_identical(kept, source, head="fc"):
    import torch

    backbone = {k for k in source if not (k == head or k.startswith(head + "."))}
    assert set(kept) == backbone
    for key in backbone:
        assert kept[key].dtype == source[key].dtype and torch.equal(kept[key], source[key]), key


@pytest.mark.parametrize("kind", ["safetensors", "pth", "hub", "repo", "snapshot"])
def test_pretrained_backbone_loads_bit_identical(resnet18_state, kind):
    kept, record = _start("timm:resnet18", resnet18_state[kind])
    _assert_backbone_identical(kept, resnet18_state["state"])
    assert record.head == "fc" and record.init.head_reinitialised
    assert record.init.loaded == len(resnet18_state["state"]) - 2
    assert not (record.init.missing or record.init.unexpected or record.init.shape_mismatched)
    summary = record.init_summary
    assert "skipped (the file's classifier head): fc.bias, fc.weight" in summary
    assert "new (initialised for this data): fc.bias, fc.weight" in summary
    if kind in ("hub", "repo", "snapshot"):
        assert "model.safetensors" in summary


def test_the_started_network_holds_the_pretrained_backbone(resnet18_state):
    import torch

    from sparkvision.models.registry import build_model

    kept, _ = _start("timm:resnet18", resnet18_state["pth"])
    net = build_model("timm:resnet18", len(CLASSES), (32, 32, 3))
    result = net.load_state_dict(kept, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    assert not result.unexpected_keys
    assert torch.equal(net.conv1.weight, resnet18_state["state"]["conv1.weight"])


def test_torchvision_pth_with_a_model_wrapper(zoo_dir):
    import torch
    import torchvision

    from tests.zoo.conftest import seeded

    state = seeded(lambda: torchvision.models.mobilenet_v3_small(weights=None)).state_dict()
    path = zoo_dir / "mobilenet_v3_small.pth"
    torch.save({"model": state}, path)
    kept, record = _start("torchvision:mobilenet_v3_small", path)
    _assert_backbone_identical(kept, state, head="classifier.3")
    assert record.head == "classifier.3"


def test_a_plain_hugging_face_folder_with_pytorch_model_bin(resnet18_state, tmp_path):
    import torch

    torch.save(resnet18_state["state"], tmp_path / "pytorch_model.bin")
    kept, record = _start("timm:resnet18", tmp_path)
    _assert_backbone_identical(kept, resnet18_state["state"])
    assert "pytorch_model.bin" in record.init_summary


def test_one_channel_data_sums_the_first_convs_pretrained_channels(resnet18_state):
    import torch

    kept, record = _start("timm:resnet18", resnet18_state["safetensors"], shape=(28, 28, 1))
    source = resnet18_state["state"]
    torch.testing.assert_close(kept["conv1.weight"], source["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(kept["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])
    assert "conv1.weight summed over its input channels" in record.init_summary


def test_a_vit_at_another_input_size_gets_its_position_embeddings_resampled(zoo_dir):
    import timm
    import torch
    from safetensors.torch import save_file

    from tests.zoo.conftest import seeded

    state = seeded(lambda: timm.create_model("vit_tiny_patch16_224")).state_dict()
    path = zoo_dir / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    kept, record = _start("timm:vit_tiny_patch16_224", path)
    assert kept["pos_embed"].shape == (1, 1 + 4, 192)  # timm's own checkpoint filter
    assert torch.equal(kept["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert record.head == "head"


def test_a_pth_holding_code_is_refused(zoo_dir, tmp_path):
    import torch

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = zoo_dir / "code.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(InvalidParameterError) as err:
        _start("timm:resnet18", path)
    message = str(err.value)
    assert message.startswith(f"invalid pretrained={str(path)!r}")
    assert "weights_only=True" in message and "safetensors.torch.save_file" in message
    assert not marker.exists()  # nothing was unpickled


def test_weights_of_another_architecture_are_refused(resnet18_state):
    with pytest.raises(InvalidParameterError) as err:
        _start("timm:resnet34", resnet18_state["safetensors"])
    message = str(err.value)
    assert "invalid pretrained=" in message and "another architecture" in message
    assert "timm:resnet34" in message and "layer1.2." in message
    with pytest.raises(InvalidParameterError, match="another architecture"):
        _start("torchvision:mobilenet_v3_small", resnet18_state["pth"])


def test_pretrained_with_init_weights_or_init_from_is_refused_before_reading(tmp_path):
    missing = str(tmp_path / "none.safetensors")
    for kw in ({"init_weights": missing}, {"init_from": str(tmp_path)}):
        with pytest.raises(InvalidParameterError, match="one source of starting weights"):
            _start("timm:resnet18", missing, **kw)


def test_a_missing_or_unrecognised_pretrained_path_is_one_error(tmp_path):
    from sparkvision.ml.transfer import check_pretrained

    with pytest.raises(InvalidParameterError, match="no such file or folder"):
        check_pretrained(str(tmp_path / "nope.pth"))
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InvalidParameterError, match="not a Hugging Face model folder"):
        check_pretrained(str(tmp_path))
