"""What a folder holds: models, prepared data sets, evaluations, tuning studies and stream
outputs, found by the files each command leaves (no Spark session).

* a model folder (``train --out``, ``tune``'s ``best/``): ``history.json`` + ``metadata/``,
  maybe ``dataset.json`` (the prepared data it was trained on) and
  ``evaluation/*/metrics.json`` with PNGs beside them;
* a prepared data set (``prepare --out``): ``dataset.json``;
* a tuning study (``tune --out``): ``trials.json``, its PNGs and ``best/``;
* a stream output (``stream --out``): ``_stream.json``;
* an evaluation elsewhere (``evaluate --out``): ``metrics.json``;
* an explanation (``explain --out``): ``explain.json`` with its PNGs, inside a model folder
  under ``explanations/*/`` (``explain``'s default) or anywhere else;
* any other folder: searched for all of these, ``MAX_DEPTH`` levels down.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparkvision.errors import DataError
from sparkvision.reporting.reading import read_json, read_params, study_metric
from sparkvision.training.history import TrainingHistory

HISTORY_FILE = "history.json"
METADATA_DIR = "metadata"
DATASET_FILE = "dataset.json"
METRICS_FILE = "metrics.json"
TRIALS_FILE = "trials.json"
STREAM_FILE = "_stream.json"
EXPLAIN_FILE = "explain.json"
AUDIT_FILE = "audit.json"
AUDIT_DIR = "audit"
EVALUATION_DIR = "evaluation"
EXPLANATIONS_DIR = "explanations"
BEST_DIR = "best"
STUDY_PNGS = ("optimization_history.png", "param_importances.png")
#: Evaluation PNGs in the order a report shows them (any other PNG follows, by name).
EVALUATION_PNGS = ("confusion_matrix.png", "confusion_matrix_normalized.png", "per_class.png",
                   "reliability.png", "samples.png")
#: How deep below the given folder the search looks, and how many folders it opens at most.
MAX_DEPTH = 4
MAX_FOLDERS = 5000
#: Folders never searched: Spark data (shards, micro-batches, staging), checkpoints, caches.
SKIP_NAMES = frozenset({"train", "val", "test", "_staging", "_rejected", "trials", "metadata",
                        "__pycache__", "offsets", "commits", "sources", "state"})
SKIP_PREFIXES = ("batch=", ".")
LOOKED_FOR = (f"a model folder ({HISTORY_FILE} + {METADATA_DIR}/), a prepared data set "
              f"({DATASET_FILE}), an evaluation ({METRICS_FILE}), a tuning study "
              f"({TRIALS_FILE}), a stream output ({STREAM_FILE}), an explanation "
              f"({EXPLAIN_FILE}) or a data audit ({AUDIT_FILE})")


@dataclass
class Dataset:
    """A prepared data set's manifest, and every place it was found (a prepared folder, the
    copy in model folders)."""

    paths: list[Path]
    manifest: dict[str, Any]


@dataclass
class Evaluation:
    """One ``evaluate`` output folder: its ``metrics.json`` and the PNGs beside it."""

    path: Path
    metrics: dict[str, Any]
    pngs: list[Path]

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Explanation:
    """One ``explain`` output folder: its ``explain.json`` (method, target, per image: file,
    true and predicted class, score; per class: the mean map's file)."""

    path: Path
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    def png(self, rel: Any) -> Path | None:
        """The PNG a record names (``images/…``, ``means/…``), when it is inside the folder."""
        if not isinstance(rel, str) or not rel.endswith(".png"):
            return None
        path = (self.path / rel).resolve()
        return path if path.is_relative_to(self.path.resolve()) and path.is_file() else None


@dataclass
class Model:
    """A model folder: Params (all, and the names set explicitly), training history, the
    data set it was trained on (when ``dataset.json`` was copied in) and its evaluations."""

    path: Path
    params: dict[str, Any]
    explicit: set[str]
    history: TrainingHistory
    dataset: Dataset | None
    evaluations: list[Evaluation]
    role: str = "model"
    explanations: list[Explanation] = field(default_factory=list)

    def headline(self) -> Evaluation | None:
        """The evaluation a summary quotes: on ``test`` when there is one, else the first."""
        for evaluation in self.evaluations:
            if evaluation.name == "test":
                return evaluation
        return self.evaluations[0] if self.evaluations else None


@dataclass
class Study:
    """A tuning study: ``trials.json`` records, metric and direction (from ``study.db``
    when present), the Optuna PNGs and the best model."""

    path: Path
    trials: list[dict[str, Any]]
    metric: str | None
    direction: str | None
    pngs: list[Path]
    best: Model | None

    def best_trial(self) -> dict[str, Any] | None:
        """The complete trial with the best value (larger is better unless the study says
        ``minimize``)."""
        done = [t for t in self.trials
                if t.get("state") == "complete" and isinstance(t.get("value"), int | float)]
        if not done:
            return None
        pick = min if self.direction == "minimize" else max
        return pick(done, key=lambda t: float(t["value"]))


@dataclass
class Audit(Explanation):
    """One ``audit`` output folder: its ``audit.json`` (counts, first pairs and outliers,
    the worst cases' PNGs under ``worst/``)."""


@dataclass
class Stream:
    """A stream output folder's ``_stream.json`` (summary + per-micro-batch records)."""

    path: Path
    stats: dict[str, Any]


@dataclass
class Artefacts:
    """Everything found under ``root``."""

    root: Path
    models: list[Model] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)
    studies: list[Study] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)  # not inside a model folder
    explanations: list[Explanation] = field(default_factory=list)  # not inside a model folder
    audits: list[Audit] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.models or self.datasets or self.studies or self.streams
                    or self.evaluations or self.explanations or self.audits)

    def all_models(self) -> list[Model]:
        """Model folders, then the studies' best models."""
        return self.models + [s.best for s in self.studies if s.best is not None]


def is_model(folder: Path) -> bool:
    return (folder / HISTORY_FILE).is_file() and (folder / METADATA_DIR).is_dir()


def _pngs(folder: Path, order: tuple[str, ...]) -> list[Path]:
    found = sorted(p for p in folder.glob("*.png") if p.is_file())
    rank = {name: i for i, name in enumerate(order)}
    return sorted(found, key=lambda p: (rank.get(p.name, len(order)), p.name))


def _evaluation(folder: Path) -> Evaluation:
    metrics = read_json(folder / METRICS_FILE)
    if not isinstance(metrics, dict):
        raise DataError(f"{folder / METRICS_FILE} is not a JSON object: re-run "
                        "`sparkvision evaluate` into that folder")
    return Evaluation(folder, metrics, _pngs(folder, EVALUATION_PNGS))


def _explanation(folder: Path) -> Explanation:
    summary = read_json(folder / EXPLAIN_FILE)
    if not isinstance(summary, dict):
        raise DataError(f"{folder / EXPLAIN_FILE} is not a JSON object: re-run "
                        "`sparkvision explain` into that folder")
    return Explanation(folder, summary)


class _Finder:
    """One search: remembers data sets by content so a manifest copied into a model folder
    and its prepared folder are one data set."""

    def __init__(self, root: Path) -> None:
        self.found = Artefacts(root)
        self.by_content: dict[str, Dataset] = {}
        self.opened = 0

    def dataset(self, file: Path) -> Dataset:
        manifest = read_json(file)
        if not isinstance(manifest, dict):
            raise DataError(f"{file} is not a JSON object: re-run `sparkvision prepare`")
        # `train` adds "data" (the prepared folder) to the copy it keeps in a model folder.
        key = json.dumps({k: v for k, v in manifest.items() if k != "data"}, sort_keys=True,
                         default=str)
        known = self.by_content.get(key)
        if known is not None:
            if file.parent not in known.paths:
                known.paths.append(file.parent)
            return known
        data = Dataset([file.parent], manifest)
        self.by_content[key] = data
        self.found.datasets.append(data)
        return data

    def model(self, folder: Path, role: str = "model") -> Model:
        found = read_json(folder / HISTORY_FILE)
        history = (TrainingHistory.from_dict(found, str(folder / HISTORY_FILE))
                   if isinstance(found, dict) else TrainingHistory())
        params, explicit = read_params(folder)
        manifest = folder / DATASET_FILE
        dataset = self.dataset(manifest) if manifest.is_file() else None
        evaluations = []
        eval_root = folder / EVALUATION_DIR
        if eval_root.is_dir():
            evaluations = [_evaluation(d) for d in sorted(eval_root.iterdir())
                           if d.is_dir() and (d / METRICS_FILE).is_file()]
        explanations = []
        explain_root = folder / EXPLANATIONS_DIR
        if explain_root.is_dir():
            explanations = [_explanation(d) for d in sorted(explain_root.iterdir())
                            if d.is_dir() and (d / EXPLAIN_FILE).is_file()]
        return Model(folder, params, explicit, history, dataset, evaluations, role,
                     explanations)

    def study(self, folder: Path) -> Study:
        trials = read_json(folder / TRIALS_FILE)
        if not isinstance(trials, list):
            raise DataError(f"{folder / TRIALS_FILE} is not a JSON list of trials: re-run "
                            "`sparkvision tune` on that folder to rewrite it")
        metric, direction = study_metric(folder)
        best_dir = folder / BEST_DIR
        best = self.model(best_dir, f"best model of study {folder.name}") \
            if is_model(best_dir) else None
        pngs = _pngs(folder, STUDY_PNGS)
        return Study(folder, [t for t in trials if isinstance(t, dict)], metric, direction,
                     pngs, best)

    def audit(self, folder: Path) -> None:
        summary = read_json(folder / AUDIT_FILE)
        if not isinstance(summary, dict):
            raise DataError(f"{folder / AUDIT_FILE} is not a JSON object: re-run "
                            "`sparkvision audit` into that folder")
        self.found.audits.append(Audit(folder, summary))

    def visit(self, folder: Path, depth: int) -> None:
        """Classify ``folder``; search below it when it is none of the known kinds."""
        self.opened += 1
        found = self.found
        if is_model(folder):
            found.models.append(self.model(folder))
        elif (folder / TRIALS_FILE).is_file():
            found.studies.append(self.study(folder))
        elif (folder / STREAM_FILE).is_file():
            stats = read_json(folder / STREAM_FILE)
            found.streams.append(Stream(folder, stats if isinstance(stats, dict) else {}))
        elif (folder / DATASET_FILE).is_file():
            self.dataset(folder / DATASET_FILE)
            if (folder / AUDIT_DIR / AUDIT_FILE).is_file():  # `audit`'s default output
                self.audit(folder / AUDIT_DIR)
        elif (folder / AUDIT_FILE).is_file():
            self.audit(folder)
        elif (folder / METRICS_FILE).is_file():
            found.evaluations.append(_evaluation(folder))
        elif (folder / EXPLAIN_FILE).is_file():
            found.explanations.append(_explanation(folder))
        elif depth < MAX_DEPTH and not (folder / "_SUCCESS").exists():
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                return
            for child in children:
                if self.opened >= MAX_FOLDERS:
                    return
                if child.name in SKIP_NAMES or child.name.startswith(SKIP_PREFIXES):
                    continue
                self.visit(child, depth + 1)


def find_artefacts(path: str | Path) -> Artefacts:
    """Everything ``report`` can show in the folder ``path`` (see the module docstring);
    DataError when it is not a folder or holds none of it."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            f"no folder at {str(path)!r}: give a model folder, a tuning study, a stream "
            "output or a run folder holding them"
        )
    finder = _Finder(root)
    finder.visit(root, 0)
    if finder.found.empty:
        raise DataError(
            f"nothing to report in {str(path)!r}: looked for {LOOKED_FOR} in it and "
            f"{MAX_DEPTH} levels below; point at a folder written by a sparkvision command"
        )
    return finder.found
