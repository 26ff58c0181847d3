"""Saved folders of a trained network's Transformers — ``ImageClassificationModel`` and
``ImageFeaturizer`` — written and read one way:

    metadata/part-00000   pyspark's Params line (class, timestamp, sparkVersion, uid,
                          paramMap, defaultParamMap) + ``format`` and the weights' size and
                          SHA-256
    metadata/_SUCCESS
    weights.safetensors
    history.json          (a model's training history: any ``extra_files`` of the writer)

Every file is written atomically through :mod:`sparkvision.storage`, the metadata last, so a
folder with metadata is whole. The metadata line is the one pyspark's
``DefaultParamsWriter.saveMetadata`` writes and ``DefaultParamsReader.loadMetadata`` reads
(so ``PipelineModel`` finds a featurizer stage's class in it), built here from the public
``Params`` API and read with ``json``: those two run a Spark job through the Hadoop
filesystem, which needs a session (commands load and check a model before Spark starts)
and cannot reach every fsspec URL ``storage`` can (``memory://``, ``s3://`` without
hadoop-aws), so a folder here is written and read without Spark."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, cast

from pyspark.ml.param import Params
from pyspark.ml.util import DefaultParamsReader, MLReader, MLWriter

from sparkvision import storage
from sparkvision.errors import DataError, ModelLoadError, UntrustedCodeError

WEIGHTS_FILE = "weights.safetensors"
METADATA_DIR = "metadata"


@dataclass(frozen=True)
class FolderKind:
    """What one kind of saved folder is: its ``format`` (recorded in the metadata and
    checked on load) and its user-facing errors (``str.format`` templates with ``{path}``,
    ``{weights}`` and ``{found}``)."""

    format: str
    missing: str  # no weights file at the path
    exists: str  # something is saved there already (without overwrite)
    wrong_format: str  # the metadata names another format
    no_weights: str = ""  # refuse to save an instance without weights ("" saves it)


def params_metadata(instance: Params, extra: dict[str, Any]) -> str:
    """pyspark's ``DefaultParamsWriter`` metadata line for ``instance`` plus ``extra``:
    the Params set on it (``paramMap``) and the default of every Param that has one
    (``defaultParamMap``), found with the public ``Params`` API on a copy whose set Params
    are cleared."""
    import pyspark

    defaults = instance.copy()
    for param in defaults.params:
        if defaults.isSet(param):
            defaults.clear(param)
    metadata = {
        "class": f"{type(instance).__module__}.{type(instance).__name__}",
        "timestamp": int(round(time.time() * 1000)),
        "sparkVersion": pyspark.__version__,
        "uid": instance.uid,
        "paramMap": {p.name: instance.getOrDefault(p) for p in instance.params
                     if instance.isSet(p)},
        "defaultParamMap": {p.name: defaults.getOrDefault(p) for p in defaults.params
                            if defaults.hasDefault(p)},
        **extra,
    }
    return json.dumps(metadata, separators=(",", ":"))


def read_model_metadata(path: str) -> dict[str, Any]:
    """The metadata line of a saved folder: ``metadata/part-*`` as pyspark writes it (a
    folder saved by Spark's text writer reads the same)."""
    folder = storage.join(path, METADATA_DIR)
    parts = [n for n in storage.listdir(folder) if n.startswith("part-")]
    for name in parts:
        for line in storage.read_text(storage.join(folder, name)).splitlines():
            if line.strip():
                return json.loads(line)
    raise ModelLoadError(
        f"the model folder {path} has no {METADATA_DIR}/part-* file (its Params): copy the "
        "whole folder written by ImageClassificationModel.save or `sparkvision train --out`")


def weights_file(path: str, kind: FolderKind) -> str:
    """The weights file of the folder ``path``; DataError when there is none (cheap, no
    Spark: commands call it before starting a session)."""
    weights_path = storage.join(path, WEIGHTS_FILE)
    if not storage.exists(weights_path):
        raise DataError(kind.missing.format(path=path, weights=WEIGHTS_FILE))
    return weights_path


def write_folder(instance: Any, path: str, kind: FolderKind,
                 extra_files: dict[str, str] | None = None) -> None:
    """The folder of ``instance`` (Params + ``weights`` bytes): ``weights.safetensors``,
    ``extra_files`` (name → text), then ``metadata/part-00000`` (with ``format`` and the
    weights' size and SHA-256), each file atomically, the metadata last."""
    weights = instance.weights
    metadata = params_metadata(instance, {
        "format": kind.format,
        "weights": {"file": WEIGHTS_FILE, "bytes": len(weights),
                    "sha256": hashlib.sha256(weights).hexdigest()},
    })
    storage.makedirs(path)
    storage.write_bytes(storage.join(path, WEIGHTS_FILE), weights)
    for name, text in (extra_files or {}).items():
        storage.write_text(storage.join(path, name), text)
    storage.write_text(storage.join(path, METADATA_DIR, "part-00000"), metadata + "\n")
    storage.write_bytes(storage.join(path, METADATA_DIR, "_SUCCESS"), b"")


def load_folder(cls: type, path: str, kind: FolderKind, trust_code: bool) -> Any:
    """A ``cls`` instance from the folder ``path``, checked on the driver before any job:
    the format, the weights' size and SHA-256 against the metadata, the safetensors header
    and every tensor's shape against the network, and trust for a network named by an
    import path."""
    weights_path = weights_file(path, kind)
    metadata = read_model_metadata(path)
    found = metadata.get("format")
    if found != kind.format:
        raise DataError(kind.wrong_format.format(path=path, found=found))
    instance = cls()
    # pyspark has no public way to give a Params instance a saved uid: its own readers
    # (DefaultParamsReader.load) call _resetUid too.
    instance._resetUid(metadata["uid"])
    DefaultParamsReader.getAndSetParams(instance, metadata)
    instance.weights = storage.read_bytes(weights_path)
    check_saved_weights(path, weights_path, instance, metadata.get("weights"), trust_code)
    return instance


class FolderWriter(MLWriter):
    """``instance.write()``: the folder through :mod:`sparkvision.storage` (no Spark job, so
    the same on Spark Connect and on any filesystem), with the files ``extra_files``
    returns (none here)."""

    def __init__(self, instance: Any, kind: FolderKind) -> None:
        super().__init__()
        self.instance = instance
        self.kind = kind

    def _handleOverwrite(self, path: str) -> None:
        storage.remove(path)

    def saveImpl(self, path: str) -> None:
        if not self.shouldOverwrite and storage.exists(storage.join(path, METADATA_DIR)):
            raise DataError(self.kind.exists.format(path=path))
        if self.kind.no_weights and not self.instance.weights:
            raise DataError(self.kind.no_weights)
        write_folder(self.instance, path, self.kind, self.extra_files())

    def extra_files(self) -> dict[str, str]:
        """Files written beside the weights (name → text)."""
        return {}


class FolderReader(MLReader):
    """``cls.read()``: ``load_folder``; set ``trust_code`` to load a network named by an
    import path."""

    def __init__(self, cls: type, kind: FolderKind) -> None:
        super().__init__()
        self.cls = cls
        self.kind = kind
        self.trust_code = False

    def load(self, path: str) -> Any:
        return load_folder(self.cls, path, self.kind, self.trust_code)


class TrustedLoad:
    """``cls.load(path, trust_code=False)`` of a class whose ``read()`` is a
    ``FolderReader``."""

    @classmethod
    def load(cls, path: str, trust_code: bool = False) -> Self:
        """Load a folder (``save``), checked on the driver before any job: the weights' size
        and SHA-256 against the saved metadata, the safetensors header, every tensor's shape
        against the network. A network named by an import path (``pkg.mod:fn``) runs that
        code, so it needs ``trust_code=True`` (or ``SPARKVISION_TRUST_CODE=1``)."""
        reader = cls.read()
        reader.trust_code = trust_code
        return cast(Self, reader.load(path))

    if TYPE_CHECKING:  # each class defines it
        @classmethod
        def read(cls) -> FolderReader: ...


def check_saved_weights(path: str, weights_path: str, model: Any,
                        recorded: dict[str, Any] | None, trust_code: bool) -> None:
    """Refuse damaged, tampered or mismatched weights, and untrusted code (driver side).
    ``model``: anything with ``weights``, ``numClasses`` and the ``model``/``imageShape``
    Params (a model, a featurizer)."""
    from sparkvision.models.registry import runs_user_code
    from sparkvision.models.weights import check_weights

    data = model.weights
    if recorded:
        if len(data) != recorded.get("bytes"):
            raise ModelLoadError(
                f"{weights_path} has {len(data)} bytes but the model was saved with "
                f"{recorded.get('bytes')}: the file is truncated or was replaced; copy the "
                "model folder again or re-train it")
        if hashlib.sha256(data).hexdigest() != recorded.get("sha256"):
            raise ModelLoadError(
                f"{weights_path} does not match the SHA-256 recorded when the model was saved "
                "(the file was modified): restore the original or re-train the model")
    name = model.getOrDefault(model.model)
    trusted = trust_code or os.environ.get("SPARKVISION_TRUST_CODE", "") in ("1", "true")
    if runs_user_code(name) and not trusted:
        raise UntrustedCodeError(
            f"the model at {path} uses the network {name!r}, code that loading would import "
            "and run: pass --trust-code (trust_code=True, or SPARKVISION_TRUST_CODE=1) if "
            "you trust that module")
    check_weights(data, name, model.numClasses,
                  tuple(model.getOrDefault(model.imageShape)),
                  weights_path)
