"""Every screen at a phone's and a desktop's size, dark and light, with real data
(a CLI owner, a daemon, a session with output, a pending and a decided checkpoint).

The screenshots go to ``$STARMUX_SCREENS_DIR`` when set (the README's pictures:
``STARMUX_SCREENS_DIR=docs/screens``), else to the test's tmp dir. Either way the
test checks that each screen renders without a console error and that nothing is
wider than the phone's screen (no sideways scrolling at 390 px, nor at 360 px).
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from ..integration.cluster import Paired, pending_checkpoint, python
from ..integration.shown_codes import Inviter
from ..integration.test_checkpoints import agent
from ..integration.watcher import Watcher
from ..timeouts import COMMAND
from .conftest import DESKTOP, PHONE, wait_for_keys
from .web_server import WebServer, copy_web_root

pytestmark = pytest.mark.timeout(300)


#: Resolves once the page has rendered a frame after the last change and started the
#: next (two animation frames): what a screenshot should show, without a fixed wait.
NEXT_FRAME = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"


def shots_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("STARMUX_SCREENS_DIR")
    folder = Path(configured) if configured else tmp_path / "screens"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Page, folder: Path, name: str) -> None:
    """Phone (dark) and desktop (light) pictures of what the page shows now."""
    for size, dark, suffix in ((PHONE, True, "phone"), (DESKTOP, False, "desktop")):
        page.set_viewport_size(size)
        page.emulate_media(color_scheme="dark" if dark else "light")
        page.evaluate(NEXT_FRAME)  # laid out and painted at this size and scheme
        page.screenshot(path=str(folder / f"{name}-{suffix}.png"))
    for width in (PHONE["width"], 360):
        page.set_viewport_size({"width": width, "height": PHONE["height"]})
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= width, f"{name}: {wide} px wide at a {width} px screen"
    page.set_viewport_size(PHONE)


def make_data(paired: Paired) -> str:
    """Through the CLI owner: a finished session with output, a checkpoint left pending
    and one the CLI decided. Returns the pending checkpoint's session."""
    build = paired.run(*python("print('\\x1b[32mbuild ok\\x1b[0m'); print('tests: 214 passed')"),
                       title="build and test")  # fmt: skip
    Watcher(paired.controller, build).finish()
    session = paired.run(*agent("Deploy to production?", "--timeout", "600"), title="deploy")
    later = paired.run(*agent("Run the database migration?", "--timeout", "600"))
    paired.cli("approve", str(pending_checkpoint(paired.cli, "Run the database migration?")["id"]))
    Watcher(paired.controller, later).finish()
    return session


def test_screens(page: Page, paired: Paired, tmp_path: Path) -> None:
    folder = shots_dir(tmp_path)
    # The CLI owner makes the data beside the browser's start, not beside its link (a
    # `starmux run` during `devices link` can come back queued instead of run).
    with ThreadPoolExecutor(1) as cli:
        data = cli.submit(make_data, paired)
        page.goto(paired.relay.http_url + "/app/")
        wait_for_keys(page, "unlocked")
        page.fill("#device-name", "phone")
        shoot(page, folder, "setup")
        session = data.result(timeout=COMMAND)

    inviter = Inviter(paired.controller, "owner")  # the browser joins an account with history
    page.fill("textarea", inviter.wait_code())
    page.click("text=Use this code")
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    shoot(page, folder, "link-compare")
    page.click("#codes-match")
    inviter.finish()
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#machine-list li", has_text="gpu-box")).to_contain_text("online")
    expect(page.locator("#machine-list")).to_contain_text("1 running")
    shoot(page, folder, "machines")

    page.click("#pair-button")
    shoot(page, folder, "pair")
    page.click("#pair-button")

    page.click("#tabs >> text=Sessions")
    expect(page.locator("#session-list li")).to_have_count(3)
    shoot(page, folder, "sessions")
    page.locator("#session-list li", has_text="build and test").get_by_role(
        "button", name="Watch"
    ).click()
    expect(page.locator("#session-meta")).to_contain_text("succeeded")
    expect(page.locator(".xterm-rows")).to_contain_text("tests: 214 passed")
    shoot(page, folder, "session")

    page.click("#tabs >> text=Approvals")
    expect(page.locator("#approval-list li", has_text="migration")).to_contain_text("Too late")
    expect(page.locator("#approval-list li", has_text="Deploy")).to_contain_text("Approve")
    shoot(page, folder, "approvals")

    page.click("#tabs >> text=Start")
    page.fill("#start-cwd", str(paired.workdir))
    page.fill("#start-command", 'claude -p "fix the failing tests"')
    page.fill("#start-title", "fix tests")
    shoot(page, folder, "start")

    page.click("#tabs >> text=Devices")
    expect(page.locator("#device-list")).to_contain_text("laptop")
    shoot(page, folder, "devices")
    paired.cli("cancel", session)


def test_lock_screen(page: Page, web_servers: list[WebServer], tmp_path: Path) -> None:
    root = copy_web_root(tmp_path / "web")
    server = WebServer(tmp_path / "home", web_root=root).start()
    web_servers.append(server)
    page.goto(server.url)
    wait_for_keys(page, "unlocked")
    server.stop()
    (root / "app" / "style.css").write_text((root / "app" / "style.css").read_text() + "\n")
    server.start()
    page.reload()
    wait_for_keys(page, "locked")
    shoot(page, shots_dir(tmp_path), "locked")
