"""The local API's protocol core, without sockets: what a request may be, what an
answer says, durations."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.daemon.agent_commands import (
    format_duration,
    parse_duration,
)
from starmux.errors import UsageError
from starmux.local_api import (
    MAX_BODY,
    MAX_TITLE,
    BadRequest,
    CheckpointOutcome,
    CheckpointRequest,
    CostRequest,
    Ping,
    checkpoint_response,
    parse_request,
)

from .local_api_support import (
    FINGERPRINT,
    INVALID,
    SESSION,
    TOKEN,
    checkpoint,
)

# --- the protocol core, without sockets ------------------------------------------------


def test_parse_valid_requests() -> None:
    assert parse_request(b'{"op":"ping"}') == Ping()
    assert parse_request(json.dumps(checkpoint()).encode()) == CheckpointRequest(
        SESSION, TOKEN, "Deploy?", "", 60.0, False, None, None
    )
    full = checkpoint(body="why\n", timeout=1.5, default="approve", key="k-1")
    assert parse_request(json.dumps(full).encode()) == CheckpointRequest(
        SESSION, TOKEN, "Deploy?", "why\n", 1.5, True, "k-1", None
    )
    cost = {"op": "cost", "session": SESSION, "token": TOKEN, "input_tokens": 10}
    cost |= {"output_tokens": 0, "usd": 0}
    assert parse_request(json.dumps(cost).encode()) == CostRequest(SESSION, TOKEN, 10, 0, 0.0, "")


@pytest.mark.parametrize(("line", "code", "message"), INVALID)
def test_parse_refuses(line: bytes, code: str, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request(line)
    assert caught.value.code == code
    assert message in caught.value.message


@given(st.binary(max_size=512))
def test_parse_never_raises_anything_else_on_bytes(line: bytes) -> None:
    with contextlib.suppress(BadRequest):
        parse_request(line)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=300),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
checkpoint_fields = st.fixed_dictionaries(
    {"op": st.sampled_from(["checkpoint", "cost", "ping"])},
    optional={
        name: json_values | st.just(good)
        for name, good in [
            ("session", SESSION),
            ("title", "Deploy?"),
            ("body", "b"),
            ("timeout", 60),
            ("default", "approve"),
            ("key", "k"),
            ("input_tokens", 1),
            ("output_tokens", 2),
            ("usd", 0.5),
            ("note", "n"),
        ]
    },
)


@given(checkpoint_fields)
def test_parse_accepts_only_what_the_grammar_allows(fields: dict[str, Any]) -> None:
    try:
        request = parse_request(json.dumps(fields).encode())
    except BadRequest:
        return
    if isinstance(request, CheckpointRequest):
        assert 1 <= len(request.title) <= MAX_TITLE
        assert 1.0 <= request.timeout <= 86400.0
        assert len(request.body.encode()) <= MAX_BODY
    elif isinstance(request, CostRequest):
        assert request.input_tokens >= 0 and request.output_tokens >= 0 and request.usd >= 0
        assert type(request.input_tokens) is int


def test_an_expiry_answers_with_the_default_that_applied() -> None:
    request = CheckpointRequest(SESSION, TOKEN, "t", "", 60.0, True, None, None)
    expired = CheckpointOutcome("c-1", "expired", "", "")
    assert checkpoint_response(request, expired)["approved"] is True
    deny_default = CheckpointRequest(SESSION, TOKEN, "t", "", 60.0, False, None, None)
    assert checkpoint_response(deny_default, expired)["approved"] is False
    denied = CheckpointOutcome("c-1", "denied", "no", FINGERPRINT)
    assert checkpoint_response(request, denied)["approved"] is False
    with pytest.raises(TypeError):
        checkpoint_response(request, CheckpointOutcome("c-1", "maybe", "", ""))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("600", 600),
        ("2.5", 2.5),
        (" 1M ", 60),
        ("0.5m", 30),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "10x", "-5", "1e3", "10 m", "1h-5m", "inf", "nan"])
def test_durations_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is not a duration"):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert [format_duration(s) for s in (600, 90, 86400, 5400, 2.5, 0)] == [
        "10m",
        "1m30s",
        "1d",
        "1h30m",
        "2.5s",
        "0s",
    ]
