"""The CLI over Spark Connect: a real Connect server (``tests/cluster.py``, local[2] on
127.0.0.1) and ``sparkvision … --remote sc://…`` subprocesses: prepare → train → evaluate
→ predict, the slot/partition helpers through a Connect client, and the exit-2 errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import SERVER_SHUFFLE_PARTITIONS, connect_server, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _connect_deps_missing() -> str | None:
    """Why a Connect client cannot run in this Python (pyspark[connect]'s extras), or None."""
    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies()
    except ImportError as exc:
        return str(exc).splitlines()[0]
    return None


@pytest.fixture(autouse=True)
def _connect_client() -> None:
    """The client deps are in requirements.lock: missing ones fail the test, never skip it."""
    missing = _connect_deps_missing()
    if missing:
        pytest.fail(f"Spark Connect client deps missing: {missing} "
                    "(pip install 'sparkvision[connect]')")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE"):
        env.pop(key, None)
    env["SPARKVISION_PROGRESS"] = "off"
    return env


def _cli(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparkvision", *argv], capture_output=True,
                          text=True, timeout=timeout, env=_env(),
                          cwd=Path(__file__).resolve().parents[2])


def _payload(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """A Spark Connect server (local[2]) for this module; stopped by PID afterwards."""
    log = tmp_path_factory.mktemp("connect") / "server.log"
    with connect_server(log) as url:
        yield url


def test_prepare_train_evaluate_predict_over_connect(connect_url, tmp_path):
    data, model = tmp_path / "data", tmp_path / "model"
    prepared = _payload(_cli("prepare", "digits", "--out", str(data), "--seed", "1",
                             "--remote", connect_url, "--json"))
    assert prepared["splits"]["train"] > 1000 and len(prepared["classes"]) == 10

    trained = _payload(_cli("train", str(data), "--out", str(model), "--workers", "2",
                            "--epochs", "3", "--seed", "0", "--remote", connect_url, "--json"))
    assert trained["world_size"] == 2
    assert len(trained["history"]) == 3
    assert trained["val_accuracy"] > 0.8
    assert (model / "weights.safetensors").exists() or any(model.iterdir())

    evaluated = _payload(_cli("evaluate", str(model), str(data), "--split", "test",
                              "--no-plots", "--remote", connect_url, "--json"))
    assert evaluated["accuracy"] > 0.8 and evaluated["n"] == prepared["splits"]["test"]

    preds = tmp_path / "preds.parquet"
    predicted = _payload(_cli("predict", str(model), str(data), "--split", "test", "--out",
                              str(preds), "--remote", connect_url, "--json"))
    assert predicted["rows"] == prepared["splits"]["test"]
    assert predicted["accuracy"] > 0.8
    assert preds.exists()

    # stream's foreachBatch writer cannot run in a Connect client: refused, one line
    landing = tmp_path / "landing"
    landing.mkdir()
    refused = _cli("stream", str(model), "--input", str(landing), "--out",
                   str(tmp_path / "s"), "--checkpoint", str(tmp_path / "c"),
                   "--available-now", "--remote", connect_url)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Spark Connect" in lines[0] and "--master" in lines[0]


HELPERS = """
import json, sys
from pyspark.sql import functions as F
from sparkvision.session import (count_partitions, default_parallelism, get_spark,
                                 is_connect, master_url, num_partitions, probe_parallelism,
                                 task_cpus)
from sparkvision.training.launcher import available_slots
spark = get_spark(remote=sys.argv[1])
df = spark.range(0, 10, numPartitions=3).filter(F.col("id") < 2)  # 2 of 3 partitions empty
print(json.dumps({
    "connect": is_connect(spark), "master": master_url(spark),
    "parallelism": default_parallelism(spark), "probe": probe_parallelism(spark),
    "task_cpus": task_cpus(spark), "slots": available_slots(spark),
    "partitions": num_partitions(df), "counted": count_partitions(df),
    "shuffle": spark.conf.get("spark.sql.shuffle.partitions"),
    "batch_bytes": spark.conf.get("spark.sql.execution.arrow.maxBytesPerBatch"),
}))
labels = spark.range(5).selectExpr("id AS label")
labels.write.format("tfrecords").mode("overwrite").save(sys.argv[2])
print(json.dumps({"tfrecords": spark.read.format("tfrecords").load(sys.argv[2]).count()}))
"""


def test_session_helpers_over_connect(connect_url, tmp_path):
    """No sparkContext/rdd over Connect: slots from the server's master conf, the probe job
    agrees with it, partitions counted by a job (empty ones too), the server's shuffle
    partitions kept (no small-machine defaults over Connect), our data source is
    registered on the server."""
    proc = subprocess.run([sys.executable, "-c", HELPERS, connect_url, str(tmp_path / "tf")],
                          capture_output=True, text=True, timeout=180, env=_env(),
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert first == {"connect": True, "master": "local[2]", "parallelism": 2, "probe": 2,
                     "task_cpus": 1, "slots": 2, "partitions": 3, "counted": 3,
                     # the server's value stays; what sparkvision needs is set
                     "shuffle": str(SERVER_SHUFFLE_PARTITIONS),
                     "batch_bytes": str(16 << 20)}
    assert second == {"tfrecords": 5}  # our data source, registered over Connect


def test_remote_and_master_together_exit_2():
    proc = _cli("prepare", "digits", "--out", "/tmp/never", "--master", "local[1]",
                "--remote", "sc://127.0.0.1:15002", timeout=60)
    assert proc.returncode == 2
    assert "--master" in proc.stderr and "--remote" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unreachable_remote_exits_2_quickly(tmp_path):
    url = f"sc://127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = _cli("prepare", "digits", "--out", str(tmp_path / "d"), "--remote", url,
                timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - started < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and url in lines[0] and "cannot reach" in lines[0]
