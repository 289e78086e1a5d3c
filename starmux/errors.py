"""The exception tree of starmux.

Every error raised on purpose by starmux code derives from one root, so the CLI
has one place that turns errors into a clear line, a hint and an exit code::

    StarmuxError                      root; carries a one-line message and a hint
    ├── UsageError                    *we* misused an API or the user gave bad input
    │   ├── ConfigError               a flag, variable or TOML value is wrong
    │   ├── KeyFileError              a key file is missing, malformed or too open
    │   ├── PairingCodeError          a pairing code (text or QR) is malformed
    │   └── ProcessAlreadyRunning     a daemon or controller agent holds this home's lock
    ├── RemoteProtocolError           *the peer* misbehaved (relay, daemon, controller)
    │   ├── FrameError                bytes that are not a valid relay frame
    │   ├── MessageError              bytes that are not a valid application message
    │   ├── DeviceLogError            an account's device log was refused (device_log.py)
    │   │   ├── DeviceLogFormatError      bytes that are not valid log entries
    │   │   ├── DeviceLogSignatureError   an entry's signature does not verify
    │   │   ├── DeviceLogAuthorityError   signed by a device that was not an owner then
    │   │   ├── DeviceLogForkError        two different entries claim the same place
    │   │   ├── DeviceLogGapError         an entry is missing (seq or prev hash skips)
    │   │   ├── DeviceLogStaleError       an older head than one already verified
    │   │   ├── DeviceLogLastOwnerError   an entry would leave the account without owner
    │   │   └── DeviceLogRuleError        any other illegal entry (unknown device, ...)
    │   └── AgentProtocolError        a line that breaks the controller agent's protocol
    │       └── VersionMismatch       the agent and the command are different versions
    ├── CryptoError                   any crypto failure; opaque on purpose (see below)
    ├── ConnectionLost                the link went away; callers reconnect
    ├── ProcessStartError             a detached daemon or agent did not come up
    ├── ProcessStopError              its lock outlived a SIGKILL
    ├── AgentUnavailable              a command cannot reach or start the controller agent
    ├── AgentRefused                  the agent answered a command with a failure
    └── OperationFailed               (inside the agent) what it answers as that failure

`DeviceLogSignatureError` is not a `CryptoError`: a device log is public signed
data, so naming which entry failed tells an attacker nothing.

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


class DeviceLogError(RemoteProtocolError):
    """A device log (or an entry offered to extend one) was refused."""


class DeviceLogFormatError(DeviceLogError):
    """Bytes that do not parse as device log entries."""


class DeviceLogSignatureError(DeviceLogError):
    """An entry's signature does not verify under its author's key."""


class DeviceLogAuthorityError(DeviceLogError):
    """An entry signed by a device that was not an owner of the account at that point."""


class DeviceLogForkError(DeviceLogError):
    """Two different entries claim the same place in the log (or another genesis)."""


class DeviceLogGapError(DeviceLogError):
    """An entry does not follow the one before it: a seq or previous hash skips."""


class DeviceLogStaleError(DeviceLogError):
    """An older head than one already verified: a replay, e.g. by a malicious relay."""


class DeviceLogLastOwnerError(DeviceLogError):
    """An entry would remove or demote the account's last owner."""


class DeviceLogRuleError(DeviceLogError):
    """Any other illegal entry: adding a current or removed device, removing an
    unknown one, a wrong account id, a malformed genesis."""
