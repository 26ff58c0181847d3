"""``sparkvision.storage`` on a local folder, a ``file://`` URL and fsspec's in-memory
filesystem (a non-local filesystem with no rename), and what goes through it without Spark:
checkpoints and model folders."""

from __future__ import annotations

import uuid

import pytest
import torch

from sparkvision import storage
from sparkvision.errors import DataError, ModelLoadError


@pytest.fixture(params=["local", "file-url", "memory"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "file-url":
        return f"file://{tmp_path}/root"
    return f"memory://sv-{uuid.uuid4().hex[:8]}/root"


def test_write_read_list_remove(root):
    assert not storage.exists(root) and storage.listdir(root) == []
    storage.write_text(storage.join(root, "a", "one.json"), '{"x": 1}')
    storage.write_bytes(storage.join(root, "two.bin"), b"\x00\x01")
    storage.write_bytes(storage.join(root, ".hidden"), b"h")
    assert storage.read_text(storage.join(root, "a", "one.json")) == '{"x": 1}'
    assert storage.size(storage.join(root, "two.bin")) == 2
    assert storage.isdir(root) and storage.isfile(storage.join(root, "two.bin"))
    assert storage.listdir(root) == [".hidden", "a", "two.bin"]
    files = storage.walk_files(root, keep=lambda n: not n.startswith("."))
    assert [storage.basename(f) for f in files] == ["one.json", "two.bin"]
    assert storage.read_bytes(files[1]) == b"\x00\x01"  # walk_files returns openable paths
    storage.remove(storage.join(root, "a"))
    assert storage.listdir(root) == [".hidden", "two.bin"]
    storage.remove(root)
    assert not storage.exists(storage.join(root, "two.bin"))


def test_atomic_writer_leaves_old_file_on_failure(root):
    target = storage.join(root, "data.bin")
    storage.write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_writer(target) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("boom")
    assert storage.read_bytes(target) == b"old"
    assert storage.listdir(root) == ["data.bin"]  # no temporary file left behind


def test_gzip_read(root):
    import gzip

    target = storage.join(root, "x.gz")
    storage.write_bytes(target, gzip.compress(b"hello" * 100))
    with storage.open_read(target, gzip=True) as fh:
        assert fh.read() == b"hello" * 100


def test_missing_filesystem_package_is_a_clear_error():
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.fail("gcsfs is installed; this test needs a filesystem whose package is not")
    with pytest.raises(DataError, match=r"gs:// filesystem needs gcsfs \(pip install gcsfs"):
        storage.exists("gs://bucket/folder")


def test_checkpoint_round_trip_and_latest(root):
    from sparkvision.training import checkpoint as ckpt

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    folder = storage.join(root, "ckpt")
    assert ckpt.latest_epoch(folder) == 0
    ckpt.save_checkpoint(folder, 1, net, opt, {"fingerprint": {"a": 1}})
    ckpt.save_checkpoint(folder, 2, net, opt, {"fingerprint": {"a": 1}})
    assert ckpt.latest_epoch(folder) == 2
    state, opt_state, info = ckpt.load_checkpoint(folder, 2)
    assert info["epoch"] == 2 and info["fingerprint"] == {"a": 1}
    assert torch.equal(state["weight"], net.weight.detach())
    restored = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    restored.load_state_dict(opt_state)
    assert restored.param_groups[0]["lr"] == 0.01


def _model():
    from sparkvision.ml.model import ImageClassificationModel
    from sparkvision.models.registry import build_model
    from sparkvision.models.weights import state_dict_bytes
    from sparkvision.training.history import EpochRecord, TrainingHistory

    torch.manual_seed(0)
    net = build_model("simple_cnn", 3, (8, 8, 1))
    epoch = EpochRecord(epoch=1, train_loss=1.1, train_accuracy=0.4, val_loss=None,
                        val_accuracy=None, steps_per_rank=[1], lr=0.001, seconds=0.1,
                        samples_per_second=640.0)
    return ImageClassificationModel(
        weights=state_dict_bytes(net),
        history=TrainingHistory(world_size=1, ranks=[0], epochs=[epoch]),
        model="simple_cnn", classes=["a", "b", "c"], imageShape=[8, 8, 1])


def test_model_folder_round_trip_without_spark(root):
    """Persistence writes the folder itself (pyspark's metadata layout), so it needs no
    Spark session and works on any filesystem."""
    from sparkvision.ml.model import ImageClassificationModel

    model = _model()
    path = storage.join(root, "model")
    model.save(path)
    assert storage.listdir(path) == ["history.json", "metadata", "weights.safetensors"]
    loaded = ImageClassificationModel.load(path)
    assert loaded.uid == model.uid and loaded.weights == model.weights
    assert loaded.getOrDefault(loaded.classes) == ["a", "b", "c"]
    assert loaded.history == model.history and loaded.history.epochs[0].epoch == 1
    with pytest.raises(DataError, match="already saved at .*overwrite"):
        model.save(path)
    model.write().overwrite().save(path)
    storage.write_bytes(storage.join(path, "weights.safetensors"), model.weights[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        ImageClassificationModel.load(path)


def test_model_folder_saved_by_spark_text_writer_still_loads(tmp_path):
    """Folders written before (metadata by Spark's text writer: part-00000-<uuid>.txt)."""
    from sparkvision.ml.model import ImageClassificationModel

    model = _model()
    path = tmp_path / "model"
    model.save(str(path))
    meta = path / "metadata"
    (meta / "part-00000").rename(meta / "part-00000-1f2e3d4c-c000.txt")
    (meta / "part-00001-1f2e3d4c-c000.txt").write_text("")
    assert ImageClassificationModel.load(str(path)).uid == model.uid
