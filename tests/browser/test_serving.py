"""The relay serves the web controller at /app: strict headers, hash-named caching,
only the bundle's files, and a page that loads without a console error."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from playwright.sync_api import Page

from ..integration.relay_process import RelayProcess
from ..timeouts import EVENT
from .conftest import wait_for_keys
from .web_server import WebServer, print_hash

CSP_PARTS = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "connect-src 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "object-src 'none'",
)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=EVENT) as response:
            return (
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def assert_strict_headers(headers: dict[str, str]) -> None:
    csp = headers["content-security-policy"]
    for part in CSP_PARTS:
        assert part in csp
    # Scripts: only files of this origin and the import map's hash; nothing inline.
    script_src = next(p for p in csp.split("; ") if p.startswith("script-src "))
    assert "unsafe" not in script_src and "unsafe-eval" not in csp and "http" not in csp
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-content-type-options"] == "nosniff"
    assert "set-cookie" not in headers


def test_the_relay_serves_the_app_with_strict_headers(relay: RelayProcess) -> None:
    base = relay.http_url + "/app/"
    status, headers, body = get(base)
    assert status == 200 and body.startswith(b"<!doctype html>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert_strict_headers(headers)
    # No inline code: the one inline element is the import map, allowed by its hash.
    assert b"style=" not in body and b"<script>" not in body
    inline = re.findall(rb'<script type="importmap">(.*?)</script>', body, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(inline[0]).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}';" in headers["content-security-policy"]

    status, headers, manifest = get(base + "bundle.json")
    assert status == 200
    assert json.loads(manifest)["hash"] == print_hash()

    status, headers, _ = get(base + "app/main.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert_strict_headers(headers)
    etag = headers["etag"]
    status, headers, body = get(base + "app/main.js", {"If-None-Match": etag})
    assert (status, body) == (304, b"")

    private_files = ("package.json", "package-lock.json", "../pyproject.toml", "tools/vendor.mjs")
    for private in (*private_files, "nope.js"):
        status, headers, _ = get(base + private)
        assert status == 404, private
    status, headers, _ = get(relay.http_url + "/app")
    assert status == 200  # redirected to /app/


def test_the_page_from_the_relay_loads_without_console_errors(
    page: Page, relay: RelayProcess
) -> None:
    response = page.goto(relay.http_url + "/app/")
    assert response is not None
    assert_strict_headers(response.all_headers())
    wait_for_keys(page, "unlocked")
    assert page.text_content("#code-hash") == print_hash()
    # The vendored libraries' bare imports resolve through the import map.
    loaded = page.evaluate("""async () => {
      const { ed25519 } = await import("./vendor/node_modules/@noble/curves/ed25519.js");
      return ed25519.getPublicKey(new Uint8Array(32)).length;
    }""")
    assert loaded == 32


def test_starmux_web_names_the_relays_the_page_may_reach(
    page: Page, web_servers: list[WebServer], tmp_path: Path
) -> None:
    server = WebServer(tmp_path / "home", relays=("wss://relay.example:8443",)).start()
    web_servers.append(server)
    response = page.goto(server.url)
    assert response is not None
    headers = response.all_headers()
    assert "connect-src 'self' wss://relay.example:8443;" in headers["content-security-policy"]
    wait_for_keys(page, "unlocked")
