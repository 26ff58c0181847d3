"""Driver side of transfer learning: the starting weights a training ships to its workers
(from a safetensors file or one of our model folders) and the checks of ``freeze`` and
``backboneLrScale``, all before any Spark job runs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sparkvision import storage
from sparkvision.errors import InvalidParameterError, SparkVisionError
from sparkvision.training.history import InitRecord, TransferRecord


def _read_safetensors(path: str) -> dict[str, Any]:
    from safetensors import SafetensorError

    from sparkvision.models.weights import load_state_dict_bytes

    if not storage.isfile(path):
        raise InvalidParameterError(
            "initWeights", path, "no such file: give a .safetensors state dict (e.g. the "
            "weights.safetensors of a model folder, or a file saved with "
            "safetensors.torch.save_file(net.state_dict(), PATH))")
    data = storage.read_bytes(path)
    try:
        return load_state_dict_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidParameterError(
            "initWeights", path, f"not a readable safetensors file ({len(data)} bytes: "
            f"{exc}); give a state dict saved with safetensors (pickled .pt/.pth files are "
            "not loaded: convert them with safetensors.torch.save_file)") from None


def _source_model(path: str, network: str):
    """The model saved at ``path`` (``InvalidParameterError`` naming initFrom when it is not
    one); its code is trusted only when it is the network this training runs anyway."""
    from sparkvision.ml.model import ImageClassificationModel
    from sparkvision.models.registry import runs_user_code

    if not storage.isdir(path):
        raise InvalidParameterError(
            "initFrom", path, "no such folder: give a model folder written by "
            "`sparkvision train --out` (or ImageClassificationModel.save)")
    try:
        return ImageClassificationModel.load(path, trust_code=runs_user_code(network))
    except SparkVisionError as exc:
        raise InvalidParameterError(
            "initFrom", path, f"not a sparkvision model folder ({exc}); give a folder written "
            "by `sparkvision train --out`") from None


def saved_network(path: str) -> str:
    """The network name a model folder was trained with (for ``--init-from`` without
    ``--model``)."""
    from sparkvision.ml.model import read_model_metadata

    try:
        return str(read_model_metadata(path)["paramMap"]["model"])
    except (SparkVisionError, KeyError, OSError, ValueError):
        raise InvalidParameterError(
            "init-from", path, "not a sparkvision model folder (no readable metadata/); "
            "give a folder written by `sparkvision train --out`") from None


def starting_weights(network: str, classes: list[str], shape: tuple[int, int, int],
                     init_weights: str, init_from: str, strict: bool, freeze: str,
                     backbone_lr_scale: float) -> tuple[bytes, TransferRecord]:
    """(safetensors bytes of the tensors that start the network — empty for a fresh one —,
    what was done: the init report, the head, the frozen tensor count). Builds the network
    once on the driver; every error names the Param and the fix."""
    from safetensors.torch import save

    from sparkvision.models.parts import freeze_backbone, head_name, starting_state
    from sparkvision.models.registry import build_model
    from sparkvision.models.weights import load_state_dict_bytes

    info = TransferRecord(freeze=freeze, backbone_lr_scale=backbone_lr_scale)
    needs_head = freeze != "none" or backbone_lr_scale != 1.0
    if not (init_weights or init_from or needs_head):
        return b"", info
    net = build_model(network, len(classes), shape)
    if needs_head:
        head = head_name(net, len(classes), "freeze" if freeze != "none" else "backboneLrScale")
        frozen = freeze_backbone(net, head) if freeze == "backbone" else None
        info = replace(info, head=head, frozen_tensors=frozen)
    if not (init_weights or init_from):
        return b"", info
    if init_weights:
        state = _read_safetensors(init_weights)
        kept, report = starting_state(net, state, init_weights, strict, "initWeights")
    else:
        source = _source_model(init_from, network)
        found = source.getOrDefault(source.model)
        if found != network:
            raise InvalidParameterError(
                "initFrom", init_from, f"that model is a {found!r} network, not {network!r}: "
                f"set model={found!r} (the CLI takes it from the folder when --model is not "
                "given)")
        same = list(source.getOrDefault(source.classes)) == list(classes)
        drop = () if same else (head_name(net, len(classes), "initFrom"),)
        try:
            kept, report = starting_state(net, load_state_dict_bytes(source.weights),
                                          init_from, strict, "initFrom", drop)
        except InvalidParameterError as exc:
            raise InvalidParameterError(
                "initFrom", init_from, f"{exc.fix} (that model was trained on images "
                f"{tuple(source.getOrDefault(source.imageShape))}; this data is {shape}: "
                "prepare it at the same --image-size and --channels)") from None
    init = InitRecord(source=report.source, loaded=report.loaded, missing=report.missing,
                      unexpected=report.unexpected, shape_mismatched=report.shape_mismatched,
                      head_reinitialised=report.head_reinitialised)
    return save(kept), replace(info, init=init, init_summary=report.summary())
