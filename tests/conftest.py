"""Shared fixtures: one local[2] SparkSession for the whole test run."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@pytest.fixture(scope="session")
def spark():
    from sparkvision.session import get_spark

    session = get_spark("local[2]", app_name="sparkvision-tests")
    yield session
    session.stop()
