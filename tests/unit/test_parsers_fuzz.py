"""Every parser of untrusted input raises only its documented error type.

Each test catches exactly the documented type; anything else escapes and fails the
test. Inputs are arbitrary bytes or text, and near-valid mutations of valid encodings
(bit flips, truncation, extension, byte substitution, insertion, deletion), which reach
deeper into the parsers than random noise does.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from starmux import control
from starmux.codec import Message
from starmux.control import CONTROL
from starmux.device_roles import DeviceRole
from starmux.errors import (
    CryptoError,
    FrameError,
    PairingCodeError,
    RemoteProtocolError,
    UsageError,
)
from starmux.fingerprint import fingerprint, normalize_fingerprint
from starmux.frames import MAX_BODY_SIZE, Frame, FrameType, parse_frame
from starmux.identity import MAX_CARD_BYTES, IdentityCard, NodeKeys, Role
from starmux.link_code import Direction, LinkCode, parse_link_code
from starmux.pairing_code import PairingCode, parse_pairing_code

RAW = settings(max_examples=2000)
MUTATED = settings(max_examples=1000)
FINGERPRINT_RE = re.compile(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){7}")


@st.composite
def mutations(draw: st.DrawFn, valid: SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        if operation == "extend" or not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        position = draw(st.integers(0, len(data) - 1))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(
                st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC3, 0xFF]) | st.integers(0, 255)
            )
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[position : position + draw(st.integers(1, 4))]
    return bytes(data)


# --- frames -------------------------------------------------------------------------

valid_frames = st.builds(
    lambda t, p, b: Frame(t, p, b).encode(),
    st.sampled_from(FrameType),
    st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    st.binary(max_size=300),
)


def check_frame(data: bytes) -> None:
    try:
        frame = parse_frame(data)
    except FrameError:
        event("refused")
        return
    event("accepted")
    assert len(frame.peer) in (0, 32)
    assert len(frame.body) <= MAX_BODY_SIZE
    assert parse_frame(frame.encode()) == frame


@RAW
@given(data=st.binary(max_size=400))
def test_parse_frame_raw(data: bytes) -> None:
    check_frame(data)


@MUTATED
@given(data=mutations(valid_frames))
def test_parse_frame_mutated(data: bytes) -> None:
    check_frame(data)


# --- control messages ----------------------------------------------------------------


def strategy_for(hint: Any) -> SearchStrategy[Any]:
    if hint is type(None):
        return st.none()
    if hint in (bool, str, bytes):
        return st.from_type(hint).map(lambda v: v[:40] if isinstance(v, str | bytes) else v)
    if hint is int:
        return st.integers(-(2**63), 2**63 - 1)
    if hint is float:
        return st.floats()
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return st.sampled_from(hint)
    if isinstance(hint, type) and issubclass(hint, Message):
        return message_strategy(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(arg) for arg in args))
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    raise AssertionError(f"no strategy for {hint!r}")


def message_strategy(cls: type[Message]) -> SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields})


CONTROL_CLASSES = [
    obj
    for obj in vars(control).values()
    if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
]
valid_control = st.one_of(*(message_strategy(cls) for cls in CONTROL_CLASSES)).map(CONTROL.encode)


def check_control(data: bytes) -> None:
    try:
        message = CONTROL.decode(data)
    except RemoteProtocolError:
        event("refused")
        return
    event("accepted")
    assert message.KIND in CONTROL.kinds
    CONTROL.encode(message)


@RAW
@given(data=st.binary(max_size=400))
def test_control_decode_raw(data: bytes) -> None:
    check_control(data)


@MUTATED
@given(data=mutations(valid_control))
def test_control_decode_mutated(data: bytes) -> None:
    check_control(data)


# --- identity cards -------------------------------------------------------------------

CARD_KEYS = [NodeKeys(bytes([i]) * 32, bytes([i + 1]) * 32) for i in range(3)]
valid_cards = st.builds(
    lambda keys, role, name: keys.card(role, name).encode(),
    st.sampled_from(CARD_KEYS),
    st.sampled_from(Role),
    st.sampled_from(["m", "build-box", "ünïcödé", "x" * 64, "\U0001f600" * 64]),
)


def check_card(data: bytes) -> None:
    try:
        card = IdentityCard.decode(data)
    except (RemoteProtocolError, CryptoError):
        event("refused")
        return
    event("accepted")
    assert IdentityCard.decode(card.encode()) == card


@RAW
@given(data=st.binary(max_size=MAX_CARD_BYTES + 8))
def test_identity_card_decode_raw(data: bytes) -> None:
    check_card(data)


@MUTATED
@given(data=mutations(valid_cards))
def test_identity_card_decode_mutated(data: bytes) -> None:
    check_card(data)


# --- pairing codes --------------------------------------------------------------------

VALID_CODE = PairingCode(
    "wss://relay.example.com:8443/v1",
    fingerprint(b"\x01" * 32),
    bytes(range(16)),
    fingerprint(b"\x02" * 32),
    bytes(range(32)),
).to_text()
URLISH = "starmux:/pairv1?&=%#@[]+ -_.~wsWS0123456789ABCDEFabcdef\t\n\x00é\u200b"


def check_pairing_code(text: str) -> None:
    try:
        code = parse_pairing_code(text)
    except PairingCodeError:
        event("refused")
        return
    event("accepted")
    assert parse_pairing_code(code.to_text()) == code


@RAW
@given(text=st.text(max_size=300))
def test_parse_pairing_code_raw(text: str) -> None:
    check_pairing_code(text)


@RAW
@given(tail=st.text(alphabet=URLISH, max_size=300))
def test_parse_pairing_code_urlish(tail: str) -> None:
    check_pairing_code("starmux://pair/v1?" + tail)


@st.composite
def mutated_codes(draw: st.DrawFn, valid: str = VALID_CODE) -> str:
    text = list(valid)
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        operation = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        character = draw(st.sampled_from(URLISH) | st.characters())
        if operation == "set" and position < len(text):
            text[position] = character
        elif operation == "insert":
            text.insert(position, character)
        elif operation == "delete":
            del text[position : position + 1]
        else:
            del text[position:]
    return "".join(text)


@MUTATED
@given(text=mutated_codes())
def test_parse_pairing_code_mutated(text: str) -> None:
    check_pairing_code(text)


# --- link and join codes ----------------------------------------------------------------

VALID_LINK_CODES = [
    LinkCode(
        direction,
        "wss://relay.example.com:8443/v1",
        fingerprint(b"\x01" * 32),
        bytes(range(16)),
        fingerprint(b"\x02" * 32),
        bytes(range(32)),
        role,
    ).to_text()
    for direction, role in ((Direction.INVITE, DeviceRole.OPERATOR), (Direction.JOIN, None))
]


def check_link_code(text: str) -> None:
    """Either direction's parser: only PairingCodeError escapes; what it accepts
    renders and parses back to the same code."""
    for direction in Direction:
        try:
            code = parse_link_code(text, direction)
        except PairingCodeError:
            event(f"{direction.value}: refused")
            continue
        event(f"{direction.value}: accepted")
        assert code.direction is direction
        again = parse_link_code(code.to_text(), direction)
        assert again.to_text() == code.to_text() and again.role is code.role


@RAW
@given(text=st.text(max_size=300))
def test_parse_link_code_raw(text: str) -> None:
    check_link_code(text)


@MUTATED
@given(text=st.sampled_from(VALID_LINK_CODES).flatmap(mutated_codes))
def test_parse_link_code_mutated(text: str) -> None:
    check_link_code(text)


# --- fingerprints ----------------------------------------------------------------------


def check_fingerprint(text: str) -> None:
    try:
        normalized = normalize_fingerprint(text)
    except UsageError:
        event("refused")
        return
    event("accepted")
    assert FINGERPRINT_RE.fullmatch(normalized)


@RAW
@given(text=st.text(max_size=80))
def test_normalize_fingerprint_raw(text: str) -> None:
    check_fingerprint(text)


@MUTATED
@given(
    key=st.binary(min_size=32, max_size=32),
    edits=st.lists(st.tuples(st.integers(0, 45), st.characters()), max_size=4),
)
def test_normalize_fingerprint_mutated(key: bytes, edits: list[tuple[int, str]]) -> None:
    text = list(fingerprint(key).lower())
    for position, character in edits:
        text.insert(min(position, len(text)), character)
    check_fingerprint("".join(text))
