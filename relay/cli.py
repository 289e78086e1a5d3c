"""``starmux relay ...``: run the relay server."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from pathlib import Path

import click

from starmux.node.repin import repin_command

from .config import load_config


@click.group("relay")
def relay_group() -> None:
    """Run the relay that routes encrypted frames between machines and controllers."""


relay_group.add_command(repin_command)


@relay_group.command("serve")
@click.option(
    "--host",
    default=None,
    help="Bind address [127.0.0.1]. Use a Tailscale address or 0.0.0.0 to accept other machines.",
)
@click.option("--port", type=int, default=None, help="TCP port [8765]; 0 picks a free one.")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Relay key and registry [the user data dir's starmux/relay].",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML file with relay settings (a [relay] table).",
)
@click.option(
    "--open-registration",
    is_flag=True,
    default=None,
    help="Let anyone who can reach the relay create an account (off by default).",
)
@click.option("--public-url", default=None, help="URL clients use, e.g. behind a proxy.")
@click.option(
    "--trusted-proxies",
    default=None,
    help="Comma-separated proxy addresses/networks whose X-Forwarded-For is believed [none].",
)
@click.option(
    "--metrics-host", default=None, help="Bind address of the /metrics listener [127.0.0.1]."
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics on its own listener at this port (and not on the main one).",
)
@click.option("--livez-host", default=None, help="Bind address of the /livez listener [127.0.0.1].")
@click.option(
    "--livez-port",
    type=int,
    default=None,
    help="Also answer /livez on this listener, from a thread: a check that a CPU-starved"
    " node still answers within a load balancer's timeout.",
)
@click.option(
    "--registry",
    default=None,
    metavar="postgresql://...",
    help="Run as a cluster node: the shared registry in PostgreSQL (with --bus). Keep a"
    " password out of the command line: STARMUX_RELAY_REGISTRY, the TOML file or PGPASSFILE.",
)
@click.option(
    "--bus",
    default=None,
    metavar="redis://...",
    help="Run as a cluster node: frames, presence and revocations between nodes (with --registry).",
)
@click.option(
    "--registry-pool-size",
    type=int,
    default=None,
    help="PostgreSQL connections per node [10].",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="The relay identity key (created 0600 if missing) [DATA_DIR/relay.key]. Give every"
    " node of a cluster the same file, so clients see one relay.",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option("--json", "as_json", is_flag=True, help="Print start-up facts as JSON lines.")
def serve_command(config_file: Path | None, as_json: bool, **flags: object) -> None:
    """Serve /v1/ws, /health and /metrics until interrupted."""
    from .server import serve

    config = load_config(flags, config_file=config_file)
    logging.basicConfig(
        level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )

    def on_ready(info: object) -> None:
        from .app import StartupInfo

        assert isinstance(info, StartupInfo)
        token_file = info.registration_token_file
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "event": "started",
                        "fingerprint": info.fingerprint,
                        "registration_token_file": str(token_file.resolve())
                        if token_file
                        else None,
                        "data_dir": str(config.data_dir),
                        "cluster_node": info.cluster_node,
                        "open_registration": config.open_registration,
                    }
                ),
                nl=True,
            )
            return
        click.echo(f"starmux relay fingerprint: {info.fingerprint}")
        click.echo(f"data directory: {config.data_dir.resolve()}")
        if info.cluster_node:
            click.echo(f"cluster node {info.cluster_node}: {info.cluster_detail}")
        if config.open_registration:
            # Said loudly: anyone who reaches this relay may create an account on it.
            click.echo(
                "warning: registration is OPEN: anyone who reaches this relay can create an "
                "account (drop --open-registration to require a one-time token)",
                err=True,
            )
        if token_file:
            # The token itself never goes to stdout (journals and container logs keep it).
            click.echo(
                "registration is closed; the first controller registers with the one-time "
                f"token in {token_file.resolve()} (readable only by this user):"
            )
            quoted = shlex.quote(str(token_file.resolve()))
            click.echo(f'  STARMUX_TOKEN="$(cat {quoted})" starmux init --relay URL')

    def on_listening(url: str) -> None:
        if as_json:
            click.echo(json.dumps({"event": "listening", "url": url}))
        else:
            click.echo(f"listening on {url}  (health: {url.replace('ws', 'http', 1)}/health)")

    def on_metrics_listening(url: str) -> None:
        if as_json:
            click.echo(json.dumps({"event": "metrics-listening", "url": url}))
        else:
            click.echo(f"metrics on {url}")

    def on_livez_listening(url: str) -> None:
        if as_json:
            click.echo(json.dumps({"event": "livez-listening", "url": url}))
        else:
            click.echo(f"liveness check on {url}")

    from .server import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(
            serve(
                config,
                on_ready=on_ready,
                on_listening=on_listening,
                on_metrics_listening=on_metrics_listening,
                on_livez_listening=on_livez_listening,
            )
        )
