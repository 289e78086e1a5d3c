"""Relay control messages: every kind round-trips; the strict decoder refuses the rest."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Annotated, Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from starmux import control, device_control, notify_messages
from starmux.codec import Message, Range
from starmux.control import (
    CONTROL,
    AccountRegistered,
    AuthChallenge,
    CreateTicket,
    Failure,
    FailureCode,
    MachineInfo,
    MachineList,
    Notice,
    NoticeEvent,
    SessionStatus,
    Welcome,
)
from starmux.errors import RemoteProtocolError

CLASSES: list[type[Message]] = sorted(
    (
        obj
        # device_control and notify_messages register on CONTROL too
        for module in (control, device_control, notify_messages)
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Message)
        and obj is not Message
        and obj.KIND in CONTROL.kinds
    ),
    key=lambda cls: cls.KIND,
)


def strategy_for(hint: Any) -> SearchStrategy[Any]:
    """A strategy for any field type the codec supports, built from the annotation."""
    if typing.get_origin(hint) is Annotated:  # a number in a Range, e.g. a Timestamp
        base, *metadata = typing.get_args(hint)
        bounds = next(m for m in metadata if isinstance(m, Range))
        if base is int:
            return st.integers(int(bounds.low), int(bounds.high))
        return st.floats(bounds.low, bounds.high)
    if hint is type(None):
        return st.none()
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-(2**63), 2**63 - 1)  # the codec takes signed 64-bit
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)  # the codec takes finite floats
    if hint is str:
        return st.text(max_size=40)
    if hint is bytes:
        return st.binary(max_size=80)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return st.sampled_from(hint)
    if isinstance(hint, type) and issubclass(hint, Message):
        return messages(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(arg) for arg in args))
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), strategy_for(args[1]), max_size=4)
    raise AssertionError(f"no strategy for {hint!r}")


def messages(cls: type[Message]) -> SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields})


def test_every_message_class_is_registered() -> None:
    assert {cls.KIND for cls in CLASSES} == CONTROL.kinds
    assert len(CLASSES) == len(CONTROL.kinds)


def test_kinds_are_fixed() -> None:
    # Kind strings are the wire contract between relay and nodes of any version.
    assert CONTROL.kinds == {
        "auth-challenge",
        "auth-response",
        "welcome",
        "failure",
        "register-account",
        "account-registered",
        "create-ticket",
        "ticket-created",
        "open-ticket",
        "ticket-opened",
        "report-pairing-failure",
        "grant-machine",
        "machine-granted",
        "revoke-machine",
        "machine-revoked",
        "machine-revocation",
        "list-machines",
        "machine-info",
        "machine-list",
        "route-error",
        "presence",
        "notice",
        # starmux.device_control
        "append-device-log",
        "device-log-appended",
        "get-device-log",
        "device-log-state",
        "device-seen",
        "create-link-ticket",
        "open-link-ticket",
        # starmux.notify_messages
        "register-push",
        "push-registered",
        "send-push",
        "push-queued",
    }


def test_enum_values_are_fixed() -> None:
    assert [s.value for s in SessionStatus] == ["controller", "machine", "unpaired", "unregistered"]
    assert [e.value for e in NoticeEvent] == [
        "paired",
        "revoked",
        "restarting",
        "ticket-burnt",
        "devices-changed",
        "device-removed",
    ]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.KIND)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(messages(cls))
    encoded = CONTROL.encode(message)
    decoded = CONTROL.decode(encoded)
    assert decoded == message
    assert type(decoded) is cls
    assert CONTROL.encode(decoded) == encoded
    assert CONTROL.decode_as(encoded, cls) == message


def test_golden_wire_bytes() -> None:
    # fixarray 3, fixstr "create-ticket", version 1, fixmap 1, fixstr "request_id", 7
    assert CONTROL.encode(CreateTicket(7)) == (b"\x93\xadcreate-ticket\x01\x81\xaarequest_id\x07")


def _fields(message: Message) -> dict[str, Any]:
    value = msgpack.unpackb(CONTROL.encode(message), raw=False)[2]
    assert isinstance(value, dict)
    return value


def _pack(kind: object, version: object, fields: object) -> bytes:
    return msgpack.packb([kind, version, fields], use_bin_type=True)


def _changed(message: Message, **changes: object) -> bytes:
    return _pack(message.KIND, message.VERSION, {**_fields(message), **changes})


def _without(message: Message, name: str) -> bytes:
    fields = _fields(message)
    del fields[name]
    return _pack(message.KIND, message.VERSION, fields)


FAILURE = Failure(1, FailureCode.BURNT, "message", "hint")
WELCOME = Welcome(SessionStatus.MACHINE, b"\x01" * 32, b"\x02" * 64, 1.5)
CHALLENGE = AuthChallenge(b"card", b"\x03" * 32, 2.5)
INFO = MachineInfo(b"\x04" * 32, b"card", True, 1.0, None)
LIST = MachineList(9, (INFO,))
NOTICE = Notice(NoticeEvent.REVOKED, b"\x05" * 32, b"", 0.0)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_pack("no-such-kind", 1, {}), id="unknown-kind"),
        pytest.param(_pack("Failure", 1, _fields(FAILURE)), id="class-name-as-kind"),
        pytest.param(_pack("failure", 2, _fields(FAILURE)), id="future-version"),
        pytest.param(_pack("failure", 0, _fields(FAILURE)), id="version-0"),
        pytest.param(_pack("failure", True, _fields(FAILURE)), id="version-true"),
        pytest.param(_without(FAILURE, "hint"), id="missing-field"),
        pytest.param(_without(WELCOME, "signature"), id="missing-signature"),
        pytest.param(_changed(FAILURE, extra=1), id="extra-field"),
        pytest.param(_changed(WELCOME, admin=True), id="extra-field-welcome"),
        pytest.param(_changed(FAILURE, request_id=True), id="bool-for-int"),
        pytest.param(_changed(FAILURE, request_id=1.0), id="float-for-int"),
        pytest.param(_changed(FAILURE, code=b"burnt"), id="bytes-for-str"),
        pytest.param(_changed(FAILURE, code="no-such-code"), id="unknown-failure-code"),
        pytest.param(_changed(AccountRegistered(1, b"a"), account=5), id="int-for-bytes"),
        pytest.param(_changed(AccountRegistered(1, b"a"), account="a"), id="str-for-bytes"),
        pytest.param(_changed(WELCOME, status="admin"), id="status-not-a-member"),
        pytest.param(_changed(WELCOME, status="MACHINE"), id="status-name-not-value"),
        pytest.param(_changed(WELCOME, status=b"machine"), id="status-as-bytes"),
        pytest.param(_changed(NOTICE, event="exploded"), id="event-not-a-member"),
        pytest.param(_changed(CHALLENGE, relay_time=None), id="nil-for-float"),
        pytest.param(_changed(CHALLENGE, relay_time=False), id="bool-for-float"),
        pytest.param(_changed(CHALLENGE, relay_time="2.5"), id="str-for-float"),
        pytest.param(_changed(INFO, online=1), id="int-for-bool"),
        pytest.param(_changed(INFO, last_seen="never"), id="str-for-optional"),
        pytest.param(_changed(LIST, machines=_fields(INFO)), id="map-for-tuple"),
        pytest.param(_changed(LIST, machines=[{"machine_key": b""}]), id="nested-missing"),
        pytest.param(_changed(LIST, machines=[{**_fields(INFO), "x": 1}]), id="nested-extra-field"),
        pytest.param(
            _changed(LIST, machines=[{**_fields(INFO), "online": "yes"}]), id="nested-wrong-type"
        ),
        pytest.param(_changed(LIST, machines=[list(_fields(INFO).values())]), id="nested-as-list"),
        pytest.param(CONTROL.encode(LIST)[:-1], id="truncated"),
        pytest.param(CONTROL.encode(FAILURE) + b"\xc0", id="trailing-byte"),
        pytest.param(b"\x01" * (64 * 1024 + 1), id="over-64k"),
        pytest.param(b"", id="empty"),
    ],
)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        CONTROL.decode(data)


def test_the_refusal_table_starts_from_valid_messages() -> None:
    for message in (FAILURE, WELCOME, CHALLENGE, INFO, LIST, NOTICE):
        assert CONTROL.decode(_changed(message)) == message


def test_optional_and_int_for_float_are_accepted() -> None:
    decoded = CONTROL.decode(_changed(INFO, last_seen=7, paired_at=3))
    assert decoded == MachineInfo(b"\x04" * 32, b"card", True, 3.0, 7.0)


@pytest.mark.parametrize("depth", [600, 5000, 100_000])
def test_decode_refuses_nesting_too_deep(depth: int) -> None:
    head = b"\x93" + msgpack.packb("machine-list") + b"\x01\x82"
    head += msgpack.packb("request_id") + b"\x01" + msgpack.packb("machines")
    with pytest.raises(RemoteProtocolError):
        CONTROL.decode(head + b"\x91" * depth + b"\x80")
    with pytest.raises(RemoteProtocolError):
        CONTROL.decode(b"\x91" * depth + b"\xc0")


def test_decode_as_refuses_the_wrong_kind() -> None:
    with pytest.raises(RemoteProtocolError, match="expected welcome, got failure"):
        CONTROL.decode_as(CONTROL.encode(FAILURE), Welcome)
