"""One MLflow run, driven through ``mlflow.MlflowClient`` with an explicit run id.

The fluent API (``mlflow.start_run``/``mlflow.log_metric``) keeps the active run on a
thread-local/global stack, which parallel tuning trials (driver threads) would share; a
client and a run id per ``MlflowRun`` are safe from any thread. Every call into MLflow goes
through one process-wide lock, so concurrent trials never race on a SQLite store.

``mlflow`` is imported only when a run starts (``require_mlflow``); without it the caller
gets a :class:`MissingDependencyError` naming ``pip install 'sparkvision[mlflow]'``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from sparkvision import extras
from sparkvision.errors import InvalidParameterError

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "sparkvision"
#: The per-epoch values of a training progress event logged as metrics (step = epoch).
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                 "samples_per_second", "epsilon")  # epsilon: privacy spent (privacy="dp")
#: MLflow's limits (mlflow.utils.validation): value lengths, keys, items per batch call.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
PARENT_RUN_TAG = "mlflow.parentRunId"
STATUSES = ("FINISHED", "FAILED", "KILLED")

#: One lock for every MLflow call of this process (parallel trials share one store).
_LOCK = threading.RLock()
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /:]")


def store_lock() -> threading.RLock:
    """The lock every MLflow call of this process holds (MLflow's global state, too)."""
    return _LOCK


def require_mlflow(what: str = "--mlflow") -> ModuleType:
    """Import and return ``mlflow``; MissingDependencyError naming the ``mlflow`` extra."""
    return extras.import_from("mlflow", "mlflow", what)


def _quiet_mlflow() -> None:
    """Keep MLflow's INFO chatter (database migrations, …) and its "View run at" lines on
    stdout (which would follow a ``--json`` line) off the terminal, unless INFO is on."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not logging.getLogger().isEnabledFor(logging.INFO):
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


def metric_key(name: str) -> str:
    """``name`` as a valid MLflow key: characters MLflow refuses become ``_``."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:MAX_KEY_LENGTH] or "_"


def param_value(value: Any, limit: int = MAX_PARAM_LENGTH) -> str:
    """A Param value as MLflow text: lists/dicts as compact JSON, cut to ``limit``."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    """A metric value, or None for what is not a number (None, bools, text)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _batches(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MlflowExperiment:
    """An MLflow experiment in a tracking store, found or created: where runs start."""

    def __init__(self, client: Any, experiment_id: str, tracking_uri: str) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri

    @classmethod
    def connect(cls, tracking_uri: str, name: str = DEFAULT_EXPERIMENT,
                artifact_location: str | None = None) -> MlflowExperiment:
        """Experiment ``name`` of the store at ``tracking_uri`` (created, with
        ``artifact_location`` if given, when missing). A URI MLflow cannot use is an
        InvalidParameterError; no mlflow installed, a MissingDependencyError."""
        mlflow = require_mlflow()
        _quiet_mlflow()
        from mlflow.exceptions import MlflowException

        try:
            with _LOCK, warnings.catch_warnings():
                # SQLAlchemy's note on MLflow's own mappers ("noload" is deprecated)
                warnings.filterwarnings("ignore", message=".*noload.*")
                client = mlflow.MlflowClient(tracking_uri=tracking_uri)
                found = client.get_experiment_by_name(name)
                if found is None:
                    experiment_id = client.create_experiment(
                        name, artifact_location=artifact_location)
                else:
                    experiment_id = found.experiment_id
        except MlflowException as exc:
            first = (str(exc.message).strip().splitlines() or [""])[0][:300]
            raise InvalidParameterError(
                "mlflow", tracking_uri, f"{first}; use a tracking URI such as "
                "sqlite:///mlruns.db, a folder, or http://host:5000") from None
        return cls(client, experiment_id, tracking_uri)

    def start_run(self, run_name: str | None = None, tags: Mapping[str, Any] | None = None,
                  parent_run_id: str | None = None) -> MlflowRun:
        """A new RUNNING run (nested under ``parent_run_id`` if given), with MLflow's
        context tags (user, source) and ``tags``."""
        from mlflow.tracking.context.registry import resolve_tags

        wanted = {k: param_value(v, MAX_TAG_LENGTH) for k, v in (tags or {}).items()}
        if parent_run_id:
            wanted[PARENT_RUN_TAG] = parent_run_id
        with _LOCK:
            run = self.client.create_run(self.experiment_id, tags=resolve_tags(wanted),
                                         run_name=run_name)
        log.info("MLflow run %s (%s) in experiment %s", run.info.run_id, run_name,
                 self.experiment_id)
        return MlflowRun(self, run.info.run_id)


class MlflowRun:
    """An MLflow run: params, per-epoch and final metrics, artefacts, then its status.

    Start one with :meth:`start` (or :meth:`MlflowExperiment.start_run`; :meth:`child` for
    a nested run); as a context manager it ends FINISHED, FAILED on an exception or KILLED
    on Ctrl-C.
    """

    def __init__(self, experiment: MlflowExperiment, run_id: str) -> None:
        self.experiment = experiment
        self.client = experiment.client
        self.run_id = run_id
        self.ended = False
        self._epochs_logged: set[int] = set()

    @classmethod
    def start(
        cls, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None, tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None, artifact_location: str | None = None,
    ) -> MlflowRun:
        """Open a run in ``experiment`` of the store at ``tracking_uri``."""
        found = MlflowExperiment.connect(tracking_uri, experiment, artifact_location)
        return found.start_run(run_name, tags, parent_run_id)

    def child(self, run_name: str | None = None,
              tags: Mapping[str, Any] | None = None) -> MlflowRun:
        """A run nested under this one (tag ``mlflow.parentRunId``), same experiment."""
        return self.experiment.start_run(run_name, tags, parent_run_id=self.run_id)

    @property
    def uri(self) -> str:
        """``runs:/RUN_ID``, the URI MLflow's APIs take."""
        return f"runs:/{self.run_id}"

    @property
    def artifact_uri(self) -> str:
        with _LOCK:
            return str(self.client.get_run(self.run_id).info.artifact_uri)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED (once; later calls do nothing)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        if self.ended:
            return
        self.ended = True
        with _LOCK:
            self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> MlflowRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.end("FINISHED")
        elif issubclass(kind, KeyboardInterrupt):
            self.end("KILLED")
        else:
            if exc is not None:
                self.set_tags({"error": f"{type(exc).__name__}: {exc}"})
            self.end("FAILED")

    # ------------------------------------------------------------------ logging
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags (values as text, cut to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(k[:MAX_KEY_LENGTH], param_value(v, MAX_TAG_LENGTH))
                 for k, v in tags.items() if v is not None]
        with _LOCK:
            for batch in _batches(items, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, tags=batch)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params; lists and dicts become compact JSON, values longer than MLflow's limit
        are cut (ending in ``...``). A key may be logged once per run (MLflow's rule)."""
        from mlflow.entities import Param

        items = [Param(metric_key(k), param_value(v)) for k, v in params.items()]
        with _LOCK:
            for batch in _batches(items, MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=batch)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric metrics (None and non-numbers skipped), at ``step`` (default 0)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), v, now, int(step or 0))
                 for k, raw in metrics.items() if (v := _number(raw)) is not None]
        with _LOCK:
            for batch in _batches(items, MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=batch)

    def log_epoch(self, event: Mapping[str, Any]) -> bool:
        """One training epoch's metrics (``EPOCH_METRICS``, step = the epoch number).
        Each epoch is logged once: a repeat (a retried stage) is skipped. True if logged."""
        epoch = int(event["epoch"])
        with _LOCK:
            if epoch in self._epochs_logged:
                return False
            self._epochs_logged.add(epoch)
        self.log_metrics({k: event.get(k) for k in EPOCH_METRICS}, step=epoch)
        return True

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """One file as an artefact (under ``artifact_path`` if given)."""
        with _LOCK:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Every file of ``folder`` as artefacts (under ``artifact_path`` if given)."""
        with _LOCK:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_model_folder(self, path: str | Path) -> None:
        """A saved model folder (metadata, weights.safetensors, history.json) under
        ``model/``."""
        self.log_artifacts(path, "model")

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every value logged for ``key``."""
        with _LOCK:
            return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]

