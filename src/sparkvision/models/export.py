"""A trained network as a self-contained serving graph: ONNX or TorchScript bytes.

The exported graph takes the images exactly as ``prepare`` stores them — uint8
(N, H, W, C), any batch size — and does the model's normalisation itself
(``preprocess.normalize`` with its ``inputMean``/``inputStd``), so a
server needs neither sparkvision nor torch (for ONNX: only ``onnxruntime``). No pickle: ONNX
is a protobuf, TorchScript a zip of code and tensors.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from sparkvision import extras
from sparkvision.errors import ExportError, InvalidParameterError
from sparkvision.models.preprocess import normalize

#: What an exported graph can return: softmax probabilities or raw logits, float32 (N, K).
OUTPUTS = ("probability", "logits")
FORMATS = ("onnx", "torchscript")
INPUT_NAME = "image"
ONNX_OPSET = 17
#: Packages the ONNX path needs: the exporter (``onnx``) and the runtime (``onnxruntime``).


class ServingModule(nn.Module):
    """uint8 (N, H, W, C) images → float32 (N, K) probabilities or logits.

    Puts ``net`` in eval mode and freezes its parameters (a served graph needs no
    gradients; a traced module's outputs then do not require grad). Probabilities are
    softmax(logits / ``temperature``) (the model's calibration; 1 adds no division)."""

    def __init__(self, net: nn.Module, output: str = "probability",
                 mean: Sequence[float] = (), std: Sequence[float] = (),
                 temperature: float = 1.0) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise InvalidParameterError("output", output, f"use one of {', '.join(OUTPUTS)}")
        self.net = net.eval().requires_grad_(False)
        self.output = output
        self.mean, self.std = tuple(mean), tuple(std)  # the model's normalisation
        if not temperature > 0:
            raise InvalidParameterError("temperature", temperature, "use a value > 0")
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.net(normalize(image.permute(0, 3, 1, 2), self.mean, self.std))
        if self.output != "probability":
            return logits
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)


def missing_onnx_packages(runtime: bool = True) -> list[str]:
    """The packages of the ONNX path that cannot be imported here (without importing them)."""
    return extras.missing_modules("onnx", ("onnx", "onnxruntime") if runtime else ("onnx",))


def require_onnx(what: str, runtime: bool = True) -> None:
    """Raise MissingDependencyError naming the ``onnx`` extra when a package is missing."""
    missing = missing_onnx_packages(runtime)
    if missing:
        raise extras.missing_error("onnx", what, f"{', '.join(missing)} not installed")


def _example(image_shape: tuple[int, int, int]) -> torch.Tensor:
    h, w, c = (int(v) for v in image_shape)
    return torch.zeros((2, h, w, c), dtype=torch.uint8)


def onnx_bytes(
    net: nn.Module,
    image_shape: tuple[int, int, int],
    output: str = "probability",
    *,
    name: str = "",
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    temperature: float = 1.0,
) -> bytes:
    """The network as an ONNX model (opset 17, dynamic batch axis): input ``image`` uint8
    (N, H, W, C), output named ``output``. ``name`` names the network in errors."""
    require_onnx("ONNX export", runtime=False)
    module = ServingModule(copy.deepcopy(net), output, mean, std, temperature)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation
            torch.onnx.export(
                module, (_example(image_shape),), cast(Any, buf), dynamo=False,
                input_names=[INPUT_NAME], output_names=[output],
                dynamic_axes={INPUT_NAME: {0: "n"}, output: {0: "n"}},
                opset_version=ONNX_OPSET, do_constant_folding=True,
            )
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the network's
        raise _export_error(name or type(net).__name__, "ONNX", "torch.onnx", exc,
                            "export it with format='torchscript', or predict with "
                            "inferenceBackend='torch'") from exc
    return buf.getvalue()


def torchscript_bytes(
    net: nn.Module,
    image_shape: tuple[int, int, int],
    output: str = "probability",
    *,
    name: str = "",
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    temperature: float = 1.0,
) -> bytes:
    """The network as a traced TorchScript module (``torch.jit.load`` reads it back): input
    uint8 (N, H, W, C), output float32 (N, K) ``output``."""
    module = ServingModule(copy.deepcopy(net), output, mean, std, temperature)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            traced = torch.jit.trace(module, (_example(image_shape),), check_trace=False)
            torch.jit.save(traced, buf)
    except Exception as exc:  # noqa: BLE001 - any tracer failure is the network's
        raise _export_error(name or type(net).__name__, "TorchScript", "torch.jit.trace", exc,
                            "export it with format='onnx' if torch.onnx can") from exc
    return buf.getvalue()


def _export_error(label: str, fmt: str, tool: str, exc: Exception, fix: str) -> ExportError:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return ExportError(
        f"network {label!r} cannot be exported to {fmt} by {tool} "
        f"({type(exc).__name__}: {first}): {fix}"
    )
