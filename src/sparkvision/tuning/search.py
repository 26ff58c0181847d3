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
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sparkvision import extras
from sparkvision.errors import InvalidParameterError
from sparkvision.settings import TrainSettings, row
from sparkvision.tuning.results import keep_best, write_plots
from sparkvision.tuning.space import Dimension, grid_of, grid_size, parse_space
from sparkvision.tuning.trials import OUTCOMES, SlotPool, StudyRun, requeue_interrupted

log = logging.getLogger(__name__)

STRATEGIES = ("grid", "random", "bayes")
PRUNERS = ("median", "halving", "none")
#: Per-epoch metrics a trial can be judged (and pruned) on, with their direction.
METRICS: dict[str, Literal["maximize", "minimize"]] = {
    "val_accuracy": "maximize", "val_loss": "minimize",
    "train_accuracy": "maximize", "train_loss": "minimize"}
STUDY_NAME = "sparkvision"
DEFAULT_TRIALS = 10


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
        extras.require("tune", "a hyper-parameter search")
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
        requeued = requeue_interrupted(study, dims)
        if requeued:
            log.warning("continuing the study in %s: %d interrupted trial(s) queued again",
                        out, requeued)
        search = StudyRun(spark, train_df, val_df, dims, config, params, study,
                          SlotPool(slots), show_progress, callbacks)
        search.run(total)
        search.write_trials()
        best_model, best_params, best_value = keep_best(study, out)
        plots = write_plots(study, out)
    counts = {s: 0 for s in (*OUTCOMES, "interrupted")}
    for t in study.get_trials(deepcopy=False):
        counts[t.user_attrs.get("outcome", "interrupted")] += 1
    return TuneResult(
        best_params=best_params, best_value=best_value, metric=config.metric,
        direction=direction, trials=counts, best_model=best_model,
        seconds=round(time.monotonic() - started, 3), out=str(out),
        storage=config.storage_url(), plots=plots,
    )
