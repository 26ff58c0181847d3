"""What a training run records: ``ImageClassificationModel.history``, a typed record with a
versioned JSON form (``history.json`` of a saved model).

The JSON is a flat object: ``"format": "sparkvision-history/2"`` and one key per field of
:class:`TrainingHistory` (the per-epoch records under ``epochs``). Histories written before
the format was versioned (no ``format`` key; some later fields absent) still load: a field
the file lacks is ``None`` (or empty). An untrained model's history is ``TrainingHistory()``:
no epochs, world size 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sparkvision.errors import DataError

#: The ``format`` written into every history; histories without one are read as before it.
HISTORY_FORMAT = "sparkvision-history/2"


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise DataError(f"{where} is {type(value).__name__}, not a JSON object: re-save the "
                        "model with this sparkvision, or move the file away")
    return value


def _need(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise DataError(f"{where} has no {key!r}: it was not written by sparkvision (or was "
                        "cut short); re-save the model, or move the file away")
    return data[key]


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value or []]


@dataclass(frozen=True)
class EpochRecord:
    """One epoch, all-reduced over the ranks. ``val_*`` are None without validation rows;
    ``epsilon`` (ε spent so far) only under ``privacy="dp"``."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    steps_per_rank: list[int]
    lr: float
    seconds: float
    samples_per_second: float
    epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The epoch as ``history.json`` and the ``onEpochEnd`` callback see it."""
        out: dict[str, Any] = {
            "epoch": self.epoch, "train_loss": self.train_loss,
            "train_accuracy": self.train_accuracy, "val_loss": self.val_loss,
            "val_accuracy": self.val_accuracy, "steps_per_rank": list(self.steps_per_rank),
            "lr": self.lr,
        }
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        out["seconds"] = self.seconds
        out["samples_per_second"] = self.samples_per_second
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "an epoch record") -> EpochRecord:
        d = _object(data, where)
        return cls(
            epoch=int(_need(d, "epoch", where)), train_loss=_need(d, "train_loss", where),
            train_accuracy=_need(d, "train_accuracy", where), val_loss=d.get("val_loss"),
            val_accuracy=d.get("val_accuracy"),
            steps_per_rank=_ints(_need(d, "steps_per_rank", where)), lr=_need(d, "lr", where),
            seconds=_need(d, "seconds", where),
            samples_per_second=_need(d, "samples_per_second", where),
            epsilon=d.get("epsilon"),
        )


@dataclass(frozen=True)
class MemoryRecord:
    """How each rank held its partition: the memory budget (MB; None: unbounded) and, per
    rank, whether it spilled to disk (0/1), the partition's size and the task's ``RssAnon``
    growth while reading it (KB).

    Also per rank (empty in histories written before they were recorded): the training
    task's process id (a reused Python worker, which keeps what earlier tasks in it
    allocated) and its ``RssAnon`` (KB) when the task started (before its first Arrow
    batch), once its data was read, at its peak (sampled after every batch and every
    0.25 s) and at the end of training."""

    budget_mb: float | None
    spilled: list[int]
    partition_kb: list[int]
    rss_anon_growth_kb: list[int]
    pid: list[int] = field(default_factory=list)
    rss_anon_start_kb: list[int] = field(default_factory=list)
    rss_anon_read_kb: list[int] = field(default_factory=list)
    rss_anon_peak_kb: list[int] = field(default_factory=list)
    rss_anon_end_kb: list[int] = field(default_factory=list)

    #: The per-rank lists added later, written only when recorded.
    LATER = ("pid", "rss_anon_start_kb", "rss_anon_read_kb", "rss_anon_peak_kb",
             "rss_anon_end_kb")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "budget_mb": self.budget_mb, "spilled": list(self.spilled),
            "partition_kb": list(self.partition_kb),
            "rss_anon_growth_kb": list(self.rss_anon_growth_kb)}
        out.update({k: list(getattr(self, k)) for k in self.LATER if getattr(self, k)})
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "memory") -> MemoryRecord:
        d = _object(data, where)
        return cls(d.get("budget_mb"), _ints(d.get("spilled")), _ints(d.get("partition_kb")),
                   _ints(d.get("rss_anon_growth_kb")),
                   *(_ints(d.get(k)) for k in cls.LATER))


@dataclass(frozen=True)
class BalanceRecord:
    """How classes were balanced: the strategy, rows per class name before balancing and
    as the training saw them, the loss's class weights (None: unweighted) and the loss."""

    strategy: str
    class_counts: dict[str, int]
    class_counts_seen: dict[str, int]
    class_weights: list[float] | None
    loss: str

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "class_counts": dict(self.class_counts),
                "class_counts_seen": dict(self.class_counts_seen),
                "class_weights": None if self.class_weights is None else list(
                    self.class_weights),
                "loss": self.loss}

    @classmethod
    def from_dict(cls, data: Any, where: str = "balance") -> BalanceRecord:
        d = _object(data, where)
        weights = d.get("class_weights")
        return cls(str(d.get("strategy")), dict(d.get("class_counts") or {}),
                   dict(d.get("class_counts_seen") or {}),
                   None if weights is None else [float(w) for w in weights],
                   str(d.get("loss")))


@dataclass(frozen=True)
class PrivacyRecord:
    """The (ε, δ) guarantee of a ``privacy="dp"`` training and how it was reached: ε spent
    (the last epoch's), δ, the target, the accountant, the noise, the sampling rate, the
    clipping norm, and whether the training stopped because one more epoch would have
    passed the target (None in histories written before that was recorded)."""

    accountant: str
    epsilon: float
    delta: float
    target_epsilon: float
    max_grad_norm: float
    noise_multiplier: float
    sample_rate: float
    stopped_at_budget: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant, "epsilon": self.epsilon, "delta": self.delta,
                "target_epsilon": self.target_epsilon, "max_grad_norm": self.max_grad_norm,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "stopped_at_budget": self.stopped_at_budget}

    @classmethod
    def from_dict(cls, data: Any, where: str = "privacy") -> PrivacyRecord:
        d = _object(data, where)
        return cls(**{k: _need(d, k, where) for k in (
            "accountant", "epsilon", "delta", "target_epsilon", "max_grad_norm",
            "noise_multiplier", "sample_rate")}, stopped_at_budget=d.get("stopped_at_budget"))


@dataclass(frozen=True)
class InitRecord:
    """What starting weights did to the network: where they came from, tensors loaded,
    keys missing / unexpected / of another shape, and whether the head was re-initialised
    (``models.parts.InitReport`` as recorded)."""

    source: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    shape_mismatched: list[str]
    head_reinitialised: bool

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "missing": list(self.missing),
                "unexpected": list(self.unexpected),
                "shape_mismatched": list(self.shape_mismatched),
                "head_reinitialised": self.head_reinitialised}

    @classmethod
    def from_dict(cls, data: Any, where: str = "transfer.init") -> InitRecord:
        d = _object(data, where)
        return cls(str(d.get("source")), int(d.get("loaded") or 0), list(d.get("missing") or []),
                   list(d.get("unexpected") or []), list(d.get("shape_mismatched") or []),
                   bool(d.get("head_reinitialised")))


@dataclass(frozen=True)
class TransferRecord:
    """Transfer learning: ``freeze`` and ``backboneLrScale`` as set, the starting weights'
    report and its one-line summary (None when the network started fresh), the head's
    module name (None unless freezing or scaling needed it) and the number of tensors
    frozen (None unless ``freeze="backbone"``)."""

    freeze: str
    backbone_lr_scale: float
    init: InitRecord | None = None
    head: str | None = None
    frozen_tensors: int | None = None
    init_summary: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"freeze": self.freeze, "backbone_lr_scale": self.backbone_lr_scale,
                               "init": None if self.init is None else self.init.to_dict(),
                               "head": self.head}
        if self.frozen_tensors is not None:
            out["frozen_tensors"] = self.frozen_tensors
        if self.init_summary is not None:
            out["init_summary"] = self.init_summary
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "transfer") -> TransferRecord:
        d = _object(data, where)
        init = d.get("init")
        return cls(str(d.get("freeze")), float(d.get("backbone_lr_scale", 1.0)),
                   None if init is None else InitRecord.from_dict(init, f"{where}.init"),
                   d.get("head"), d.get("frozen_tensors"), d.get("init_summary"))


@dataclass(frozen=True)
class TopologyRecord:
    """Where the ranks ran: the number of ``hosts`` (ranks share a host when they share a
    host name, a kernel boot and a ``/dev/shm``), ``ranks_per_host`` and ``host_names`` in
    the order of each host's lowest rank, ``host_of_rank`` (an index into those, per rank),
    and the all-reduce backend of each level: ``intra_host`` between ranks of one host
    (``shm``, ``gloo``, ``nccl``; None when every host has one rank) and ``inter_host``
    between hosts (None on one host). ``compression``: how the gradients travelled through
    the process group (``gradCompression``: none, fp16, bf16, powersgd; "none" also where
    it was asked for but not applied: ranks averaging through shared memory,
    ``privacy="dp"``, one rank; None in histories written before it was recorded)."""

    hosts: int
    ranks_per_host: list[int]
    intra_host: str | None
    inter_host: str | None
    host_names: list[str] = field(default_factory=list)
    host_of_rank: list[int] = field(default_factory=list)
    compression: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "hosts": self.hosts, "ranks_per_host": list(self.ranks_per_host),
            "intra_host": self.intra_host, "inter_host": self.inter_host,
            "host_names": list(self.host_names), "host_of_rank": list(self.host_of_rank)}
        if self.compression is not None:
            d["compression"] = self.compression
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "topology") -> TopologyRecord:
        d = _object(data, where)
        compression = d.get("compression")
        return cls(int(_need(d, "hosts", where)), _ints(d.get("ranks_per_host")),
                   d.get("intra_host"), d.get("inter_host"),
                   [str(n) for n in d.get("host_names") or []], _ints(d.get("host_of_rank")),
                   None if compression is None else str(compression))


@dataclass(frozen=True)
class TrainingHistory:
    """The record of one ``ImageClassifier.fit``: where it ran (world size, ranks, the
    process group's backend, how gradients were all-reduced, the device, the rows and the
    steps per rank — the proof that it ran distributed), each epoch, how it ended (resumed
    from a checkpoint after a failed attempt, stopped early, diverged), and what the driver
    added (progress events received, stage attempts, the watchdog's stalls that made it
    start again from a checkpoint, the checkpoint folder, transfer
    learning, class balance; under ``privacy="dp"`` the privacy guarantee). ``topology``:
    the hosts the ranks ran on and the backend between ranks of a host and between hosts
    (None in histories written before it was recorded)."""

    world_size: int = 0
    ranks: list[int] = field(default_factory=list)
    backend: str = ""
    allreduce: str | None = None
    device: str = ""
    train_rows_per_rank: list[int] = field(default_factory=list)
    val_rows_per_rank: list[int] = field(default_factory=list)
    steps_per_epoch: int = 0
    resumed_from_epoch: int | None = None
    stopped_early: int | None = None
    diverged: str | None = None
    epochs: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    privacy: PrivacyRecord | None = None
    memory: MemoryRecord | None = None
    progress_events: int = 0
    attempts: int = 0
    stalls: list[str] = field(default_factory=list)
    checkpoint_dir: str | None = None
    transfer: TransferRecord | None = None
    balance: BalanceRecord | None = None
    topology: TopologyRecord | None = None

    @property
    def last_epoch(self) -> EpochRecord | None:
        """The last epoch trained (None before any)."""
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``history.json`` (with its ``format``)."""
        out: dict[str, Any] = {
            "format": HISTORY_FORMAT, "world_size": self.world_size, "ranks": list(self.ranks),
            "backend": self.backend, "allreduce": self.allreduce, "device": self.device,
            "train_rows_per_rank": list(self.train_rows_per_rank),
            "val_rows_per_rank": list(self.val_rows_per_rank),
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from_epoch": self.resumed_from_epoch,
            "stopped_early": self.stopped_early, "diverged": self.diverged,
            "epochs": [e.to_dict() for e in self.epochs], "seconds": self.seconds,
        }
        if self.privacy is not None:
            out["privacy"] = self.privacy.to_dict()
        out.update({
            "memory": None if self.memory is None else self.memory.to_dict(),
            "progress_events": self.progress_events, "attempts": self.attempts,
            "checkpoint_dir": self.checkpoint_dir,
            "transfer": None if self.transfer is None else self.transfer.to_dict(),
            "balance": None if self.balance is None else self.balance.to_dict(),
        })
        if self.stalls:  # recorded since a stall starts the training again
            out["stalls"] = list(self.stalls)
        if self.topology is not None:  # recorded since multi-host training
            out["topology"] = self.topology.to_dict()
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the training history") -> TrainingHistory:
        """A history from its JSON object: this format, or the unversioned one before it;
        ``DataError`` naming ``where`` for anything else."""
        d = _object(data, where)
        found = d.get("format")
        if found is not None and found != HISTORY_FORMAT:
            raise DataError(
                f"{where} has format {found!r} but this sparkvision reads {HISTORY_FORMAT!r} "
                "(and the unversioned histories before it): read it with the sparkvision "
                "that wrote it, or a newer one")

        def sub(key: str, kind: Any) -> Any:
            value = d.get(key)
            return None if value is None else kind.from_dict(value, f"{where}: {key}")

        epochs = _need(d, "epochs", where)
        if not isinstance(epochs, list):
            raise DataError(f"{where}: 'epochs' is not a list: re-save the model, or move "
                            "the file away")
        return cls(
            world_size=int(_need(d, "world_size", where)), ranks=_ints(_need(d, "ranks", where)),
            backend=str(d.get("backend") or ""), allreduce=d.get("allreduce"),
            device=str(d.get("device") or ""),
            train_rows_per_rank=_ints(d.get("train_rows_per_rank")),
            val_rows_per_rank=_ints(d.get("val_rows_per_rank")),
            steps_per_epoch=int(d.get("steps_per_epoch") or 0),
            resumed_from_epoch=d.get("resumed_from_epoch"),
            stopped_early=d.get("stopped_early"), diverged=d.get("diverged"),
            epochs=[EpochRecord.from_dict(e, f"{where}: epochs[{i}]")
                    for i, e in enumerate(epochs)],
            seconds=float(d.get("seconds") or 0.0), privacy=sub("privacy", PrivacyRecord),
            memory=sub("memory", MemoryRecord),
            progress_events=int(d.get("progress_events") or 0),
            attempts=int(d.get("attempts") or 0),
            stalls=[str(m) for m in d.get("stalls") or []],
            checkpoint_dir=d.get("checkpoint_dir"),
            transfer=sub("transfer", TransferRecord), balance=sub("balance", BalanceRecord),
            topology=sub("topology", TopologyRecord),
        )

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "the training history"
                  ) -> TrainingHistory:
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{where} is not JSON ({exc}): re-save the model, or move the "
                            "file away") from None
        return cls.from_dict(data, where)
