"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

Why Playwright (not Selenium + chromedriver): it waits for elements by itself, reports console
messages and page errors as events, and needs no driver binary whose version must match the
browser's; with ``executable_path`` it drives the system Chromium and downloads nothing.

``make setup`` installs Debian's ``chromium`` when it is missing and it runs as root; where no
Chromium can be found, :func:`chromium_or_skip` skips with a message that says how to get one.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# As root Chromium needs --no-sandbox; the rest keeps it from calling Google's hosts, which a
# closed network refuses (many connection errors, slow starts).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"


def chromium_path() -> str | None:
    configured = os.environ.get("POLAR_VBLL_CHROMIUM")
    for candidate in ([configured] if configured else []) + list(CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def chromium_or_skip() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium: install Debian's package (`apt-get install -y chromium`, which "
                    "`make setup` does as root) or set POLAR_VBLL_CHROMIUM to a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed; `make setup` installs it (polar_vbll[test])")
    return path


@contextlib.contextmanager
def browser():
    """A headless Chromium (Playwright's Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(folder: Path):
    """Serve ``folder`` on http://127.0.0.1:<port>/ in a thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass
