"""Calibration: the expected calibration error (ECE) and its reliability bins as one Spark
aggregate, and temperature scaling fitted on the driver.

ECE (Guo et al., 2017, "On Calibration of Modern Neural Networks"): the rows are put in
``bins`` equal-width bins of their confidence (the top class's probability; bin ``m`` holds
confidences in ``((m-1)/M, m/M]``), and ECE = Σ_m (n_m / N) · |accuracy_m − confidence_m|.
Only one row per bin (count, summed confidence, right predictions) reaches the driver.

Temperature scaling (same paper): one scalar T > 0 that minimises the negative
log-likelihood of softmax(logits / T) on held-out rows; dividing every logit by one positive
number never changes which class is largest, so predictions (and accuracy) stay the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sparkvision.errors import DataError, InvalidParameterError

#: Equal-width confidence bins of the ECE and the reliability diagram.
ECE_BINS = 15
#: The range the temperature is searched in (log T is clamped to it).
TEMPERATURE_RANGE = (1e-2, 1e2)


@dataclass(frozen=True)
class ReliabilityBin:
    """One confidence bin: its bounds, rows, mean confidence and accuracy (None: empty)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reliability_bins(rows: Any, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """The ``bins`` equal-width confidence bins of ``labelled`` rows (``y``, ``yhat``, ``p``):
    one groupBy, at most ``bins`` rows to the driver. Confidence is the largest probability,
    a row is right when its prediction is its label."""
    from pyspark.sql import functions as F

    if bins < 1:
        raise InvalidParameterError("bins", bins, "use 1 or more (e.g. 15)")
    confidence = F.array_max("p")
    index = F.greatest(F.least(F.ceil(confidence * bins).cast("int") - 1, F.lit(bins - 1)),
                       F.lit(0))
    found = {r.b: r for r in rows.groupBy(index.alias("b")).agg(
        F.count(F.lit(1)).alias("n"), F.sum(confidence).alias("conf"),
        F.sum((F.col("y") == F.col("yhat")).cast("long")).alias("right"),
    ).collect()}
    out = []
    for b in range(bins):
        r = found.get(b)
        n = int(r.n) if r is not None else 0
        out.append(ReliabilityBin(
            lower=b / bins, upper=(b + 1) / bins, count=n,
            confidence=float(r.conf) / n if r is not None and n else None,
            accuracy=float(r.right) / n if r is not None and n else None))
    return out


def expected_calibration_error(bins: list[ReliabilityBin]) -> float | None:
    """Σ (n_m / N) · |accuracy_m − confidence_m| over the bins (None without rows)."""
    total = sum(b.count for b in bins)
    if not total:
        return None
    return float(sum(b.count / total * abs(b.accuracy - b.confidence)  # type: ignore[operator]
                     for b in bins if b.count))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the mean negative log-likelihood of the rows it was fitted
    on, before (T = 1) and after."""

    temperature: float
    nll_before: float
    nll_after: float
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The T > 0 that minimises the mean negative log-likelihood of softmax(logits / T)
    for ``labels`` (torch's L-BFGS over log T, so T stays positive; float64)."""
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise DataError(f"temperature scaling needs rows of logits with their labels (got "
                        f"logits of shape {logits.shape} and {len(labels)} labels): give a "
                        "non-empty validation split")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise DataError(f"a validation label ({labels.min()}..{labels.max()}) is not a "
                        f"class of the network's {logits.shape[1]} outputs")
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels)
    lo, hi = (math.log(v) for v in TEMPERATURE_RANGE)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(lo, hi).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(math.exp(min(max(float(log_t.detach()), lo), hi)))
    before, after = _nll(logits, labels, 1.0), _nll(logits, labels, temperature)
    if not after <= before:  # never worse than the network's own softmax
        temperature, after = 1.0, before
    return TemperatureFit(temperature, before, after, int(len(labels)))
