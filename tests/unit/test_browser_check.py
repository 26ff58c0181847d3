"""The real-browser check (tests/browser.py) passes good pages and catches broken ones.

These need Chromium. Without it they fail (never skip), with the command that installs it:
CI (.ci/run) installs Debian's `chromium` package.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.browser import (
    Browser,
    BrowserUnavailable,
    chromium_path,
    inspect_page,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for all the pages of this module."""
    try:
        chromium_path()
    except BrowserUnavailable as e:
        where = "in CI" if os.environ.get("CI") else "here"
        pytest.fail(f"the browser check cannot run {where}: {e}", pytrace=False)
    with Browser() as started:
        yield started


def _png_base64(width: int, height: int, color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _group_gone(pgid: int, within_s: float = 5.0) -> bool:
    """Whether process group ``pgid`` has no process left (zombies are reaped by init)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _page(tmp_path: Path, name: str, body: str, title: str = "page") -> Path:
    path = tmp_path / name
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                    f"</head><body style='margin:0;background:#fff'>{body}</body></html>")
    return path


def test_inlined_png_loads_at_its_natural_size_and_shows_in_the_screenshot(browser, tmp_path):
    data = _png_base64(123, 45, (255, 0, 0))
    page = _page(tmp_path, "good.html",
                 f"<section id='overview'><img style='display:block' "
                 f"src='data:image/png;base64,{data}'><h1>Run</h1></section>"
                 "<section id='curves'><p>more</p></section>"
                 "<a href='#overview'>top</a><div style='height:2000px'></div>",
                 title="run report")
    shot = tmp_path / "shots" / "good.png"
    check = browser.check(page, screenshot=shot)

    assert check.console_errors == []
    assert len(check.images) == 1
    image = check.images[0]
    assert (image.natural_width, image.natural_height, image.complete) == (123, 45, True)
    assert image.loaded and check.broken_images == []
    assert image.src_prefix.startswith("data:image/png;base64,")
    assert check.title == "run report"
    assert check.section_ids == ["overview", "curves"]
    assert check.dangling_anchors == []

    assert check.screenshot == shot
    with Image.open(shot) as png:
        png.load()
        assert png.format == "PNG"
        # full page: as wide as the viewport, as tall as the document (beyond the viewport)
        assert png.width == 1280 and png.height == check.content_height > 2000
        # the image was painted at the top left: red there, white beside and below it
        rgb = png.convert("RGB")
        assert rgb.getpixel((60, 20)) == (255, 0, 0)
        assert rgb.getpixel((1000, 20)) == rgb.getpixel((60, 1500)) == (255, 255, 255)


def test_viewport_screenshot_has_the_viewport_size(browser, tmp_path):
    page = _page(tmp_path, "tall.html", "<div style='height:5000px'>tall</div>")
    shot = tmp_path / "viewport.png"
    browser.check(page, screenshot=shot, width=800, height=600, full_page=False)
    with Image.open(shot) as png:
        assert png.size == (800, 600)


def test_broken_images_have_no_natural_size(browser, tmp_path):
    page = _page(tmp_path, "broken.html",
                 "<img src='data:image/png;base64,AAAA'><img src='missing.png'>")
    check = browser.check(page)

    assert [(i.natural_width, i.natural_height) for i in check.images] == [(0, 0), (0, 0)]
    assert len(check.broken_images) == 2



def test_console_error_is_reported(browser, tmp_path):
    page = _page(tmp_path, "console.html",
                 "<script>console.log('fine'); console.warn('meh'); console.error('boom')</script>")
    check = browser.check(page)
    assert check.console_errors == ["console.error: boom"]


def test_uncaught_exception_is_reported(browser, tmp_path):
    page = _page(tmp_path, "throw.html", "<script>throw new Error('x')</script>")
    check = browser.check(page)
    assert len(check.console_errors) == 1
    assert "Error: x" in check.console_errors[0]


def test_each_page_reports_only_its_own_errors(browser, tmp_path):
    browser.check(_page(tmp_path, "noisy.html", "<script>console.error('noise')</script>"))
    assert browser.check(_page(tmp_path, "quiet.html", "<p>quiet</p>")).console_errors == []


def test_dangling_in_page_links_are_reported(browser, tmp_path):
    page = _page(tmp_path, "links.html",
                 "<section id='a'></section><a href='#a'>a</a><a href='#gone'>gone</a>")
    assert browser.check(page).dangling_anchors == ["gone"]


def test_a_page_that_never_loads_times_out_and_the_browser_goes_on(browser, tmp_path):
    hang = _page(tmp_path, "hang.html", "<script>while (true) {}</script>")
    with pytest.raises(TimeoutError):
        browser.check(hang, timeout_s=2)
    assert browser.check(_page(tmp_path, "after.html", "<p>ok</p>")).console_errors == []


def test_a_missing_page_is_an_error(browser, tmp_path):
    with pytest.raises(FileNotFoundError):
        browser.check(tmp_path / "nope.html")


def test_inspect_page_cleans_up_after_itself(tmp_path):
    chromium_path()  # fails with the install hint when there is none
    page = _page(tmp_path, "one.html", "<p>one</p>", title="one")
    assert inspect_page(page).title == "one"

    with pytest.raises(RuntimeError, match="inside"), Browser() as started:
        pid, profile = started.pid, started.profile_dir
        assert pid is not None and profile is not None and profile.is_dir()
        raise RuntimeError("failure inside the block")
    assert not profile.exists()
    assert _group_gone(pid), "browser processes outlived the with block"


def test_chromium_path_honours_the_environment(monkeypatch, tmp_path):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CHROMIUM", str(fake))
    assert chromium_path() == str(fake)

    monkeypatch.setenv("CHROMIUM", str(tmp_path / "absent"))
    with pytest.raises(BrowserUnavailable, match="CHROMIUM"):
        chromium_path()

    monkeypatch.delenv("CHROMIUM")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrowserUnavailable, match="apt-get install chromium"):
        chromium_path()
