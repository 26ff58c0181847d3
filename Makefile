# sparkvision — `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEMO := demo-output

# the compatibility leg: the oldest pyspark the package accepts, installed first (as a Spark
# runtime provides it); installing sparkvision must leave it in place
COMPAT_VENV := .venv-compat
COMPAT_PYSPARK := 4.0.0
# the Spark tests of the data source, preparing, training, inference and streaming (streaming
# the tfrecords source needs pyspark 4.1: on 4.0 it is one clear error, tests/unit/test_compat.py)
COMPAT_TESTS := tests/spark/test_datasource.py tests/spark/test_prepare.py \
	tests/spark/test_training.py tests/spark/test_predict_files.py tests/spark/test_streaming.py

ZOO_VENV := .venv-zoo
ZOO_STAMP := $(ZOO_VENV)/.installed

.PHONY: install install-zoo demo test test-fast test-zoo test-wheel test-compat lint typecheck docs lock bench clean test-multihost

# two locks, both written by `python tools/lock.py` from pyproject.toml: the runtime lock
# (the core + [datasets]: what `make demo` runs) and the dev lock (+ every extra but the zoo,
# the test and documentation tools: what `make test` runs)
$(RUNTIME_STAMP): pyproject.toml requirements-runtime.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-runtime.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(RUNTIME_STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# re-resolve both locks after editing pyproject.toml's dependencies (pip's resolver, no install)
lock:
	$(PYTHON) tools/lock.py

# the zoo environment: torch 2.14.1 + torchvision + timm + onnx2torch (~6.7 GB, ~6 min here)
$(ZOO_STAMP): pyproject.toml requirements-zoo.lock
	test -x $(ZOO_VENV)/bin/python || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_VENV)/bin/python -m pip install --quiet -r requirements-zoo.lock
	$(ZOO_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(ZOO_STAMP)

install-zoo: $(ZOO_STAMP)

demo: $(RUNTIME_STAMP)
	$(VENV)/bin/sparkvision demo --out $(DEMO)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench tools

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# the documentation site (docs/, mkdocs.yml): broken links and missing references fail
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d site

# everything: lint, types, every test (CI runs this)
test: $(STAMP) lint typecheck docs
	$(VENV)/bin/pytest -q -m "not zoo and not multihost and not package" --durations=30

# the emulated multi-host cluster (network namespaces: root), a leg of its own in CI
test-multihost: $(STAMP)
	$(VENV)/bin/pytest -q -m multihost --durations=10 tests/integration/test_multihost.py

# the package as users get it: sdist + wheel, twine check, the wheel in clean venvs (a CI leg)
test-wheel: $(STAMP)
	$(VENV)/bin/pytest -q -m package --durations=10 tests/package/test_wheel.py

# the oldest supported pyspark (a runtime's own, kept by pip), then sparkvision (not editable)
test-compat:
	rm -rf $(COMPAT_VENV) && $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/pip install --quiet pyspark==$(COMPAT_PYSPARK) \
		-c <(grep -v '^pyspark==' requirements.lock)
	$(COMPAT_VENV)/bin/pip install --quiet '.[datasets]' pytest -c <(grep -v '^pyspark==' requirements.lock)
	test "$$($(COMPAT_VENV)/bin/python -c 'import pyspark; print(pyspark.__version__)')" = $(COMPAT_PYSPARK)
	$(COMPAT_VENV)/bin/python -c 'import sparkvision, sys; sys.exit("src" in sparkvision.__file__)'
	$(COMPAT_VENV)/bin/pytest -q -p no:cacheprovider --durations=10 -m "not stream_source" \
		$(COMPAT_TESTS)

# the edit-run loop: lint, types, the unit tests and the fast Spark tests (not `slow`)
test-fast: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q -m "not slow and not cluster and not zoo" tests/unit tests/spark

# the tests of timm / torchvision / ONNX-imported networks, in the zoo environment
test-zoo: $(ZOO_STAMP)
	$(ZOO_VENV)/bin/pytest -q -m zoo tests/zoo

bench: $(STAMP)
	$(PY) bench/tfrecord_read.py --rows 200000 --files 4
	$(PY) bench/train_throughput.py --epochs 5 --repeats 3
	$(PY) bench/inference.py
	$(PY) bench/evaluate.py
	$(PY) bench/tuning.py
	$(PY) bench/cluster_scaling.py
	$(PY) bench/connect_overhead.py
	$(PY) bench/prepare_throughput.py --sizes 20000 100000
	$(PY) bench/featurize.py
	$(PY) bench/privacy.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache site $(COMPAT_VENV)
