"""Driver side of transfer learning: the starting weights a training ships to its workers
(from a safetensors file, one of our model folders, or ``pretrained`` weights as timm and
torchvision save them) and the checks of ``freeze`` and ``backboneLrScale``, all before any
Spark job runs."""

from __future__ import annotations

import io
import posixpath
import sys
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


#: the weights files of a Hugging Face hub snapshot, in the order timm's
#: ``load_state_dict_from_hf`` tries them
HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors",
                    "open_clip_pytorch_model.bin")
_PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")


def _hf_weights_file(folder: str) -> str:
    """The weights file in a Hugging Face hub folder, read as files (never contacting the
    hub, as with HF_HUB_OFFLINE=1): a snapshot folder holding model.safetensors /
    pytorch_model.bin, a ``models--ORG--NAME`` cache folder (its refs/main snapshot, else
    one holding weights), or a hub cache holding exactly one such folder."""
    from sparkvision import storage

    names = storage.listdir(folder)
    for name in HF_WEIGHTS_FILES:
        if name in names:
            return posixpath.join(folder, name)
    if "snapshots" in names:
        snapshots = posixpath.join(folder, "snapshots")
        ref = posixpath.join(folder, "refs", "main")
        wanted = storage.read_text(ref).strip() if storage.isfile(ref) else ""
        found = storage.listdir(snapshots)
        order = ([wanted] if wanted in found else []) + sorted(found, reverse=True)
        for snap in order:
            path = posixpath.join(snapshots, snap)
            if any(n in storage.listdir(path) for n in HF_WEIGHTS_FILES):
                return _hf_weights_file(path)
    repos = [n for n in names if n.startswith("models--")]
    if len(repos) == 1:
        return _hf_weights_file(posixpath.join(folder, repos[0]))
    which = (f"it holds {len(repos)} models ({', '.join(repos[:6])}): give the folder of "
             "one" if repos else f"none of {', '.join(HF_WEIGHTS_FILES)} is in it, nor a "
             "snapshots/ or models--ORG--NAME folder: give the folder of a hub snapshot")
    raise InvalidParameterError(
        "pretrained", folder, f"not a Hugging Face model folder: {which} (e.g. "
        "~/.cache/huggingface/hub/models--timm--resnet18.a1_in1k)")


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
    """The state dict in a loaded checkpoint: itself, or under state_dict / model / ...;
    a ``module.`` prefix (saved from DDP) removed."""
    import torch

    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor)
                                             for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)),
                         None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj:
        raise InvalidParameterError(
            "pretrained", path, f"holds a {type(obj).__name__}, not a state dict: save "
            "net.state_dict() (safetensors.torch.save_file or torch.save)")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_pretrained(path: str) -> tuple[dict[str, Any], str]:
    """(the state dict of the ``pretrained`` weights, the file it came from): a .safetensors
    file, a .pth/.pt/.bin state dict read with ``torch.load(weights_only=True)`` (a file
    holding code or other pickled objects is refused), or a Hugging Face hub folder."""
    import torch

    from sparkvision.models.weights import load_state_dict_bytes

    if storage.isdir(path):
        file = _hf_weights_file(path)
    elif storage.isfile(path):
        file = path
    else:
        raise InvalidParameterError(
            "pretrained", path, "no such file or folder: give a .safetensors or .pth state "
            "dict, or a Hugging Face hub folder (models--timm--NAME)")
    data = storage.read_bytes(file)
    if file.endswith(".safetensors"):
        try:
            return load_state_dict_bytes(data), file
        except Exception as exc:  # noqa: BLE001 - SafetensorError, ValueError, ...
            raise InvalidParameterError(
                "pretrained", file, f"not a readable safetensors file ({len(data)} bytes: "
                f"{str(exc)[:160]})") from None
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError (code, objects), a bad file
        raise InvalidParameterError(
            "pretrained", file, f"not loadable as plain tensors with "
            f"torch.load(weights_only=True) ({type(exc).__name__}): the file holds code or "
            "pickled objects, which are never unpickled, or is no torch file; convert it where "
            "you trust it with "
            "it with safetensors.torch.save_file(torch.load(PATH), 'weights.safetensors') "
            "and give that file") from None
    return _unwrap(obj, file), file


def check_pretrained(pretrained: str, init_weights: str = "", init_from: str = "") -> None:
    """The cheap driver-side checks of ``pretrained`` (before Spark starts): one source of
    starting weights, and a file or folder that is there (a Hugging Face folder holding a
    weights file). The weights themselves are read and fitted by ``starting_weights``."""
    if not pretrained:
        return
    if init_weights or init_from:
        raise InvalidParameterError(
            "pretrained", pretrained, f"give one source of starting weights: pretrained, or "
            f"{'initWeights' if init_weights else 'initFrom'}, not both")
    if storage.isdir(pretrained):
        _hf_weights_file(pretrained)
    elif not storage.isfile(pretrained):
        raise InvalidParameterError(
            "pretrained", pretrained, "no such file or folder: give a .safetensors or .pth "
            "state dict, or a Hugging Face hub folder (models--timm--NAME)")


def _timm_filtered(network: str, net: Any, state: dict[str, Any]) -> dict[str, Any]:
    """timm's own checkpoint filter of the architecture (what timm applies to its
    pretrained weights: e.g. a ViT's position embeddings resampled to this input size)."""
    from sparkvision.models.registry import DP_PREFIX, TIMM_PREFIX

    base = network[len(DP_PREFIX):] if network.startswith(DP_PREFIX) else network
    if not base.startswith(TIMM_PREFIX):
        return state
    fn = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    if not callable(fn):
        return state
    try:
        return dict(fn(state, net))
    except Exception:  # noqa: BLE001 - the filter does not apply; the checks below say why
        return state


def _adapt_input_conv(net: Any, state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """1-channel data with 3-channel pretrained weights: the first conv's weight summed
    over its input channels (timm's ``adapt_input_conv``); (state, the key adapted or '')."""
    from torch import nn

    first = next((n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    key = f"{first}.weight" if first is not None else ""
    own = net.state_dict().get(key)
    theirs = state.get(key)
    if (own is None or theirs is None or own.dim() != 4 or theirs.dim() != 4
            or own.shape[1] != 1 or theirs.shape[1] == 1
            or own.shape[0] != theirs.shape[0] or own.shape[2:] != theirs.shape[2:]):
        return state, ""
    summed = theirs.float().sum(dim=1, keepdim=True).to(theirs.dtype)
    return {**state, key: summed}, key


def _pretrained_state(net: Any, network: str, path: str, head: str
                      ) -> tuple[dict[str, Any], InitRecord, str]:
    """The tensors of the ``pretrained`` weights that start ``net`` (every one but the
    head's, each of which must fit), the record and its summary."""
    from sparkvision.models.parts import is_head_key, starting_state

    state, file = read_pretrained(path)
    state = _timm_filtered(network, net, state)
    state, adapted = _adapt_input_conv(net, state)
    skipped = sorted(k for k in state if is_head_key(k, head))
    new = sorted(k for k in net.state_dict() if is_head_key(k, head))
    try:
        kept, report = starting_state(net, state, path, False, "pretrained", (head,))
    except InvalidParameterError:
        kept, report = {}, None
    if report is None or report.problems():
        problems = "; ".join(report.problems()) if report is not None else (
            f"no tensor fits (its keys: {', '.join(sorted(state)[:6])} ...)")
        raise InvalidParameterError(
            "pretrained", path, f"the weights belong to another architecture than {network}: "
            f"{problems}; give weights saved from this architecture (only the classifier head "
            f"{head!r} is replaced)")
    summary = (f"{report.loaded} tensors loaded from {file}; skipped (the file's classifier "
               f"head): {', '.join(skipped) or 'none'}; new (initialised for this data): "
               f"{', '.join(new)}"
               + (f"; {adapted} summed over its input channels for 1-channel data"
                  if adapted else ""))
    init = InitRecord(source=report.source, loaded=report.loaded, missing=report.missing,
                      unexpected=report.unexpected, shape_mismatched=report.shape_mismatched,
                      head_reinitialised=True)
    return kept, init, summary


def starting_weights(network: str, classes: list[str], shape: tuple[int, int, int],
                     init_weights: str, init_from: str, strict: bool, freeze: str,
                     backbone_lr_scale: float, pretrained: str = ""
                     ) -> tuple[bytes, TransferRecord]:
    """(safetensors bytes of the tensors that start the network — empty for a fresh one —,
    what was done: the init report, the head, the frozen tensor count). Builds the network
    once on the driver; every error names the Param and the fix."""
    from safetensors.torch import save

    from sparkvision.models.parts import freeze_backbone, head_name, starting_state
    from sparkvision.models.registry import build_model, is_zoo_name, validate_model_name
    from sparkvision.models.weights import load_state_dict_bytes

    check_pretrained(pretrained, init_weights, init_from)
    base = network.split(":", 1)[1] if network.startswith("dp:") else network
    if is_zoo_name(base):  # an input size the network cannot take fails here
        validate_model_name(network, tuple(shape))  # type: ignore[arg-type]
    info = TransferRecord(freeze=freeze, backbone_lr_scale=backbone_lr_scale)
    needs_head = freeze != "none" or backbone_lr_scale != 1.0
    if not (init_weights or init_from or pretrained or needs_head):
        return b"", info
    net = build_model(network, len(classes), shape)
    if needs_head:
        head = head_name(net, len(classes), "freeze" if freeze != "none" else "backboneLrScale")
        frozen = freeze_backbone(net, head) if freeze == "backbone" else None
        info = replace(info, head=head, frozen_tensors=frozen)
    if pretrained:
        head = head_name(net, len(classes), "pretrained")
        kept, init, summary = _pretrained_state(net, network, pretrained, head)
        return save({k: v.contiguous() for k, v in kept.items()}), replace(
            info, head=head, init=init, init_summary=summary)
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
