"""Checks of user input that need no Spark session: commands call them before the JVM
starts, so a wrong path fails in about a second with one line (exit 2) instead of after a
session start.

Each check is written once. Those that already live with the code that reads the input
are called from there (``data.manifest.read_manifest``, ``ml.model.check_model_folder``,
``models.registry.validate_model_name`` and ``check_user_network``, through
``validateParams``); this module holds the ones whose input is otherwise first read after a
session exists, and the API calls them too (``load_prediction_input``, ``streaming.start``
and ``read_stream``). It sits just above ``storage`` in the layers
(it imports only ``errors`` and ``storage``), so the data and streaming code that reads
these inputs can call the same functions. Nothing here imports torch or pyspark.
"""

from __future__ import annotations

import os

from sparkvision import storage
from sparkvision.errors import DataError


def check_prediction_input(source: str) -> None:
    """``DataError`` unless the input of ``predict``/``evaluate``/``featurize``/``explain``
    exists (a local path, or anything at a URL)."""
    local = storage.local_path(source)
    if local is not None:
        if not os.path.exists(local):
            raise DataError(
                f"prediction input {source!r} does not exist: give a prepared folder, a split "
                "folder, TFRecord/Parquet files or an image folder"
            )
    elif not storage.exists(source):
        raise DataError(f"prediction input {source!r} does not exist: check the URL")


def check_stream_input(source: str) -> None:
    """``DataError`` unless the folder ``sparkvision stream`` watches exists."""
    if not os.path.isdir(source):
        raise DataError(
            f"stream input folder {source!r} does not exist: create it (files dropped into it "
            "are classified as they arrive)"
        )
