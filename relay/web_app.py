"""The relay serves the web controller at ``/app`` (DESIGN.md section 10).

Same origin as ``/v1/ws``, so the page's ``connect-src 'self'`` reaches this relay
and nothing else. The files are read once, when the app is created; a relay whose
package lacks them (an install without ``web/``) runs without ``/app`` and says so.
Serving code gives the relay no key: the app is a device of its own, and the person
compares the hash the app shows with ``starmux web --print-hash``.
"""

from __future__ import annotations

import logging

from starlette.routing import BaseRoute

from starmux.errors import StarmuxError
from starmux.node.web_files import app_routes, load_bundle

log = logging.getLogger("starmux.relay")


def web_app_routes() -> list[BaseRoute]:
    try:
        bundle = load_bundle()
    except StarmuxError as exc:
        log.warning("not serving the web controller at /app: %s", exc)
        return []
    log.info("serving the web controller at /app (code hash %s)", bundle.hash_text)
    return app_routes(bundle)
