"""PROTOCOL.md maps everything on the wire: a new frame type, message, field, enum
value, close code or signature domain fails here until it is documented.

The lists come from the code's own registries (the codecs, the enums, every
``b"starmux/..."`` literal in the sources), never from a copy kept in this test.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import starmux
from starmux.close_codes import CloseCode
from starmux.codec import Message, MessageCodec
from starmux.control import CONTROL
from starmux.e2e import Kind
from starmux.frames import FrameType
from starmux.identity import Role
from starmux.messages import APP

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = (ROOT / "PROTOCOL.md").read_text()
CODECS = {"CONTROL": CONTROL, "APP": APP}


def _import_everything() -> None:
    """Import every starmux module, so every message class has registered."""
    for info in pkgutil.walk_packages(starmux.__path__, "starmux."):
        importlib.import_module(info.name)


def _all_subclasses(cls: type[Message]) -> list[type[Message]]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def registered(codec: MessageCodec) -> list[type[Message]]:
    _import_everything()
    classes = [c for c in _all_subclasses(Message) if getattr(c, "KIND", None) in codec.kinds]
    assert {c.KIND for c in classes} == codec.kinds  # every registered kind was found
    return sorted(classes, key=lambda c: c.KIND)


def section(kind: str) -> str:
    """The text under the ``#### `kind` `` heading, up to the next heading."""
    match = re.search(rf"^#### `{re.escape(kind)}`\n(.*?)(?=^#)", PROTOCOL + "\n#", re.S | re.M)
    assert match, f"PROTOCOL.md has no '#### `{kind}`' section"
    return match.group(1)


def enums_in(hint: Any) -> set[type[enum.Enum]]:
    """Every enum a field type mentions (through unions, tuples, dicts)."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {hint}
    if typing.get_origin(hint) in (typing.Union, types.UnionType, tuple, dict):
        return set().union(*(enums_in(arg) for arg in typing.get_args(hint)))
    return set()


def message_params() -> list[Any]:
    return [
        pytest.param(cls, id=f"{name}:{cls.KIND}")
        for name, codec in CODECS.items()
        for cls in registered(codec)
    ]


@pytest.mark.parametrize("cls", message_params())
def test_every_message_and_field_is_documented(cls: type[Message]) -> None:
    text = section(cls.KIND)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        assert f"`{field.name}`" in text, f"`{cls.KIND}` field `{field.name}` is not documented"


def field_enums() -> list[type[enum.Enum]]:
    found: set[type[enum.Enum]] = {Role}  # in cards, which are not codec messages
    for codec in CODECS.values():
        for cls in registered(codec):
            for hint in typing.get_type_hints(cls).values():
                found |= enums_in(hint)
    return sorted(found, key=lambda e: e.__name__)


@pytest.mark.parametrize("enum_type", field_enums(), ids=lambda e: e.__name__)
def test_every_enum_value_is_documented(enum_type: type[enum.Enum]) -> None:
    assert f"`{enum_type.__name__}`" in PROTOCOL
    missing = [m.value for m in enum_type if f"`{m.value}`" not in PROTOCOL]
    assert not missing, f"{enum_type.__name__} values missing from PROTOCOL.md: {missing}"


@pytest.mark.parametrize("frame_type", list(FrameType), ids=lambda t: t.name)
def test_every_frame_type_is_documented(frame_type: FrameType) -> None:
    assert re.search(rf"^\| {int(frame_type)} \| `{frame_type.name}` \|", PROTOCOL, re.M)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_end_to_end_kind_is_documented(kind: Kind) -> None:
    assert re.search(rf"^\| 0x{int(kind):02x} \| `{kind.name}` \|", PROTOCOL, re.M)


@pytest.mark.parametrize("code", list(CloseCode), ids=lambda c: c.name)
def test_every_close_code_is_documented(code: CloseCode) -> None:
    row = re.search(rf"^\| {int(code)} \| `{code.name}` \|.*\| (yes|no) \|$", PROTOCOL, re.M)
    assert row, f"close code {int(code)} {code.name} is not in PROTOCOL.md's table"
    assert (row.group(1) == "yes") == code.retryable


def signature_domains() -> set[str]:
    found: set[str] = set()
    for folder in ("starmux", "relay", "daemon", "client"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(r'b"(starmux/[^"]+)"', path.read_text()))
    return found


def test_the_domain_scan_finds_the_known_domains() -> None:
    assert {"starmux/relay-auth/v1", "starmux/live/v1"} <= signature_domains()


@pytest.mark.parametrize("domain", sorted(signature_domains()))
def test_every_signature_domain_is_documented(domain: str) -> None:
    assert re.search(rf"^\| `{re.escape(domain)}` \|", PROTOCOL, re.M)
