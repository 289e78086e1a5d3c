"""``starmux artifact add PATH [--name N]``: publish a file from inside a session.

The daemon (its local API, :mod:`starmux.local_api`) checks that the file lies in
one of its allowed roots and within its size cap, keeps a copy, and tells every
controller (an ``artifact-published`` event); ``starmux artifacts SESSION`` lists
it there and ``starmux get ID`` fetches it. Exit statuses as ``starmux cost``.
"""

from __future__ import annotations

import json
import os

import click

from .agent_commands import REPLY_TIMEOUT, LocalApiClient, agent_session, printable

#: Copying and hashing a big file on the daemon takes a while (about 1 s per 200 MiB).
PUBLISH_TIMEOUT = max(REPLY_TIMEOUT, 600.0)


@click.group("artifact")
def artifact_group() -> None:
    """Publish files from inside a session (controllers list and fetch them)."""


@artifact_group.command("add")
@click.argument("path", type=click.Path(dir_okay=False, exists=True))
@click.option("--name", default=None, help="The name controllers see [the file's name].")
@click.option("--json", "as_json", is_flag=True, help="Print the artifact as JSON.")
def add_command(path: str, name: str | None, as_json: bool) -> None:
    """Publish PATH (a file inside the machine's allowed roots)."""
    where = agent_session()
    request: dict[str, object] = {
        "op": "artifact",
        "session": where.session,
        "token": where.token,
        "path": os.path.abspath(path),
    }
    if name is not None:
        request["name"] = name
    reply = LocalApiClient(where.api).call(request, timeout=PUBLISH_TIMEOUT)
    fields = {key: reply.get(key) for key in ("artifact", "name", "size", "digest")}
    if as_json:
        click.echo(json.dumps(fields))
    else:
        click.echo(
            f"published {printable(str(fields['name']))} as {printable(str(fields['artifact']))}"
            f" ({fields['size']} bytes, blake2b {str(fields['digest'])[:16]}…)"
        )
