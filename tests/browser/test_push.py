"""Web Push in Chromium through real parts: the web app subscribes and registers with a
real relay, a real agent raises a checkpoint, the real daemon seals a notification to
the browser device, the relay wraps it (RFC 8291 + VAPID) and POSTs it to the local
RFC 8030 push service (tests/integration/push_service.py), which removes that layer
with the subscription keys the test made; the sealed bytes go to the app's service
worker, which opens them, shows the notification, and its Approve action's decision
(signed in the service worker) reaches the daemon and lets the agent continue.

What differs from a real push, and why:

- The subscription: headless Chromium reaches no push service (its own is Google's
  FCM), so ``PushManager.subscribe`` is replaced in the page by one that returns the
  push service's subscription (endpoint and keys the test made), and records the
  ``applicationServerKey`` the app passed (the relay's VAPID key). Everything after
  it (signing, registering, the machines' targets) is the app's own code.
- The delivery: a browser would receive the RFC 8291 record and hand the service
  worker the decrypted bytes; here the test decrypts it (as the push service does)
  and hands the bytes over with DevTools' ``ServiceWorker.deliverPushMessage``. Its
  ``data`` is a string (UTF-8 on the way in), so binary cannot pass as it is: the
  test sends the sealed box in base64, which the worker accepts beside raw bytes
  (the same bytes, opened and verified alike).
- The tap: headless Chromium has no notification UI, so the test dispatches a
  ``notificationclick`` with ``action: "approve"`` in the worker, for the very
  notification the worker showed (``registration.getNotifications()``).

Figure (printed with -s): seconds from the agent's call to the notification being
shown in the browser.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from starmux.notify_push import SEALED_SIZE

from ..integration.cluster import Paired
from ..integration.push_service import PushService, Subscription
from ..integration.test_notify_push import agent, waiting_agent
from ..integration.watcher import Watcher
from ..timeouts import poll, scaled
from .test_controller import link_browser

pytestmark = pytest.mark.timeout(300)

GENERIC = "starmux: something needs you"
NOTIFICATIONS = """async () => {
  const registration = await navigator.serviceWorker.ready;
  return (await registration.getNotifications()).map((n) => ({
    title: n.title, body: n.body, tag: n.tag, data: n.data,
    actions: n.actions.map((a) => a.action),
  }));
}"""
APPROVE = """async (tag) => {
  const [notification] = await self.registration.getNotifications({ tag });
  const click = { notification, action: "approve" };
  self.dispatchEvent(new NotificationEvent("notificationclick", click));
  return Boolean(notification);
}"""


def _fake_subscription(sub: Subscription) -> str:
    """An init script: PushManager hands out the push service's subscription."""
    keys = {
        "p256dh": list(sub.p256dh),
        "auth": list(sub.auth),
    }
    return f"""(() => {{
  const keys = {json.dumps(keys)};
  const endpoint = {json.dumps(sub.endpoint)};
  let made = null;
  const make = (options) => ({{
    endpoint, options,
    getKey: (name) => new Uint8Array(keys[name]).buffer,
    unsubscribe: async () => {{ made = null; return true; }},
  }});
  PushManager.prototype.subscribe = async function (options) {{
    window.__vapidPassed = Array.from(new Uint8Array(options.applicationServerKey));
    made = make({{ userVisibleOnly: options.userVisibleOnly,
                   applicationServerKey: new Uint8Array(options.applicationServerKey).buffer }});
    return made;
  }};
  PushManager.prototype.getSubscription = async function () {{ return made; }};
}})();"""


@pytest.fixture
def service() -> Iterator[PushService]:
    server = PushService()
    yield server
    server.close()


def _registration_id(context: BrowserContext, page: Page) -> tuple[Any, str]:
    cdp = context.new_cdp_session(page)
    found: dict[str, str] = {}

    def updated(params: dict[str, Any]) -> None:
        for reg in params["registrations"]:
            if not reg.get("isDeleted"):
                found["id"] = reg["registrationId"]

    cdp.on("ServiceWorker.workerRegistrationUpdated", updated)
    cdp.send("ServiceWorker.enable")

    def seen() -> str | None:
        page.wait_for_timeout(20)  # the sync API delivers CDP events during its own calls
        return found.get("id")

    registration = poll(seen, within=10, what="the service worker's registration")
    return cdp, registration


def _shown(page: Page, want: int) -> list[dict[str, Any]] | None:
    got: list[dict[str, Any]] = page.evaluate(NOTIFICATIONS)
    return got if len(got) >= want else None


def test_a_push_shows_the_checkpoint_and_approve_unblocks_the_agent(
    context: BrowserContext,
    page: Page,
    paired: Paired,
    service: PushService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sub = service.subscribe()
    origin = paired.relay.http_url
    context.grant_permissions(["notifications"], origin=origin)
    context.add_init_script(_fake_subscription(sub))
    link_browser(page, paired)
    page.click("#tabs >> text=Devices")
    page.click("#notify-enable")
    expect(page.locator("#notify-status")).to_contain_text("Notifications on. gpu-box: yes")
    vapid = bytes(page.evaluate("window.__vapidPassed"))
    served = json.loads(page.evaluate("fetch('/v1/push/vapid-public-key').then(r => r.text())"))
    assert base64.urlsafe_b64encode(vapid).rstrip(b"=").decode() == served["vapid_public_key"]
    cdp, registration = _registration_id(context, page)

    # Bytes that do not open (here: random, the right size): the generic notice only.
    junk = base64.b64encode(secrets.token_bytes(SEALED_SIZE)).decode()
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": origin, "registrationId": registration, "data": junk},
    )
    generic = poll(lambda: _shown(page, 1), within=10, what="the generic notice")
    assert [n["title"] for n in generic] == [GENERIC] and generic[0]["body"] == ""
    assert generic[0]["actions"] == []

    stamp = tmp_path / "raised"
    title = "Push to prod?"
    session = paired.run(*agent(stamp, title, "--timeout", "120"), title="nightly deploy")
    watcher = Watcher(paired.controller, session)
    post = service.wait_for(1, within=10)[0]
    sealed = service.plaintexts[0][2]
    assert len(sealed) == SEALED_SIZE and title.encode() not in post.body + sealed
    delivered = base64.b64encode(sealed).decode()
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": origin, "registrationId": registration, "data": delivered},
    )
    notes = poll(lambda: _shown(page, 2), within=10, what="the checkpoint notification")
    shown_at = time.time()
    latency = shown_at - float(stamp.read_text())
    posted = post.at - float(stamp.read_text())
    note = next(n for n in notes if n["title"] != GENERIC)
    assert note["title"] == f"gpu-box: {title}"
    assert note["body"].startswith("nightly deploy\nthe-secret-body")
    assert note["actions"] == ["approve", "deny"]
    assert note["data"]["session"] == session and note["data"]["kind"] == "checkpoint"

    # The tap on Approve: signed in the worker, sent by the open app.
    worker = context.service_workers[0]
    assert worker.evaluate(APPROVE, note["tag"]) is True
    assert watcher.finish() == 0  # the agent's process got its answer and ended
    me = page.locator("section[aria-labelledby=me-title] .mono").text_content() or ""
    said = b"".join(watcher.lines).decode()
    assert f": approved by {me}" in said and me, (said, me)  # by this browser device
    poll(
        lambda: all(n["tag"] != note["tag"] for n in _shown(page, 0) or []) or None,
        within=10,
        what="the notification closed",
    )
    with capsys.disabled():
        print(
            f"\npush figures: agent's checkpoint call -> push POST {posted:.2f} s; "
            f"-> notification shown in Chromium {latency:.2f} s (poll step 50 ms)"
        )


def test_the_session_on_screen_is_not_pushed(
    context: BrowserContext, page: Page, paired: Paired, service: PushService, tmp_path: Path
) -> None:
    sub = service.subscribe()
    context.grant_permissions(["notifications"], origin=paired.relay.http_url)
    context.add_init_script(_fake_subscription(sub))
    link_browser(page, paired)
    page.click("#tabs >> text=Devices")
    page.click("#notify-enable")
    expect(page.locator("#notify-status")).to_contain_text("Notifications on. gpu-box: yes")

    page.uncheck("label.check:has-text('A session succeeded') input")
    page.click("#notify-save")
    expect(page.locator("#notify-status")).to_contain_text("Saved. gpu-box: yes")

    gate = tmp_path / "gate"
    paired.run(*waiting_agent(gate, "Looked at?"), title="looked at")
    page.click("#tabs >> text=Sessions")
    page.locator("#session-list li", has_text="looked at").get_by_role(
        "button", name="Watch"
    ).click()
    # The app sends `viewing` as the session opens; the daemon answers nothing to it,
    # so there is no event to await: a pause for it to cross the relay.
    time.sleep(scaled(1.0))
    gate.touch()
    expect(page.locator("#tabs .badge")).to_have_text("1")  # raised while on screen
    page.click("text=← Sessions")  # the claim is released: pushes resume at once
    paired.run(*agent(tmp_path / "stamp", "Elsewhere?", "--timeout", "120"))
    service.wait_for(1, within=10)
    time.sleep(scaled(1.0))  # a push comes ~0.3 s after its checkpoint: none more came
    assert len(service.plaintexts) == 1
    assert b"Elsewhere?" not in service.received[0].body  # sealed, as always
