"""``tune``: search ImageClassifier Params with Optuna; each trial is a Spark barrier job.

- Optuna samples (grid, random or TPE for ``bayes``) and prunes (median or successive
  halving) on each trial's per-epoch metric. A pruned trial stops its running training at
  the end of that epoch: the driver's answer to rank 0's epoch event says stop, every rank
  leaves the loop together and the barrier job ends normally.
- Up to ``parallelism`` trials run at once, from driver threads, each in its own Spark job
  group, and never more than the cluster's free task slots allow (a slot pool).
- The study lives in Optuna's RDB storage (SQLite in ``out`` by default): run again with the
  same ``out`` after a crash and it continues, keeping every finished trial; trials a crash
  interrupted are marked failed and queued again with their parameters.
- ``callbacks`` (:class:`TrialCallback`) see each trial start, each of its epochs and its end
  (e.g. experiment tracking); they run in the trial threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparkvision.errors import (
    InvalidParameterError,
    SparkVisionError,
    TrainingCancelledError,
    user_error_message,
)
from sparkvision.settings import TrainSettings, row
from sparkvision.tuning.space import Dimension, grid_of, grid_size, parse_space

log = logging.getLogger(__name__)

STRATEGIES = ("grid", "random", "bayes")
PRUNERS = ("median", "halving", "none")
#: Per-epoch metrics a trial can be judged (and pruned) on, with their direction.
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize",
           "train_accuracy": "maximize", "train_loss": "minimize"}
STUDY_NAME = "sparkvision"
TRIALS_FILE = "trials.json"
DEFAULT_TRIALS = 10
OUTCOMES = ("complete", "pruned", "failed")


@dataclass(frozen=True)
class TuneConfig:
    """How to search; checked by ``check`` before any Spark job runs."""

    out: str
    strategy: str = "bayes"
    trials: int | None = None  # None: the grid's size (grid) or DEFAULT_TRIALS
    parallelism: int = 1
    metric: str = "val_accuracy"
    pruner: str = "median"
    seed: int = 0
    storage: str | None = None  # any SQLAlchemy URL; default sqlite in ``out``

    def check(self, space: list[Dimension]) -> int:
        """Validate; return the number of finished trials the study should reach."""
        if self.strategy not in STRATEGIES:
            raise InvalidParameterError("strategy", self.strategy,
                                        f"use one of {', '.join(STRATEGIES)}")
        if self.pruner not in PRUNERS:
            raise InvalidParameterError("pruner", self.pruner, f"use one of {', '.join(PRUNERS)}")
        if self.metric not in METRICS:
            raise InvalidParameterError("metric", self.metric,
                                        f"use one of {', '.join(METRICS)}")
        if self.parallelism < 1:
            raise InvalidParameterError("parallel", self.parallelism, "use 1 or more")
        if self.trials is not None and self.trials < 1:
            raise InvalidParameterError("trials", self.trials, "use 1 or more")
        if self.strategy == "grid":
            size = grid_size(space)
            return min(self.trials or size, size)
        return self.trials or DEFAULT_TRIALS

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


@dataclass
class TuneResult:
    best_params: dict[str, Any] | None
    best_value: float | None
    metric: str
    direction: str
    trials: dict[str, int]  # finished trials by state
    best_model: str | None
    seconds: float
    out: str
    storage: str
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrialCallback:
    """Hooks a search calls for every trial it runs; override any of them.

    They are called from the trial threads (up to ``parallelism`` at once), so they must be
    thread-safe. One that raises is logged and ignored: it never stops a trial or the search.
    """

    def on_trial_start(self, number: int, params: dict[str, Any]) -> None:
        """Trial ``number`` starts training with the searched ``params``."""

    def on_epoch(self, number: int, event: dict[str, Any]) -> None:
        """An epoch of trial ``number`` ended (the training progress event: ``epoch``,
        ``train_loss``, ``val_accuracy``, …), before the pruner decides."""

    def on_trial_end(self, number: int, record: dict[str, Any]) -> None:
        """Trial ``number`` ended; ``record`` is its ``trials.json`` entry (``state``:
        complete, pruned, failed or interrupted; ``value``; ``metric_per_epoch``; …)."""


class SlotPool:
    """Counts free task slots; a trial holds ``numWorkers`` of them while it trains."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._free >= n)
            self._free -= n
        try:
            yield
        finally:
            with self._cond:
                self._free += n
                self._cond.notify_all()


def _sampler(strategy: str, space: list[Dimension], seed: int):
    import optuna

    if strategy == "grid":

        class CountedGridSampler(optuna.samplers.GridSampler):
            """Optuna's grid sampler; the search counts trials itself, so the sampler must
            not call ``study.stop()`` (which only works inside ``study.optimize``) when
            the last grid point is told."""

            def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
                return None

        return CountedGridSampler(grid_of(space), seed=seed)
    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, len(space) * 2)))


def _pruner(name: str):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One ``tune`` per output folder at a time (so RUNNING trials found are orphans)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tune.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidParameterError(
                "out", str(out), "another `sparkvision tune` is running on this folder: wait "
                "for it or use another --out") from None
        yield


def _trial_record(t: Any) -> dict[str, Any]:
    attrs = t.user_attrs
    return {
        "number": t.number, "params": t.params, "state": attrs.get("outcome", "interrupted"),
        "metric_per_epoch": attrs.get("curve", []), "value": t.value,
        "epochs_run": attrs.get("epochs_run"), "epochs": attrs.get("epochs"),
        "workers": attrs.get("workers"), "seconds": attrs.get("seconds"),
        "error": attrs.get("error"), "prune_to_free_s": attrs.get("prune_to_free_s"),
        "retry_of": attrs.get("retry_of"),
    }


class _Search:
    """One run of a study: the driver threads, the slot pool, the records."""

    def __init__(self, spark, train_df, val_df, space: list[Dimension], config: TuneConfig,
                 params: dict[str, Any], study, pool: SlotPool, show_progress: bool,
                 callbacks: Sequence[TrialCallback] = ()) -> None:
        self.spark, self.train_df, self.val_df = spark, train_df, val_df
        self.space, self.config, self.params = space, config, params
        self.study, self.pool = study, pool
        self.out = Path(config.out)
        self.lock = threading.Lock()
        self.show_progress = show_progress
        self.bar: Any = None
        self.interrupted = False
        self.callbacks = tuple(callbacks)

    def notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` on every callback; one that raises is logged, not fatal."""
        for callback in self.callbacks:
            try:
                getattr(callback, hook)(*args)
            except Exception:  # noqa: BLE001 - a callback never stops a trial
                log.warning("tuning callback %s.%s failed", type(callback).__name__, hook,
                            exc_info=True)

    def finished(self) -> list[Any]:
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get("outcome") in OUTCOMES]

    def write_trials(self) -> None:
        records = [_trial_record(t) for t in self.study.get_trials(deepcopy=False)]
        tmp = self.out / (TRIALS_FILE + ".tmp")
        tmp.write_text(json.dumps(records, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out / TRIALS_FILE)

    def run(self, total: int) -> None:
        from sparkvision.display import progress

        done = len(self.finished())
        todo = max(0, total - done)
        self.launched = 0
        self.bar = progress(total, "tune", unit="trial", initial=done,
                            enabled=self.show_progress)
        pool = ThreadPoolExecutor(max_workers=self.config.parallelism,
                                  thread_name_prefix="sparkvision-trial")
        try:
            futures = [pool.submit(self._worker, todo)
                       for _ in range(min(self.config.parallelism, todo))]
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            # Ctrl-C: cancel the running trials' jobs; they are queued again (not counted)
            # and the next run with the same folder continues the study.
            self.interrupted = True
            from sparkvision.session.jobs import cancel_jobs

            cancel_jobs(self.spark)  # classic: cancelAllJobs; Spark Connect: interruptAll
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            self.bar.close()

    def _worker(self, todo: int) -> None:
        while True:
            with self.lock:
                if self.launched >= todo or self.interrupted:
                    return
                self.launched += 1
                trial = self.study.ask()
            try:
                self._run_trial(trial)
            finally:
                if self.callbacks:
                    self.notify("on_trial_end", trial.number, self._record(trial.number))
            with self.lock:
                self.write_trials()
                self.bar.update(1)
                with contextlib.suppress(ValueError):
                    self.bar.set_postfix(best=f"{self.study.best_value:.4f}")

    def _record(self, number: int) -> dict[str, Any]:
        found = [t for t in self.study.get_trials(deepcopy=False) if t.number == number]
        return _trial_record(found[0]) if found else {"number": number, "state": "interrupted"}

    def _run_trial(self, trial: Any) -> None:
        from optuna.trial import TrialState

        from sparkvision.ml.classifier import ImageClassifier

        metric = self.config.metric
        values = {d.name: d.suggest(trial) for d in self.space}
        params = {**self.params, **values}
        workers = int(params.get("numWorkers", row(TrainSettings, "numWorkers").default))
        epochs = int(params.get("epochs", row(TrainSettings, "epochs").default))
        curve: list[float] = []
        pruned_at: list[float] = []

        def on_epoch(event: dict[str, Any]) -> bool:
            self.notify("on_epoch", trial.number, event)
            value = event.get(metric)
            if value is None or not math.isfinite(value):
                return False
            curve.append(float(value))
            trial.report(float(value), int(event["epoch"]))
            log.info("trial %d epoch %s/%d %s=%.4f", trial.number, event["epoch"], epochs,
                     metric, value)
            if trial.should_prune():
                pruned_at.append(time.monotonic())
                return True
            return False

        self.notify("on_trial_start", trial.number, dict(values))
        clf = ImageClassifier(**params).setValidationDf(self.val_df)
        clf.setOnEpochEnd(on_epoch).setShowProgress(False)
        trial.set_user_attr("workers", workers)
        trial.set_user_attr("epochs", epochs)
        started = time.monotonic()
        error: str | None = None
        cancelled = False
        model = None
        from sparkvision.session.jobs import tagged_jobs

        with self.pool.hold(workers), tagged_jobs(
                self.spark, f"sparkvision-tune-trial-{trial.number}",
                f"sparkvision tune trial {trial.number}: {values}"):
            try:
                model = clf.fit(self.train_df)
            except Exception as exc:  # noqa: BLE001 - a failed trial is recorded, search goes on
                cancelled = isinstance(exc, TrainingCancelledError)
                error = user_error_message(exc) or f"{type(exc).__name__}: {exc}"[:500]
                if not isinstance(exc, SparkVisionError) and user_error_message(exc) is None:
                    log.warning("trial %d failed", trial.number, exc_info=True)
        freed = time.monotonic()
        trial.set_user_attr("seconds", round(freed - started, 3))
        trial.set_user_attr("curve", curve)
        if model is not None:
            trial.set_user_attr("epochs_run", len(model.history.epochs))
        if error is not None and (self.interrupted or cancelled):
            # Its job was cancelled (Ctrl-C, or by hand): not a result. Queue it again.
            log.warning("trial %d interrupted; queued again", trial.number)
            self.study.tell(trial, state=TrialState.FAIL)
            self.study.enqueue_trial(values, user_attrs={"retry_of": trial.number})
            return
        if error is not None:
            trial.set_user_attr("outcome", "failed")
            trial.set_user_attr("error", error)
            log.warning("trial %d failed: %s", trial.number, error)
            self.study.tell(trial, state=TrialState.FAIL)
            return
        assert model is not None
        if model.history.stopped_early:
            trial.set_user_attr("outcome", "pruned")
            if pruned_at:
                trial.set_user_attr("prune_to_free_s", round(freed - pruned_at[0], 3))
            log.info("trial %d pruned after epoch %s", trial.number,
                     model.history.stopped_early)
            self.study.tell(trial, state=TrialState.PRUNED)
            return
        value = getattr(model.history.epochs[-1], metric)  # METRICS are EpochRecord fields
        if value is None or not math.isfinite(value):
            trial.set_user_attr("outcome", "failed")
            trial.set_user_attr("error", f"{metric} is {value}")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        model.write().overwrite().save(str(self.out / "trials" / f"trial-{trial.number}"))
        trial.set_user_attr("outcome", "complete")
        self.study.tell(trial, float(value))


def _requeue_interrupted(study, space: list[Dimension]) -> int:
    """Trials left RUNNING by a crash (we hold the folder's lock): failed, then queued again."""
    from optuna.trial import TrialState

    names = {d.name for d in space}
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        if set(t.params) == names:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        count += 1
    return count


def _plots(study, out: Path) -> list[str]:
    """Optuna's matplotlib optimisation history and parameter importances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written = []
    for name, plot in (("optimization_history.png", ovm.plot_optimization_history),
                       ("param_importances.png", ovm.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental-API and importance notes
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)
            written.append(str(out / name))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("plot %s skipped: %s", name, exc)  # e.g. importances need 2+ trials
    return written


def tune(
    train_df, val_df, space: str | dict[str, Any] | list[Dimension], config: TuneConfig,
    params: dict[str, Any] | None = None, show_progress: bool = True,
    callbacks: Sequence[TrialCallback] = (),
) -> TuneResult:
    """Search ``space`` over ImageClassifier Params; ``params`` fixes the others;
    ``callbacks`` see every trial start, epoch and end."""
    import optuna

    from sparkvision.training.launcher import available_slots

    started = time.monotonic()
    dims = space if isinstance(space, list) else parse_space(space)
    total = config.check(dims)
    params = dict(params or {})
    if config.metric.startswith("val_") and val_df is None:
        raise InvalidParameterError("metric", config.metric,
                                    "give validation data (val_df) or use a train_* metric")
    spark = train_df.sparkSession
    slots = available_slots(spark)
    most = max([int(params.get("numWorkers", row(TrainSettings, "numWorkers").default))]
               + [int(v) for d in dims if d.name == "numWorkers"
                  for v in (d.choices or (d.high,))])
    if most > slots:
        from sparkvision.errors import ClusterCapacityError

        raise ClusterCapacityError(
            f"a trial needs {most} concurrent task slots (numWorkers) but the cluster has "
            f"{slots}: lower numWorkers or add executors/cores")
    out = Path(config.out)
    direction = METRICS[config.metric]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _exclusive(out):
        storage = optuna.storages.RDBStorage(
            config.storage_url(), engine_kwargs={"connect_args": {"timeout": 60}}
            if config.storage_url().startswith("sqlite") else None)
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, direction=direction,
            sampler=_sampler(config.strategy, dims, config.seed),
            pruner=_pruner(config.pruner), load_if_exists=True)
        known = study.user_attrs.get("metric")
        if known not in (None, config.metric):
            raise InvalidParameterError(
                "metric", config.metric, f"{out} holds a study of {known}: use --metric "
                f"{known} to continue it, or another --out")
        study.set_user_attr("metric", config.metric)
        requeued = _requeue_interrupted(study, dims)
        if requeued:
            log.warning("continuing the study in %s: %d interrupted trial(s) queued again",
                        out, requeued)
        search = _Search(spark, train_df, val_df, dims, config, params, study,
                         SlotPool(slots), show_progress, callbacks)
        search.run(total)
        search.write_trials()
        best_model, best_params, best_value = _keep_best(study, out)
        plots = _plots(study, out)
    counts = {s: 0 for s in (*OUTCOMES, "interrupted")}
    for t in study.get_trials(deepcopy=False):
        counts[t.user_attrs.get("outcome", "interrupted")] += 1
    return TuneResult(
        best_params=best_params, best_value=best_value, metric=config.metric,
        direction=direction, trials=counts, best_model=best_model,
        seconds=round(time.monotonic() - started, 3), out=str(out),
        storage=config.storage_url(), plots=plots,
    )


def _keep_best(study, out: Path) -> tuple[str | None, dict[str, Any] | None, float | None]:
    """Copy the best trial's model to ``out/best``; drop the other trials' models."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        return None, None, None
    source = out / "trials" / f"trial-{best.number}"
    target = out / "best"
    if source.exists():
        tmp = out / "best.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for folder in (out / "trials").iterdir():
            if folder != source:
                shutil.rmtree(folder, ignore_errors=True)
    return (str(target) if target.exists() else None), dict(best.params), float(best.value)
