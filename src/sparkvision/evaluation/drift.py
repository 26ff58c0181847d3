"""Input drift against a reference profile: what a model saw on its validation split
(class distribution of its predictions, confidence, per-channel pixel means and standard
deviations), and the population stability index (PSI) of new rows against it.

The profile is built by one Spark aggregate (``profile_of``): each continuous feature is
counted in fine, fixed bins (a power-of-two width, so a bin edge is exact in floating point)
and the driver turns those counts into ``QUANTILE_BINS`` bins of about equal reference mass
(deciles; ties kept together). New rows are put in the same bins through the same fine bin
(``FeatureProfile.histogram``), so a value lands where the reference's did.

PSI of sample proportions ``p`` against reference proportions ``q`` over the bins is
``Σ (p − q) · ln(p / q)``, with ``SMOOTHING`` pseudo-counts added to every bin of both (an
empty bin would make it infinite). The rule of thumb: < 0.1 stable, 0.1–0.2 a shift to watch,
> 0.2 a shift. With few rows PSI is noisy (about (bins − 1) · (1/n + 1/m) with nothing
changed), so ``psi_test`` also gives the chi-square test's p-value of the same two
histograms, and a warning asks for both a PSI over the threshold and a p-value under
``ALPHA``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkvision.errors import DataError

PROFILE_FORMAT = "sparkvision-drift-profile/1"
#: The file of a model folder holding its reference profile.
PROFILE_FILE = "drift_profile.json"
#: Bins of each continuous feature (reference deciles).
QUANTILE_BINS = 10
#: Pseudo-count added to every bin of both histograms before PSI.
SMOOTHING = 0.5
#: A window warns only where the chi-square test of its histogram against the reference
#: says p < ALPHA (a PSI over the threshold from a handful of rows is noise).
ALPHA = 0.01
#: Fine bins of the continuous features: (feature kind → low, bin width, bins).
FINE: dict[str, tuple[float, float, int]] = {
    "confidence": (0.0, 1.0 / 1024, 1025),
    "pixel_mean": (0.0, 0.25, 1024),
    "pixel_std": (0.0, 0.125, 1024),
}


def feature_names(channels: int) -> list[str]:
    """The features of a model with ``channels`` input channels, in profile order."""
    return (["class", "confidence"] + [f"pixel_mean_c{c}" for c in range(channels)]
            + [f"pixel_std_c{c}" for c in range(channels)])


def _kind(name: str) -> str:
    return name.rsplit("_c", 1)[0] if name.startswith("pixel_") else name


def fine_bins(name: str, values: np.ndarray) -> np.ndarray:
    """The fine bin of each value of the continuous feature ``name`` (as Spark computes it
    in ``profile_of``: floor((v − low) / width), clamped to the bins; NaN in the last bin,
    as Spark orders NaN above every number)."""
    low, width, bins = FINE[_kind(name)]
    values = np.nan_to_num(np.asarray(values, np.float64), nan=np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        fine = np.floor((values - low) / width)
    return np.clip(fine, 0, bins - 1).astype(np.int64)


@dataclass(frozen=True)
class FeatureProfile:
    """One feature's reference histogram: ``counts`` per bin; ``edges`` the inner edges of a
    continuous feature's bins (empty for ``class``, whose bins are the class indices)."""

    name: str
    counts: tuple[int, ...]
    edges: tuple[float, ...] = ()

    def histogram(self, values: np.ndarray) -> np.ndarray:
        """Counts of ``values`` (class indices, or the feature's values) in these bins."""
        values = np.asarray(values)
        bins = len(self.counts)
        if self.name == "class":
            index = np.clip(values.astype(np.int64), 0, bins - 1)
        else:
            low, width, _ = FINE[_kind(self.name)]
            centre = low + (fine_bins(self.name, values) + 0.5) * width
            index = np.searchsorted(np.asarray(self.edges), centre, side="right")
        return np.bincount(index, minlength=bins).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "counts": list(self.counts), "edges": list(self.edges)}


@dataclass(frozen=True)
class DriftProfile:
    """A model's reference profile (``drift_profile.json`` in its folder)."""

    rows: int
    features: tuple[FeatureProfile, ...]
    #: what it was computed from ("validation split", or the data a stream was given)
    source: str = ""
    seconds: float = 0.0
    format: str = field(default=PROFILE_FORMAT)

    def feature(self, name: str) -> FeatureProfile:
        return next(f for f in self.features if f.name == name)

    def histograms(self, prediction: np.ndarray, confidence: np.ndarray,
                   stats: np.ndarray) -> dict[str, np.ndarray]:
        """Each feature's counts of rows given as their predictions, confidences and
        (N, 2C) pixel statistics (``inference/files.py``'s ``pixelStats``)."""
        channels = stats.shape[1] // 2 if stats.ndim == 2 else 0
        values: dict[str, np.ndarray] = {"class": prediction, "confidence": confidence}
        for c in range(channels):
            values[f"pixel_mean_c{c}"] = stats[:, c]
            values[f"pixel_std_c{c}"] = stats[:, channels + c]
        return {f.name: f.histogram(values[f.name]) for f in self.features
                if f.name in values}

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "rows": self.rows, "source": self.source,
                "seconds": self.seconds, "features": [f.to_dict() for f in self.features]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "the drift profile") -> DriftProfile:
        try:
            data = json.loads(text)
            if data.get("format") != PROFILE_FORMAT:
                raise DataError(
                    f"{where} has format {data.get('format')!r} but this sparkvision reads "
                    f"{PROFILE_FORMAT!r}: move it away (the stream then needs "
                    "--drift-reference), or read it with the sparkvision that wrote it")
            features = tuple(
                FeatureProfile(str(f["name"]), tuple(int(n) for n in f["counts"]),
                               tuple(float(e) for e in f.get("edges") or ()))
                for f in data["features"])
            return cls(int(data["rows"]), features, str(data.get("source") or ""),
                       float(data.get("seconds") or 0.0))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
                ValueError, AttributeError) as exc:
            raise DataError(f"{where} cannot be read ({exc}): move it away or re-train the "
                            "model with validation data") from None


def quantile_feature(name: str, fine_counts: np.ndarray, bins: int = QUANTILE_BINS
                     ) -> FeatureProfile:
    """A continuous feature's profile from its fine-bin counts: inner edges where the
    reference's cumulative share first reaches 1/bins, 2/bins, … (fine-bin boundaries, so
    tied values stay in one bin), and the counts of those bins."""
    low, width, n_fine = FINE[_kind(name)]
    fine_counts = np.asarray(fine_counts, np.int64)
    total = int(fine_counts.sum())
    cum = np.cumsum(fine_counts)
    edges: list[float] = []
    if total:
        for k in range(1, bins):
            j = int(np.searchsorted(cum, k * total / bins, side="left"))
            edge = low + (j + 1) * width  # the upper boundary of the fine bin j
            if j < n_fine - 1 and (not edges or edge > edges[-1]):
                edges.append(edge)
    centres = low + (np.arange(n_fine) + 0.5) * width
    index = np.searchsorted(np.asarray(edges), centres, side="right")
    counts = np.bincount(index, weights=fine_counts, minlength=len(edges) + 1)
    return FeatureProfile(name, tuple(int(round(c)) for c in counts), tuple(edges))


def profile_of(rows, num_classes: int, channels: int, *, source: str = "",
               prediction: str = "prediction", confidence: str = "confidence",
               stats: str = "pixelStats") -> DriftProfile:
    """The reference profile of predicted rows (a DataFrame with ``prediction``,
    ``confidence`` and ``pixelStats``), in one Spark aggregate: the count of each
    (feature, fine bin); only those counts (a few thousand numbers) reach the driver."""
    import time

    from pyspark.sql import functions as F

    started = time.monotonic()
    names = feature_names(channels)
    parts = [F.struct(F.lit(0).alias("f"), F.col(prediction).cast("long").alias("b"))]
    for i, name in enumerate(names[1:], 1):
        low, width, bins = FINE[_kind(name)]
        if name == "confidence":
            value = F.col(confidence).cast("double")
        else:
            c = int(name.rsplit("_c", 1)[1]) + (channels if name.startswith("pixel_std") else 0)
            value = F.col(stats)[c].cast("double")
        fine = F.least(F.greatest(F.floor((value - F.lit(low)) / F.lit(width)), F.lit(0)),
                       F.lit(bins - 1)).cast("long")
        parts.append(F.struct(F.lit(i).alias("f"), fine.alias("b")))
    counted = (rows.select(F.explode(F.array(*parts)).alias("x"))
               .groupBy("x.f", "x.b").count().collect())
    fine_counts = {i: np.zeros(num_classes if i == 0 else FINE[_kind(n)][2], np.int64)
                   for i, n in enumerate(names)}
    for r in counted:
        fine_counts[int(r["f"])][int(r["b"])] += int(r["count"])
    total = int(fine_counts[0].sum())
    if not total:
        raise DataError(f"no predicted row in {source or 'the reference data'} to build a "
                        "drift profile from: give data with images of the model's shape")
    features = [FeatureProfile("class", tuple(int(n) for n in fine_counts[0]))]
    features += [quantile_feature(n, fine_counts[i]) for i, n in enumerate(names) if i]
    return DriftProfile(total, tuple(features), source, round(time.monotonic() - started, 3))


def psi(sample: np.ndarray, reference: np.ndarray, smoothing: float = SMOOTHING) -> float:
    """Population stability index of the ``sample`` histogram against the ``reference``
    one (counts per bin), with ``smoothing`` pseudo-counts in every bin of both."""
    a = np.asarray(sample, np.float64) + smoothing
    e = np.asarray(reference, np.float64) + smoothing
    p, q = a / a.sum(), e / e.sum()
    return float(np.sum((p - q) * np.log(p / q)))


def chi2_p_value(sample: np.ndarray, reference: np.ndarray) -> float:
    """The chi-square test's p-value that two histograms (counts) come from one
    distribution (bins empty in both left out; 1.0 where fewer than two bins remain)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([np.asarray(sample, np.float64), np.asarray(reference, np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 1.0
    return float(chi2_contingency(table, correction=False).pvalue)
