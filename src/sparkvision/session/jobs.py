"""Job control: run a thread's Spark jobs under a tag, and cancel them — the one way
sparkvision stops its own jobs (a stalled training, a tuning trial, Ctrl-C in ``tune``), on
a classic session and over Spark Connect alike.

Classic sessions use ``SparkContext`` job tags: a thread-local tag every job started by the
thread carries, DataFrame jobs included (the session-level ``SparkSession.addTag`` of a
classic session does not reach the jobs of a barrier ``mapInArrow`` stage, so
``interruptTag`` would find nothing to stop). Over Spark Connect there is no SparkContext,
and the session's operation tags (``addTag`` / ``interruptTag``) do the same for this
client's operations only — a Connect server is shared.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sparkvision.session import is_connect

#: SparkContext local properties that ``tagged_jobs`` sets for the block and then restores.
_INTERRUPT = "spark.job.interruptOnCancel"
_DESCRIPTION = "spark.job.description"


@contextlib.contextmanager
def tagged_jobs(spark, tag: str, description: str = "") -> Iterator[None]:
    """Run the Spark jobs the calling thread starts inside the block under ``tag`` so that
    ``cancel_jobs(spark, tag)``, from any thread, stops them. Blocks nest: a job carries
    every tag of the blocks around it, so cancelling an outer tag stops the inner jobs too.

    Classic: ``SparkContext.addJobTag``, with interrupt-on-cancel (a cancelled task's thread
    is interrupted instead of running to its end) and ``description`` as the jobs'
    description in the Spark UI; both are restored when the block ends. Connect:
    ``SparkSession.addTag`` (a description is a classic UI feature and is not sent). A
    tag may not contain a comma (Spark's rule)."""
    if is_connect(spark):
        spark.addTag(tag)
        try:
            yield
        finally:
            spark.removeTag(tag)
        return
    sc = spark.sparkContext
    before = {key: sc.getLocalProperty(key) for key in (_INTERRUPT, _DESCRIPTION)}
    sc.addJobTag(tag)
    sc.setInterruptOnCancel(True)
    if description:
        sc.setJobDescription(description)
    try:
        yield
    finally:
        sc.removeJobTag(tag)
        for key, value in before.items():
            sc.setLocalProperty(key, value)  # None clears it


def cancel_jobs(spark, tag: str | None = None) -> None:
    """Cancel the running jobs tagged ``tag`` by ``tagged_jobs``, or every running job of
    ``spark`` when ``tag`` is None. Classic: ``cancelJobsWithTag`` / ``cancelAllJobs``;
    Spark Connect: ``interruptTag`` / ``interruptAll`` (this session's operations, not
    the whole shared server). A cancelled training raises ``TrainingCancelledError``."""
    if is_connect(spark):
        if tag is None:
            spark.interruptAll()
        else:
            spark.interruptTag(tag)
    elif tag is None:
        spark.sparkContext.cancelAllJobs()
    else:
        spark.sparkContext.cancelJobsWithTag(tag)
