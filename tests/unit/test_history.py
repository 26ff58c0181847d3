"""The typed training history: its versioned JSON, and the unversioned history.json files
sparkvision wrote before the format had a version."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sparkvision.errors import DataError
from sparkvision.training.history import (
    HISTORY_FORMAT,
    BalanceRecord,
    EpochRecord,
    InitRecord,
    MemoryRecord,
    PrivacyRecord,
    TopologyRecord,
    TrainingHistory,
    TransferRecord,
)


def _epoch(n: int, **extra: Any) -> dict[str, Any]:
    return {"epoch": n, "train_loss": 1.7 / n, "train_accuracy": 0.5 + 0.1 * n,
            "val_loss": 1.2 / n, "val_accuracy": 0.8 + 0.05 * n, "steps_per_rank": [12, 12],
            "lr": 0.003 / n, **extra, "seconds": 0.35, "samples_per_second": 4388.6}


#: history.json as `sparkvision train` wrote it before the format was versioned (the keys,
#: their order and the nesting of a real file, cut to two epochs and three classes).
UNVERSIONED: dict[str, Any] = {
    "world_size": 2, "ranks": [0, 1], "backend": "gloo", "allreduce": "shm", "device": "cpu",
    "train_rows_per_rank": [719, 720], "val_rows_per_rank": [90, 89], "steps_per_epoch": 12,
    "resumed_from_epoch": None, "stopped_early": None, "diverged": None,
    "epochs": [_epoch(1), _epoch(2)], "seconds": 1.755,
    "memory": {"budget_mb": 4786.265, "spilled": [0, 0], "partition_kb": [50, 50],
               "rss_anon_growth_kb": [4, 29928]},
    "progress_events": 2, "attempts": 1, "checkpoint_dir": None,
    "transfer": {"freeze": "none", "backbone_lr_scale": 1.0, "init": None, "head": None},
    "balance": {"strategy": "none", "class_counts": {"0": 142, "1": 146, "2": 141},
                "class_counts_seen": {"0": 142, "1": 146, "2": 141}, "class_weights": None,
                "loss": "cross_entropy"},
}

#: The first history.json sparkvision wrote: no allreduce, stopped_early, diverged, memory,
#: transfer, balance or privacy yet.
FIRST: dict[str, Any] = {
    "world_size": 2, "ranks": [0, 1], "backend": "gloo", "device": "cpu",
    "train_rows_per_rank": [700, 700], "val_rows_per_rank": [0, 0], "steps_per_epoch": 11,
    "resumed_from_epoch": 3,
    "epochs": [_epoch(1), dict(_epoch(2), val_loss=None, val_accuracy=None)],
    "seconds": 9.5, "progress_events": 1, "attempts": 2, "checkpoint_dir": "/tmp/ck",
}


def test_an_unversioned_history_loads_into_attributes_and_writes_the_same_json():
    h = TrainingHistory.from_json(json.dumps(UNVERSIONED, indent=2))
    assert h.world_size == 2 and h.ranks == [0, 1] and h.allreduce == "shm"
    assert h.train_rows_per_rank == [719, 720] and h.steps_per_epoch == 12
    assert [e.epoch for e in h.epochs] == [1, 2] and h.last_epoch == h.epochs[1]
    assert h.epochs[1].val_accuracy == pytest.approx(0.9) and h.epochs[0].epsilon is None
    assert h.memory == MemoryRecord(4786.265, [0, 0], [50, 50], [4, 29928])
    assert h.transfer == TransferRecord(freeze="none", backbone_lr_scale=1.0)
    assert h.balance is not None and h.balance.class_counts_seen["1"] == 146
    assert h.balance.class_weights is None and h.privacy is None
    assert h.resumed_from_epoch is None and h.stopped_early is None and h.attempts == 1
    # saved again: the same keys in the same order, plus the format
    again = h.to_dict()
    assert again.pop("format") == HISTORY_FORMAT
    assert list(again) == list(UNVERSIONED) and again == UNVERSIONED
    assert [list(e) for e in again["epochs"]] == [list(e) for e in UNVERSIONED["epochs"]]


def test_the_first_history_format_loads_with_the_later_fields_empty():
    h = TrainingHistory.from_dict(FIRST)
    assert h.world_size == 2 and h.resumed_from_epoch == 3 and h.attempts == 2
    assert h.checkpoint_dir == "/tmp/ck" and h.progress_events == 1
    assert h.allreduce is None and h.stopped_early is None and h.diverged is None
    assert h.memory is None and h.transfer is None and h.balance is None
    assert h.privacy is None
    assert h.epochs[1].val_loss is None and h.epochs[1].val_accuracy is None
    assert TrainingHistory.from_json(h.to_json()) == h


def _full() -> TrainingHistory:
    epochs = [EpochRecord.from_dict(_epoch(n, epsilon=0.5 * n)) for n in (1, 2, 3)]
    return TrainingHistory(
        world_size=3, ranks=[0, 1, 2], backend="gloo", allreduce="dp-sgd", device="cpu",
        train_rows_per_rank=[10, 11, 10], val_rows_per_rank=[2, 2, 1], steps_per_epoch=1,
        resumed_from_epoch=1, stopped_early=3, diverged=None, epochs=epochs, seconds=4.25,
        privacy=PrivacyRecord("rdp", 1.5, 1e-5, 2.0, 1.0, 1.1, 0.25, stopped_at_budget=True),
        memory=MemoryRecord(None, [0, 1, 0], [5, 6, 5], [1, 2, 3], pid=[41, 42, 43],
                            rss_anon_start_kb=[9, 9, 9], rss_anon_read_kb=[10, 11, 10],
                            rss_anon_peak_kb=[20, 21, 22], rss_anon_end_kb=[19, 21, 22]),
        progress_events=3, attempts=2, checkpoint_dir="s3://bucket/ck",
        transfer=TransferRecord(
            "backbone", 0.5, InitRecord("m/weights.safetensors", 8, [], ["x"], [], True),
            head="fc", frozen_tensors=6, init_summary="8 tensors loaded from m"),
        balance=BalanceRecord("weights", {"a": 3, "b": 1}, {"a": 3, "b": 1}, [0.67, 2.0],
                              "focal"),
        topology=TopologyRecord(2, [2, 1], "gloo", "gloo", ["node-a", "node-b"], [0, 0, 1]),
    )


def test_round_trip_through_json_keeps_every_field():
    h = _full()
    text = h.to_json()
    assert json.loads(text)["format"] == HISTORY_FORMAT
    assert TrainingHistory.from_json(text) == h
    assert TrainingHistory.from_json(TrainingHistory().to_json()) == TrainingHistory()
    # what is only recorded when it applies stays out of the JSON otherwise
    d = json.loads(text)
    assert d["epochs"][0]["epsilon"] == 0.5 and list(d["epochs"][0])[-3:] == [
        "epsilon", "seconds", "samples_per_second"]
    assert d["transfer"]["frozen_tensors"] == 6 and d["transfer"]["init"]["unexpected"] == ["x"]
    plain = json.loads(TrainingHistory.from_dict(UNVERSIONED).to_json())
    assert "privacy" not in plain and "epsilon" not in plain["epochs"][0]
    assert "frozen_tensors" not in plain["transfer"] and "init_summary" not in plain["transfer"]
    assert list(plain["memory"]) == ["budget_mb", "spilled", "partition_kb",
                                      "rss_anon_growth_kb"]
    assert d["memory"]["pid"] == [41, 42, 43] and d["memory"]["rss_anon_peak_kb"][2] == 22
    assert d["topology"] == {"hosts": 2, "ranks_per_host": [2, 1], "intra_host": "gloo",
                             "inter_host": "gloo", "host_names": ["node-a", "node-b"],
                             "host_of_rank": [0, 0, 1]}
    assert "topology" not in plain and TrainingHistory.from_dict(UNVERSIONED).topology is None


def test_the_callback_dict_of_an_epoch_is_its_json():
    record = EpochRecord.from_dict(_epoch(4, epsilon=2.5))
    assert record.to_dict() == _epoch(4, epsilon=2.5)
    assert list(record.to_dict()) == list(_epoch(4, epsilon=2.5))


def test_tuning_metrics_are_epoch_fields():
    from dataclasses import fields

    from sparkvision.tuning.search import METRICS

    assert set(METRICS) <= {f.name for f in fields(EpochRecord)}


@pytest.mark.parametrize("data, message", [
    ({**UNVERSIONED, "format": "sparkvision-history/9"}, "format 'sparkvision-history/9'"),
    ([1, 2], "list, not a JSON object"),
    ({k: v for k, v in UNVERSIONED.items() if k != "world_size"}, "no 'world_size'"),
    ({**UNVERSIONED, "epochs": [{"epoch": 1}]}, r"epochs\[0\] has no 'train_loss'"),
    ({**UNVERSIONED, "epochs": {"1": {}}}, "'epochs' is not a list"),
])
def test_what_is_not_a_history_is_a_data_error_naming_the_file(data, message):
    with pytest.raises(DataError, match=message) as caught:
        TrainingHistory.from_json(json.dumps(data), "m/history.json")
    assert "m/history.json" in str(caught.value)


def test_text_that_is_not_json_is_a_data_error():
    with pytest.raises(DataError, match="m/history.json is not JSON"):
        TrainingHistory.from_json("{", "m/history.json")
