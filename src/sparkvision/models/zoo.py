"""Networks from the model zoo: ``timm:NAME`` (timm's architectures), ``torchvision:NAME``
(torchvision's classification models) and ``onnx:FILE`` (an ONNX graph converted to torch
by onnx2torch, so a network trained in another framework can be fine-tuned here).

Every builder takes the data's number of classes and (height, width, channels) and never
downloads anything: a network starts from random weights, or from a local file given as
``pretrained`` (``ml/transfer.py``). The zoo packages are optional
(``pip install 'sparkvision[zoo]'``); without them each name is one clear error.

1-channel data: timm builds with ``in_chans=1``; torchvision and ONNX networks get their
first ``Conv2d`` that reads 3 channels replaced by one reading 1 channel (the same
geometry); pretrained 3-channel weights of that conv are summed over the input channels
when they are loaded (timm's own ``adapt_input_conv`` convention).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
from collections.abc import Callable
from typing import Any

from sparkvision.errors import InvalidParameterError
from sparkvision.extras import import_from

TIMM_PREFIX = "timm:"
TORCHVISION_PREFIX = "torchvision:"
ONNX_PREFIX = "onnx:"
ZOO_PREFIXES = (TIMM_PREFIX, TORCHVISION_PREFIX, ONNX_PREFIX)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Builder = Callable[..., Any]


def is_zoo_name(name: str) -> bool:
    return name.startswith(ZOO_PREFIXES)


def _import(name: str, package: str):
    """``package`` imported, or one ``MissingDependencyError`` naming the zoo extra (also
    when torchvision is installed but does not load with this torch)."""
    return import_from("zoo", package, f"model={name!r}")


def _unknown(name: str, what: str, known: list[str]) -> InvalidParameterError:
    arch = name.split(":", 1)[1]
    near = difflib.get_close_matches(arch, known, n=6, cutoff=0.5)
    prefix = name.split(":", 1)[0] + ":"
    return InvalidParameterError(
        "model", name, f"{what} has no architecture {arch!r}"
        + (f"; closest: {', '.join(prefix + n for n in near)}" if near else "")
        + "; list them with `sparkvision models --filter PATTERN`")


def _torchvision_names(name: str) -> list[str]:
    tv = _import(name, "torchvision")
    return sorted(tv.models.list_models(module=tv.models))


# ------------------------------------------------------------------ builders
def timm_builder(name: str) -> Builder:
    """A builder of the timm architecture ``name`` (``timm:NAME``): the data's ``in_chans``
    and ``num_classes``, ``img_size=(H, W)`` for networks of a fixed input size (ViTs)."""
    arch = name[len(TIMM_PREFIX):]
    timm = _import(name, "timm")
    if not timm.is_model(arch):
        raise _unknown(name, "timm", timm.list_models())

    def build(num_classes: int, input_shape: tuple[int, int, int]):
        kwargs: dict[str, Any] = dict(pretrained=False, num_classes=num_classes,
                                      in_chans=input_shape[2])
        cfg = _timm_cfg(arch)
        if cfg is not None and getattr(cfg, "fixed_input_size", False):
            try:
                return timm.create_model(arch, img_size=(input_shape[0], input_shape[1]),
                                         **kwargs)
            except TypeError as exc:  # an architecture that takes no img_size
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(arch, **kwargs)
    return build


def torchvision_builder(name: str) -> Builder:
    """A builder of torchvision's classification model ``name`` (``torchvision:NAME``),
    weights=None, ``num_classes`` outputs; 1-channel data: its first conv reads 1 channel."""
    arch = name[len(TORCHVISION_PREFIX):]
    known = _torchvision_names(name)
    if arch not in known:
        raise _unknown(name, "torchvision", known)
    tv = _import(name, "torchvision")

    def build(num_classes: int, input_shape: tuple[int, int, int]):
        net = tv.models.get_model(arch, weights=None, num_classes=num_classes)
        return adapt_first_conv(net, input_shape[2], name)
    return build


def _onnx_file(name: str) -> str:
    from sparkvision import storage

    path = name[len(ONNX_PREFIX):]
    if not storage.isfile(path):
        raise InvalidParameterError(
            "model", name, "no such ONNX file: give onnx:PATH of a .onnx model (a local "
            "path or a URL every executor can read)")
    return path


def onnx_builder(name: str) -> Builder:
    """A builder of the ONNX graph in FILE (``onnx:FILE``, read through ``storage`` so URLs
    work) converted by onnx2torch; its last Linear/Gemm gets ``num_classes`` outputs when it
    has another count (fresh weights), every other weight is the file's."""
    _import(name, "onnx")
    _import(name, "onnx2torch")
    path = _onnx_file(name)

    def build(num_classes: int, input_shape: tuple[int, int, int]):
        import onnx
        from onnx2torch import convert

        from sparkvision import storage

        data = storage.read_bytes(path)
        try:
            proto = onnx.load_from_string(data)
            net = convert(_fold_constant_identities(proto))
        except Exception as exc:  # noqa: BLE001 - a file that is not ONNX, an unknown op
            raise InvalidParameterError(
                "model", name, f"onnx2torch cannot convert {path} ({type(exc).__name__}: "
                f"{str(exc).strip()[:200]}); give an ONNX classifier of standard operators at an "
                "opset onnx2torch knows (export with opset_version=17)"
            ) from None
        replace_last_linear(net, num_classes, name)
        return adapt_first_conv(net, input_shape[2], name)
    return build


def _fold_constant_identities(proto):
    """``proto`` with each Identity of an initializer replaced by a copy of it under the
    Identity's output name (torch's exporter shares a folded weight that way; onnx2torch
    wants a layer's weights as initializers)."""
    import onnx

    graph = proto.graph
    outputs = {o.name for o in graph.output}
    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if (node.op_type == "Identity" and node.input and node.input[0] in inits
                and node.output[0] not in outputs):
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return proto


def zoo_builder(name: str) -> Builder:
    if name.startswith(TIMM_PREFIX):
        return timm_builder(name)
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_builder(name)
    return onnx_builder(name)


def replace_last_linear(net, num_classes: int, name: str = ""):
    """``net`` with its last ``nn.Linear`` (onnx2torch's Gemm/MatMul+Add) replaced by a
    fresh one of ``num_classes`` outputs when it has another count."""
    from torch import nn

    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidParameterError(
            "model", name, "the ONNX graph has no Linear/Gemm layer to give one output per "
            "class; export a classifier whose last layer is fully connected")
    qualified, last = linears[-1]
    if last.out_features != num_classes:
        fresh = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
        _set_module(net, qualified, fresh)
    return net


def adapt_first_conv(net, in_chans: int, name: str = ""):
    """``net`` with its first ``Conv2d`` reading 3 channels replaced by one reading
    ``in_chans`` (same geometry, fresh weights) when the data has another count."""
    from torch import nn

    first = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels == in_chans:
        return net
    qualified, conv = first
    if conv.groups != 1:
        raise InvalidParameterError(
            "imageShape", in_chans, f"the first conv of {name} is grouped and reads "
            f"{conv.in_channels} channels: prepare the data with --channels "
            f"{conv.in_channels}")
    geometry: dict[str, Any] = dict(kernel_size=conv.kernel_size, stride=conv.stride,
                                    padding=conv.padding, dilation=conv.dilation)
    fresh = nn.Conv2d(in_chans, conv.out_channels, bias=conv.bias is not None,
                      padding_mode=conv.padding_mode, **geometry)
    _set_module(net, qualified, fresh)
    return net


def _set_module(net, qualified: str, module) -> None:
    parent_name, _, attr = qualified.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, module)


# ------------------------------------------------------------------ checks
def check_zoo_name(name: str) -> None:
    """The zoo package importable and the name known (cheap: nothing is built)."""
    zoo_builder(name)


@functools.lru_cache(maxsize=32)
def check_input_size(name: str, input_shape: tuple[int, int, int]) -> None:
    """Build ``name`` on the driver and run one forward pass of zeros at (1, C, H, W);
    ``InvalidParameterError`` naming imageShape, the value and the size the network takes
    when it cannot take that input."""
    import torch

    from sparkvision.models.registry import build_model

    h, w, c = input_shape
    net = build_model(name, 2, input_shape)
    try:
        with torch.inference_mode():
            net.eval()(torch.zeros(1, c, h, w))
    except Exception as exc:  # noqa: BLE001 - whatever the network's forward says
        size = zoo_config(name).get("input_size")
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        takes = (f"it takes {size[1]}x{size[2]} (its pretrained config's input_size): "
                 f"prepare the data with --image-size {size[-1]}" if size else
                 "prepare the data with --image-size at the size the graph was exported for")
        raise InvalidParameterError(
            "imageShape", [h, w, c], f"{name} cannot take {h}x{w} images "
            f"({type(exc).__name__}: {first}); {takes}") from None


# ------------------------------------------------------------------ configs
def _timm_cfg(arch: str):
    import timm

    try:
        return timm.get_pretrained_cfg(arch)
    except Exception:  # noqa: BLE001 - no config registered for it
        return None


def _torchvision_transforms(arch: str):
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        return weights.transforms()
    except Exception:  # noqa: BLE001 - a model without weights enums
        return None


#: what a zoo network without a pretrained config of its own expects (ImageNet's input)
_IMAGENET_CONFIG: dict[str, Any] = {"input_size": (3, 224, 224), "mean": IMAGENET_MEAN,
                                    "std": IMAGENET_STD, "interpolation": "bilinear"}


def zoo_config(name: str) -> dict[str, Any]:
    """What the zoo says of the network's pretrained input: ``input_size`` (C, H, W),
    ``mean``, ``std`` and ``interpolation``; empty for ONNX and built-in networks."""
    from sparkvision.models.registry import DP_PREFIX

    name = name[len(DP_PREFIX):] if name.startswith(DP_PREFIX) else name
    if name.startswith(TIMM_PREFIX):
        timm_builder(name)
        cfg = _timm_cfg(name[len(TIMM_PREFIX):])
        if cfg is None:
            return dict(_IMAGENET_CONFIG)
        return {"input_size": tuple(cfg.input_size), "mean": tuple(cfg.mean),
                "std": tuple(cfg.std), "interpolation": cfg.interpolation}
    if name.startswith(TORCHVISION_PREFIX):
        torchvision_builder(name)
        tf = _torchvision_transforms(name[len(TORCHVISION_PREFIX):])
        if tf is None:
            return dict(_IMAGENET_CONFIG)
        crop = list(getattr(tf, "crop_size", [224]))
        size = (3, crop[0], crop[-1])
        interpolation = getattr(getattr(tf, "interpolation", None), "value", "bilinear")
        return {"input_size": size, "mean": tuple(float(v) for v in tf.mean),
                "std": tuple(float(v) for v in tf.std), "interpolation": interpolation}
    return {}


def pretrained_normalization(name: str
                             ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel (mean, std) the zoo network's pretrained weights expect (timm's
    pretrained config; torchvision's default weights' transforms, else ImageNet's); None
    for ONNX and built-in networks."""
    cfg = zoo_config(name)
    if not cfg:
        return None
    return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])


# ------------------------------------------------------------------ listing
def list_zoo_models(pattern: str = "*") -> dict[str, list[str]]:
    """The zoo's model names matching the fnmatch ``pattern`` (matched against the bare
    architecture name), as ``model`` values: {"timm": ["timm:…"], "torchvision": [...]};
    ``MissingDependencyError`` naming the zoo extra when it is not installed."""
    pattern = pattern or "*"
    timm = _import("timm:", "timm")
    found = {"timm": [TIMM_PREFIX + n for n in timm.list_models(pattern)]}
    found["torchvision"] = [TORCHVISION_PREFIX + n for n in _torchvision_names("torchvision:")
                            if fnmatch.fnmatchcase(n, pattern)]
    return found
