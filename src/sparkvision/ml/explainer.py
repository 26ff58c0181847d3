"""``ImageExplainer``: a pyspark.ml Transformer adding an attribution map per image — where a
trained network looks when it picks a class — computed with Captum on the executors
(Grad-CAM, saliency, integrated gradients or occlusion; see ``inference/explain.py``)."""

from __future__ import annotations

from typing import Any

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param.shared import HasLabelCol, HasOutputCol

from sparkvision.errors import DataError, InvalidParameterError
from sparkvision.inference.explain import (
    SIGNED_METHODS,
    ExplainConfig,
    check_config,
)
from sparkvision.ml.model import ImageClassificationModel
from sparkvision.ml.params import (
    TrainedNetworkParams,
    declare_params,
    image_and_output_columns,
    network_values,
    set_known,
)
from sparkvision.settings import METHODS, TARGETS, ExplainerSettings

#: The key of the output column's metadata that describes the maps.
METADATA_KEY = "sparkvision_attribution"


class ImageExplainer(Transformer, TrainedNetworkParams, HasOutputCol, HasLabelCol):
    """Adds ``outputCol`` (default ``attribution``): ``ARRAY<FLOAT>`` of H·W values, the
    attribution map of the row's image, row-major for the image's (height, width) — the
    shape is ``attributionShape()`` and the column's metadata
    (``{"sparkvision_attribution": {"shape": [H, W], "method": …, "layer": …, "target": …,
    "signed": …}}``). ``reshape(H, W)`` gives the map. Every other column is kept.

    ``method``: ``gradcam`` (last conv layer, ≥ 0, upsampled bilinearly to H×W),
    ``saliency`` (≥ 0), ``integrated_gradients`` or ``occlusion`` (signed: < 0 speaks
    against the class). ``target``: ``predicted`` (the network's class, computed in the same
    task) or ``true`` (the ``labelCol`` index; a null label falls back to the predicted
    class). Checked on the driver before any job (captum installed, Grad-CAM needs an
    ``nn.Conv2d``).

    ``ImageExplainer.fromModel(model, method="saliency")`` takes the trained model's network,
    weights, image shape, classes and image column."""

    _tables: tuple[type, ...] = (ExplainerSettings,)  # its Params: these rows

    @keyword_only
    def __init__(self, *, weights: bytes = b"", **params: Any) -> None:
        """Params by keyword (the rows of ``settings.ExplainerSettings``)."""
        super().__init__()
        kwargs = dict(self._input_kwargs)
        self.weights: bytes = kwargs.pop("weights", b"")
        self._layer: tuple[str, str] | None = None  # (config key, layer) checked on the driver
        set_known(self, kwargs, ExplainerSettings)

    @classmethod
    def fromModel(cls, model: ImageClassificationModel, method: str | None = None,
                  target: str | None = None) -> ImageExplainer:
        """The explainer of a trained ``ImageClassificationModel``: its network, weights,
        image shape, classes, image and label columns."""
        if not model.weights:
            raise DataError("the model has no weights: fit or load it before explaining it")
        get = model.getOrDefault
        explainer = cls(method=method, target=target, labelCol=get(model.labelCol),
                        **network_values(model))
        explainer.weights = model.weights
        return explainer

    # ------------------------------------------------------------------ driver checks
    def explainConfig(self) -> ExplainConfig:
        """What the executors need, with every Param checked (no network built)."""
        get = self.getOrDefault
        self.checkTables()  # method, target, explainBatchSize
        if not self.weights:
            raise DataError("this explainer has no weights: make it with "
                            "ImageExplainer.fromModel(model)")
        shape = self.trainedShape()
        return ExplainConfig(model=get(self.model), num_classes=len(get(self.classes)),
                             image_shape=shape, weights=self.weights,
                             method=get(self.method), batch_size=get(self.explainBatchSize),
                             input_mean=tuple(get(self.inputMean)),
                             input_std=tuple(get(self.inputStd)))

    def layerName(self) -> str:
        """Grad-CAM's layer (the network's last ``nn.Conv2d``; '' for other methods), found
        on the driver by building the network (cached): InvalidParameterError when there
        is none, MissingDependencyError without captum."""
        from sparkvision.inference.network_cache import TrainedNetwork

        config = self.explainConfig()
        key = f"{TrainedNetwork.of(config).key}:{config.method}"
        if self._layer is None or self._layer[0] != key:
            self._layer = (key, check_config(config))
        return self._layer[1]

    def attributionShape(self) -> list[int]:
        """[height, width] of every map (the output column holds height·width values)."""
        h, w, _ = self.getOrDefault(self.imageShape)
        return [h, w]

    # ------------------------------------------------------------------ transform
    def _transform(self, dataset):
        from pyspark.sql import functions as F

        from sparkvision.inference.explain import make_attribution_udf

        get = self.getOrDefault
        image_col, out = image_and_output_columns(self, dataset)
        layer = self.layerName()  # every check, before any job
        config = self.explainConfig()
        if get(self.target) == "true":
            label_col = get(self.labelCol)
            if label_col not in dataset.columns:
                raise InvalidParameterError(
                    "target", "true", f"the DataFrame has no label column {label_col!r} "
                    f"(columns {dataset.columns}); set labelCol or use target='predicted'")
            target = F.col(f"`{label_col}`").cast("bigint")
        else:
            target = F.lit(None).cast("bigint")
        metadata = {METADATA_KEY: {
            "shape": self.attributionShape(), "method": config.method, "layer": layer,
            "target": get(self.target), "signed": config.method in SIGNED_METHODS}}
        maps = make_attribution_udf(config)(F.col(f"`{image_col}`"), target)
        kept = [F.col(f"`{c}`") for c in dataset.columns if c != out]
        return dataset.select(*kept, maps.alias(out, metadata=metadata))


declare_params(ImageExplainer, ExplainerSettings)

__all__ = ["METADATA_KEY", "METHODS", "TARGETS", "ImageExplainer"]
