"""Networks from the zoo: timm:, torchvision: and onnx: names build for the data's classes
and input, unknown names and input sizes are one error before any job, and the pretrained
configurations (normalisation, input size) come from the zoo."""

from __future__ import annotations

import pytest

from sparkvision.errors import InvalidParameterError

pytestmark = pytest.mark.zoo


def _logits(net, shape, n=2):
    import torch

    h, w, c = shape
    with torch.inference_mode():
        return net.eval()(torch.zeros(n, c, h, w))


@pytest.mark.parametrize("name, shape", [
    ("timm:resnet18", (32, 32, 3)),
    ("timm:resnet18", (28, 28, 1)),
    ("torchvision:mobilenet_v3_small", (32, 32, 3)),
    ("torchvision:mobilenet_v3_small", (32, 32, 1)),
    ("timm:vit_tiny_patch16_224", (32, 32, 3)),
    ("timm:vit_tiny_patch16_224", (64, 48, 1)),
])
def test_zoo_networks_build_for_the_data(name, shape):
    from sparkvision.models.parts import head_name
    from sparkvision.models.registry import build_model, validate_model_name

    assert validate_model_name(name, shape) == name  # the forward check passes
    net = build_model(name, 5, shape)
    assert tuple(_logits(net, shape).shape) == (2, 5)
    head = head_name(net, 5, "pretrained")
    assert net.get_submodule(head).out_features == 5


def test_a_vit_builds_at_the_data_size_not_224():
    from sparkvision.models.registry import build_model

    net = build_model("timm:vit_tiny_patch16_224", 3, (32, 32, 3))
    assert tuple(net.patch_embed.img_size) == (32, 32)
    assert net.pos_embed.shape[1] == 1 + (32 // 16) ** 2


def test_one_channel_torchvision_networks_read_one_channel():
    from torch import nn

    from sparkvision.models.registry import build_model

    net = build_model("torchvision:mobilenet_v3_small", 4, (32, 32, 1))
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and first.out_channels == 16 and first.stride == (2, 2)


@pytest.mark.parametrize("name, closest", [
    ("timm:resnt18", "timm:resnet18"),
    ("torchvision:mobilenet_v3_smal", "torchvision:mobilenet_v3_small"),
])
def test_an_unknown_name_lists_the_closest(name, closest):
    from sparkvision.models.registry import validate_model_name

    with pytest.raises(InvalidParameterError) as err:
        validate_model_name(name)
    message = str(err.value)
    assert f"invalid model={name!r}" in message and closest in message
    assert "closest:" in message and "sparkvision models --filter" in message


def test_an_input_size_the_network_cannot_take_is_one_error():
    from sparkvision.models.registry import validate_model_name

    with pytest.raises(InvalidParameterError) as err:
        validate_model_name("torchvision:alexnet", (16, 16, 3))
    message = str(err.value)
    assert message.startswith("invalid imageShape=[16, 16, 3]")
    assert "it takes 224x224" in message and "--image-size 224" in message


def test_onnx_networks_keep_the_files_weights_and_get_a_new_head(mobilenet_onnx):
    import torch

    from sparkvision.models.parts import head_name
    from sparkvision.models.registry import build_model, runs_user_code, validate_model_name
    from sparkvision.models.weights import state_dict_bytes

    path, source = mobilenet_onnx
    name = f"onnx:{path}"
    assert not runs_user_code(name)
    validate_model_name(name, (32, 32, 3))
    same = build_model(name, 1000, (32, 32, 3)).eval()  # the file as it is
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(same(x), source(x), atol=1e-4, rtol=1e-4)
    net = build_model(name, 5, (32, 32, 3))  # fine-tuned for 5 classes
    assert tuple(_logits(net, (32, 32, 3)).shape) == (2, 5)
    head = head_name(net, 5, "pretrained")
    kept = same.state_dict()
    own = net.state_dict()
    backbone = [k for k in own if not k.startswith(head + ".")]
    assert len(backbone) == len(own) - 2 and len(backbone) > 50
    for key in backbone:
        assert torch.equal(own[key], kept[key]), key
    assert own[f"{head}.weight"].shape == (5, 1024)
    assert len(state_dict_bytes(net)) > 1_000_000  # its weights travel as safetensors


def test_onnx_files_are_read_through_storage_urls(mobilenet_onnx):
    from sparkvision.models.registry import build_model

    path, _ = mobilenet_onnx
    net = build_model(f"onnx:file://{path}", 3, (32, 32, 3))
    assert tuple(_logits(net, (32, 32, 3)).shape) == (2, 3)


def test_an_onnx_name_of_no_file_is_one_error(tmp_path):
    from sparkvision.models.registry import validate_model_name

    with pytest.raises(InvalidParameterError, match="no such ONNX file"):
        validate_model_name(f"onnx:{tmp_path / 'nope.onnx'}")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(InvalidParameterError, match="onnx2torch cannot convert"):
        validate_model_name(f"onnx:{bad}", (32, 32, 3))


def test_zoo_names_run_no_user_code():
    from sparkvision.models.registry import runs_user_code

    for name in ("timm:resnet18", "torchvision:resnet18", "onnx:/x.onnx", "dp:timm:resnet18"):
        assert not runs_user_code(name)
    assert runs_user_code("tests.nets:tiny")


def test_pretrained_normalization_and_config():
    from sparkvision.models.zoo import pretrained_normalization, zoo_config

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert pretrained_normalization("timm:resnet18") == imagenet
    assert pretrained_normalization("timm:vit_tiny_patch16_224") == ((0.5,) * 3, (0.5,) * 3)
    assert pretrained_normalization("torchvision:mobilenet_v3_small") == imagenet
    assert pretrained_normalization("dp:timm:resnet18") == imagenet
    assert pretrained_normalization("cnn") is None
    assert pretrained_normalization("onnx:/any.onnx") is None
    assert zoo_config("torchvision:inception_v3")["input_size"] == (3, 299, 299)
    cfg = zoo_config("timm:resnet18")
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"


def test_list_zoo_models_filters_by_pattern():
    from sparkvision.models.zoo import list_zoo_models

    found = list_zoo_models("*resnet18*")
    assert "timm:resnet18" in found["timm"] and "timm:vit_tiny_patch16_224" not in found["timm"]
    assert found["torchvision"] == ["torchvision:resnet18"]
