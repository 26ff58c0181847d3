"""How progress events travel from training tasks to the driver: a tiny HTTP endpoint on the
driver (:class:`ProgressServer`), a mailbox folder as the fallback when executors cannot reach
it (:class:`Mailbox`, :class:`MailboxReader`), and the executor side that posts without
blocking the training loop (:class:`EventSender`). What the driver does with an event is
``training.progress``."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

Event = dict[str, Any]


#: Header carrying the per-fit secret that every event must present.
TOKEN_HEADER = "X-Sparkvision-Token"
#: Largest event body accepted (events are a few hundred bytes).
MAX_EVENT_BYTES = 64 * 1024
#: The mailbox fallback: file suffixes and how often the driver looks (seconds).
EVENT_SUFFIX = ".event.json"
REPLY_SUFFIX = ".reply.json"
MAILBOX_POLL_S = 1.0


class ProgressServer:
    """Receives JSON events (POST /event) and hands each to ``callback`` in order; a truthy
    callback result is answered as ``{"stop": true}`` (stop training after this epoch).

    It binds to ``host`` only (the driver's address) and is no open door: an event counts
    only with this server's secret ``token`` (a fresh ``secrets.token_urlsafe`` per fit,
    shipped to the tasks in their config) in the ``X-Sparkvision-Token`` header (else 403);
    oversized (413) or malformed (400) bodies are refused. ``rejected`` counts refusals."""

    def __init__(self, callback: Callable[[Event], Any], host: str = "127.0.0.1") -> None:
        self.callback = callback
        self.token = secrets.token_urlsafe(32)
        self.rejected = 0
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self, code: int, why: str) -> None:
                outer.refused(f"{why} from {self.client_address[0]}")
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                given = self.headers.get(TOKEN_HEADER, "")
                if not hmac.compare_digest(given.encode(), outer.token.encode()):
                    return self._refuse(403, "no or wrong token")
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    return self._refuse(400, "bad Content-Length")
                if not 0 < length <= MAX_EVENT_BYTES:
                    return self._refuse(413, f"body of {length} bytes")
                try:
                    event = json.loads(self.rfile.read(length))
                    if not isinstance(event, dict):
                        raise ValueError("not a JSON object")
                except ValueError:
                    return self._refuse(400, "malformed body")
                body = b""
                try:
                    stop = outer.deliver(event)
                    body = json.dumps({"stop": stop}).encode()
                    self.send_response(200)
                except Exception:  # noqa: BLE001 - progress must never break training
                    log.exception("bad progress event")
                    self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/event"

    def deliver(self, event: Event) -> bool:
        """Hand one authenticated event to the callback (one at a time, whichever way it
        came: HTTP or the mailbox); True asks training to stop."""
        with self._lock:
            return bool(self.callback(event))

    def refused(self, why: str) -> None:
        with self._lock:
            self.rejected += 1
        log.warning("progress event refused (%s)", why)

    def __enter__(self) -> ProgressServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _post(url: str, event: Event, timeout: float, token: str) -> dict[str, Any] | None:
    """The driver's reply to one event, or None when it could not be delivered."""
    body = json.dumps(event).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", TOKEN_HEADER: token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except (OSError, ValueError) as exc:
        log.debug("progress event not delivered: %s", exc)
        return None


def post_event(url: str, event: Event, timeout: float = 2.0, token: str = "") -> dict[str, Any]:
    """Send one event and return the driver's reply; failures are logged and give ``{}``
    (progress is best effort)."""
    if not url:
        return {}
    return _post(url, event, timeout, token) or {}


class Mailbox:
    """The executor side of the fallback channel: events as files in a folder that the
    driver polls (``progress_mailbox``: beside the checkpoints, which every rank reaches),
    for when executors cannot open a connection to the driver (NAT, firewalls, a Spark
    Connect client behind them). A file appears whole (``storage`` writes atomically); one
    that wants an answer (``ask``) waits for ``NAME.reply.json``."""

    def __init__(self, folder: str, token: str) -> None:
        self.folder = folder
        self.token = token
        self.sender = uuid.uuid4().hex[:12]
        self.seq = 0

    def post(self, event: Event, want_reply: bool = False,
             timeout: float = 120.0) -> dict[str, Any]:
        from sparkvision import storage

        self.seq += 1
        name = f"{self.sender}-{self.seq:09d}"
        try:
            storage.write_text(storage.join(self.folder, name + EVENT_SUFFIX), json.dumps(
                {"token": self.token, "reply": want_reply, "event": event}))
        except Exception as exc:  # noqa: BLE001 - progress must never break training
            log.debug("progress event not written to %s: %s", self.folder, exc)
            return {}
        if not want_reply:
            return {}
        reply = storage.join(self.folder, name + REPLY_SUFFIX)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if storage.exists(reply):
                    answer = json.loads(storage.read_text(reply))
                    storage.remove(reply)
                    return answer if isinstance(answer, dict) else {}
            except Exception as exc:  # noqa: BLE001
                log.debug("no reply from %s yet: %s", reply, exc)
            time.sleep(MAILBOX_POLL_S / 2)
        return {}


class MailboxReader:
    """The driver side: polls the mailbox folder every ``MAILBOX_POLL_S`` while a fit runs,
    hands each event (in order per sender, token checked) to ``deliver`` and answers those
    that ask; removes the folder at the end."""

    def __init__(self, folder: str, token: str, deliver: Callable[[Event], bool],
                 refused: Callable[[str], None]) -> None:
        self.folder = folder
        self.token = token
        self.deliver = deliver
        self.refused = refused
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkvision-mailbox",
                                        daemon=True)

    def poll_once(self) -> int:
        from sparkvision import storage

        names = [n for n in storage.listdir(self.folder) if n.endswith(EVENT_SUFFIX)]
        for name in sorted(names):
            path = storage.join(self.folder, name)
            try:
                data = json.loads(storage.read_text(path))
            except Exception as exc:  # noqa: BLE001 - a half-visible or foreign file
                log.debug("skipping %s: %s", path, exc)
                continue
            storage.remove(path)
            given = str(data.get("token", "")) if isinstance(data, dict) else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.refused(f"mailbox file {name} without the fit's token")
                continue
            event = data.get("event")
            if not isinstance(event, dict):
                self.refused(f"mailbox file {name} holds no event")
                continue
            stop = self.deliver(event)
            self.received += 1
            if data.get("reply"):
                stem = name[: -len(EVENT_SUFFIX)]
                storage.write_text(storage.join(self.folder, stem + REPLY_SUFFIX),
                                   json.dumps({"stop": bool(stop)}))
        return len(names)

    def _run(self) -> None:
        while not self._stop.wait(MAILBOX_POLL_S):
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - progress must never break training
                log.debug("mailbox %s not readable: %s", self.folder, exc)

    def __enter__(self) -> MailboxReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from sparkvision import storage

        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self.poll_once()  # what arrived since the last look
            storage.remove(self.folder)
        except Exception as exc:  # noqa: BLE001
            log.debug("mailbox %s not cleaned up: %s", self.folder, exc)


class EventSender:
    """Posts events from a background thread so the training loop never waits on HTTP.
    When a post cannot be delivered and a ``mailbox`` folder is given, this sender switches
    to it for good (a warning says so once)."""

    def __init__(self, url: str, token: str = "", mailbox: str = "") -> None:
        import queue

        self.url = url
        self.token = token
        self.mailbox = Mailbox(mailbox, token) if mailbox and url else None
        self.via_mailbox = False
        self._queue: queue.Queue[tuple[Event, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if url:
            self._thread.start()

    def _deliver(self, event: Event, want_reply: bool) -> dict[str, Any]:
        if not self.via_mailbox:
            answer = _post(self.url, event, 60.0 if want_reply else 2.0, self.token)
            if answer is not None or self.mailbox is None:
                return answer or {}
            self.via_mailbox = True
            log.warning("the driver's progress endpoint %s is unreachable from this executor: "
                        "progress goes through the folder %s instead", self.url,
                        self.mailbox.folder)
        assert self.mailbox is not None
        return self.mailbox.post(event, want_reply)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, reply = item
            answer = self._deliver(event, reply is not None)
            if reply is not None:
                reply.put(answer)

    def send(self, event: Event) -> None:
        if self.url:
            self._queue.put((event, None))

    def ask_stop(self, event: Event, timeout: float = 120.0) -> bool:
        """Send ``event`` after everything queued and wait for the driver's answer: True when
        the driver asks training to stop (e.g. a pruned tuning trial)."""
        if not self.url:
            return False
        import queue

        reply: queue.Queue[dict[str, Any]] = queue.Queue()
        self._queue.put((event, reply))
        try:
            return bool(reply.get(timeout=timeout).get("stop"))
        except queue.Empty:
            return False

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (bounded wait), then stop the thread."""
        if self.url:
            self._queue.put(None)
            self._thread.join(timeout)
