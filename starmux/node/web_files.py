"""Serving the web controller's files: one Starlette app for the relay and ``starmux web``.

Both the relay (at ``/app`` on its own port) and the controller host's ``starmux
web`` serve the same files the same way, so the serving lives here, shared by the
two roles. The bundle (files, manifest, hash: ``starmux/web_bundle.py``) is read
once at start: what a server sends is the code it started with, and its hash is the
one it prints.

Responses carry the strict security headers, an ``ETag`` that is the file's
SHA-256 (a browser revalidates and gets ``304`` until the code changes: cached by
content hash) and never a cookie. Anything not in the bundle is ``404``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from starmux.errors import UsageError
from starmux.web_bundle import (
    MANIFEST_PATH,
    MAX_FILE_BYTES,
    MAX_FILES,
    SERVED_TOP_LEVEL,
    Bundle,
    build_bundle,
    security_headers,
)

APP_PREFIX = "/app"
WEB_ROOT_ENV = "STARMUX_WEB_ROOT"  # tests and developers point this at another web/


def default_web_root() -> Path:
    """The ``web/`` folder shipped in the package (``starmux/web``)."""
    return Path(__file__).resolve().parent.parent / "web"


def web_root(explicit: Path | None = None) -> Path:
    if explicit is not None:
        return explicit
    configured = os.environ.get(WEB_ROOT_ENV)
    return Path(configured) if configured else default_web_root()


def read_web_root(root: Path) -> dict[str, bytes]:
    """Every candidate file under the served top-level names (symlinks not followed;
    web/node_modules, where npm installs, is not one of them: vendor/ is)."""
    if not (root / "index.html").is_file():
        raise UsageError(
            f"no web controller files in {root}",
            hint="reinstall starmux, or set STARMUX_WEB_ROOT to a checkout's web/ folder",
        )
    contents: dict[str, bytes] = {}
    for top in SERVED_TOP_LEVEL:
        start = root / top
        paths = [start] if start.is_file() else sorted(start.rglob("*")) if start.is_dir() else []
        for path in paths:
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                continue  # build_bundle would refuse it; a stray big file is not served
            contents[path.relative_to(root).as_posix()] = path.read_bytes()
            if len(contents) > MAX_FILES * 4:
                raise UsageError(f"{root} holds too many files to be a web root")
    return contents


def load_bundle(root: Path | None = None) -> Bundle:
    return build_bundle(read_web_root(web_root(root)))


def app_routes(bundle: Bundle, *, connect_origins: Iterable[str] = ()) -> list[BaseRoute]:
    """``/app`` → ``/app/``, ``/app/`` → index.html, ``/app/<file>``, ``/app/bundle.json``."""
    headers = security_headers(connect_origins=connect_origins, script_hashes=bundle.script_hashes)

    def respond(request: Request, body: bytes, media_type: str, etag: str) -> Response:
        quoted = f'"{etag}"'
        if quoted in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={**headers, "ETag": quoted})
        return Response(body, media_type=media_type, headers={**headers, "ETag": quoted})

    async def serve(request: Request) -> Response:
        path = request.path_params.get("path", "") or "index.html"
        if path == MANIFEST_PATH:
            return respond(request, bundle.manifest_json, "application/json", bundle.digest.hex())
        found = bundle.files.get(path)
        if found is None:
            return Response("not found\n", status_code=404, headers=headers)
        return respond(request, found.body, found.media_type, found.sha256)

    async def to_slash(request: Request) -> Response:
        return RedirectResponse(f"{APP_PREFIX}/", status_code=308, headers=headers)

    return [
        Route(APP_PREFIX, to_slash, methods=["GET", "HEAD"]),
        Route(f"{APP_PREFIX}/", serve, methods=["GET", "HEAD"]),
        Route(f"{APP_PREFIX}/{{path:path}}", serve, methods=["GET", "HEAD"]),
    ]
