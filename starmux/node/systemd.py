"""Run a long-lived starmux process (the machine daemon, the controller agent) as a
systemd *user* service.

API (for the CLI commands that install the service)::

    path = install_user_unit(exec_start=[sys.executable, "-m", "starmux.cli", "daemon",
                                         "start", "--foreground"], home=home)
    print(enable_instructions(path))
    unit_text(exec_start=..., home=...) -> str      # the unit, for --print / tests

Choices:
- A *user* unit (``~/.config/systemd/user``): the daemon runs agents as the user, in
  the user's files, and needs no root to install. ``loginctl enable-linger`` keeps it
  running without a login session.
- ``Type=simple`` with the daemon in the foreground; systemd restarts it on failure.
  No ``network-online.target``: a user manager cannot order after system targets, and
  the daemon reconnects to the relay by itself.
- Hardening is limited to what cannot break an agent doing the user's work. The
  mount-namespace options (``ProtectSystem``, ``ProtectHome``, ``PrivateTmp``,
  ``ReadWritePaths``...) would hide or freeze the very files agents are asked to edit
  (and in a user manager need unprivileged user namespaces); ``MemoryDenyWriteExecute``
  breaks JITs (node, the JVM); ``UMask=0077`` would make every file an agent writes
  private. ``NoNewPrivileges`` is kept on purpose: an agent steered from another
  machine must not gain root through setuid binaries such as ``sudo``. Whoever needs
  that can override it with ``systemctl --user edit``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from starmux.errors import UsageError
from starmux.home import HOME_ENV, write_file_atomically

UNIT_NAME: Final = "starmux-daemon.service"
#: What a user manager's services get on PATH besides the directory of starmux itself.
_SYSTEM_PATH: Final = "/usr/local/bin:/usr/bin:/bin"

# Arguments made only of these need no quotes (after % and $ are doubled).
_BARE: Final = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
# Characters systemd refuses in the executable path itself (string_is_safe()).
_UNSAFE_IN_PATH: Final = re.compile(r"[\x00-\x1f\x7f\\\"']")


class UnitExistsError(UsageError):
    """A different unit file is already installed under that name."""


def quote_exec_arg(arg: str, *, expand_env: bool = True) -> str:
    """One word of a systemd command line, read back by systemd as exactly ``arg``.

    Specifiers are resolved on every word (``%`` → ``%%``) and ``$VAR`` is substituted
    in ``ExecStart=`` (``$`` → ``$$``; not in ``Environment=``, hence ``expand_env``).
    Anything else special goes inside double quotes with C escapes, which systemd
    undoes; a lone quoted ``";"`` is an argument, not a command separator.
    """
    text = arg.replace("%", "%%")
    if expand_env:
        text = text.replace("$", "$$")
    if _BARE.fullmatch(text):
        return text
    return '"' + "".join(_c_escape(ch) for ch in text) + '"'


def _c_escape(ch: str) -> str:
    if ch in '\\"':
        return "\\" + ch
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ord(ch) < 0x20 or ord(ch) == 0x7F:
        return f"\\x{ord(ch):02x}"
    return ch


def exec_line(argv: Sequence[str]) -> str:
    """The value of ``ExecStart=`` for ``argv``; ``argv[0]`` must be an absolute path."""
    if not argv:
        raise UsageError("the service needs a command to run")
    executable = argv[0]
    if not os.path.isabs(executable):
        raise UsageError(
            f"the service's executable must be an absolute path, not {executable!r}",
            hint="user services run with a minimal PATH; use sys.executable",
        )
    if _UNSAFE_IN_PATH.search(executable) or "$" in executable:
        # systemd rejects quotes and backslashes there, and substitutes $ only in
        # argv[0], not in the path it executes, so no escaping can make them work.
        raise UsageError(
            f"systemd cannot run an executable whose path contains quotes, backslashes, "
            f"control characters or '$': {executable!r}",
            hint="install starmux in a plainer path (e.g. a venv under ~/.local)",
        )
    return " ".join(quote_exec_arg(arg) for arg in argv)


def service_path(executable: str) -> str:
    """The PATH of the service: the directory of the running ``starmux`` (a venv's or
    pipx's ``bin``) first, so sessions and hooks find ``starmux`` however it was
    installed, then the system's."""
    directory = os.path.dirname(executable)
    parts = [directory] if directory else []
    parts += [p for p in _SYSTEM_PATH.split(":") if p not in parts]
    return ":".join(parts)


def unit_text(
    *, exec_start: Sequence[str], home: Path, description: str = "starmux machine daemon"
) -> str:
    """The text of the user unit that runs ``exec_start`` with ``STARMUX_HOME=home``."""
    environment = quote_exec_arg(f"{HOME_ENV}={home}", expand_env=False)
    path = quote_exec_arg(
        f"PATH={service_path(exec_start[0] if exec_start else '')}", expand_env=False
    )
    return "\n".join(
        [
            "# Written by starmux. Keep local changes in a drop-in (systemctl --user edit).",
            "[Unit]",
            f"Description={_one_line(description).replace('%', '%%')}",
            "",
            "[Service]",
            "Type=simple",
            f"ExecStart={exec_line(exec_start)}",
            f"Environment={environment}",
            f"Environment={path}",
            # Python buffers stdout that is not a terminal; the journal should see lines
            # (and a pairing code) as they are printed.
            "Environment=PYTHONUNBUFFERED=1",
            "Restart=on-failure",
            "RestartSec=5",
            # SIGTERM to the daemon only, so it can wind its agent sessions down itself;
            # whatever is left gets SIGKILL when TimeoutStopSec runs out.
            "KillMode=mixed",
            "TimeoutStopSec=30",
            # See the module docstring for why the hardening stops here.
            "NoNewPrivileges=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def default_unit_dir() -> Path:
    """``$XDG_CONFIG_HOME/systemd/user``, else ``~/.config/systemd/user``."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    # The XDG spec says a relative value is invalid and must be ignored.
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "systemd" / "user"


def install_user_unit(
    *,
    exec_start: Sequence[str],
    home: Path,
    unit_dir: Path | None = None,
    name: str = UNIT_NAME,
    description: str = "starmux machine daemon",
    force: bool = False,
) -> Path:
    """Write the unit and return its path. The same text already there is left alone;
    a different one is only replaced with ``force`` (it may be the user's own edit)."""
    if not name.endswith(".service") or "/" in name or name.startswith("."):
        raise UsageError(f"{name!r} is not a service unit name", hint=f"e.g. {UNIT_NAME}")
    text = unit_text(exec_start=exec_start, home=home, description=description)
    directory = default_unit_dir() if unit_dir is None else unit_dir
    path = directory / name
    try:
        existing: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    except (OSError, UnicodeDecodeError):
        existing = ""  # unreadable counts as different
    if existing == text:
        return path
    if existing is not None and not force:
        raise UnitExistsError(
            f"{path} already exists with different contents",
            hint="pass --force to replace it (it may hold your own changes)",
        )
    directory.mkdir(parents=True, exist_ok=True)
    # Not write_private_file: a unit holds no secret, and ~/.config/systemd/user is
    # normally 0755, which that helper (rightly, for a starmux home) refuses.
    write_file_atomically(path, text.encode("utf-8"), mode=0o644)
    return path


def enable_instructions(path: Path) -> str:
    """The commands to print after :func:`install_user_unit`, one per line."""
    unit = shlex.quote(path.name)
    return "\n".join(
        [
            "systemctl --user daemon-reload",
            f"systemctl --user enable --now {unit}",
            "# keep it running after you log out:",
            'loginctl enable-linger "$USER"',
            "# follow its log:",
            f"journalctl --user -u {unit} -f",
        ]
    )


__all__ = [
    "UNIT_NAME",
    "UnitExistsError",
    "default_unit_dir",
    "enable_instructions",
    "exec_line",
    "install_user_unit",
    "quote_exec_arg",
    "service_path",
    "unit_text",
]
