"""The reverse link direction in the browser: a laptop browser without a camera shows
its own join code (text and a QR drawn from it), the CLI owner adds it with the real
``starmux devices add CODE --yes``, both show the same comparison code, and the
browser then lists the owner's machine and its sessions. The page logs no console
error (the ``page`` fixture's teardown).

Figure (printed with -s): seconds from the code being shown to the machine listed.
Screenshots of the shown code: ``join-show-*.png`` (``STARMUX_SCREENS_DIR``, as
test_screens.py).
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from playwright.sync_api import Page, expect

from starmux.client.qr_image import decode_pairing_code_from_image
from starmux.link_code import Direction, parse_link_code

from ..integration.cluster import Paired
from ..integration.daemon_process import run_cli
from ..timeouts import COMMAND, scaled
from .conftest import wait_for_keys
from .test_screens import shoot, shots_dir

pytestmark = pytest.mark.timeout(300)


def test_a_browser_shows_its_code_and_an_owner_adds_it(
    page: Page, paired: Paired, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI owner starts a session while the page loads: it exists before the join.
    with ThreadPoolExecutor(1) as beside:
        before = beside.submit(
            paired.run, "sh", "-c", "echo joined-from-the-cli", title="before-the-join"
        )
        page.goto(paired.relay.http_url + "/app/")
        wait_for_keys(page, "unlocked")
        page.fill("#device-name", "laptop-browser")
        session = before.result(timeout=COMMAND)
    page.click("#join-show")
    expect(page.locator("#join-code")).to_have_text(re.compile(r"^starmux://join/v1\?"))
    shown_at = time.monotonic()
    code = page.text_content("#join-code") or ""
    expect(page.locator("#join-status")).to_contain_text("Waiting for an owner")
    expect(page.locator("#join-expiry")).to_contain_text("expires in")
    # The code names this browser's own key and the relay it is served by.
    parsed = parse_link_code(code, Direction.JOIN)
    assert parsed.relay_url == paired.relay.url
    # The QR on the page is the same code: decoded by the CLI's own image decoder.
    qr = tmp_path / "browser-join-qr.png"
    page.locator("#join-qr canvas").screenshot(path=str(qr))
    with ThreadPoolExecutor(1) as beside:  # decoded while the page is photographed
        decoded = beside.submit(decode_pairing_code_from_image, qr, prefix="starmux://join/")
        shoot(page, shots_dir(tmp_path), "join-show")  # also: no sideways scrolling at 360 px
        assert decoded.result(timeout=COMMAND) == code

    # The owner adds it; the CLI blocks until linked, so it runs beside the page.
    outcome: list[CompletedProcess[str]] = []
    owner = threading.Thread(
        target=lambda: outcome.append(
            run_cli(paired.controller, "devices", "add", code, "--role", "operator", "--yes")
        )
    )
    owner.start()
    try:
        expect(page.locator("#comparison-code")).to_have_text(
            re.compile(r"\d"), timeout=scaled(60) * 1000
        )
        compared = page.text_content("#comparison-code") or ""
        expect(page.locator("#join-progress")).to_have_attribute("value", "4")
        page.click("#codes-match")
    finally:
        owner.join(scaled(90))
    (added,) = outcome
    assert added.returncode == 0, added.stderr
    assert compared.strip() and compared in added.stdout + added.stderr, (compared, added)
    assert added.stdout.startswith("added laptop-browser ") and "as operator" in added.stdout

    # Then the same as after the forward direction: the owner's machine and its sessions.
    expect(page.locator("#connection")).to_have_text("live", timeout=scaled(30) * 1000)
    expect(page.locator("#machine-list li", has_text="gpu-box")).to_contain_text("online")
    listed_seconds = time.monotonic() - shown_at
    with ThreadPoolExecutor(1) as beside:  # the CLI's device list beside the page's
        listed = beside.submit(run_cli, paired.controller, "devices", "--json")
        page.click("#tabs >> text=Sessions")
        expect(page.locator("#session-list li", has_text="before-the-join")).to_be_visible()
        devices = listed.result(timeout=COMMAND)
    assert "laptop-browser" in devices.stdout and "operator" in devices.stdout
    assert session
    with capsys.disabled():
        print(f"\njoin code shown -> owner's machine listed: {listed_seconds:.2f}s")
