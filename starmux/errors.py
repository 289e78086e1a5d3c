"""The exception tree of starmux.

Every error raised on purpose by starmux code derives from one root, so the CLI
has one place that turns errors into a clear line, a hint and an exit code::

    StarmuxError                      root; carries a one-line message and a hint
    ├── UsageError                    *we* misused an API or the user gave bad input
    │   ├── ConfigError               a flag, variable or TOML value is wrong
    │   ├── KeyFileError              a key file is missing, malformed or too open
    │   └── PairingCodeError          a pairing code (text or QR) is malformed
    ├── RemoteProtocolError           *the peer* misbehaved (relay, daemon, controller)
    │   ├── FrameError                bytes that are not a valid relay frame
    │   └── MessageError              bytes that are not a valid application message
    ├── CryptoError                   any crypto failure; opaque on purpose (see below)
    └── ConnectionLost                the link went away; callers reconnect

`CryptoError` never says *why* (bad tag, replay, wrong key, truncation): telling a
peer which check failed is an oracle. The object that raised it is closed for good.
"""

from __future__ import annotations


class StarmuxError(Exception):
    """Root of every deliberate starmux error."""

    #: Process exit status the CLI uses for this kind of error.
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(StarmuxError):
    """The caller (code or user) asked for something invalid."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value (flag, ``STARMUX_*`` variable, TOML) is invalid."""


class KeyFileError(UsageError):
    """A key file is missing, malformed, or readable by others."""


class PairingCodeError(UsageError):
    """A pairing code is malformed; the message says which part and why."""


class RemoteProtocolError(StarmuxError):
    """The other side sent something that breaks the protocol."""


class FrameError(RemoteProtocolError):
    """Bytes that do not parse as a relay frame (the only error the frame parser raises)."""


class MessageError(RemoteProtocolError):
    """Bytes that do not parse as an application message."""


class CryptoError(StarmuxError):
    """A cryptographic check failed. Deliberately carries no reason."""

    def __init__(self, message: str = "cryptographic check failed", *, hint: str | None = None):
        super().__init__(message, hint=hint)


class ConnectionLost(StarmuxError):
    """The transport went away; the caller decides whether to reconnect."""
