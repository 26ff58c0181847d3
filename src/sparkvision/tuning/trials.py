"""Running a study's trials: up to ``parallelism`` driver threads ask Optuna for a trial,
train it (one ``ImageClassifier.fit``, a Spark barrier job under its own job tag, holding
``numWorkers`` task slots of the :class:`SlotPool`), report each epoch to the pruner, tell
Optuna the outcome and write ``trials.json``; trials a crash left running are queued again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkvision.errors import SparkVisionError, TrainingCancelledError, user_error_message
from sparkvision.settings import TrainSettings, row
from sparkvision.tuning.space import Dimension

if TYPE_CHECKING:
    from sparkvision.tuning.search import TrialCallback, TuneConfig

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.json"
OUTCOMES = ("complete", "pruned", "failed")


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


def trial_record(t: Any) -> dict[str, Any]:
    """The ``trials.json`` entry of Optuna trial ``t``."""
    attrs = t.user_attrs
    return {
        "number": t.number, "params": t.params, "state": attrs.get("outcome", "interrupted"),
        "metric_per_epoch": attrs.get("curve", []), "value": t.value,
        "epochs_run": attrs.get("epochs_run"), "epochs": attrs.get("epochs"),
        "workers": attrs.get("workers"), "seconds": attrs.get("seconds"),
        "error": attrs.get("error"), "prune_to_free_s": attrs.get("prune_to_free_s"),
        "retry_of": attrs.get("retry_of"),
    }


class StudyRun:
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
        records = [trial_record(t) for t in self.study.get_trials(deepcopy=False)]
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
        return trial_record(found[0]) if found else {"number": number, "state": "interrupted"}

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


def requeue_interrupted(study, space: list[Dimension]) -> int:
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
