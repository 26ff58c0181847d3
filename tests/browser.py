"""Open an HTML file in a real headless Chromium and report what a reader would see.

A test helper, not part of the library. It drives Debian's ``chromium`` over the Chrome
DevTools Protocol (CDP) with ``websocket-client``; nothing is downloaded and the only network
traffic is to the browser's own DevTools endpoint on 127.0.0.1.

    with Browser() as browser:
        check = browser.check(report_html, screenshot=tmp_path / "report.png")
    assert check.console_errors == []
    assert all(image.loaded for image in check.images)

``inspect_page(path)`` does the same with a browser of its own. The browser process group is
always killed and its temporary profile removed, also when a check fails, and every wait is
bounded, so a check can fail but never hang.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

__all__ = [
    "Browser",
    "BrowserError",
    "BrowserUnavailable",
    "ImageInfo",
    "PageCheck",
    "chromium_path",
    "inspect_page",
]

#: Names tried on PATH, in order, after the ``CHROMIUM`` environment variable.
BROWSER_NAMES = ("chromium", "chromium-browser")
#: Full-page screenshots are cut off below this many CSS pixels (Chromium's texture limit).
MAX_SCREENSHOT_HEIGHT = 16_384
#: How many characters of an image's ``src`` are kept (data: URLs are huge).
SRC_PREFIX_CHARS = 80

_START_TIMEOUT_S = 30.0
_HTTP_TIMEOUT_S = 10.0

# Flags. --no-sandbox: we run as root in a container, where Chromium refuses to start with its
# sandbox. --disable-dev-shm-usage: Docker's default /dev/shm is 64 MiB, too small for
# Chromium's shared memory, which then crashes renderers. --remote-debugging-port=0: the
# browser picks a free port and writes it to <user-data-dir>/DevToolsActivePort.
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)

# Evaluated in the page once it has loaded: makes lazy images load, waits (bounded) for every
# image to decode, for fonts and for two frames, then reads what the checks need.
_COLLECT_JS = """
(async () => {
  const images = Array.from(document.images);
  const settle = Promise.all([
    ...images.map(im => { im.loading = 'eager'; return im.decode().catch(() => null); }),
    document.fonts ? document.fonts.ready : null,
  ]);
  await Promise.race([settle, new Promise(r => setTimeout(r, %(settle_ms)d))]);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const anchors = Array.from(document.querySelectorAll('a[href^="#"]'),
                             a => a.getAttribute('href').slice(1));
  return {
    title: document.title,
    images: images.map(im => ({
      src: im.currentSrc || im.getAttribute('src') || '',
      naturalWidth: im.naturalWidth,
      naturalHeight: im.naturalHeight,
      complete: im.complete,
    })),
    sectionIds: Array.from(document.querySelectorAll('section[id]'), s => s.id),
    danglingAnchors: anchors.filter(id => id && !document.getElementById(decodeURIComponent(id))),
  };
})()
"""


class BrowserError(RuntimeError):
    """The browser could not be started, or did not answer as expected."""


class BrowserUnavailable(BrowserError):
    """No Chromium executable was found."""


@dataclass(frozen=True)
class ImageInfo:
    """One ``<img>`` element as the browser decoded it."""

    src_prefix: str
    """The first ``SRC_PREFIX_CHARS`` characters of its (current) source URL."""
    natural_width: int
    """Decoded width in pixels; 0 when the image is broken or did not load."""
    natural_height: int
    """Decoded height in pixels; 0 when the image is broken or did not load."""
    complete: bool
    """The browser finished with it (loaded *or* failed: see ``loaded``)."""

    @property
    def loaded(self) -> bool:
        """Whether the image finished loading and decoded to a non-empty picture."""
        return self.complete and self.natural_width > 0 and self.natural_height > 0


@dataclass
class PageCheck:
    """What a real browser made of one HTML page."""

    url: str
    title: str
    images: list[ImageInfo] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    """Console messages of level error (and failed asserts), uncaught exceptions, failed
    resource loads and browser log entries of level error, in the order they came."""
    section_ids: list[str] = field(default_factory=list)
    """The ``id`` of every ``<section id=...>``, in document order."""
    dangling_anchors: list[str] = field(default_factory=list)
    """Targets of in-page links (``href="#x"``) that no element has as its id."""
    content_width: int = 0
    """Width of the laid-out document in CSS pixels."""
    content_height: int = 0
    """Height of the laid-out document in CSS pixels."""
    screenshot: Path | None = None
    """Where the PNG screenshot was written, when one was asked for."""

    @property
    def broken_images(self) -> list[ImageInfo]:
        """The images that did not load and decode."""
        return [image for image in self.images if not image.loaded]


def chromium_path() -> str:
    """The Chromium executable to use: ``$CHROMIUM`` if set, else ``chromium`` or
    ``chromium-browser`` on PATH.

    Raises ``BrowserUnavailable`` (with the command that installs it) when there is none.
    """
    override = os.environ.get("CHROMIUM")
    if override:
        found = shutil.which(override)
        if found is None:
            raise BrowserUnavailable(f"CHROMIUM={override!r} is not an executable")
        return found
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    raise BrowserUnavailable(
        "no Chromium found (tried $CHROMIUM, " + ", ".join(BROWSER_NAMES) + " on PATH); "
        "install it with `apt-get install chromium` or point CHROMIUM at one")


class _Deadline:
    """A point in time that bounded waits count down to."""

    def __init__(self, seconds: float, what: str) -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def left(self) -> float:
        """Seconds left; raises ``TimeoutError`` once it has passed."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.what}: no answer within {self.seconds:g} s")
        return left


class _Cdp:
    """One DevTools websocket connection: commands with replies, and the events in between."""

    def __init__(self, ws_url: str, deadline: _Deadline) -> None:
        # suppress_origin: Chromium refuses websocket clients that send an Origin header
        # unless started with --remote-allow-origins.
        try:
            self._ws = websocket.create_connection(
                ws_url, timeout=deadline.left(), suppress_origin=True,
                http_no_proxy=["127.0.0.1"], enable_multithread=False)
        except (websocket.WebSocketException, OSError) as e:
            raise BrowserError(f"cannot connect to DevTools at {ws_url}: {e}") from e
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        """Close the connection (never raises)."""
        try:
            self._ws.close(timeout=1)
        except Exception:  # closing is best effort
            pass

    def _receive(self, deadline: _Deadline) -> dict[str, Any]:
        self._ws.settimeout(deadline.left())
        try:
            raw = self._ws.recv()
        except websocket.WebSocketTimeoutException as e:
            raise TimeoutError(f"{deadline.what}: no answer within {deadline.seconds:g} s") from e
        except (websocket.WebSocketException, OSError) as e:
            raise BrowserError(f"{deadline.what}: DevTools connection lost: {e}") from e
        return json.loads(raw)

    def send(self, method: str, deadline: _Deadline, **params: Any) -> dict[str, Any]:
        """Send one command and return its result, keeping events that arrive meanwhile."""
        self._next_id += 1
        ident = self._next_id
        self._ws.settimeout(deadline.left())
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = self._receive(deadline)
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for(self, method: str, deadline: _Deadline, since: int = 0) -> dict[str, Any]:
        """The first event named ``method`` at index ``since`` or later, waiting for it."""
        index = since
        while True:
            while index < len(self.events):
                if self.events[index]["method"] == method:
                    return self.events[index]
                index += 1
            message = self._receive(deadline)
            if "method" in message:
                self.events.append(message)


def _remote_text(value: dict[str, Any]) -> str:
    """A console argument (a CDP RemoteObject) as text."""
    if "value" in value:
        return str(value["value"])
    return str(value.get("description") or value.get("unserializableValue") or value["type"])


def _errors_from(events: list[dict[str, Any]]) -> list[str]:
    """The console errors, uncaught exceptions and failed loads among ``events``.

    A failed load is reported by both the Network and the Log domain; it is listed once.
    """
    urls = {params["requestId"]: params["request"]["url"] for event in events
            if event["method"] == "Network.requestWillBeSent"
            for params in [event.get("params", {})]}
    failed_urls = {urls.get(event.get("params", {}).get("requestId"), "?") for event in events
                   if event["method"] == "Network.loadingFailed"}
    errors: list[str] = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(_remote_text(arg) for arg in params.get("args", []))
            errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception") or {}
            text = exception.get("description") or details.get("text", "exception")
            errors.append(f"uncaught: {text}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            url = urls.get(params.get("requestId"), "?")
            errors.append(f"failed to load {params.get('type', 'resource')} "
                          f"{url[:SRC_PREFIX_CHARS]}: {params.get('errorText', '?')}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            url = entry.get("url", "")
            if entry.get("level") != "error" or (
                    entry.get("source") == "network" and url in failed_urls):
                continue
            where = f" [{url[:SRC_PREFIX_CHARS]}]" if url else ""
            errors.append(f"log ({entry.get('source', '?')}): {entry.get('text', '')}{where}")
    return errors


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the browser's whole process group and reap the browser (bounded, never raises)."""
    if process.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    # The group may outlive its leader (renderers, zygote): make sure they go too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _shut_down(process: subprocess.Popen[bytes], profile: str, log: Any) -> None:
    """Kill the browser and remove its temporary profile."""
    _kill_group(process)
    try:
        log.close()
    except OSError:
        pass
    shutil.rmtree(profile, ignore_errors=True)


class Browser:
    """A headless Chromium started for a ``with`` block; ``check`` opens pages in it.

    Every page gets a fresh tab, so console messages of one page never show up in another's
    check. Leaving the block (or ``close``) kills the browser and removes its profile.
    """

    def __init__(self, executable: str | None = None, start_timeout_s: float = _START_TIMEOUT_S,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.executable = executable or chromium_path()
        self.start_timeout_s = start_timeout_s
        self.extra_flags = extra_flags
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._log_path: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int | None:
        """The browser's process id (also its process group's) while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def profile_dir(self) -> Path | None:
        """The temporary ``--user-data-dir`` while the browser runs."""
        return None if self._profile is None else Path(self._profile)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Browser:
        """Launch the browser and wait until its DevTools endpoint answers."""
        if self._process is not None:
            return self
        profile = tempfile.mkdtemp(prefix="sparkvision-chromium-")
        # The browser's output goes to a file (a pipe nobody reads could fill and block it).
        log_path = Path(tempfile.mkstemp(prefix="chromium-", suffix=".log", dir=profile)[1])
        log = log_path.open("wb")
        command = [self.executable, *_FLAGS, *self.extra_flags, f"--user-data-dir={profile}",
                   "--window-size=1280,900", "about:blank"]
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            log.close()
            shutil.rmtree(profile, ignore_errors=True)
            raise BrowserUnavailable(f"cannot run {self.executable}: {e}") from e
        self._process, self._profile, self._log_path = process, profile, log_path
        self._finalizer = weakref.finalize(self, _shut_down, process, profile, log)
        try:
            self.port = self._wait_for_port(process, Path(profile) / "DevToolsActivePort")
            self._http("GET", "/json/version")
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_port(self, process: subprocess.Popen[bytes], port_file: Path) -> int:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BrowserError(f"{self.executable} exited with {process.returncode} "
                                   f"while starting:\n{self.log_tail()}")
            try:
                first_line = port_file.read_text().splitlines()[0]
                return int(first_line)
            except (OSError, IndexError, ValueError):
                time.sleep(0.05)
        raise BrowserError(f"{self.executable} did not open its DevTools port within "
                           f"{self.start_timeout_s:g} s:\n{self.log_tail()}")

    def close(self) -> None:
        """Kill the browser and remove its profile (idempotent, never raises)."""
        if self._finalizer is not None:
            self._finalizer()
        self._process = self._profile = self._finalizer = None
        self.port = None

    def __enter__(self) -> Browser:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the browser wrote to stdout/stderr (for error messages)."""
        if self._log_path is None:
            return ""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- DevTools HTTP endpoint -------------------------------------------------------------

    def _http(self, method: str, path: str) -> Any:
        if self.port is None:
            raise BrowserError("the browser is not running")
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with self._opener.open(request, timeout=_HTTP_TIMEOUT_S) as response:
                body = response.read()
        except OSError as e:
            raise BrowserError(f"DevTools {method} {path} failed: {e}\n{self.log_tail()}") from e
        try:
            return json.loads(body)
        except ValueError:
            return body.decode(errors="replace")

    # -- checks -----------------------------------------------------------------------------

    def check(self, html_path: Path | str, screenshot: Path | str | None = None, *,
              width: int = 1280, height: int = 900, full_page: bool = True,
              timeout_s: float = 60.0) -> PageCheck:
        """Load ``html_path`` in a new tab and report its images, errors, title and sections.

        The page is given a ``width`` x ``height`` viewport. After its load event every image
        is made eager and awaited (bounded), so ``loading="lazy"`` images are checked too.
        With ``screenshot`` a PNG is written there: the whole page when ``full_page`` (cut
        off at ``MAX_SCREENSHOT_HEIGHT``), else the viewport. Raises ``FileNotFoundError`` for
        a missing file, ``TimeoutError`` when the page takes longer than ``timeout_s``, and
        ``BrowserError`` when the browser fails.
        """
        path = Path(html_path).resolve()
        if not path.is_file():
            raise FileNotFoundError(path)
        if self._process is None:
            self.start()
        deadline = _Deadline(timeout_s, f"checking {path.name} in Chromium")
        target = self._http("PUT", "/json/new?about:blank")
        try:
            cdp = _Cdp(target["webSocketDebuggerUrl"], deadline)
            try:
                return self._check_in(cdp, path, screenshot, width, height, full_page,
                                      deadline, timeout_s)
            finally:
                cdp.close()
        finally:
            try:
                self._http("GET", f"/json/close/{target['id']}")
            except BrowserError:
                pass

    def _check_in(self, cdp: _Cdp, path: Path, screenshot: Path | str | None, width: int,
                  height: int, full_page: bool, deadline: _Deadline,
                  timeout_s: float) -> PageCheck:
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.send(f"{domain}.enable", deadline)
        cdp.send("Emulation.setDeviceMetricsOverride", deadline, width=width, height=height,
                 deviceScaleFactor=1, mobile=False)
        since = len(cdp.events)
        url = path.as_uri()
        navigation = cdp.send("Page.navigate", deadline, url=url)
        if navigation.get("errorText"):
            raise BrowserError(f"cannot open {url}: {navigation['errorText']}")
        cdp.wait_for("Page.loadEventFired", deadline, since)

        settle_ms = int(max(1.0, min(10.0, deadline.left() / 3)) * 1000)
        evaluated = cdp.send("Runtime.evaluate", deadline, expression=_COLLECT_JS % {
            "settle_ms": settle_ms}, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in evaluated:
            raise BrowserError(f"inspecting {url} failed: {evaluated['exceptionDetails']}")
        page = evaluated["result"]["value"]

        metrics = cdp.send("Page.getLayoutMetrics", deadline)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        content_width, content_height = math.ceil(size["width"]), math.ceil(size["height"])

        written: Path | None = None
        if screenshot is not None:
            params: dict[str, Any] = {"format": "png"}
            if full_page:
                params["captureBeyondViewport"] = True
                params["clip"] = {"x": 0, "y": 0, "width": max(width, content_width),
                                  "height": min(max(1, content_height), MAX_SCREENSHOT_HEIGHT),
                                  "scale": 1}
            shot = cdp.send("Page.captureScreenshot", deadline, **params)
            written = Path(screenshot)
            written.parent.mkdir(parents=True, exist_ok=True)
            written.write_bytes(base64.b64decode(shot["data"]))

        return PageCheck(
            url=url,
            title=page["title"],
            images=[ImageInfo(src_prefix=image["src"][:SRC_PREFIX_CHARS],
                              natural_width=int(image["naturalWidth"]),
                              natural_height=int(image["naturalHeight"]),
                              complete=bool(image["complete"])) for image in page["images"]],
            console_errors=_errors_from(cdp.events),
            section_ids=list(page["sectionIds"]),
            dangling_anchors=list(page["danglingAnchors"]),
            content_width=content_width,
            content_height=content_height,
            screenshot=written,
        )


def inspect_page(html_path: Path | str, screenshot: Path | str | None = None, *,
                 width: int = 1280, height: int = 900, full_page: bool = True,
                 timeout_s: float = 60.0) -> PageCheck:
    """Check one page with a browser of its own (see ``Browser.check`` for the arguments)."""
    with Browser() as browser:
        return browser.check(html_path, screenshot, width=width, height=height,
                             full_page=full_page, timeout_s=timeout_s)
