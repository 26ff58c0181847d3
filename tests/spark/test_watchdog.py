"""Never an endless hang, no open door: a stalled rank fails the training within
``stallTimeout`` naming the rank, its host and its last step; the progress endpoint ignores
events without the fit's secret token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from sparkvision import ImageClassifier
from sparkvision.errors import TrainingStalledError
from sparkvision.training.transport import MAX_EVENT_BYTES, TOKEN_HEADER, ProgressServer
from sparkvision.training.watchdog import Watchdog
from tests.nets import failing_once


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_a_stalled_rank_fails_the_training_within_the_timeout(digits):
    train, val, _ = digits
    clf = ImageClassifier(model="tests.nets:stalls_on_rank1", epochs=3, numWorkers=2, seed=1,
                          validationDf=val, stallTimeout=10, stallRetries=0)
    # the watchdog's error (not the collective's 600 s timeout, nor a hang): no clock needed
    with pytest.raises(TrainingStalledError) as info:
        clf.fit(train)
    message = str(info.value)
    assert "rank 1 on host 127.0.0.1 made no progress" in message
    assert "last reached: step 4, epoch 1, training" in message
    assert "rank(s) 0 waited for it in the gradient all-reduce" in message
    assert "stallTimeout=10 s" in message


@pytest.mark.slow  # heavy: not in make test-fast (CI runs it)
def test_a_stall_cancels_the_job_and_training_resumes_from_the_last_checkpoint(
        spark, digits, tmp_path):
    """Rank 1 hangs once, in the first step of epoch 3 (a transient hang: the retried task
    finds the marker and trains on). The watchdog cancels the job after ``stallTimeout``,
    and the training starts again as a new job from epoch 2's checkpoint."""
    train, val, _ = digits
    clf = ImageClassifier(model="tests.nets:fails_once", epochs=4, numWorkers=2, seed=5,
                          validationDf=val, checkpointDir=str(tmp_path / "ckpt"),
                          stallTimeout=8)
    assert clf.getStallRetries() == 1
    marker = tmp_path / "stall-e3-r1"
    with failing_once(spark, epoch=3, rank=1, marker=marker, stall=True):
        model = clf.fit(train)
    h = model.history
    assert marker.exists()
    assert len(h.stalls) == 1 and h.stalls[0].startswith("rank 1 on host 127.0.0.1 made "
                                                          "no progress"), h.stalls
    assert "epoch 3, training" in h.stalls[0]
    assert h.resumed_from_epoch == 2 and h.attempts == 2
    assert [e.epoch for e in h.epochs] == [1, 2, 3, 4]
    assert h.epochs[-1].val_accuracy >= 0.9
    assert json.loads(h.to_json())["stalls"] == h.stalls


def test_a_normal_training_is_not_stopped_by_a_short_timeout(digits):
    """Heartbeats keep coming while a rank makes progress (validation, checkpoints too)."""
    train, val, _ = digits
    model = ImageClassifier(epochs=2, numWorkers=2, seed=2, validationDf=val,
                            stallTimeout=8).fit(train)
    assert len(model.history.epochs) == 2


def _post(url: str, body: bytes, token: str | None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers[TOKEN_HEADER] = token
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_forged_progress_events_are_ignored():
    seen: list[dict] = []
    with ProgressServer(seen.append) as server:
        event = json.dumps({"type": "epoch", "epoch": 1, "train_loss": 0.1}).encode()
        assert _post(server.url, event, None) == 403
        assert _post(server.url, event, "guessed-" + server.token[8:]) == 403
        assert _post(server.url, b"[1, 2]", server.token) == 400
        assert _post(server.url, b"{not json", server.token) == 400
        assert _post(server.url, b"{" + b" " * MAX_EVENT_BYTES + b"}", server.token) == 413
        assert seen == [] and server.rejected == 5
        assert _post(server.url, event, server.token) == 200
        assert seen == [json.loads(event)]
    assert server.host == "127.0.0.1"


def test_watchdog_names_the_rank_others_wait_for():
    now = [0.0]
    dog = Watchdog(world=3, timeout_s=10, clock=lambda: now[0])

    def beat(rank: int, step: int, waiting: int | None = None, attempt: int = 0) -> None:
        dog.observe({"type": "heartbeat", "rank": rank, "host": f"h{rank}",
                     "task": 10 * attempt + rank,
                     "phase": "training", "epoch": 2, "global_step": step,
                     "waiting_for": waiting})

    for r in range(3):
        beat(r, 40)
    now[0] = 5.0
    beat(0, 41, waiting=2)
    beat(1, 41, waiting=2)
    assert dog.check() is None
    now[0] = 16.0
    for r in (0, 1):
        beat(r, 41, waiting=2)
    message = dog.check()
    assert message is not None and message.startswith("rank 2 on host h2 made no progress")
    assert "step 40, epoch 2" in message and "rank(s) 0, 1 waited for it" in message
    # a retried stage starts over: nobody is late yet, late beats of the old attempt ignored
    beat(0, 0, attempt=1)
    beat(0, 40, attempt=0)  # late: rank 0's old task was replaced
    assert dog.check() is None
    now[0] = 30.0
    assert dog.check() == ("rank 1 did not start within 10 s (ranks that reported: [0]): "
                           "the barrier tasks or their process group could not form")


def test_watchdog_names_the_rank_cut_off_from_the_driver():
    """Gloo has no "waiting for" to tell: every rank stalls at the same step when one host's
    link goes down. The rank whose reports come only through the mailbox (the others' over
    the network) is the one named; a rank that went silent while the others stalled is
    named first."""
    now = [0.0]
    dog = Watchdog(world=3, timeout_s=10, clock=lambda: now[0])

    def beat(rank: int, via: str = "http") -> None:
        dog.observe({"type": "heartbeat", "rank": rank, "host": f"h{rank}", "task": rank,
                     "interval": 1.0, "phase": "training", "epoch": 2, "global_step": 30,
                     "waiting_for": None, "via": via})

    for t in range(0, 13):
        now[0] = float(t)
        beat(0)
        beat(1)
        beat(2, via="mailbox" if t >= 2 else "http")
    message = dog.check()
    assert message is not None and message.startswith("rank 2 on host h2 made no progress "
                                                      "for 12 s"), message
    assert "only through the mailbox folder" in message and "link may be down" in message
    for t in range(13, 20):  # rank 1 stops reporting at all
        now[0] = float(t)
        beat(0)
        beat(2, via="mailbox")
    message = dog.check()
    assert message is not None and message.startswith("rank 1 on host h1 made no progress")
    assert "stopped reporting 7 s ago" in message


def test_watchdog_waits_while_no_rank_is_alive():
    """Between a failed stage attempt and its retry no task beats: that is no stall (a
    replacement executor may take a while to start)."""
    now = [0.0]
    dog = Watchdog(world=2, timeout_s=10, clock=lambda: now[0])
    for rank in (0, 1):
        dog.observe({"type": "heartbeat", "rank": rank, "host": "h", "task": rank,
                     "interval": 1.0, "phase": "training", "epoch": 1, "global_step": 7,
                     "waiting_for": None})
    now[0] = 120.0  # both tasks were killed; nothing reported since
    assert dog.check() is None
    dog.observe({"type": "heartbeat", "rank": 1, "host": "h2", "task": 3, "interval": 1.0,
                 "phase": "starting", "epoch": 0, "global_step": 0, "waiting_for": None})
    assert dog.check() is None  # the retry's first rank just arrived


def test_progress_reaches_the_driver_when_executors_cannot_reach_it(digits, monkeypatch,
                                                                     caplog):
    """Executors that cannot open a connection to the driver (here: the endpoint URL they
    get points at a closed port) switch to the mailbox folder beside the checkpoints: every
    epoch still reaches ``onEpochEnd``, its answer (stop) still reaches every rank, and the
    heartbeats still feed the watchdog."""
    import logging

    from sparkvision.training import launcher

    monkeypatch.setattr(ProgressServer, "url", property(lambda self: "http://127.0.0.1:1/e"))
    seen: list[int] = []
    beats: list[dict] = []
    observe = launcher.Watchdog.observe

    def spy(self, event):
        if event.get("type") == "heartbeat":
            beats.append(event)
        return observe(self, event)

    monkeypatch.setattr(launcher.Watchdog, "observe", spy)

    def stop_after_two(event):
        seen.append(event["epoch"])
        return event["epoch"] >= 2

    train, val, _ = digits
    with caplog.at_level(logging.INFO, logger="sparkvision.training.launcher"):
        model = ImageClassifier(epochs=4, numWorkers=2, seed=3, validationDf=val,
                                onEpochEnd=stop_after_two, stallTimeout=60).fit(train)
    assert seen == [1, 2]
    assert model.history.stopped_early == 2 and len(model.history.epochs) == 2
    assert {b["rank"] for b in beats} == {0, 1}
    assert any("came through the mailbox" in r.getMessage() for r in caplog.records)


def test_mailbox_files_without_the_token_are_refused(tmp_path):
    from sparkvision.training.transport import EVENT_SUFFIX, Mailbox, MailboxReader

    seen: list[dict] = []
    refused: list[str] = []
    folder = str(tmp_path / "box")
    reader = MailboxReader(folder, "secret", lambda e: bool(seen.append(e)), refused.append)
    Mailbox(folder, "secret").post({"type": "epoch", "epoch": 1})
    Mailbox(folder, "guess").post({"type": "epoch", "epoch": 99})
    (tmp_path / "box" / f"zzz-000000001{EVENT_SUFFIX}").write_text('{"token": "secret"}')
    assert reader.poll_once() == 3
    assert seen == [{"type": "epoch", "epoch": 1}]
    assert len(refused) == 2 and list((tmp_path / "box").iterdir()) == []
