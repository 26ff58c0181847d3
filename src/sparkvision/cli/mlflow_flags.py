"""``--mlflow URI``: optional MLflow tracking for ``train``, ``evaluate`` and ``tune``.

A subcommand's ``run`` is wrapped with :func:`tracked`, which hands it a :class:`Tracking`.
Without ``--mlflow`` every ``Tracking`` method does nothing and ``mlflow`` is never imported;
with it, mlflow's presence and the tracking store are checked before Spark starts, the run
opens when the command first logs and ends FINISHED, FAILED (an error) or KILLED (Ctrl-C)
when the command returns.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sparkvision.tuning.search import TrialCallback

log = logging.getLogger(__name__)

#: trials.json states → MLflow run status of a trial's nested run.
TRIAL_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED",
                "interrupted": "KILLED"}
#: Top-level ``metrics.json`` numbers that are settings, not metrics.
NOT_METRICS = ("top_k",)
PER_CLASS_METRICS = ("precision", "recall", "f1", "support", "roc_auc", "pr_auc")


def add_mlflow_flags(p: argparse.ArgumentParser, model: bool = False) -> None:
    """``--mlflow URI``, ``--mlflow-experiment NAME``, ``--mlflow-artifacts URI``; with
    ``model`` (a command that makes a model) also ``--register NAME``."""
    g = p.add_argument_group("experiment tracking (pip install 'sparkvision[mlflow]')")
    g.add_argument("--mlflow", metavar="URI", default=None,
                   help="log this run to the MLflow tracking store at URI, e.g. "
                   "sqlite:///mlruns.db or http://host:5000 (default: off)")
    g.add_argument("--mlflow-experiment", metavar="NAME", default="sparkvision",
                   help="MLflow experiment (created when missing; default: sparkvision)")
    g.add_argument("--mlflow-artifacts", metavar="URI", default=None,
                   help="artifact location of a new experiment (default: MLflow's, "
                   "./mlruns for a database store)")
    if model:
        g.add_argument("--register", metavar="NAME", default=None,
                       help="register the logged MLflow model (pyfunc) as a new version of "
                       "NAME in the --mlflow store's model registry (default: not registered)")


def tracked(run: Callable[[argparse.Namespace, Tracking], int]
            ) -> Callable[[argparse.Namespace], int]:
    """Wrap a subcommand's ``run(args, tracking)`` as ``run(args)``."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        with Tracking(args) as tracking:
            return run(args, tracking)

    return wrapper


class Tracking:
    """One command's optional MLflow run (``--mlflow``); a no-op when it is off."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uri: str | None = getattr(args, "mlflow", None)
        self.experiment: Any = None  # tracking.mlflow_run.MlflowExperiment
        self.run: Any = None  # tracking.mlflow_run.MlflowRun
        self.trials: _TrialRuns | None = None

    def __bool__(self) -> bool:
        return bool(self.uri)

    def __enter__(self) -> Tracking:
        register = getattr(self.args, "register", None)
        if register is not None and (not self.uri or not register.strip()):
            from sparkvision.errors import InvalidParameterError

            raise InvalidParameterError(
                "register", register, "give a model name and --mlflow URI: the model is "
                "registered in that tracking store's registry")
        if self.uri:  # before Spark starts: mlflow installed? store reachable?
            from sparkvision.tracking.mlflow_run import MlflowExperiment

            self.experiment = MlflowExperiment.connect(
                self.uri, self.args.mlflow_experiment, self.args.mlflow_artifacts)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.run is None:
            return
        status = ("FINISHED" if kind is None else
                  "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")
        try:
            if self.trials is not None:
                self.trials.close("KILLED" if status != "FINISHED" else status)
            if status == "FAILED" and exc is not None:
                self.run.set_tags({"error": f"{type(exc).__name__}: {exc}"})
            self.run.end(status)
        except Exception:  # noqa: BLE001 - never hide the command's own outcome
            log.warning("could not end MLflow run %s", self.run.run_id, exc_info=True)

    def _open(self, run_name: str, tags: Mapping[str, Any]) -> Any:
        self.run = self.experiment.start_run(
            run_name, {"sparkvision.command": self.args.command, **tags})
        return self.run

    def _done(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run.run_id}

    # ------------------------------------------------------------------ train
    def train_started(self, clf: Any) -> None:
        """Open the run, log the classifier's Params (+ data, out), log each epoch as it
        ends (``clf``'s ``onEpochEnd``, which never asks to stop)."""
        if not self:
            return
        run = self._open(Path(self.args.out).name, {"data": self.args.data})
        params = {p.name: v for p, v in clf.extractParamMap().items()}
        run.log_params({**params, "data": self.args.data, "out": self.args.out})
        warned: list[bool] = []

        def on_epoch(event: dict[str, Any]) -> None:
            try:
                run.log_epoch(event)
            except Exception:  # noqa: BLE001 - tracking never stops training
                if not warned:
                    warned.append(True)
                    log.warning("MLflow: could not log epoch %s", event.get("epoch"),
                                exc_info=True)
            return None

        clf.setOnEpochEnd(on_epoch)

    def train_finished(self, model: Any, payload: Mapping[str, Any],
                       example: Any = None) -> dict[str, Any]:
        """Epochs the callback missed, world size, test accuracy, the model folder, and the
        model as an MLflow pyfunc (``tracking/serving.py``; its input example: the first
        image of the DataFrame ``example``), registered when ``--register`` asks."""
        if not self:
            return {}
        run = self.run
        for epoch in model.history.epochs:
            run.log_epoch(epoch.to_dict())  # each epoch once: only those not logged yet
        run.log_params({"world_size": model.history.world_size})
        run.log_metrics({"test_accuracy": payload.get("test_accuracy"),
                         "epochs_run": len(model.history.epochs)})
        run.log_model_folder(self.args.out)
        return {**self._done(), **self._log_pyfunc(model, example)}

    def _log_pyfunc(self, model: Any, example: Any) -> dict[str, Any]:
        """The model's serving graph (ONNX, else TorchScript) logged as an MLflow pyfunc."""
        import tempfile

        from sparkvision.errors import ExportError
        from sparkvision.models.export import missing_onnx_packages
        from sparkvision.tracking.serving import log_pyfunc

        register = getattr(self.args, "register", None)
        frame = None
        if example is not None:
            image = model.getOrDefault(model.imageCol)
            frame = example.select(example[image].alias("image")).limit(1).toPandas()
        with tempfile.TemporaryDirectory(prefix="sparkvision-pyfunc-") as tmp:
            formats = ["torchscript"] if missing_onnx_packages() else ["onnx", "torchscript"]
            graph, error = None, None
            for fmt in formats:
                try:
                    graph = model.export(str(Path(tmp) / f"model.{fmt}"), format=fmt)
                    break
                except ExportError as exc:
                    error = exc
                    log.warning("MLflow model: %s", exc)
            if graph is None:
                if register and error is not None:
                    raise error
                return {"mlflow_model_error": str(error)}
            served = log_pyfunc(self.run, graph, graph + ".json", frame, register)
        log.info("MLflow model %s%s", served.model_uri,
                 f" registered as {register} version {served.registered_version}"
                 if register else "")
        return {"mlflow_model_uri": served.model_uri,
                "mlflow_model_version": served.registered_version}

    # ------------------------------------------------------------------ evaluate
    def evaluated(self, out: Path, plots: list[str]) -> dict[str, Any]:
        """A run with the numbers of ``out/metrics.json`` (per class: ``class_<name>_f1``,
        …), ``metrics.json`` and the plots (under ``plots/``) as artefacts."""
        if not self:
            return {}
        args = self.args
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        run = self._open(f"evaluate {Path(args.model_dir).name} on {args.split}",
                         {"model_dir": args.model_dir, "data": args.input})
        run.log_params({"model_dir": args.model_dir, "data": args.input, "split": args.split,
                        "top_k": metrics.get("top_k"), "backend": args.backend})
        run.log_metrics(evaluation_metrics(metrics))
        run.log_artifact(out / "metrics.json")
        for plot in plots:
            if Path(plot).is_dir():
                run.log_artifacts(plot, "plots")
            elif Path(plot).exists():
                run.log_artifact(plot, "plots")
        return self._done()

    # ------------------------------------------------------------------ tune
    def tune_started(self, config: Any, space: list[Any],
                     params: Mapping[str, Any]) -> list[TrialCallback]:
        """Open the study's parent run; the callback that nests one run per trial."""
        if not self:
            return []
        searched = {d.name for d in space}
        run = self._open(Path(self.args.out).name, {"data": self.args.data})
        run.log_params({
            "strategy": config.strategy, "metric": config.metric, "pruner": config.pruner,
            "trials": config.trials, "parallel": config.parallelism,
            "search_seed": config.seed, "space": space_json(space),
            "data": self.args.data, "out": self.args.out,
            **{k: v for k, v in params.items() if k not in searched},
        })
        self.trials = _TrialRuns(run)
        return [self.trials]

    def tune_finished(self, result: Any) -> dict[str, Any]:
        """best_value, trial counts, best params; trials.json and the plots."""
        if not self:
            return {}
        run = self.run
        run.log_metrics({"best_value": result.best_value,
                         **{f"trials_{k}": v for k, v in result.trials.items()}})
        if result.best_params:
            run.log_params({f"best.{k}": v for k, v in result.best_params.items()})
        trials_json = Path(result.out) / "trials.json"
        if trials_json.exists():
            run.log_artifact(trials_json)
        for plot in result.plots:
            run.log_artifact(plot, "plots")
        return self._done()


class _TrialRuns(TrialCallback):
    """One nested MLflow run per tuning trial (called from the trial threads)."""

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        self.runs: dict[int, Any] = {}
        self.lock = threading.Lock()

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        run = self.parent.child(f"trial-{number}", {"trial": number})
        with self.lock:
            self.runs[number] = run
        run.log_params(params)

    def on_epoch(self, number: int, event: dict[str, Any]) -> None:
        with self.lock:
            run = self.runs.get(number)
        if run is not None:
            run.log_epoch(event)

    def on_trial_end(self, number: int, record: dict[str, Any]) -> None:
        with self.lock:
            run = self.runs.pop(number, None)
        if run is None:
            return
        state = record.get("state", "interrupted")
        run.set_tags({"state": state, "error": record.get("error")})
        run.log_metrics({"epochs_run": record.get("epochs_run"),
                         "trial_seconds": record.get("seconds")})
        run.end(TRIAL_STATUS.get(state, "FAILED"))

    def close(self, status: str) -> None:
        """End the runs of trials that never reported their end."""
        with self.lock:
            left, self.runs = list(self.runs.values()), {}
        for run in left:
            run.end(status)


def evaluation_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of ``metrics.json`` as MLflow metrics: top-level ones by name, per-class
    ones as ``class_<name>_<metric>`` (None and settings such as ``top_k`` left out)."""
    found: dict[str, Any] = {}
    for key, value in metrics.items():
        if key not in NOT_METRICS and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            found[key] = value
    for name, row in (metrics.get("per_class") or {}).items():
        for key in PER_CLASS_METRICS:
            if row.get(key) is not None:
                found[f"class_{name}_{key}"] = row[key]
    return found


def space_json(space: list[Any]) -> str:
    """A parsed search space back as the JSON the user wrote (choices, ranges)."""
    spec: dict[str, Any] = {}
    for d in space:
        if d.kind == "choice":
            spec[d.name] = list(d.choices)
        else:
            spec[d.name] = {d.kind: [d.low, d.high], **({"step": d.step} if d.step else {})}
    return json.dumps(spec, separators=(",", ":"), default=str)
