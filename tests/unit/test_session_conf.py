"""Which confs ``get_spark`` sets for which master (``sparkvision.session.conf``, no JVM):
small-machine defaults for an embedded ``local[…]`` only, what sparkvision needs on every
master, and the user's own values (``conf``, spark-defaults.conf, ``PYSPARK_SUBMIT_ARGS``)
winning over all of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkvision.session.conf import (
    DRIVER_JAVA_OPTIONS,
    LOCAL_CONF,
    LOOPBACK_CONF,
    REQUIRED_CONF,
    is_embedded,
    launch_conf,
    read_properties,
    session_conf,
)

SHUFFLE = "spark.sql.shuffle.partitions"
BARRIER_CHECK = "spark.scheduler.barrier.maxConcurrentTasksCheck.interval"


@pytest.mark.parametrize("master", ["local", "local[1]", "local[4]", "local[*]", "local[2,3]"])
def test_an_embedded_local_master_gets_the_small_machine_defaults(master):
    settings = session_conf(master)
    assert settings[SHUFFLE] == "2"
    assert settings["spark.ui.enabled"] == "false"
    assert settings["spark.driver.host"] == "127.0.0.1"
    assert REQUIRED_CONF.items() <= settings.items()
    assert "log4j2.configurationFile" in settings[DRIVER_JAVA_OPTIONS]
    assert "-XX:+ExitOnOutOfMemoryError" in settings[DRIVER_JAVA_OPTIONS]
    assert "spark.driver.extraJavaOptions" not in settings  # the user's own, untouched


@pytest.mark.parametrize("master", ["spark://head:7077", "yarn", "k8s://https://api:6443",
                                    "spark://127.0.0.1:7077", "local-cluster[2,1,1024]"])
def test_a_cluster_master_keeps_sparks_defaults(master):
    settings = session_conf(master)
    assert not LOCAL_CONF.keys() & settings.keys(), settings
    assert settings[BARRIER_CHECK] == "2s"  # needed everywhere
    assert settings["spark.executorEnv.GLIBC_TUNABLES"] == REQUIRED_CONF[
        "spark.executorEnv.GLIBC_TUNABLES"]
    assert "-XX:+ExitOnOutOfMemoryError" in settings[DRIVER_JAVA_OPTIONS]


def test_the_driver_address_is_loopback_only_when_the_cluster_is():
    assert LOOPBACK_CONF.items() <= session_conf("spark://127.0.0.1:7077").items()
    assert LOOPBACK_CONF.items() <= session_conf("spark://localhost:7077").items()
    for master in ("spark://head:7077", "yarn", "k8s://https://api:6443"):
        assert not LOOPBACK_CONF.keys() & session_conf(master).keys()


def test_over_connect_only_what_sparkvision_needs_is_sent():
    settings = session_conf("sc://head:15002")
    assert settings == REQUIRED_CONF  # no shuffle partitions, no UI, no driver address/JVM
    assert SHUFFLE not in settings


@pytest.mark.parametrize("master", ["local[*]", "spark://head:7077", "sc://head:15002"])
def test_the_callers_conf_wins(master):
    mine = {SHUFFLE: "64", BARRIER_CHECK: "30s", "spark.ui.enabled": "true",
            "spark.executor.memory": "3g"}
    settings = session_conf(master, mine)
    assert mine.items() <= settings.items()


@pytest.mark.parametrize("master", ["local[*]", "local[2]", "spark://127.0.0.1:7077"])
def test_the_launchers_conf_stays(master):
    """A key the user gave spark-submit (spark-defaults.conf, PYSPARK_SUBMIT_ARGS) is not set
    by sparkvision, so Spark's launcher value stays — for the local defaults too."""
    launched = {SHUFFLE: "8", BARRIER_CHECK: "10s", "spark.driver.host": "10.0.0.5",
                "spark.driver.extraJavaOptions": "-Xss4m"}
    settings = session_conf(master, None, launched)
    assert not launched.keys() & settings.keys(), settings
    assert settings["spark.python.worker.reuse"] == "true"  # the rest is still set
    # ... and a conf passed to get_spark beats both
    assert session_conf(master, {SHUFFLE: "16"}, launched)[SHUFFLE] == "16"


@pytest.mark.parametrize("master", ["local[2]", "spark://head:7077"])
def test_the_users_driver_java_options_add_to_sparkvisions(master):
    """A user's extraJavaOptions (anywhere) is a different key, left alone: Spark puts it
    after sparkvision's. The user's defaultJavaOptions (launcher, then ``conf``) come after
    sparkvision's in the one value, so the JVM takes theirs where both set a flag."""
    ours = session_conf(master)[DRIVER_JAVA_OPTIONS]
    extra = {"spark.driver.extraJavaOptions": "-Xss4m"}
    assert session_conf(master, extra)[DRIVER_JAVA_OPTIONS] == ours
    assert session_conf(master, None, extra)[DRIVER_JAVA_OPTIONS] == ours
    merged = session_conf(master, {DRIVER_JAVA_OPTIONS: " -Db=2 "},
                          {DRIVER_JAVA_OPTIONS: "-XX:-ExitOnOutOfMemoryError"})
    assert merged[DRIVER_JAVA_OPTIONS] == f"{ours} -XX:-ExitOnOutOfMemoryError -Db=2"
    assert DRIVER_JAVA_OPTIONS not in session_conf("sc://head:15002")


def test_is_embedded():
    for master in ("local", "local[3]", "local[*]", "local[4,2]", " local[2] "):
        assert is_embedded(master), master
    for master in ("local-cluster[2,1,1024]", "spark://h:7077", "yarn", "localhost",
                   "k8s://https://local:6443", "sc://localhost"):
        assert not is_embedded(master), master


def test_read_properties_parses_spark_defaults_like_java():
    text = (
        "# a comment\n"
        "! another\n"
        "\n"
        "spark.sql.shuffle.partitions   12\n"
        "spark.executor.memory=4g\n"
        "spark.ui.enabled : true  \n"
        "spark.driver.extraJavaOptions -Da=b -Dc=d\n"
        "spark.executorEnv.PATH /usr/bin:\\\n"
        "    /bin\n"
        "spark.empty\n"
        "not.spark.key 1\n"
    )
    assert read_properties(text) == {
        "spark.sql.shuffle.partitions": "12",
        "spark.executor.memory": "4g",
        "spark.ui.enabled": "true",
        "spark.driver.extraJavaOptions": "-Da=b -Dc=d",
        "spark.executorEnv.PATH": "/usr/bin:/bin",
        "spark.empty": "",
    }


def test_launch_conf_reads_spark_conf_dir_and_submit_args(tmp_path: Path):
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        "spark.sql.shuffle.partitions 12\nspark.executor.memory 4g\n")
    env = {"SPARK_CONF_DIR": str(conf_dir)}
    assert launch_conf(env) == {SHUFFLE: "12", "spark.executor.memory": "4g"}
    # PYSPARK_SUBMIT_ARGS' --conf is given to spark-submit after the file: it wins
    env["PYSPARK_SUBMIT_ARGS"] = (
        "--conf spark.sql.shuffle.partitions=20 -c spark.ui.enabled=true "
        "--conf=spark.a=x=y --master local[1] pyspark-shell")
    assert launch_conf(env) == {SHUFFLE: "20", "spark.executor.memory": "4g",
                                "spark.ui.enabled": "true", "spark.a": "x=y"}
    # --properties-file replaces spark-defaults.conf
    other = tmp_path / "other.conf"
    other.write_text("spark.executor.cores 2\n")
    env["PYSPARK_SUBMIT_ARGS"] = f"--properties-file {other} pyspark-shell"
    assert launch_conf(env) == {"spark.executor.cores": "2"}


def test_launch_conf_falls_back_to_spark_home_and_tolerates_no_file(tmp_path: Path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "spark-defaults.conf").write_text("spark.executor.cores 3\n")
    assert launch_conf({"SPARK_HOME": str(tmp_path)}) == {"spark.executor.cores": "3"}
    assert launch_conf({"SPARK_CONF_DIR": str(tmp_path / "missing")}) == {}
    assert launch_conf({"SPARK_CONF_DIR": str(tmp_path / "missing"),
                        "PYSPARK_SUBMIT_ARGS": "--conf 'unbalanced"}) == {}
