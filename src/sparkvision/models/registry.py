"""Build an ``nn.Module`` from a name: a built-in network or ``package.module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sparkvision.errors import InvalidParameterError, ModelBuildError, SparkVisionError
from sparkvision.models.zoo import (  # noqa: F401 - re-exported
    ONNX_PREFIX,
    TIMM_PREFIX,
    TORCHVISION_PREFIX,
    is_zoo_name,
    timm_builder,
)

MODEL_NAMES = ("cnn", "simple_cnn", "lenet5", "resnet8")
#: ``dp:NAME``: the network NAME made trainable with differential privacy by Opacus
#: (batch norm → group norm); what a model trained with privacy="dp" records
DP_PREFIX = "dp:"


def runs_user_code(name: str) -> bool:
    """Whether building the network ``name`` imports code the name points at (a model
    folder naming one needs trust_code)."""
    base = name[len(DP_PREFIX):] if name.startswith(DP_PREFIX) else name
    return base not in MODEL_NAMES and not is_zoo_name(base)


def private_network(net, name: str = ""):
    """``net`` with the layers Opacus cannot train privately replaced where it knows how
    (batch norm → group norm); ``InvalidParameterError`` listing what it cannot fix."""
    from sparkvision.extras import import_from

    import_from("privacy", "opacus.validators", "privacy='dp'")
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(net) if not ModuleValidator.is_valid(net) else net
    errors = (ModuleValidator.validate(fixed, strict=False)
              + GradSampleModule.validate(fixed, strict=False))
    if errors:
        raise InvalidParameterError(
            "privacy", "dp", f"Opacus cannot make the network {name!r} private: "
            + "; ".join(str(e).strip().splitlines()[0][:160] for e in errors[:2])
            + "; use a network of standard layers (Conv, Linear, GroupNorm/LayerNorm, "
            "activations, pooling)")
    return fixed


def _builders() -> dict[str, Callable[..., Any]]:
    from sparkvision.models import networks

    return {
        "cnn": networks.small_cnn,
        "simple_cnn": networks.simple_cnn,
        "lenet5": networks.lenet5,
        "resnet8": networks.resnet8,
    }


def validate_model_name(name: str, input_shape: tuple[int, int, int] | None = None) -> str:
    """Check a model name on the driver, before any job (built-in and import-path names
    without importing torch). A zoo name (``timm:``, ``torchvision:``, ``onnx:``): its
    package importable and the architecture known; with a full ``input_shape`` (H, W, C)
    also one forward pass of zeros, so an input size the network cannot take fails here."""
    if name in MODEL_NAMES:
        return name
    if name.startswith(DP_PREFIX):
        validate_model_name(name[len(DP_PREFIX):], input_shape)
        return name
    if is_zoo_name(name):
        from sparkvision.models.zoo import check_input_size, check_zoo_name

        check_zoo_name(name)
        if input_shape is not None and len(input_shape) == 3 and min(input_shape) >= 1:
            h, w, c = (int(v) for v in input_shape)
            check_input_size(name, (h, w, c))
        return name
    if ":" in name and all(part for part in name.split(":", 1)):
        return name
    raise InvalidParameterError(
        "model",
        name,
        f"use one of {', '.join(MODEL_NAMES)}, timm:ARCHITECTURE, torchvision:NAME, "
        "onnx:FILE, or an import path 'package.module:function' "
        "whose function builds an nn.Module from (num_classes, input_shape)",
    )


def check_user_network(name: str) -> str:
    """For a network given as an import path (``package.module:function``, also behind
    ``dp:``): the module imports here and has that callable, else ``InvalidParameterError``
    naming ``model`` (``resolve_user_builder``: the check a Spark task makes when it builds
    the network, made on the driver before any job, and before the JVM starts from the
    CLI). Other names pass untouched (``validate_model_name`` checks them). Imports the
    user's module, not torch."""
    if runs_user_code(name):
        resolve_user_builder(name.removeprefix(DP_PREFIX))
    return name


def resolve_user_builder(path: str) -> Callable[..., Any]:
    module_name, func_name = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidParameterError(
            "model", path, f"module {module_name!r} cannot be imported ({exc}); install it "
            "on the driver and every executor"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise InvalidParameterError(
            "model", path, f"{module_name!r} has no callable {func_name!r}"
        )
    return func


def build_model(name: str, num_classes: int, input_shape: tuple[int, int, int]):
    """Return an ``nn.Module`` mapping (N, C, H, W) float tensors to (N, num_classes) logits.

    ``input_shape`` is (height, width, channels) as in ``dataset.json``.
    """
    validate_model_name(name)
    if name.startswith(DP_PREFIX):
        return private_network(build_model(name[len(DP_PREFIX):], num_classes, input_shape),
                               name[len(DP_PREFIX):])
    if is_zoo_name(name):
        from sparkvision.models.zoo import zoo_builder

        builder = zoo_builder(name)
    else:
        builder = _builders().get(name) or resolve_user_builder(name)
    try:
        model = builder(num_classes=num_classes, input_shape=tuple(input_shape))
    except SparkVisionError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's builder: say whose, keep the cause
        where = " inside a Spark task" if _in_spark_task() else ""
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelBuildError(
            f"the network builder model={name!r} raised{where}: {type(exc).__name__}: "
            f"{first}; fix the function (it gets num_classes={num_classes}, "
            f"input_shape={tuple(input_shape)}) or use one of {', '.join(MODEL_NAMES)}"
        ) from exc
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise InvalidParameterError(
            "model", name, f"the builder returned {type(model).__name__}, not an nn.Module"
        )
    return model


def _in_spark_task() -> bool:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return False
    return TaskContext.get() is not None
