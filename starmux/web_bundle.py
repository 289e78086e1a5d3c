"""The web controller's code as one named thing: which files are served, and their hash.

The browser is a controller device holding its own keys, and its code comes from
whoever serves it. So the code gets a name a person can compare: the *bundle hash*,
shown by the app, printed by ``starmux web --print-hash``, and pinned by the app's
service worker (DESIGN.md section 10). The service worker computes the same value
in JavaScript (``web/sw.js``) from the files it fetched, so the two must agree
byte for byte; the encoding below is the contract:

    manifest = sorted (path, sha256(content)) pairs
    bundle   = SHA-256( DOMAIN || for each pair: u16 len(path) || path || sha256 )
    shown    = grouped base32 of the first 20 bytes, like a fingerprint

Invariants:
- Only the files a browser loads are served and hashed (:data:`SERVED_TOP_LEVEL`,
  :data:`CONTENT_TYPES`); tests, lockfiles and Node's ``node_modules`` never are.
- A path is relative, ``/``-separated, printable ASCII, without ``..``: the manifest
  cannot name a file outside the web root.
- Pure: bytes in, names and headers out. Reading the files is the adapter's job
  (``starmux/node/web_files.py``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import UsageError
from .fingerprint import format_fingerprint

BUNDLE_DOMAIN = b"starmux/web-bundle/v1"
BUNDLE_HASH_BYTES = 20
MANIFEST_PATH = "bundle.json"  # the served list of files and their hashes
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_FILES = 512

#: top-level entries of web/ that a browser loads; everything else stays private
SERVED_TOP_LEVEL = (
    "index.html",
    "sw.js",
    "manifest.webmanifest",
    "app",
    "proto",
    "vendor",
    "icons",
)

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
}

#: files under vendor/ that are sources for Node or licences, not loaded by a page
_NOT_SERVED_SUFFIXES = (".test.js", ".d.ts", ".map", ".md", ".ts")


def content_type(path: str) -> str | None:
    """The media type ``path`` is served with, or None if it is not served."""
    if path.endswith(_NOT_SERVED_SUFFIXES):
        return None
    dot = path.rfind(".")
    return CONTENT_TYPES.get(path[dot:]) if dot > path.rfind("/") else None


def is_served(path: str) -> bool:
    top = path.split("/", 1)[0]
    return top in SERVED_TOP_LEVEL and content_type(path) is not None and "/tests/" not in path


def check_path(path: str) -> str:
    parts = path.split("/")
    if (
        not path
        or not path.isascii()
        or not path.isprintable()
        or len(path.encode()) > 255
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in path
    ):
        raise UsageError(f"not a web file path: {path[:80]!r}")
    return path


@dataclass(frozen=True)
class BundleFile:
    path: str
    body: bytes
    sha256: str  # hex
    media_type: str


_SCRIPT_TAG = re.compile(rb"<script\b([^>]*)>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)


def import_map_hashes(index_html: bytes) -> tuple[str, ...]:
    """CSP hash sources of the page's import maps; refuses any other inline script.

    Browsers resolve the vendored libraries' bare imports (``@noble/hashes/...``)
    only through an import map, and an import map can only be inline. CSP counts
    it as inline script, so it is allowed by its exact hash, never by
    ``'unsafe-inline'``: any other inline script, or a changed map, stays blocked.
    """
    hashes = []
    for match in _SCRIPT_TAG.finditer(index_html):
        attributes, body = match.group(1), match.group(2)
        if b"src=" in attributes:
            continue
        if not re.search(rb"""type\s*=\s*["']?importmap["']?""", attributes):
            raise UsageError("index.html has an inline script: the CSP allows none")
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return tuple(hashes)


@dataclass(frozen=True)
class Bundle:
    """The served files, their manifest (``bundle.json``) and the bundle hash."""

    files: Mapping[str, BundleFile]
    digest: bytes  # the full SHA-256 over the manifest
    manifest_json: bytes
    #: CSP hash sources of index.html's import map(s)
    script_hashes: tuple[str, ...] = ()

    @property
    def hash_text(self) -> str:
        """What people compare: grouped base32, e.g. ``K7Q2-M4XD-...``."""
        return format_fingerprint(self.digest[:BUNDLE_HASH_BYTES])


def manifest_digest(pairs: Iterable[tuple[str, str]]) -> bytes:
    """SHA-256 over the sorted (path, hex sha256) pairs, domain-separated, length-prefixed."""
    hasher = hashlib.sha256(BUNDLE_DOMAIN)
    for path, sha in sorted(pairs):
        raw_path = check_path(path).encode("ascii")
        raw_sha = bytes.fromhex(sha)
        if len(raw_sha) != 32:
            raise UsageError(f"not a SHA-256: {sha[:80]!r}")
        hasher.update(struct.pack(">H", len(raw_path)) + raw_path + raw_sha)
    return hasher.digest()


def build_bundle(contents: Mapping[str, bytes]) -> Bundle:
    """The bundle of the served files among ``contents`` (path → bytes)."""
    import json  # the manifest is JSON because the service worker reads it

    served = sorted(path for path in contents if is_served(check_path(path)))
    if len(served) > MAX_FILES:
        raise UsageError(f"the web root has {len(served)} files to serve (at most {MAX_FILES})")
    files: dict[str, BundleFile] = {}
    for path in served:
        body = contents[path]
        if len(body) > MAX_FILE_BYTES:
            raise UsageError(f"web file {path} is {len(body)} bytes (at most {MAX_FILE_BYTES})")
        media_type = content_type(path)
        assert media_type is not None  # is_served checked it
        files[path] = BundleFile(path, body, hashlib.sha256(body).hexdigest(), media_type)
    if "index.html" not in files or "sw.js" not in files:
        raise UsageError(
            "the web root has no index.html or sw.js",
            hint="reinstall starmux, or point --web-root at a checkout's web/ folder",
        )
    digest = manifest_digest((f.path, f.sha256) for f in files.values())
    manifest = {
        "version": 1,
        "hash": format_fingerprint(digest[:BUNDLE_HASH_BYTES]),
        "files": {f.path: f.sha256 for f in files.values()},
    }
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return Bundle(files, digest, body, import_map_hashes(files["index.html"].body))


def websocket_origin(url: str) -> str:
    """``wss://host:port`` of a relay URL, for the page's ``connect-src``."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.netloc or "@" in parts.netloc or not parts.netloc.isascii():
        raise UsageError(f"not a relay URL: {url[:80]!r}", hint="e.g. wss://relay.example:8443")
    return f"{scheme}://{parts.netloc}"


def security_headers(
    *, connect_origins: Iterable[str] = (), script_hashes: Iterable[str] = ()
) -> dict[str, str]:
    """The headers of every ``/app`` response.

    The CSP allows code only from the serving origin (no inline script, no eval, no
    third-party origin; the import map by its hash) and connections only to it and
    the named relay origins.
    ``'self'`` covers the same-origin WebSocket (CSP level 3), which is how the app
    reaches the relay that serves it. Stylesheets come from files, and the terminal
    renderer's own ``<style>`` elements are allowed (it builds them at run time, so no
    hash can name them); ``style`` attributes in markup are not. Scripts are what
    matters for the keys, and they stay strict.
    """
    connect = " ".join(["'self'", *sorted(set(connect_origins))])
    scripts = " ".join(["'self'", *script_hashes])
    policy = "; ".join(
        (
            "default-src 'none'",
            f"script-src {scripts}",
            "style-src 'self'",
            # xterm.js's DOM renderer writes its theme and cell sizes into <style>
            # elements it creates: those are allowed, style attributes in markup not.
            "style-src-elem 'self' 'unsafe-inline'",
            "style-src-attr 'none'",
            "img-src 'self' blob: data:",
            "media-src 'self' blob: mediastream:",
            "font-src 'self'",
            f"connect-src {connect}",
            "manifest-src 'self'",
            "worker-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        )
    )
    return {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(self), microphone=(), geolocation=(), payment=()",
        "Cache-Control": "no-cache",
    }
