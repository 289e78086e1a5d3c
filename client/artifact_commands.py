"""``starmux artifacts SESSION`` and ``starmux get ID``: list and fetch the files
sessions published (``starmux artifact add`` on the machine); the checks of
``run --attach``. Thin clients of the controller agent, which moves the bytes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from starmux import agent_protocol as wire
from starmux.errors import StarmuxError
from starmux.transfer import DEFAULT_CAP, TooLarge, format_size, parse_size

from . import agent_client
from .agent_cli import home_option, json_option, printable, when
from .agent_cli import resolve_home as _home


def _cap() -> int:
    text = os.environ.get("STARMUX_MAX_FILE_SIZE", "")
    return parse_size(text) if text else DEFAULT_CAP


def checked_attachments(paths: tuple[Path, ...]) -> list[str]:
    """Absolute paths of the attachments, each within this controller's cap: one over
    it stops the command here, before anything is sent."""
    cap = _cap()
    for path in paths:
        size = path.stat().st_size
        if size > cap:
            raise TooLarge(
                f"the attachment {printable(str(path))} is {format_size(size)}; this "
                f"controller sends at most {format_size(cap)}: nothing was sent",
                hint="raise the cap with STARMUX_MAX_FILE_SIZE (e.g. 2G), or send less",
            )
    return [str(path.resolve()) for path in paths]


@click.command("artifacts")
@click.argument("session")
@home_option
@json_option
def artifacts_command(session: str, home: Path | None, as_json: bool) -> None:
    """List the files SESSION published (name, size, hash, time)."""
    reply = agent_client.call(_home(home), "artifacts", session=session)
    rows = reply.get("artifacts", [])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no artifacts in {printable(session)}")
        return
    for row in rows:
        size = row.get("size")
        shown = format_size(size) if isinstance(size, int) else "?"
        digest = printable(str(row.get("digest", "")))[:16]
        click.echo(
            f"{printable(row.get('id', '?'))}  {shown:>10}  {when(row.get('at'))}  "
            f"blake2b:{digest}  {printable(row.get('name', ''))}"
        )


class _Bar:
    """A one-line progress bar on a terminal (stderr); nothing elsewhere."""

    def __init__(self, name: str) -> None:
        self.shown = sys.stderr.isatty()
        self.name = name

    def update(self, done: int, total: int) -> None:
        if not self.shown:
            return
        fraction = done / total if total else 1.0
        filled = int(fraction * 30)
        sys.stderr.write(
            f"\r\x1b[K{self.name} [{'#' * filled}{'.' * (30 - filled)}] "
            f"{fraction:6.1%} {format_size(done)} of {format_size(total)}"
        )
        sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def call_with_progress(
    home: Path, op: str, label: str, fields: dict[str, Any], as_json: bool
) -> dict[str, Any]:
    """One agent request whose progress items drive a bar on a terminal (not with
    ``--json``); returns the final reply."""
    bar = _Bar(label)
    try:
        for answer in agent_client.stream(home, op, **fields):
            if isinstance(answer, wire.Reply):
                return agent_client.checked(answer)
            if answer.kind == "progress" and not as_json:
                bar.update(answer.fields["done"], answer.fields["total"])
    finally:
        bar.clear()
    raise StarmuxError("the controller agent gave no answer")  # pragma: no cover


@click.command("get")
@click.argument("artifact")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write it (a file, or a folder) [the artifact's name, here].",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@home_option
@json_option
def get_command(
    artifact: str, output: Path | None, force: bool, home: Path | None, as_json: bool
) -> None:
    """Fetch ARTIFACT (end to end encrypted, hash checked, resumed across reconnects;
    an interrupted fetch to the same path resumes from what it wrote)."""
    target = (output or Path.cwd()).absolute()
    fields = {"artifact": artifact, "output": str(target), "force": force}
    reply = call_with_progress(_home(home), "get", printable(artifact), fields, as_json)
    if as_json:
        click.echo(json.dumps(reply))
        return
    rate = reply.get("mib_per_second")
    click.echo(
        f"fetched {printable(reply.get('name', '?'))} to {printable(reply.get('path', '?'))} "
        f"({printable(reply.get('shown_size', '?'))}, hash checked"
        + (f", {rate:.1f} MiB/s" if isinstance(rate, float) else "")
        + (", resumed from an interrupted fetch" if reply.get("kept_from_before") else "")
        + ")"
    )
