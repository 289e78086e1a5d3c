"""What every controller command shares, kept light: the ``--home`` and ``--json``
options, the progress line, and escaping of machine text for the terminal.

Light on purpose: the commands that are clients of the controller agent import only
this, the agent protocol and the socket client, not the relay, pairing or SQLite code
(a command's wall time is mostly Python importing modules).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from starmux.home import default_home

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    envvar="STARMUX_HOME",
    help="Controller home [STARMUX_HOME or the user data dir].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@contextlib.contextmanager
def progress(text: str) -> Iterator[None]:
    """Say what we wait for, on a terminal only (stderr), and clear it afterwards."""
    shown = sys.stderr.isatty()
    if shown:
        sys.stderr.write(f"{text}…")
        sys.stderr.flush()
    try:
        yield
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def resolve_home(home: Path | None) -> Path:
    return home or default_home()


def printable(value: object) -> str:
    """Text from a machine or the relay, safe for a terminal: every character that is
    not printable (controls such as ESC, bidi and other format characters, line
    separators) is shown as its escape (``\\x1b``, ``\\u202e``), so it cannot act on
    the terminal (OSC 52 writes the clipboard, CSI rewrites other lines)."""
    text = value if isinstance(value, str) else str(value)
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def when(timestamp: object) -> str:
    """A machine-supplied time, total: anything that is not a sane epoch prints "?"."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return "?"
    if not math.isfinite(timestamp) or not 0 <= timestamp < 1e11:
        return "?"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
