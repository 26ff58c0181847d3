"""``ImageClassifier``: a pyspark.ml Estimator that trains a PyTorch network data-parallel
inside one Spark barrier stage and returns an ``ImageClassificationModel``."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkvision import settings
from sparkvision.config import TrainConfig
from sparkvision.errors import DataError, InvalidParameterError, TrainingError
from sparkvision.ml.balancer import ClassBalancer, class_counts
from sparkvision.ml.model import ImageClassificationModel
from sparkvision.ml.normalization import resolve_normalization
from sparkvision.ml.params import ImageClassifierParams, set_known
from sparkvision.ml.transfer import starting_weights
from sparkvision.models.registry import validate_model_name
from sparkvision.settings import TrainSettings
from sparkvision.training.history import BalanceRecord

log = logging.getLogger(__name__)


#: The columns ``prepare`` writes that give each row's image shape.
SHAPE_COLUMNS = ("height", "width", "channels")


def _check_columns(df, configured: list[int], label_col: str) -> bool:
    """Refuse, before any job, a DataFrame without the label column, or without the shape
    columns when ``imageShape`` is not set. Returns whether the shape is read from the data."""
    if not configured and not all(c in df.columns for c in SHAPE_COLUMNS):
        raise InvalidParameterError(
            "imageShape", configured,
            "set imageShape=[height, width, channels], or give data with height/width/"
            "channels columns (as `sparkvision prepare` writes)",
        )
    if label_col not in df.columns:
        raise InvalidParameterError(
            "labelCol", label_col, f"the DataFrame has columns {df.columns}; name the label"
        )
    return not configured


def _label_rows(df, label_col: str, with_shape: bool) -> list[Any]:
    """One aggregate over every row: the rows per label value (``y``, ``count``) and, with
    ``with_shape``, the smallest and largest height, width and channels under each label.

    Every row is read: a ``first()``/``limit`` for the shape would end its task after one
    Arrow batch and leave the Python reader of a partition of several batches (a prepared
    split of more than ~1,000 rows a shard) writing to a socket the JVM closes (Spark then
    kills that worker, which prints a BrokenPipeError from pyspark/daemon.py)."""
    from pyspark.sql import functions as F

    shape = ([F.min(c).alias(f"min_{c}") for c in SHAPE_COLUMNS]
             + [F.max(c).alias(f"max_{c}") for c in SHAPE_COLUMNS]) if with_shape else []
    rows = df.groupBy(F.col(label_col).cast("double").alias("y")).agg(
        F.count(F.lit(1)).alias("count"), *shape).collect()
    if not rows:
        raise DataError("the training DataFrame is empty: give it at least one row")
    return rows


def _image_shape(rows: list[Any], configured: list[int]) -> tuple[int, int, int]:
    """``imageShape`` when set, else the one shape of every row (``_label_rows``)."""
    if configured:
        return tuple(configured)  # type: ignore[return-value]
    lows: list[Any] = [min((r[f"min_{c}"] for r in rows if r[f"min_{c}"] is not None),
                           default=None) for c in SHAPE_COLUMNS]
    highs: list[Any] = [max((r[f"max_{c}"] for r in rows if r[f"max_{c}"] is not None),
                            default=None) for c in SHAPE_COLUMNS]
    if None in lows:
        raise DataError("the training rows have no height/width/channels values: set "
                        "imageShape=[height, width, channels]")
    if lows != highs:
        sizes = ", ".join(f"{c} {lo}..{hi}" for c, lo, hi in zip(SHAPE_COLUMNS, lows, highs,
                                                                  strict=True) if lo != hi)
        raise DataError(f"the training images differ in size ({sizes}): give images of one "
                        "size, e.g. `sparkvision prepare --image-size HxW`")
    h, w, c = (int(v) for v in lows)
    return h, w, c


def _label_counts(rows: list[Any], label_col: str, classes: list[str]
                  ) -> tuple[dict[int, int], list[str]]:
    """Rows per class index, validated, from ``_label_rows``; and the class names
    (default '0'..'K-1')."""
    nulls = sum(int(r["count"]) for r in rows if r.y is None)
    if nulls:
        raise DataError(f"{nulls} rows have a null {label_col!r}: drop or label them")
    values = sorted(r.y for r in rows)
    if values[0] < 0 or any(int(v) != v for v in values):
        raise DataError(
            f"labels in {label_col!r} must be class indexes 0, 1, ... "
            f"(found {values[0]}..{values[-1]})"
        )
    hi = int(values[-1])
    if classes and hi >= len(classes):
        raise InvalidParameterError(
            "classes", classes,
            f"labels go up to {hi} but only {len(classes)} class names were given",
        )
    names = classes or [str(i) for i in range(hi + 1)]
    counts = {i: 0 for i in range(len(names))}
    counts.update({int(r.y): int(r["count"]) for r in rows})
    return counts, names


def _counts_of(df, label_col: str, labels: dict[int, int]) -> dict[int, int]:
    """Rows of ``df`` per label in ``labels`` (one aggregate; 0 for an absent class)."""
    found = class_counts(df, label_col)
    return {c: found.get(c, 0) for c in labels}


def private_model_name(name: str, privacy: str, delta: float, rows: int, num_classes: int,
                       shape: tuple[int, int, int]) -> str:
    """The network a training runs: ``name``, or under ``privacy="dp"`` its DP-compatible
    form ``dp:NAME`` (built once here, so a network Opacus cannot fix fails before any
    job); checks δ against the training rows."""
    from sparkvision.models.registry import DP_PREFIX, build_model

    if privacy != "dp":
        return name
    if delta >= 1.0 / max(rows, 1):
        raise InvalidParameterError(
            "targetDelta", delta, f"δ must be below 1 / training rows (1/{rows} = "
            f"{1.0 / max(rows, 1):.3g}): a δ that large allows leaking whole examples; use "
            f"e.g. {10 ** -len(str(rows)):.0e}")
    network = name if name.startswith(DP_PREFIX) else DP_PREFIX + name
    build_model(network, num_classes, shape)  # Opacus can fix it, or a clear error now
    return network


def _balanced_weights(counts: dict[int, int]) -> tuple[float, ...]:
    """sklearn's 'balanced' weights: n / (K * n_k); 0 for a class with no rows."""
    total, k = sum(counts.values()), len(counts)
    return tuple(total / (k * counts[c]) if counts[c] else 0.0 for c in sorted(counts))


class ImageClassifier(Estimator, ImageClassifierParams, DefaultParamsWritable,
                      DefaultParamsReadable):
    """Trains a PyTorch CNN data-parallel inside one Spark barrier stage.

    Params and defaults: the rows of ``sparkvision.settings.TrainSettings`` (``batchSize``
    is per worker).
    ``validationDf`` (a DataFrame) and ``onEpochEnd`` (called on the driver with each
    epoch's metrics while training runs; returning True stops training after that epoch,
    on every worker, and the model records ``history.stopped_early``) are not persisted
    Params; nor is ``showProgress`` (the tqdm bar).
    """

    @keyword_only
    def __init__(self, *, validationDf: Any = None,
                 onEpochEnd: Callable[[dict[str, Any]], Any] | None = None,
                 **params: Any) -> None:
        """Params by keyword (one per row of ``settings.TrainSettings`` and
        ``settings.OutputSettings``); None leaves a Param at its default."""
        super().__init__()
        self._validation_df: Any = None
        self._on_epoch_end: Callable[[dict[str, Any]], Any] | None = None
        self._show_progress = True
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> ImageClassifier:
        """Set any Params by keyword (None leaves a Param as it is)."""
        kwargs = dict(self._input_kwargs)
        if "validationDf" in kwargs:
            self._validation_df = kwargs.pop("validationDf")
        if "onEpochEnd" in kwargs:
            self._on_epoch_end = kwargs.pop("onEpochEnd")
        set_known(self, kwargs, *self._tables)
        return self

    def setValidationDf(self, df: Any) -> ImageClassifier:
        self._validation_df = df
        return self

    def setOnEpochEnd(self, callback: Callable[[dict[str, Any]], Any] | None) -> ImageClassifier:
        self._on_epoch_end = callback
        return self

    def setShowProgress(self, show: bool) -> ImageClassifier:
        self._show_progress = bool(show)
        return self

    def copy(self, extra: dict | None = None) -> ImageClassifier:
        that = super().copy(extra)
        that._validation_df = self._validation_df
        that._on_epoch_end = self._on_epoch_end
        that._show_progress = self._show_progress
        return that

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset) -> ImageClassificationModel:
        from sparkvision.training.launcher import layout, run_distributed

        self.validateParams()
        spark = dataset.sparkSession
        get = self.getOrDefault
        image_col, label_col = get(self.imageCol), get(self.labelCol)
        train_df, val_df = dataset, self._validation_df
        if val_df is None and get(self.validationFraction) > 0:
            frac = get(self.validationFraction)
            train_df, val_df = dataset.randomSplit([1 - frac, frac], seed=get(self.seed))
        if val_df is None and get(self.calibration) == "temperature":
            raise InvalidParameterError(
                "calibration", "temperature", "the temperature is fitted on validation rows: "
                "give validationDf or validationFraction > 0")
        with_shape = _check_columns(dataset, get(self.imageShape), label_col)
        rows = _label_rows(dataset, label_col, with_shape)  # one job: labels and shape
        shape = _image_shape(rows, get(self.imageShape))
        validate_model_name(get(self.model), shape)  # a size the network cannot take
        counts, classes = _label_counts(rows, label_col, list(get(self.classes)))
        if train_df is not dataset:
            counts = _counts_of(train_df, label_col, counts)
        (mean, std), how = resolve_normalization(get, get(self.model), train_df, image_col,
                                                 shape)
        balance = get(self.balance)
        seen = counts
        if balance in ("oversample", "undersample"):
            balancer = ClassBalancer(strategy=balance, labelCol=label_col, seed=get(self.seed))
            train_df = balancer.transform(train_df)
            seen = _counts_of(train_df, label_col, counts)
        weights = self._class_weights(counts)
        network = private_model_name(get(self.model), get(self.privacy),
                                     get(self.targetDelta), sum(seen.values()),
                                     len(classes), shape)
        init_state, transfer = starting_weights(
            network, classes, shape, get(self.initWeights), get(self.initFrom),
            get(self.initStrict), get(self.freeze), float(get(self.backboneLrScale)),
            get(self.pretrained))
        own_dir = not get(self.checkpointDir)
        checkpoint_dir = get(self.checkpointDir) or tempfile.mkdtemp(prefix="sparkvision-ckpt-")
        resolved = {  # the settings as the data and the run resolve them
            "model": network, "image_shape": shape, "classes": tuple(classes),
            "class_weights": weights, "checkpoint_dir": checkpoint_dir,
            "input_mean": mean, "input_std": std}
        config = TrainConfig(**{**dict(settings.values(TrainSettings, get)), **resolved},
                             num_classes=len(classes), init_state=init_state)
        data = layout(train_df, val_df, image_col, label_col, config.num_workers,
                      get(self.repartition))
        log.info("training %s on %d workers for %d epochs, input normalisation: %s",
                 config.model, config.num_workers, config.epochs, how)
        try:
            out = run_distributed(spark, data, config, self._on_epoch_end,
                                  self._show_progress)
        finally:
            if own_dir:  # a temporary folder only serves retries within this fit
                shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if out.history.diverged:
            raise TrainingError(f"training diverged: {out.history.diverged}: lower "
                                f"learningRate (now {config.learning_rate})")
        history = replace(
            out.history, checkpoint_dir=None if own_dir else checkpoint_dir, transfer=transfer,
            balance=BalanceRecord(
                strategy=balance,
                class_counts={classes[c]: n for c, n in sorted(counts.items())},
                class_counts_seen={classes[c]: n for c, n in sorted(seen.items())},
                class_weights=list(weights) if weights else None,
                loss=config.loss,
            ))
        model = ImageClassificationModel(weights=out.weights, history=history)
        self._copyValues(model)
        # under privacy="dp" the network is Opacus's fix of it ("dp:NAME")
        model._set(imageShape=list(shape), classes=classes, model=network,
                   inputMean=list(mean), inputStd=list(std))
        model._resetUid(self.uid)  # the model keeps its estimator's uid, as in pyspark.ml
        if get(self.calibration) == "temperature":  # one temperature, fitted on val_df
            from sparkvision.ml.calibration import calibrate_temperature

            calibrate_temperature(model, val_df, label_col)
        if val_df is not None:  # what drift monitoring compares a stream with
            from sparkvision.ml.drift import reference_profile

            model.drift_profile = reference_profile(model, val_df)
        return model

    def _class_weights(self, counts: dict[int, int]) -> tuple[float, ...] | None:
        value = self.getOrDefault(self.classWeights)
        if self.getOrDefault(self.balance) == "weights" or value == "balanced":
            return _balanced_weights(counts)
        if not value:
            return None
        if len(value) != len(counts):
            raise InvalidParameterError(
                "classWeights", value, f"give one weight per class ({len(counts)} classes)"
            )
        return tuple(float(v) for v in value)
