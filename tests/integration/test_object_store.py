"""Storage anywhere, end to end through the CLI on a real S3 endpoint: moto's S3 server on
127.0.0.1 reached through s3fs (what a user on AWS, MinIO or Ceph installs). Data,
checkpoints, the model folder, its evaluation and the report all live in the bucket; a
second training with the same checkpoint folder resumes from the bucket on both ranks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import cli_json
from tests.cluster import free_port

pytestmark = [pytest.mark.slow]

BUCKET = "sv-test"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket; the environment that reaches it."""
    import s3fs  # the [s3] extra; s3fs and moto are in the locked test environment
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cli(argv: list[str], env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    full_env = dict(os.environ, **env)
    full_env.pop("SPARK_REMOTE", None)
    return cli_json(argv, full_env, tmp_path / "logs", timeout_s=300)


def test_prepare_train_resume_evaluate_report_in_a_bucket(s3, tmp_path):
    from sparkvision import storage

    root = f"s3://{BUCKET}/run"
    data, model, ckpt = f"{root}/data", f"s3a://{BUCKET}/run/model", f"{root}/ckpt"
    prepared = _cli(["prepare", "digits", "--out", data, "--num-shards", "2", "--seed", "0"],
                    s3, tmp_path)
    assert prepared["splits"]["train"] > 1000
    assert storage.exists(f"{data}/dataset.json")
    assert any(n.startswith("part-") for n in storage.listdir(f"{data}/train"))

    train = ["train", data, "--out", model, "--workers", "2", "--epochs", "3", "--seed", "0",
             "--checkpoint-dir", ckpt]
    first = _cli(train, s3, tmp_path)
    assert first["resumed_from_epoch"] is None and first["world_size"] == 2
    assert [n for n in storage.listdir(ckpt) if n.endswith(".safetensors")] == [
        "epoch-0001.safetensors", "epoch-0002.safetensors", "epoch-0003.safetensors"]
    assert sorted(storage.listdir(model)) == [
        "dataset.json", "drift_profile.json", "history.json", "metadata", "weights.safetensors"]

    # Both ranks resume from the bucket: epoch 3 gone, the same command restarts after 2.
    storage.remove(f"{ckpt}/epoch-0003.safetensors")
    second = _cli(train, s3, tmp_path)
    assert second["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in second["history"]] == [1, 2, 3]
    assert second["test_accuracy"] > 0.85, second

    evaluated = _cli(["evaluate", model, data], s3, tmp_path)
    assert evaluated["accuracy"] > 0.85
    assert evaluated["out"] == f"{model}/evaluation/test"
    assert "metrics.json" in storage.listdir(f"{model}/evaluation/test")
    assert f"{model}/evaluation/test/confusion_matrix.png" in evaluated["plots"]

    preds = tmp_path / "preds.parquet"
    predicted = _cli(["predict", model, data, "--out", str(preds)], s3, tmp_path)
    assert predicted["rows"] == prepared["splits"]["test"]

    reported = _cli(["report", model], s3, tmp_path)
    assert reported["out"] == f"{model}/report.html"
    html = storage.read_text(f"{model}/report.html")
    assert model in html and "confusion" in html.lower()
