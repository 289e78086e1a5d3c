"""What a node says when its relay connection ends: the relay's close, or why it died."""

from __future__ import annotations

import errno

import websockets
from websockets.frames import Close

from starmux.node.link import close_code_and_reason


def closed(
    rcvd: Close | None, sent: Close | None, cause: BaseException | None = None
) -> websockets.ConnectionClosed:
    both = rcvd is not None and sent is not None
    exc = websockets.ConnectionClosedError(rcvd, sent, True if both else None)
    exc.__cause__ = cause
    return exc


def test_the_relays_close_frame_wins() -> None:
    exc = closed(Close(4003, "machine revoked"), Close(4003, "machine revoked"))
    assert close_code_and_reason(exc) == (4003, "machine revoked")


def test_a_keepalive_timeout_is_named() -> None:
    assert close_code_and_reason(closed(None, Close(1011, "keepalive ping timeout"))) == (
        None,
        "keepalive ping timeout",
    )


def test_a_socket_error_is_named_when_no_close_frame_came() -> None:
    cause = TimeoutError(errno.ETIMEDOUT, "Connection timed out")
    assert close_code_and_reason(closed(None, None, cause)) == (None, "connection timed out")


def test_otherwise_the_connection_was_lost() -> None:
    assert close_code_and_reason(closed(None, None)) == (None, "connection lost")
