"""What the daemon says when its relay connection fails: the event name and the
reason in words (the reconnect policy itself is :mod:`starmux.reconnect`)."""

from __future__ import annotations

from starmux.node.link import Closed, RelayClosedConnection, RelayRefused
from starmux.reconnect import LinkFailure
from starmux.relay_auth import RelayKeyMismatch

_EVENTS = {
    LinkFailure.KEY_MISMATCH: "relay-key-mismatch",
    LinkFailure.REFUSED_AS_REVOKED: "relay-refuses-revoked",
}


def event_of(failure: LinkFailure) -> str:
    return _EVENTS.get(failure, "reconnecting")


def why(failure: LinkFailure, cause: object) -> str:
    if failure is LinkFailure.REFUSED:
        return "relay not listening"
    if isinstance(cause, RelayKeyMismatch):
        return f"REFUSING the relay: {cause.message} ({cause.hint})"
    if failure is LinkFailure.REFUSED_AS_REVOKED:
        return (
            "the relay refuses this machine as revoked, but no revocation signed by one of "
            "its controllers reached it: keeping its keys and pairing (if you revoked it, "
            "stop the daemon and delete its home to start afresh)"
        )
    if isinstance(cause, RelayRefused):
        return f"the relay refused a request: {cause.message}"
    if isinstance(cause, Closed):
        return f"connection to the relay lost ({cause.reason})"
    if isinstance(cause, RelayClosedConnection):
        return f"the relay refused the connection ({cause.code})"
    return str(cause)
