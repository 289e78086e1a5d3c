"""The browser as a controller device, against a real relay, real daemons and a
CLI owner: link by code, pair a machine from a QR image, watch live output across
a relay restart, approve a checkpoint of a real agent, see a CLI device's decision
arrive as "too late", revoke a machine. The page logs no console error throughout
(the ``page`` fixture's teardown).

Figures (printed with -s): seconds from picking a machine's QR image to the machine
being listed, and from tapping Approve to the agent's process continuing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image

from ..integration.cluster import Paired, pair
from ..integration.daemon_process import DaemonProcess, run_cli
from ..integration.relay_process import RelayProcess
from ..integration.test_devices import Inviter
from .conftest import ConsoleRecord, wait_for_keys

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    started = RelayProcess(tmp_path / "relay").start()
    yield started
    started.kill()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.fixture
def paired(tmp_path: Path, relay: RelayProcess, daemons: list[DaemonProcess]) -> Paired:
    return pair(tmp_path, relay, daemons)


def link_browser(page: Page, paired: Paired, role: str = "owner") -> None:
    """A fresh profile becomes a device of the CLI owner's account by pasting the code."""
    inviter = Inviter(paired.controller, role)
    code = inviter.wait_code()
    page.goto(paired.relay.http_url + "/app/")
    wait_for_keys(page, "unlocked")
    page.fill("#device-name", "phone")
    page.fill("textarea", code)
    page.click("text=Use this code")
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    shown = page.text_content("#comparison-code") or ""
    page.click("#codes-match")
    out = inviter.finish()
    assert inviter.process.stderr is not None
    said = out + inviter.process.stderr.read()
    assert shown in said, (shown, said)  # the CLI owner showed the same code
    expect(page.locator("#connection")).to_have_text("live")


def machine_card(page: Page, name: str) -> object:
    return page.locator("#machine-list li", has_text=name)


def test_link_pair_watch_approve_revoke(
    page: Page,
    paired: Paired,
    daemons: list[DaemonProcess],
    tmp_path: Path,
    console: ConsoleRecord,
    capsys: pytest.CaptureFixture[str],
) -> None:
    link_browser(page, paired)
    expect(machine_card(page, "gpu-box")).to_contain_text("online")
    devices = run_cli(paired.controller, "devices", "--json")
    assert "phone" in devices.stdout

    # --- pair a second machine from a picture of its QR (the upload path) -------------
    second = DaemonProcess(
        tmp_path / "build-box", paired.relay.url, name="build-box",
        extra_args=["--allow-root", str(tmp_path)],
    ).start()  # fmt: skip
    daemons.append(second)
    second.pairing_code()
    image = tmp_path / "build-box-qr.png"
    terminal_qr_to_image(find_qr_block(second.output)).save(image)
    page.click("#pair-button")
    picked = time.monotonic()
    page.set_input_files("#pair-panel input[type=file]", str(image))
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    page.click("#codes-match")
    expect(machine_card(page, "build-box")).to_contain_text("online")
    pair_seconds = time.monotonic() - picked
    second.wait_for("connected to")
