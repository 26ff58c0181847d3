"""sparkvision on a real Spark standalone cluster (Master + 2 Workers × 1 core on 127.0.0.1,
``tests/standalone.py``): the CLI trains and predicts through ``--master spark://…``, a
training survives ``kill -9`` of one executor JVM (the barrier stage is retried and resumes
from the last checkpoint), a session on the cluster's master keeps Spark's defaults, and
stopping the cluster leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clirun import cli_json, log_tails
from tests.sessionconf import session_confs
from tests.standalone import StandaloneCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: A rank whose peer died gives up after 60 s (tests' default: 120 s, library's: 600 s).
COLLECTIVE_TIMEOUT_S = "60"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """Master + 2 Workers (1 core, 2 GiB each) for the whole module."""
    root = tmp_path_factory.mktemp("standalone")
    with StandaloneCluster(root, workers=2,
                           env={"SPARKVISION_COLLECTIVE_TIMEOUT_S": COLLECTIVE_TIMEOUT_S}) as c:
        yield c


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, SPARKVISION_LOG_DIR=str(tmp_path / "logs"),
               SPARKVISION_COLLECTIVE_TIMEOUT_S=COLLECTIVE_TIMEOUT_S)
    env.pop("SPARK_MASTER", None)
    env.pop("SPARK_REMOTE", None)
    return env


def _logs(tmp_path: Path) -> str:
    return log_tails(tmp_path / "logs")


def _cli(argv: list[str], tmp_path: Path, timeout_s: float = 240) -> dict[str, Any]:
    """Run ``sparkvision ARGV --json`` in a subprocess; return its JSON (exit 0 asserted)."""
    return cli_json(argv, _env(tmp_path), tmp_path / "logs", timeout_s)


def test_train_and_predict_through_the_cli(cluster, digits_dir, tmp_path):
    model = tmp_path / "model"
    trained = _cli(["train", str(digits_dir), "--out", str(model), "--workers", "2",
                    "--master", cluster.master_url, "--epochs", "3", "--seed", "0"], tmp_path)
    assert trained["world_size"] == 2
    assert trained["epochs"] == 3
    history = json.loads((model / "history.json").read_text())
    assert history["world_size"] == 2 and history["ranks"] == [0, 1]
    assert history["resumed_from_epoch"] is None and history["attempts"] == 1

    preds = tmp_path / "preds.parquet"
    predicted = _cli(["predict", str(model), str(digits_dir), "--out", str(preds),
                      "--master", cluster.master_url], tmp_path)
    assert predicted["rows"] == json.loads((digits_dir / "dataset.json").read_text())[
        "splits"]["test"]
    assert predicted["accuracy"] > 0.85
    apps = cluster.state()["completedapps"]
    assert len(apps) >= 2, "the train and predict apps did not run on this cluster"


def test_training_survives_a_killed_executor(cluster, digits_dir, tmp_path):
    """``kill -9`` one executor JVM once epoch 2 is checkpointed: Spark retries the barrier
    stage on a new executor, which resumes from the last checkpoint."""
    model, ckpt = tmp_path / "model", tmp_path / "ckpt"
    argv = ["train", str(digits_dir), "--out", str(model), "--workers", "2", "--master",
            cluster.master_url, "--epochs", "12", "--seed", "0", "--checkpoint-dir", str(ckpt),
            "--json", "-q"]
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sparkvision", *argv], stdout=out,
                                stderr=err, env=_env(tmp_path), start_new_session=True)
    replaced_by = "worker"
    try:
        deadline = time.monotonic() + 180
        while not (ckpt / "epoch-0002.safetensors").exists():
            assert proc.poll() is None, f"train exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "epoch 2 was not checkpointed in time"
            time.sleep(0.05)
        executors = cluster.executor_pids()
        assert len(executors) == 2, executors
        victim = executors[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        while proc.poll() is None:
            alive = cluster.executor_pids()
            if victim in alive:
                time.sleep(0.2)
                continue
            if (len(alive) < 2 and replaced_by == "worker"
                    and time.monotonic() - killed_at > 45):
                cluster.start_worker()  # the Worker did not relaunch an executor in time
                replaced_by = "start_worker"
            assert time.monotonic() - killed_at < 200, "training did not finish after the kill"
            time.sleep(0.5)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    stderr = (tmp_path / "stderr").read_text(errors="replace")
    assert code == 0, f"train exited {code}\n{stderr[-3000:]}\n{_logs(tmp_path)}"
    assert victim not in cluster.executor_pids()

    payload = json.loads((tmp_path / "stdout").read_text().strip().splitlines()[-1])
    history = json.loads((model / "history.json").read_text())
    assert history["resumed_from_epoch"] is not None and history["resumed_from_epoch"] >= 2, (
        history["resumed_from_epoch"], replaced_by)
    assert payload["resumed_from_epoch"] == history["resumed_from_epoch"]
    assert history["attempts"] >= 2
    assert history["world_size"] == 2
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, 13))
    assert (ckpt / "epoch-0012.safetensors").exists()
    assert history["epochs"][-1]["val_accuracy"] >= 0.85, history["epochs"][-1]
    print(f"killed executor {victim}; replaced by {replaced_by}; resumed from epoch "
          f"{history['resumed_from_epoch']} after {history['attempts']} attempts")


SHUFFLE = "spark.sql.shuffle.partitions"


def test_a_cluster_master_session_keeps_sparks_defaults(cluster, tmp_path):
    """The small-machine defaults are for an embedded ``local[…]`` only: a ``get_spark``
    session on the standalone master keeps Spark's 200 shuffle partitions and its web UI
    unless the user sets them; what sparkvision needs everywhere (the barrier slot check,
    the driver's loopback address on a loopback cluster) is set."""
    keys = [SHUFFLE, "spark.ui.enabled",
            "spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "spark.driver.host"]
    plain, given = session_confs(cluster.master_url, keys, [{}, {SHUFFLE: "7"}],
                                 _env(tmp_path))
    assert plain == {SHUFFLE: "200", "spark.ui.enabled": None,
                     "spark.scheduler.barrier.maxConcurrentTasksCheck.interval": "2s",
                     "spark.driver.host": "127.0.0.1"}
    assert given[SHUFFLE] == "7"  # the user's value wins


_HOLD_EXECUTORS = """
import sys, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.master(sys.argv[1]).config("spark.ui.enabled", "false") \\
    .config("spark.driver.host", "127.0.0.1").config("spark.python.worker.reuse", "true") \\
    .getOrCreate()
spark.sparkContext.parallelize(range(4), 2).map(lambda x: x + 1).count()
print("ready", flush=True)
time.sleep(600)
"""


def test_stop_leaves_no_process(cluster, tmp_path):
    """Runs last: with an app holding executors and Python workers, ``stop()`` kills every
    process of the cluster (JVMs, pyspark daemons, Python workers)."""
    driver = subprocess.Popen([sys.executable, "-c", _HOLD_EXECUTORS, cluster.master_url],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env=_env(tmp_path), start_new_session=True)
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == b"ready"
        executors = cluster.wait_for_executors(1)
        before = cluster.processes()
        commands = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in before}
        assert any(b"pyspark.daemon" in c or b"pyspark/daemon" in c for c in commands.values())
        assert set(executors) | set(cluster.worker_pids()) <= set(before)
        cluster.stop()
        assert cluster.processes() == []
        for pid in before:
            assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(
                f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2][:3], pid
        assert cluster.state() is None
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
