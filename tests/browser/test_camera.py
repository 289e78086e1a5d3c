"""Pairing a machine by pointing the camera at its QR: Chromium's fake camera plays a
video of the daemon's terminal QR (--use-file-for-fake-video-capture), the app reads
it from the camera stream (BarcodeDetector where the platform has it, else the
vendored jsQR) and pairs the machine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, Playwright, expect

from starmux.client.qr_terminal import find_qr_block, terminal_qr_to_image

from ..integration.cluster import Paired
from ..integration.daemon_process import DaemonProcess
from ..timeouts import scaled
from .conftest import CHROMIUM, CHROMIUM_FLAGS, PHONE, ConsoleRecord
from .test_controller import link_browser, machine_card

pytestmark = pytest.mark.timeout(300)


def write_y4m(image: Image.Image, path: Path, *, size: int = 640) -> None:
    """One grey frame (Chromium loops it): the QR centred on white, as Y4M 4:2:0."""
    frame = Image.new("L", (size, size), 255)
    qr = image.convert("L")
    qr.thumbnail((size - 40, size - 40))
    frame.paste(qr, ((size - qr.width) // 2, (size - qr.height) // 2))
    chroma = bytes([128]) * ((size // 2) * (size // 2))
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{size} H{size} F10:1 Ip A1:1 C420jpeg\n".encode())
        out.write(b"FRAME\n" + frame.tobytes() + chroma + chroma)


@pytest.fixture
def camera_page(
    playwright: Playwright, tmp_path: Path, console: ConsoleRecord
) -> Iterator[tuple[Page, Path]]:
    video = tmp_path / "camera.y4m"
    flags = [
        *CHROMIUM_FLAGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
    context = browser.new_context(viewport=PHONE)
    context.set_default_timeout(scaled(15) * 1000)
    page = context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    yield page, video
    browser.close()
    assert not console.errors, "the page logged errors:\n" + "\n".join(console.errors)


def test_pair_a_machine_with_the_camera(
    camera_page: tuple[Page, Path], paired: Paired, daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    page, video = camera_page
    second = DaemonProcess(
        tmp_path / "build-box", paired.relay.url, name="build-box",
        extra_args=["--allow-root", str(tmp_path)],
    ).start()  # fmt: skip
    daemons.append(second)
    second.pairing_code()
    write_y4m(terminal_qr_to_image(find_qr_block(second.output)), video)

    link_browser(page, paired)
    page.context.grant_permissions(["camera"], origin=paired.relay.http_url)
    page.click("#pair-button")
    page.click("#pair-panel >> text=Scan QR")
    expect(page.locator("#comparison-code")).to_have_text(re.compile(r"\d"))
    page.click("#codes-match")
    expect(machine_card(page, "build-box")).to_contain_text("online")
    expect(page.locator("#pair-panel video")).to_be_hidden()  # the camera was stopped
