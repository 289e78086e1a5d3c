"""The code pin: the app shows the hash `starmux web --print-hash` prints, runs
offline from its service worker, and keeps the keys locked when the server sends
other code until the person confirms the new hash."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page

from .conftest import wait_for_keys
from .web_server import WebServer, copy_web_root, print_hash

KEYS_OPEN_PROBE = """async () => {
  const keystore = await import("./app/keystore.js");
  const codepin = await import("./app/codepin.js");
  const status = await codepin.codeStatus(navigator.serviceWorker.controller);
  try {
    const secrets = await keystore.unlockKeys(status);
    return secrets ? `opened ${secrets.length}` : "no keys";
  } catch (exc) {
    return exc.constructor.name;
  }
}"""


def test_the_app_shows_the_hash_that_print_hash_prints(
    page: Page, web_servers: list[WebServer], tmp_path: Path
) -> None:
    server = WebServer(tmp_path / "home").start()
    web_servers.append(server)
    assert server.hash == print_hash()
    page.goto(server.url)
    wait_for_keys(page, "unlocked")
    assert page.text_content("#code-hash") == server.hash
    assert page.evaluate(KEYS_OPEN_PROBE) == "opened 64"
    # A device's secret keys are wrapped by a key the page cannot export.
    wrapping = page.evaluate("""async () => {
      const { idbGet } = await import("./app/idb.js");
      const key = await idbGet("keys", "wrap");
      const record = await idbGet("keys", "device-secrets");
      return [key.extractable, key.algorithm.name, record.sealed.length];
    }""")
    assert wrapping == [False, "AES-GCM", 64 + 16]


def test_the_shell_runs_offline_from_the_pinned_copy(
    page: Page, web_servers: list[WebServer], tmp_path: Path
) -> None:
    server = WebServer(tmp_path / "home").start()
    web_servers.append(server)
    page.goto(server.url)
    wait_for_keys(page, "unlocked")
    server.stop()
    page.reload()
    wait_for_keys(page, "unlocked")
    assert page.text_content("#code-hash") == server.hash
    assert "Could not check the server's code" in page.inner_text("#notices")
    assert page.is_visible("text=Make this browser a device")


def test_tampered_code_keeps_the_keys_locked_until_confirmed(
    page: Page, web_servers: list[WebServer], tmp_path: Path
) -> None:
    root = copy_web_root(tmp_path / "web")
    server = WebServer(tmp_path / "home", web_root=root).start()
    web_servers.append(server)
    pinned = server.hash
    page.goto(server.url)
    wait_for_keys(page, "unlocked")

    server.stop()
    dom = root / "app" / "dom.js"
    dom.write_text(dom.read_text() + "\nglobalThis.starmuxTampered = true;\n")
    tampered = print_hash(root)
    assert tampered != pinned
    server.start()  # the same origin: same port
    assert server.hash == tampered

    page.reload()
    wait_for_keys(page, "locked")
    assert page.text_content("#pinned-hash") == pinned
    assert page.text_content("#offered-hash") == tampered
    assert page.text_content("#code-hash") == pinned
    assert page.text_content("#connection") == "code changed: keys locked"
    # The new code did not run, and nothing in the page can open the keys.
    assert page.evaluate("() => globalThis.starmuxTampered === true") is False
    assert page.evaluate(KEYS_OPEN_PROBE) == "KeysLocked"
    # Still locked after another reload: the pin holds until the person decides.
    page.reload()
    wait_for_keys(page, "locked")

    page.click("#trust-new-code")
    page.wait_for_load_state()
    wait_for_keys(page, "unlocked")
    assert page.text_content("#code-hash") == tampered
    assert page.evaluate("() => globalThis.starmuxTampered === true") is True
    assert page.evaluate(KEYS_OPEN_PROBE) == "opened 64"
