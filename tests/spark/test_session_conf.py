"""The confs of real local sessions (``sparkvision.session.conf`` decides them): the
small-machine defaults on the shared local[2] session, and a value in spark-defaults.conf
(``$SPARK_CONF_DIR``) winning over them in a new driver process."""

from __future__ import annotations

import os
from pathlib import Path

from tests.sessionconf import session_confs

SHUFFLE = "spark.sql.shuffle.partitions"
BARRIER_CHECK = "spark.scheduler.barrier.maxConcurrentTasksCheck.interval"
BATCH_BYTES = "spark.sql.execution.arrow.maxBytesPerBatch"


def test_the_shared_local_session_has_the_small_machine_defaults(spark):
    assert spark.conf.get(SHUFFLE) == "2"
    assert spark.conf.get("spark.ui.enabled") == "false"
    assert spark.conf.get(BARRIER_CHECK) == "2s"
    assert spark.sparkContext.uiWebUrl is None


def test_spark_defaults_conf_wins_over_the_local_defaults(tmp_path: Path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"{SHUFFLE} 5\n{BARRIER_CHECK}=7s\n")
    env = dict(os.environ, SPARK_CONF_DIR=str(conf_dir), SPARK_LOCAL_IP="127.0.0.1")
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    plain, given = session_confs("local[1]", [SHUFFLE, BARRIER_CHECK, BATCH_BYTES],
                                 [{}, {SHUFFLE: "9"}], env)
    assert plain == {SHUFFLE: "5", BARRIER_CHECK: "7s", BATCH_BYTES: str(16 << 20)}
    assert given[SHUFFLE] == "9"  # a conf passed to get_spark beats the file
