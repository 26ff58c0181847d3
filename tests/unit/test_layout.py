"""The layered layout: imports point one way (cli → tuning → ml → training/inference/
evaluation → session → models/data → errors/config), and no module imports another's
private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sparkvision"

#: Layer of each top-level module or package of sparkvision (the README's map). An import
#: may point to a lower layer or stay inside its own unit; same-layer units stay apart.
LAYERS = {
    "errors": 0, "display": 0, "extras": 0.1, "settings": 0.2, "config": 0.3, "storage": 0.5,
    "checks": 0.6,
    "models": 1, "data": 1,
    "session": 2,
    "training": 3, "inference": 3, "evaluation": 3, "tracking": 3,
    "ml": 4,
    "tuning": 5, "streaming": 5, "reporting": 5, "explaining": 5, "auditing": 5,
    "cli": 6,
    "__init__": 7, "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("sparkvision",) + tuple(p for p in parts if p != "__init__"))


def _unit(module: str) -> str:
    """``sparkvision.ml.model`` → ``ml``; the package root → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _targets(node: ast.AST, package: str) -> list[tuple[str, list[str]]]:
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [a.name for a in node.names]
        if base == "sparkvision":  # `from sparkvision import ml` imports a unit
            return [(f"sparkvision.{n}" if n in LAYERS else base, []) for n in names]
        return [(base, names)]
    return []


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every upward import and private-name import in ``source`` (module ``module``)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    own = _unit(module)
    found = []
    for node in ast.walk(ast.parse(source)):  # lazy imports inside functions too
        for target, names in _targets(node, package):
            if target != "sparkvision" and not target.startswith("sparkvision."):
                continue
            other = _unit(target)
            if other != own and LAYERS[other] >= LAYERS[own]:
                found.append(f"line {node.lineno}: {own} (layer {LAYERS[own]}) imports "
                             f"{target} (layer {LAYERS[other]}): imports must point down")
            if target == module:
                continue
            private = [n for n in names if n.startswith("_")]
            private += [p for p in target.split(".")[1:] if p.startswith("_")]
            if private:
                found.append(f"line {node.lineno}: imports private {private} of {target}")
    return found


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in _modules()}
    assert units <= set(LAYERS), f"add {units - set(LAYERS)} to LAYERS and the README map"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down_and_avoid_private_names(path):
    found = violations(path.read_text(encoding="utf-8"), _module_name(path),
                       path.name == "__init__.py")
    assert not found, f"{path.relative_to(SRC)}: " + "; ".join(found)


def test_the_checker_reports_what_it_should():
    bad = (
        "from sparkvision.ml.model import ImageClassificationModel\n"  # data → ml: up
        "def f():\n    from sparkvision.data.prepare import _folder_frame\n"  # private name
        "from sparkvision.cli import common\n"  # up
    )
    found = violations(bad, "sparkvision.data.loading")
    assert len(found) == 3, found
    ok = ("from sparkvision.errors import DataError\nfrom sparkvision.data.schema import x\n"
          "from sparkvision.data import _private_of_own_unit_module\n")
    assert len(violations(ok, "sparkvision.data.loading")) == 1  # private names still count
    assert violations("from sparkvision.training.loop import x", "sparkvision.inference.batch")
