"""Checks of user input that need no Spark session: commands call them before the JVM
starts, so a wrong path or name fails in about a second with one line (exit 2) instead
of after a session start.

Each check is written once. Those that already live with the code that reads the input
are called from there (``data.manifest.read_manifest``, ``ml.model.check_model_folder``,
``models.registry.validate_model_name``); this module holds the ones whose input is
otherwise first read after a session exists. Nothing here imports torch or pyspark.
"""

from __future__ import annotations

import os

from sparkvision.errors import DataError


def check_user_network(name: str) -> str:
    """For a network given as an import path (``package.module:function``, also behind
    ``dp:``): the module imports here and has that callable — ``InvalidParameterError``
    naming ``model`` otherwise (``models.registry.resolve_user_builder``, the same check a
    Spark task makes when it builds the network). Built-in and zoo names pass untouched
    (``validate_model_name`` checks them). Imports the user's module, not torch."""
    from sparkvision.models.registry import DP_PREFIX, resolve_user_builder, runs_user_code

    if runs_user_code(name):
        resolve_user_builder(name.removeprefix(DP_PREFIX))
    return name


def check_prediction_input(source: str) -> None:
    """``DataError`` unless the input of ``predict``/``evaluate``/``featurize``/``explain``
    exists: a local path, or a URL holding a ``dataset.json`` or anything at all."""
    from sparkvision import storage
    from sparkvision.data.manifest import MANIFEST

    local = storage.local_path(source)
    if local is not None:
        if not os.path.exists(local):
            raise DataError(
                f"prediction input {source!r} does not exist: give a prepared folder, a split "
                "folder, TFRecord/Parquet files or an image folder"
            )
    elif not (storage.exists(storage.join(source, MANIFEST)) or storage.exists(source)):
        raise DataError(f"prediction input {source!r} does not exist: check the URL")


def check_stream_input(source: str) -> None:
    """``DataError`` unless the folder ``sparkvision stream`` watches exists."""
    if not os.path.isdir(source):
        raise DataError(
            f"stream input folder {source!r} does not exist: create it (files dropped into it "
            "are classified as they arrive)"
        )
