"""A node's home folder and its private files (the one place the core touches disk).

Invariants:
- The home is 0700 and every private file in it 0600, created that way (never
  chmod-ed after the fact, so no window exists in which another user can read it).
- A key file that others can read or write is refused, not silently fixed: the
  key may already have leaked, and the user should know.
- Writes are atomic (temp file + fsync + rename), so a crash never leaves half a key.
"""

from __future__ import annotations

import base64
import os
import stat
import tempfile
from pathlib import Path

import platformdirs

from .errors import KeyFileError
from .identity import NodeKeys

HOME_ENV = "STARMUX_HOME"
_KEY_HEADER = "starmux-node-keys-v1"


def default_home() -> Path:
    """``$STARMUX_HOME`` if set, else the platform's user data dir."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(platformdirs.user_data_dir("starmux", appauthor=False))


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (0700) if needed; refuse an existing one open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} is accessible by other users (mode {mode:o})",
            hint=f"run: chmod 700 {path}",
        )
    return path


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half.

    mkstemp creates the temp file 0600 with a random name, so a temp file left by a
    crash (even of a process that had our pid) never blocks the next write, and the
    data is never readable by others before ``mode`` is applied. The folder is synced
    after the rename so the new name survives a power loss too.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if mode != 0o600:
                os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` with mode 0600, in a private folder."""
    ensure_private_dir(path.parent)
    write_file_atomically(path, data)


def read_private_file(path: Path) -> bytes:
    """Read a 0600 file; refuse it if group or others have any access."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot open {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path} is accessible by other users (mode {mode:o}); refusing to use it",
                hint=f"if nobody else could have read it, run: chmod 600 {path}",
            )
        return handle.read()


def encode_node_keys(keys: NodeKeys) -> bytes:
    lines = [
        _KEY_HEADER,
        base64.b64encode(keys.signing_seed).decode(),
        base64.b64encode(keys.dh_private).decode(),
    ]
    return ("\n".join(lines) + "\n").encode()


def decode_node_keys(data: bytes, *, source: str) -> NodeKeys:
    try:
        header, seed, dh = data.decode("ascii").strip().split("\n")
        if header != _KEY_HEADER:
            raise ValueError(header)
        return NodeKeys(base64.b64decode(seed, validate=True), base64.b64decode(dh, validate=True))
    except Exception as exc:
        raise KeyFileError(
            f"{source} is not a starmux key file",
            hint="restore it from a backup, or move it away to create a new identity",
        ) from exc


def save_node_keys(path: Path, keys: NodeKeys) -> None:
    write_private_file(path, encode_node_keys(keys))


def load_node_keys(path: Path) -> NodeKeys:
    return decode_node_keys(read_private_file(path), source=str(path))


def load_or_create_node_keys(path: Path) -> tuple[NodeKeys, bool]:
    """The keys at ``path``, creating them on first use. Returns ``(keys, created)``."""
    if path.exists() or path.is_symlink():
        return load_node_keys(path), False
    keys = NodeKeys.generate()
    save_node_keys(path, keys)
    return keys, True
