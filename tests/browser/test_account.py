"""A fresh browser becomes the first device of a new account with the relay's
registration token, and its connection state follows the relay through a restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from ..integration.relay_process import RelayProcess
from .conftest import ConsoleRecord, wait_for_keys


@pytest.fixture
def restarted() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.kill()


def test_a_new_account_from_the_browser_follows_the_relay(
    page: Page, relay: RelayProcess, restarted: list[RelayProcess], console: ConsoleRecord
) -> None:
    assert relay.registration_token
    page.goto(relay.http_url + "/app/")
    wait_for_keys(page, "unlocked")
    assert page.input_value("#relay-url") == relay.url
    # A pasted text that is not a link code is refused with what to paste instead.
    page.fill("textarea", "starmux://pair/v1?relay=ws://x")
    page.click("text=Use this code")
    expect(page.locator("section[aria-labelledby=link-title] [role=status]")).to_contain_text(
        "machine pairing code, not a device code"
    )
    page.fill("#device-name", "phone")
    page.fill("#relay-token", "not-the-token")
    page.click("text=Create account")
    expect(page.locator("form[aria-labelledby=new-title] [role=status]")).to_contain_text(
        "refused the registration token"
    )

    page.fill("#relay-token", relay.registration_token)
    page.click("text=Create account")
    expect(page.locator("#connection")).to_have_text("live")
    expect(page.locator("#tabs")).to_be_visible()
    expect(page.locator("h1")).to_have_text("Machines")

    console.allow_refused_connections()
    relay.stop()
    expect(page.locator("#connection")).to_contain_text("offline since")
    # The same port and data dir: the same relay, the same account.
    again = RelayProcess(relay.data_dir, port=relay.port).start()
    restarted.append(again)
    expect(page.locator("#connection")).to_have_text("live")

    page.reload()
    wait_for_keys(page, "unlocked")
    expect(page.locator("#connection")).to_have_text("live")
    page.click("#tabs >> text=Devices")
    expect(page.locator("#device-list")).to_contain_text("phone")
    expect(page.locator("#device-list")).to_contain_text("owner")
