"""``client.cache.projection`` tells an ``Output`` event (nearly every event, never
projected) by its first bytes instead of decoding its body again: the answer must be
the one the full decode gives, for valid and broken bodies alike."""

from __future__ import annotations

from unittest import mock

from starmux.client.cache import projection
from starmux.messages import APP, LoggedEvent, Output, SessionCreated


def _event(body: bytes) -> LoggedEvent:
    return LoggedEvent(1, 1000.0, "s-1", body)


def test_output_is_not_projected_and_not_decoded() -> None:
    body = APP.encode(Output("stdout", bytes(1024)))
    with mock.patch.object(APP, "decode", side_effect=AssertionError("decoded")):
        assert projection(b"m" * 32, _event(body)) is None


def test_a_broken_body_that_looks_like_output_is_not_projected_either() -> None:
    body = APP.encode(Output("stdout", b"x"))[:-3]
    assert projection(b"m" * 32, _event(body)) is None


def test_other_kinds_are_still_decoded_and_projected() -> None:
    body = APP.encode(SessionCreated(("make",), "/src", "tests", False, "c-1"))
    statement = projection(b"m" * 32, _event(body))
    assert statement is not None and statement[0].startswith("INSERT OR IGNORE INTO sessions")
