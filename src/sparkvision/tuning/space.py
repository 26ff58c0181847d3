"""Search spaces over ``ImageClassifier`` Params, parsed and checked before any Spark job.

A space is a JSON object mapping Param names to one of:
``[v1, v2, ...]`` (choices), ``{"uniform": [lo, hi]}``, ``{"log": [lo, hi]}`` (log-uniform,
lo > 0), ``{"int": [lo, hi]}`` (integers, optional ``"step"``), ``{"int_log": [lo, hi]}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparkvision.errors import InvalidParameterError
from sparkvision.settings import TrainSettings, rows

_ROWS = {r.param: r for r in rows(TrainSettings) if r.setting.tunable}
#: Params a space may search: the rows of ``TrainSettings`` marked tunable (what changes
#: training, not data plumbing).
TUNABLE = tuple(_ROWS)
RANGE_KINDS = ("uniform", "log", "int", "int_log")
_INT_PARAMS = {name for name, r in _ROWS.items() if r.base_type is int}


@dataclass(frozen=True)
class Dimension:
    """One searched Param: choices, or a numeric range."""

    name: str
    kind: str  # "choice" | one of RANGE_KINDS
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: int | None = None

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this Param."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind in ("int", "int_log"):
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=self.step or 1, log=self.kind == "int_log")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")


def _bad(name: str, value: Any, fix: str) -> InvalidParameterError:
    return InvalidParameterError(f"space[{name!r}]", value, fix)


def _check_value(name: str, value: Any) -> Any:
    """A choice must fit the Param's type (as its default does) and pass its own check."""
    from sparkvision.ml.classifier import ImageClassifier

    default = _ROWS[name].default
    if isinstance(default, bool) or value is None or isinstance(value, (list, dict)):
        raise _bad(name, value, "give plain numbers or strings")
    if name in _INT_PARAMS and not (isinstance(value, int) and not isinstance(value, bool)):
        raise _bad(name, value, f"{name} takes integers")
    if isinstance(default, float) and not isinstance(value, (int, float)):
        raise _bad(name, value, f"{name} takes numbers")
    if isinstance(default, str) and not isinstance(value, str):
        raise _bad(name, value, f"{name} takes strings")
    try:
        ImageClassifier(**{name: value}).validateParams()
    except InvalidParameterError as exc:
        raise _bad(name, value, f"not a valid {name}: {exc.fix}") from None
    return value


def _dimension(name: str, spec: Any) -> Dimension:
    if name not in TUNABLE:
        raise _bad(name, spec, f"not a tunable ImageClassifier Param; use one of "
                               f"{', '.join(TUNABLE)}")
    if isinstance(spec, list):
        if not spec:
            raise _bad(name, spec, "give at least one choice")
        values = tuple(_check_value(name, v) for v in spec)
        if len(set(values)) != len(values):
            raise _bad(name, spec, "choices must be distinct")
        return Dimension(name, "choice", choices=values)
    if not isinstance(spec, dict) or len(set(spec) & set(RANGE_KINDS)) != 1 or (
            set(spec) - set(RANGE_KINDS) - {"step"}):
        raise _bad(name, spec, 'give a list of choices or one of {"uniform": [lo, hi]}, '
                               '{"log": [lo, hi]}, {"int": [lo, hi]}, {"int_log": [lo, hi]}')
    kind = next(k for k in RANGE_KINDS if k in spec)
    bounds = spec[kind]
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)):
        raise _bad(name, spec, f'give two numbers: {{"{kind}": [low, high]}}')
    low, high = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _bad(name, spec, f"low must be below high (got low={bounds[0]}, high={bounds[1]})")
    if kind in ("log", "int_log") and low <= 0:
        raise _bad(name, spec, "a log range needs low > 0")
    if kind.startswith("int"):
        if name not in _INT_PARAMS or low != int(low) or high != int(high):
            raise _bad(name, spec, f"integer ranges are for {', '.join(sorted(_INT_PARAMS))}"
                                   " with integer bounds")
    elif _ROWS[name].base_type is str or name in _INT_PARAMS:
        raise _bad(name, spec, f"{name} is not a real number: use a list of choices"
                               + (' or {"int": [lo, hi]}' if name in _INT_PARAMS else ""))
    step = spec.get("step")
    if step is not None and (kind != "int" or not isinstance(step, int) or step < 1):
        raise _bad(name, spec, '"step" is a whole number >= 1 and goes with "int"')
    for bound in (low, high):
        _check_value(name, int(bound) if kind.startswith("int") else bound)
    return Dimension(name, kind, low=low, high=high, step=step)


def parse_space(text: str | dict[str, Any]) -> list[Dimension]:
    """A space from a dict, inline JSON text or the path of a JSON file."""
    if isinstance(text, dict):
        raw: Any = text
    else:
        source = text
        path = Path(text)
        if not text.lstrip().startswith("{") and path.is_file():
            source = path.read_text(encoding="utf-8")
        try:
            raw = json.loads(source)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(
                "space", text, f"not JSON ({exc.msg} at position {exc.pos}): give a JSON "
                'object like \'{"learningRate": {"log": [1e-4, 0.1]}}\' or a .json file'
            ) from None
    if not isinstance(raw, dict) or not raw:
        raise InvalidParameterError("space", text, "give a non-empty JSON object of Params")
    return [_dimension(name, spec) for name, spec in raw.items()]


def grid_of(space: list[Dimension]) -> dict[str, list[Any]]:
    """The grid of a space of choices (what Optuna's GridSampler takes)."""
    ranges = [d.name for d in space if d.kind != "choice"]
    if ranges:
        raise InvalidParameterError(
            "space", {d.name: d.kind for d in space if d.kind != "choice"},
            f"strategy grid needs a list of choices for every Param ({', '.join(ranges)} "
            "are ranges): list the values, or use --strategy random or bayes")
    return {d.name: list(d.choices) for d in space}


def grid_size(space: list[Dimension]) -> int:
    return math.prod(len(values) for values in grid_of(space).values())
