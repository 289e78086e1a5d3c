"""``starmux web``: serve the web controller from the controller's own host.

For a person who does not want to load the app's code from the relay: the files
come from this installed package, the page's hash is the one ``--print-hash``
prints here, and the page may connect only to this origin and the relay origins
named by ``--relay`` (default: the relay this controller home uses).

The server holds nothing secret and sets no cookie: the browser is a device with
its own keys (linked with ``starmux devices link``), not a view of this home. It
binds to 127.0.0.1 unless told otherwise; reaching it from a phone means
``--host`` on an address the phone can reach (a Tailscale address, say).
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import click

from starmux.errors import UsageError
from starmux.node.web_files import APP_PREFIX, app_routes, load_bundle
from starmux.url_host import url_host
from starmux.web_bundle import websocket_origin

from .agent_cli import home_option, resolve_home
from .store import ControllerStore

DEFAULT_PORT = 8780


async def _home_relay(home: Path) -> str | None:
    try:
        async with ControllerStore(home) as store:
            return (await store.config()).relay_url
    except UsageError:
        return None  # not initialised: the page then reaches only its own origin


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="0 picks one.")
@click.option(
    "--relay",
    "relays",
    multiple=True,
    help="A relay URL the page may connect to (repeatable) [the relay of this home].",
)
@click.option("--web-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Serve another web/ folder (development) [the installed files].")  # fmt: skip
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--print-hash", is_flag=True, help="Print the hash of the app's code and exit.")
@click.option("--json", "as_json", is_flag=True, help="Start-up facts as one JSON line.")
@home_option
def web_command(
    host: str,
    port: int,
    relays: tuple[str, ...],
    web_root: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    print_hash: bool,
    as_json: bool,
    home: Path | None,
) -> None:
    """Serve the web controller (a phone-first app that is a device of your account)."""
    bundle = load_bundle(web_root)
    if print_hash:
        click.echo(json.dumps({"hash": bundle.hash_text}) if as_json else bundle.hash_text)
        return
    if not relays:
        where = resolve_home(home)
        known = asyncio.run(_home_relay(where)) if where.exists() else None
        relays = (known,) if known else ()
    origins = [websocket_origin(url) for url in relays]
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    tls = tls_cert is not None

    import uvicorn  # imported here: --print-hash needs no server
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    async def root(_request: object) -> Response:
        return RedirectResponse(f"{APP_PREFIX}/", status_code=308)

    app = Starlette(routes=[Route("/", root), *app_routes(bundle, connect_origins=origins)])
    config = uvicorn.Config(
        app,
        log_level="warning",
        server_header=False,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
    )
    try:
        listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="try another --port"
        ) from exc
    bound = listener.getsockname()[1]
    scheme = "https" if tls else "http"
    url = f"{scheme}://{url_host(host)}:{bound}{APP_PREFIX}/"
    if as_json:
        click.echo(json.dumps({"url": url, "hash": bundle.hash_text, "relays": list(relays)}))
    else:
        click.echo(f"web controller: {url}")
        click.echo(f"code hash: {bundle.hash_text}")
        click.echo("compare it with the hash the app shows before you trust the app")
        if not tls and host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(
                "warning: browsers allow the app's crypto only over https or on localhost: "
                "give --tls-cert/--tls-key, or put it behind an https proxy",
                err=True,
            )
    uvicorn.Server(config).run(sockets=[listener])
