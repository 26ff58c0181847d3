"""A network's parts for transfer learning: its classifier head, its backbone (the rest),
the features the head reads, and which weights of another network can start it.

The head is the module ``get_classifier()`` returns (timm networks and others that follow
its convention), else the last module with weights when it is an ``nn.Linear`` giving one
output per class (every built-in network). Everything else is the backbone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from sparkvision.errors import InvalidParameterError


def head_name(net: nn.Module, num_classes: int, param: str = "freeze") -> str:
    """The qualified name of ``net``'s classifier head; ``InvalidParameterError`` naming
    ``param`` when there is none to recognise."""
    names = {id(m): n for n, m in net.named_modules()}
    get = getattr(net, "get_classifier", None)
    if callable(get):
        head = get()
        if isinstance(head, nn.Module) and id(head) in names and names[id(head)]:
            return names[id(head)]
    with_weights = [(n, m) for n, m in net.named_modules()
                    if n and any(True for _ in m.parameters(recurse=False))]
    if with_weights:
        name, last = with_weights[-1]
        if isinstance(last, nn.Linear) and last.out_features == num_classes:
            return name
        found = f"its last layer with weights is {name!r} ({type(last).__name__})"
    else:
        found = "it has no layer with weights"
    raise InvalidParameterError(
        param, "backbone" if param == "freeze" else param,
        f"the network has no recognisable backbone/head split: {found}, not an nn.Linear "
        f"with one output per class ({num_classes}) or a get_classifier() method; use "
        "--freeze none, or a network whose last layer is its classifier")


def is_head_key(key: str, head: str) -> bool:
    """Whether state-dict ``key`` belongs to the module named ``head``."""
    return key == head or key.startswith(head + ".")


def backbone_modules(net: nn.Module, head: str) -> list[nn.Module]:
    """The leaf modules outside the head (what ``freeze`` holds still)."""
    return [m for n, m in net.named_modules()
            if n and not is_head_key(n, head) and not any(True for _ in m.children())]


def freeze_backbone(net: nn.Module, head: str) -> int:
    """Stop gradients to every backbone parameter; return how many tensors were frozen."""
    frozen = 0
    for name, p in net.named_parameters():
        if not is_head_key(name, head):
            p.requires_grad_(False)
            frozen += 1
    return frozen


def hold_backbone_still(net: nn.Module, head: str) -> None:
    """Put the backbone in eval mode (after ``net.train()``): a frozen backbone's batch-norm
    statistics stay as they were and its dropout is off, so its state stays bit-identical."""
    for module in backbone_modules(net, head):
        module.eval()


def parameter_groups(net: nn.Module, head: str, backbone_lr_scale: float) -> list[dict]:
    """Optimizer groups: the head first (full learning rate), then the trainable backbone
    parameters at ``backbone_lr_scale`` times it (``lr_scale`` in each group)."""
    head_params: list[nn.Parameter] = []
    backbone_params: list[nn.Parameter] = []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (head_params if is_head_key(name, head) else backbone_params).append(p)
    groups = [{"params": head_params, "lr_scale": 1.0}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr_scale": float(backbone_lr_scale)})
    return groups


@contextmanager
def capture_features(net: nn.Module, layer: str = "", num_classes: int | None = None
                     ) -> Iterator[list[torch.Tensor]]:
    """While active, each forward pass of ``net`` appends one (N, D) float tensor to the
    yielded list: the input of the classifier head (``layer=""``, the penultimate features)
    or the output of the module named ``layer``, flattened per image."""
    modules = dict(net.named_modules())
    out: list[torch.Tensor] = []
    if layer:
        if layer not in modules or not layer:
            known = [n for n in modules if n][:12]
            raise InvalidParameterError(
                "layer", layer, f"the network has no module of that name; use one of "
                f"{known}{' ...' if len(modules) > 13 else ''} (names from named_modules())")

        def hook(_m, _inputs, output):
            out.append(torch.flatten(output, 1).detach())
        handle = modules[layer].register_forward_hook(hook)
    else:
        head = head_name(net, num_classes or -1, param="layer")

        def pre_hook(_m, inputs):
            out.append(torch.flatten(inputs[0], 1).detach())
        handle = modules[head].register_forward_pre_hook(pre_hook)
    try:
        yield out
    finally:
        handle.remove()


@dataclass
class InitReport:
    """What starting weights did to a network (recorded in the training history as
    ``training.history.InitRecord``)."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    head_reinitialised: bool = False

    def problems(self) -> list[str]:
        """The keys that did not load, by kind (empty when everything fit)."""
        parts = []
        for label, keys in (("missing (kept as initialised)", self.missing),
                            ("unexpected (ignored)", self.unexpected),
                            ("shape-mismatched (kept as initialised)", self.shape_mismatched)):
            if keys:
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:6])}"
                             f"{' ...' if len(keys) > 6 else ''}")
        return parts

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded from {self.source}", *self.problems()]
        if self.head_reinitialised:
            parts.append("classifier head re-initialised")
        return "; ".join(parts)


def starting_state(net: nn.Module, state: dict[str, torch.Tensor], source: str,
                   strict: bool, param: str, drop: tuple[str, ...] = ()
                   ) -> tuple[dict[str, torch.Tensor], InitReport]:
    """The tensors of ``state`` that fit ``net`` (same key, same shape), less the keys of
    the modules named in ``drop``; and a report. ``strict``: any missing, unexpected or
    shape-mismatched key is an ``InvalidParameterError`` naming ``param``."""
    own = net.state_dict()
    report = InitReport(source=source, head_reinitialised=bool(drop))
    kept: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(is_head_key(key, d) for d in drop):
            continue
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(tensor.shape):
            report.shape_mismatched.append(
                f"{key} {tuple(tensor.shape)} != {tuple(own[key].shape)}")
        else:
            kept[key] = tensor
    report.missing = sorted(k for k in own if k not in kept and k not in state
                            and not any(is_head_key(k, d) for d in drop))
    report.unexpected.sort()
    report.shape_mismatched.sort()
    report.loaded = len(kept)
    if strict and report.problems():
        raise InvalidParameterError(
            param, source, "the weights do not fit the network: "
            + "; ".join(report.problems()) + "; give weights of this network, or load what "
            "fits with --init-strict false (initStrict=False)")
    if not kept:
        raise InvalidParameterError(
            param, source, "no tensor in it fits the network (no key with the same name "
            "and shape): the weights belong to another architecture or input size")
    return kept, report
