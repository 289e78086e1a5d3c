"""Notifications in Chromium through real parts, beyond the happy path (the set-up
of tests/browser/test_push.py, whose docstring says what is stood in for and why):

- a decision tapped while the relay is away stays in IndexedDB until its machine
  acks it, even when the page that took it closes first; the next page sends it;
- Deny works like Approve;
- with the code pin locked even a genuine push shows only the generic notice;
- the settings a device saved are what the Devices screen shows after a reload,
  and turning notifications off stops pushes."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from ..integration.cluster import Paired, pending_checkpoint
from ..integration.push_service import PushService
from ..integration.relay_process import RelayProcess
from ..integration.test_notify_push import agent
from ..integration.watcher import Watcher
from ..timeouts import poll, scaled
from .conftest import ConsoleRecord, wait_for_keys
from .test_controller import link_browser
from .test_push import GENERIC, _fake_subscription, _registration_id, _shown
from .web_server import copy_web_root

pytestmark = pytest.mark.timeout(300)

QUEUED = """async () => {
  const request = indexedDB.open("starmux");
  const db = await new Promise((ok, fail) => {
    request.onsuccess = () => ok(request.result);
    request.onerror = fail;
  });
  const keys = await new Promise((ok, fail) => {
    const all = db.transaction("state").objectStore("state").getAllKeys();
    all.onsuccess = () => ok(all.result); all.onerror = fail;
  });
  db.close();
  return keys.filter((k) => String(k).startsWith("decision:"));
}"""
TAP = """async ([tag, action]) => {
  const [notification] = await self.registration.getNotifications({ tag });
  self.dispatchEvent(new NotificationEvent("notificationclick", { notification, action }));
  return Boolean(notification);
}"""


@pytest.fixture
def service() -> Iterator[PushService]:
    server = PushService()
    yield server
    server.close()


def push_on(context: BrowserContext, page: Page, paired: Paired, service: PushService) -> Any:
    """Link the browser, turn notifications on; the CDP session and registration id."""
    sub = service.subscribe()
    context.grant_permissions(["notifications"], origin=paired.relay.http_url)
    context.add_init_script(_fake_subscription(sub))
    link_browser(page, paired)
    page.click("#tabs >> text=Devices")
    page.click("#notify-enable")
    expect(page.locator("#notify-status")).to_contain_text("Notifications on. gpu-box: yes")
    return _registration_id(context, page)


def deliver(cdp: Any, origin: str, registration: str, sealed: bytes) -> None:
    data = base64.b64encode(sealed).decode()
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": origin, "registrationId": registration, "data": data},
    )


def test_a_decision_tapped_offline_survives_the_page_and_reaches_the_daemon(
    context: BrowserContext,
    page: Page,
    paired: Paired,
    service: PushService,
    relays: list[RelayProcess],
    console: ConsoleRecord,
    tmp_path: Path,
) -> None:
    origin = paired.relay.http_url
    cdp, registration = push_on(context, page, paired, service)
    session = paired.run(*agent(tmp_path / "stamp", "Ship it?", "--timeout", "120"))
    watcher = Watcher(paired.controller, session)
    service.wait_for(1, within=10)
    deliver(cdp, origin, registration, service.plaintexts[0][2])
    note = poll(lambda: _shown(page, 1), within=10, what="the checkpoint notification")[0]
    assert note["actions"] == ["approve", "deny"]

    console.allow_refused_connections()
    paired.relay.kill()
    expect(page.locator("#connection")).to_contain_text("offline since")
    worker = context.service_workers[0]
    assert worker.evaluate(TAP, [note["tag"], "approve"]) is True
    key = f"decision:{note['data']['machine']}/{note['data']['checkpoint']}"
    poll(lambda: worker.evaluate(QUEUED) == [key] or None, within=10, what="the queued decision")
    # The open page took it into its outbox (the relay is away: no ack can come) ...
    page.close()
    # ... and closed: the decision is still queued, not lost with the page.
    assert worker.evaluate(QUEUED) == [key]

    paired.relay = RelayProcess(paired.relay.data_dir, port=paired.relay.port).start()
    relays.append(paired.relay)
    again = context.new_page()
    again.on("console", console.on_console)
    again.on("pageerror", console.on_page_error)
    again.goto(origin + "/app/")
    wait_for_keys(again, "unlocked")
    expect(again.locator("#connection")).to_have_text("live", timeout=scaled(30) * 1000)
    assert watcher.finish() == 0  # the daemon got the decision; the agent went on
    assert b"approved by" in b"".join(watcher.lines)
    # Acked: it leaves the queue.
    poll(lambda: again.evaluate(QUEUED) == [] or None, within=10, what="the queue emptied")


def _subscriptions(paired: Paired) -> int:
    with sqlite3.connect(paired.relay.data_dir / "registry.sqlite3") as db:
        count: int = db.execute("SELECT count(*) FROM push_subscriptions").fetchone()[0]
    return count


def test_saved_choices_come_back_after_a_reload_and_off_stops_pushes(
    context: BrowserContext,
    page: Page,
    paired: Paired,
    service: PushService,
    tmp_path: Path,
) -> None:
    push_on(context, page, paired, service)
    assert _subscriptions(paired) == 1
    page.uncheck("label.check:has-text('A session succeeded') input")
    page.fill("#notify-reminder", "50")
    page.click("#notify-save")
    expect(page.locator("#notify-status")).to_contain_text("Saved. gpu-box: yes")

    page.reload()
    wait_for_keys(page, "unlocked")
    page.click("#tabs >> text=Devices")
    expect(page.locator("#notify-reminder")).to_have_value("50")
    expect(page.locator("label.check:has-text('A session succeeded') input")).not_to_be_checked()
    for kept in ("A checkpoint waits", "A session failed"):
        expect(page.locator(f"label.check:has-text('{kept}') input")).to_be_checked()
    expect(page.locator("#notify-state")).to_have_text("Pushes are on for this device.")

    page.click("#notify-disable")
    expect(page.locator("#notify-status")).to_contain_text("Notifications off. gpu-box: yes")
    expect(page.locator("#notify-state")).to_have_text("Pushes are off for this device.")
    assert _subscriptions(paired) == 0  # the relay forgot it
    unsubscribed = page.evaluate(
        "navigator.serviceWorker.ready.then((r) => r.pushManager.getSubscription())"
    )
    assert unsubscribed is None  # and the browser dropped it
    # A new checkpoint: its event is on the machine (the CLI sees it), no push comes.
    paired.run(*agent(tmp_path / "stamp", "Quiet?", "--timeout", "120"))
    pending_checkpoint(paired.cli, "Quiet?")
    time.sleep(scaled(1.0))  # a push comes ~0.3 s after its checkpoint: none did
    assert service.received == []
    page.reload()
    wait_for_keys(page, "unlocked")
    page.click("#tabs >> text=Devices")
    expect(page.locator("#notify-state")).to_have_text("Pushes are off for this device.")


def test_deny_from_the_notification_reaches_the_agent(
    context: BrowserContext, page: Page, paired: Paired, service: PushService, tmp_path: Path
) -> None:
    cdp, registration = push_on(context, page, paired, service)
    session = paired.run(*agent(tmp_path / "stamp", "Drop the table?", "--timeout", "120"))
    watcher = Watcher(paired.controller, session)
    service.wait_for(1, within=10)
    deliver(cdp, paired.relay.http_url, registration, service.plaintexts[0][2])
    note = poll(lambda: _shown(page, 1), within=10, what="the checkpoint notification")[0]
    worker = context.service_workers[0]
    assert worker.evaluate(TAP, [note["tag"], "deny"]) is True
    assert watcher.finish() == 1  # `starmux checkpoint` said: denied; the session failed
    me = page.locator("section[aria-labelledby=me-title] .mono").text_content() or ""
    said = b"".join(watcher.lines).decode()
    assert me and f": denied by {me}" in said, (said, me)  # by this browser device
    assert paired.session(session)["exit_code"] == 1


@pytest.fixture
def served_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The relay serves a copy of web/ (requested before ``paired``, so the relay
    starts with it), which the test can then change."""
    root = copy_web_root(tmp_path / "web")
    monkeypatch.setenv("STARMUX_WEB_ROOT", str(root))
    return root


def test_with_the_code_locked_a_real_push_shows_only_the_generic_notice(
    served_copy: Path,
    context: BrowserContext,
    page: Page,
    paired: Paired,
    service: PushService,
    relays: list[RelayProcess],
    console: ConsoleRecord,
    tmp_path: Path,
) -> None:
    origin = paired.relay.http_url
    cdp, registration = push_on(context, page, paired, service)
    title = "Rotate the keys?"
    paired.run(*agent(tmp_path / "stamp", title, "--timeout", "120"), title="key rotation")
    service.wait_for(1, within=10)
    sealed = service.plaintexts[0][2]  # a genuine push, sealed to this device

    # The server now sends other code: the pin locks the keys.
    console.allow_refused_connections()
    paired.relay.kill()
    dom = served_copy / "app" / "dom.js"
    dom.write_text(dom.read_text() + "\nglobalThis.starmuxTampered = true;\n")
    paired.relay = RelayProcess(paired.relay.data_dir, port=paired.relay.port).start()
    relays.append(paired.relay)
    page.reload()
    wait_for_keys(page, "locked")

    deliver(cdp, origin, registration, sealed)
    shown = poll(lambda: _shown(page, 1), within=10, what="a notification")
    assert len(shown) == 1
    generic = shown[0]
    assert generic["title"] == GENERIC and generic["body"] == "" and generic["actions"] == []
    assert generic["data"] == {"kind": "generic"}  # no machine, session or checkpoint
    texts = json.dumps(generic)
    for secret in (title, "key rotation", "the-secret-body", "gpu-box"):
        assert secret not in texts
