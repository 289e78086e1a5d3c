"""Browser tests: Debian's Chromium driven by Playwright, against real servers.

Playwright's own browser download is not reachable here, so the tests launch
``/usr/bin/chromium`` (``tests/setup_system.py`` installs it as root). Without it
they fail saying what to install; they never skip.

Every page records console errors and uncaught exceptions; a test ends by
asserting there were none (:func:`page`'s teardown).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from ..integration.cluster import Paired, pair
from ..integration.conftest import stop_controller_agents
from ..integration.daemon_process import DaemonProcess
from ..integration.relay_process import RelayProcess
from ..timeouts import scaled
from .web_server import WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REFUSED = re.compile(
    r"^(WebSocket connection to '\S+' failed: .*net::ERR_CONNECTION_REFUSED"
    r"|Failed to load resource: net::ERR_CONNECTION_REFUSED)$"
)
# Controller commands start a controller agent per home: stop them after each test.
__all__ = ["stop_controller_agents"]

PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """One Playwright driver per test module (the sync API allows one per thread).
    Not per session: the sync API keeps an asyncio loop running in this thread while
    the driver lives, and every later test that calls asyncio.run() (the rest of the
    suite runs in the same process) would fail with "cannot be called from a running
    event loop"."""
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.fail(
            "tests/browser need Chromium at /usr/bin/chromium: run tests/setup_system.py as "
            "root, or apt-get install chromium",
            pytrace=False,
        )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    yield launched
    launched.close()


class ConsoleRecord:
    """Console errors and uncaught exceptions of a page.

    A test that takes a server away on purpose calls :meth:`allow_refused_connections`:
    Chromium itself logs each refused connection attempt (the app cannot stop that;
    it shows the outage in its connection state instead). Nothing else is excused.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.refused_allowed = False

    def allow_refused_connections(self) -> None:
        self.refused_allowed = True

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        refused = REFUSED.search(message.text)
        if refused and self.refused_allowed:
            return
        self.errors.append(f"console: {message.text} ({message.location})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh profile (no service worker, no IndexedDB), phone-sized."""
    made = browser.new_context(viewport=PHONE, device_scale_factor=1)
    made.set_default_timeout(scaled(15) * 1000)
    yield made
    made.close()


@pytest.fixture
def console() -> ConsoleRecord:
    return ConsoleRecord()


@pytest.fixture
def page(context: BrowserContext, console: ConsoleRecord) -> Iterator[Page]:
    opened = context.new_page()
    opened.on("console", console.on_console)
    opened.on("pageerror", console.on_page_error)
    yield opened
    assert not console.errors, "the page logged errors:\n" + "\n".join(console.errors)


@pytest.fixture
def web_servers(tmp_path: Path) -> Iterator[list[WebServer]]:
    started: list[WebServer] = []
    yield started
    for server in started:
        server.stop()


def wait_for_keys(page: Page, state: str) -> None:
    """The app sets ``body[data-keys]`` to absent, locked or unlocked."""
    page.wait_for_selector(f"body[data-keys={state}]", state="attached")


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.kill()


@pytest.fixture
def relay(tmp_path: Path, relays: list[RelayProcess]) -> RelayProcess:
    relays.append(RelayProcess(tmp_path / "relay").start())
    return relays[0]


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)
