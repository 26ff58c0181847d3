"""No Python worker is left writing to a socket the JVM closed (issue 30 item 3): a job that
ends its task before reading all of a Python reader's output (``first()``/``limit`` over
a partition of several Arrow batches) makes Spark kill that worker, which prints a
BrokenPipeError (or ConnectionResetError) from pyspark/daemon.py to the session's stderr.
``fit`` reads the image shape with its label counts (every row) instead of a ``first()``.

In a fresh process: the Python workers' stderr reaches the JVM's, which the test captures."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.sessionconf import REPO

_FIT = """
import sys, tempfile, time
from sparkvision import ImageClassifier, PrepareConfig, get_spark, load_prepared, prepare

spark = get_spark("local[2]", app_name="worker-output")
out = tempfile.mkdtemp()
# one shard: the training split's ~1,400 rows are one partition of two Arrow batches
prepare(spark, PrepareConfig(source="digits", out=out, seed=1, num_shards=1))
train = load_prepared(spark, out, "train")
print("PARTITIONS", train.rdd.getNumPartitions(), flush=True)
clf = ImageClassifier(model="tests.nets:linear", epochs=1, numWorkers=2, seed=0)
model = clf.setShowProgress(False).fit(train)
print("SHAPE", list(model.getImageShape()), flush=True)
time.sleep(1)  # let a worker killed by the last job print before the JVM stops
spark.stop()
"""

#: What a Python worker killed for writing to a closed socket leaves on stderr.
KILLED_WORKER = ("pyspark/daemon.py", "BrokenPipeError", "ConnectionResetError")


def test_fit_leaves_no_python_worker_writing_to_a_closed_socket():
    env = dict(os.environ)
    for key in ("SPARK_MASTER", "SPARK_REMOTE", "PYSPARK_GATEWAY_PORT",
                "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", _FIT], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PARTITIONS 1" in proc.stdout and "SHAPE [8, 8, 1]" in proc.stdout, proc.stdout
    killed = [line for line in proc.stderr.splitlines()
              if any(mark in line for mark in KILLED_WORKER)]
    assert not killed, proc.stderr[-3000:]
