"""The web bundle hash: a golden value (the service worker computes the same bytes,
checked end to end by tests/browser), which files are served, which paths refused."""

from __future__ import annotations

import base64
import hashlib

import pytest

from starmux.errors import UsageError
from starmux.web_bundle import (
    build_bundle,
    check_path,
    import_map_hashes,
    is_served,
    manifest_digest,
    security_headers,
    websocket_origin,
)

FILES = {"index.html": b"<!doctype html>", "sw.js": b"// worker", "app/main.js": b"main()"}


def test_golden_bundle_hash() -> None:
    bundle = build_bundle(FILES)
    expected = hashlib.sha256(b"starmux/web-bundle/v1")
    for path in sorted(FILES):
        raw = path.encode()
        expected.update(len(raw).to_bytes(2, "big") + raw + hashlib.sha256(FILES[path]).digest())
    assert bundle.digest == expected.digest()
    assert bundle.hash_text == "JM4Z-AP4U-6MWI-HKPQ-FO2Q-VB44-JLEQ-OFAO"


def test_any_changed_byte_or_name_changes_the_hash() -> None:
    base = build_bundle(FILES).hash_text
    assert build_bundle({**FILES, "app/main.js": b"main() "}).hash_text != base
    renamed = {k.replace("main", "mian"): v for k, v in FILES.items()}
    assert build_bundle(renamed).hash_text != base
    assert build_bundle({**FILES, "app/extra.js": b""}).hash_text != base


def test_only_browser_files_are_served() -> None:
    for path in ("index.html", "app/x.js", "vendor/node_modules/jsqr/dist/jsQR.js", "icons/a.png"):
        assert is_served(path), path
    private = ("package.json", "tools/vendor.mjs", "proto/tests/x.js", "proto/noise.test.js")
    for path in (*private, "vendor/a/README.md", "vendor/a/index.d.ts", "README.md", "app/x.map"):
        assert not is_served(path), path
    bundle = build_bundle({**FILES, "package.json": b"{}", "test/noise.test.js": b""})
    assert sorted(bundle.files) == sorted(FILES)


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "é.js", "a\n"]
)
def test_bad_paths_are_refused(path: str) -> None:
    with pytest.raises(UsageError):
        check_path(path)
    with pytest.raises(UsageError):
        manifest_digest([(path, "00" * 32)])


def test_a_bundle_needs_its_page_and_worker() -> None:
    with pytest.raises(UsageError):
        build_bundle({"index.html": b""})


def test_connect_src_names_only_given_relays() -> None:
    assert websocket_origin("https://relay.example:8443/x") == "wss://relay.example:8443"
    assert websocket_origin("ws://10.0.0.1:8765") == "ws://10.0.0.1:8765"
    for bad in ("ftp://x", "wss://user@host", "relay.example"):
        with pytest.raises(UsageError):
            websocket_origin(bad)
    csp = security_headers(connect_origins=["wss://r:1"])["Content-Security-Policy"]
    assert "connect-src 'self' wss://r:1;" in csp
    script_src = next(p for p in csp.split("; ") if p.startswith("script-src "))
    assert "unsafe" not in script_src and "unsafe-eval" not in csp
    assert "style-src-attr 'none'" in csp


def test_only_an_import_map_may_be_inline_and_is_allowed_by_its_hash() -> None:
    page = b'<script type="importmap">{"imports": {}}</script><script src="a.js"></script>'
    bundle = build_bundle({**FILES, "index.html": page})
    digest = base64.b64encode(hashlib.sha256(b'{"imports": {}}').digest()).decode()
    assert bundle.script_hashes == (f"'sha256-{digest}'",)
    csp = security_headers(script_hashes=bundle.script_hashes)["Content-Security-Policy"]
    assert f"script-src 'self' 'sha256-{digest}';" in csp
    for inline in (b"<script>alert(1)</script>", b'<script type="module">x()</script>'):
        with pytest.raises(UsageError):
            import_map_hashes(inline)
