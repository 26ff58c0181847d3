"""A model's predictions of a prediction input, with its rejected files: an image folder is
decoded and predicted in one Python runner per task (``files.py``); any other input is
``model.transform`` of ``data.prediction_input.load_prediction_input``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparkvision.data.prediction_input import (
    is_image_folder,
    list_image_files,
    load_prediction_input,
)
from sparkvision.inference.files import ERROR, FilePredictor


def load_predictions(spark, model, source: str, split: str, *, image: bool = False
                     ) -> tuple[Any, list[dict[str, str]]]:
    """(``model``'s predictions of the prediction input ``source``, its rejected files).

    The predictions hold ``path`` and ``label`` where the input has them and the model's
    output columns, as ``model.transform`` writes them; ``image=True`` keeps the images
    too. An image folder is decoded and predicted in one Python runner per task
    (``inference/files.py``: ``prepare``'s decoding and rejection reasons, the network
    built once per worker); its predictions are persisted and the rejected files read from
    them (one decoding pass). Any other input is ``model.transform`` of
    ``load_prediction_input``."""
    from pyspark.sql import functions as F

    if not is_image_folder(source):
        df, rejected = load_prediction_input(spark, source, tuple(model.getImageShape()),
                                             model.getClasses(), split)
        predictions = model.transform(df)
        return (predictions if image else predictions.drop(model.getImageCol())), rejected
    root = str(Path(source).resolve())
    predictor = FilePredictor(model, "files", root=root, image=image)
    predicted = predictor.apply(list_image_files(spark, root)).persist()
    bad = predicted.filter(F.col(ERROR).isNotNull()).select("path", ERROR).orderBy("path")
    rejected = [{"path": r.path, "reason": r[ERROR]} for r in bad.collect()]
    good = predicted.filter(F.col(ERROR).isNull()).drop(ERROR)
    if image:
        good = good.withColumnRenamed("image", model.getImageCol())
    return good, rejected
