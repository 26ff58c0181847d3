"""Drift alarms of ``sparkvision stream``: every micro-batch's predicted rows (their
prediction, confidence and pixel statistics, already on the driver when the batch is
published) are counted in the bins of the model's reference profile, and the last
``window`` micro-batches together are compared with it (``evaluation/drift.py``: PSI per
feature, and the chi-square test's p-value). The drift score of a window is its largest
PSI; the window warns when a feature's PSI is over the threshold and its p-value under
``ALPHA``."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sparkvision.errors import InvalidParameterError
from sparkvision.evaluation.drift import ALPHA, DriftProfile, chi2_p_value, psi

log = logging.getLogger(__name__)

#: Defaults of ``--drift-threshold`` (PSI: > 0.2 is the usual "shifted") and
#: ``--drift-window`` (micro-batches per window).
DEFAULT_THRESHOLD = 0.2
DEFAULT_WINDOW = 3


@dataclass(frozen=True)
class DriftSettings:
    """How a stream watches drift: ``reference`` replaces the model's own profile (None:
    the model folder's ``drift_profile.json``); ``enabled=False`` turns it off."""

    threshold: float = DEFAULT_THRESHOLD
    window: int = DEFAULT_WINDOW
    reference: DriftProfile | None = None
    enabled: bool = True

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise InvalidParameterError("drift_threshold", self.threshold,
                                        "use a PSI > 0 (0.2 is the usual rule of thumb)")
        if self.window < 1:
            raise InvalidParameterError("drift_window", self.window, "use 1 or more")


@dataclass(frozen=True)
class DriftWindow:
    """The drift of the window ending at micro-batch ``batch``."""

    batch: int
    batches: list[int]  # the micro-batches of the window
    rows: int
    psi: dict[str, float]  # per feature
    p_value: dict[str, float]  # per feature (chi-square test against the reference)
    score: float  # the largest PSI
    feature: str  # the feature with the largest PSI
    warning: bool
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _column(table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


class DriftMonitor:
    """The windows of one stream against one reference profile."""

    def __init__(self, profile: DriftProfile, threshold: float = DEFAULT_THRESHOLD,
                 window: int = DEFAULT_WINDOW) -> None:
        self.profile = profile
        self.threshold = threshold
        self.window = window
        self._reference = {f.name: np.asarray(f.counts, np.int64) for f in profile.features}
        #: batch id → (rows, histograms), the last ``window`` batches with predicted rows
        self._batches: OrderedDict[int, tuple[int, dict[str, np.ndarray]]] = OrderedDict()

    def histograms(self, tables: list[Any], stats_column: str) -> tuple[int, dict[str, Any]]:
        """(rows, counts per feature) of Arrow tables of predicted rows."""
        total: dict[str, np.ndarray] = {}
        rows = 0
        for table in tables:
            if not table.num_rows:
                continue
            stats = np.asarray(table.column(stats_column).combine_chunks().flatten()
                               .to_numpy(zero_copy_only=False), np.float32)
            stats = stats.reshape(table.num_rows, -1)
            counts = self.profile.histograms(_column(table, "prediction"),
                                             _column(table, "confidence"), stats)
            for name, c in counts.items():
                total[name] = total.get(name, 0) + c
            rows += table.num_rows
        return rows, total

    def observe(self, batch: int, tables: list[Any], stats_column: str
                ) -> DriftWindow | None:
        """Add a micro-batch's predicted rows (Arrow tables with ``prediction``,
        ``confidence`` and ``stats_column``) and judge the window that ends with it; None
        when the batch has no predicted row."""
        rows, counts = self.histograms(tables, stats_column)
        if not rows:
            return None
        self._batches.pop(batch, None)  # a replayed batch replaces itself
        self._batches[batch] = (rows, counts)
        while len(self._batches) > self.window:
            self._batches.popitem(last=False)
        pooled: dict[str, np.ndarray] = {}
        for _, c in self._batches.values():
            for name, h in c.items():
                pooled[name] = pooled.get(name, 0) + h
        psis = {n: round(psi(h, self._reference[n]), 4) for n, h in pooled.items()}
        p_values = {n: chi2_p_value(h, self._reference[n]) for n, h in pooled.items()}
        feature = max(psis, key=lambda n: psis[n])
        warning = any(psis[n] > self.threshold and p_values[n] < ALPHA for n in psis)
        out = DriftWindow(batch, list(self._batches), sum(r for r, _ in self._batches.values()),
                          psis, {n: float(f"{p:.3g}") for n, p in p_values.items()},
                          psis[feature], feature, warning, self.threshold)
        if warning:
            log.warning("stream: drift in micro-batches %s: PSI %.3f of %s > %s (p=%.2g)",
                        out.batches, out.score, feature, self.threshold, p_values[feature])
        return out
