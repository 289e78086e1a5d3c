"""Versioned msgpack encoding of frozen dataclass messages, with strict decoding.

A message on the wire is ``[kind, version, {field: value, ...}]``. Each message class
declares ``KIND`` (a short string, unique within its :class:`MessageCodec`) and
``VERSION``. Decoding is strict: the kind must be known, the version supported,
the field set exact and every value of its annotated type (``bool`` is not an
``int``; ``tuple[X, ...]`` and ``dict[str, X]`` are checked element by element;
nested messages are encoded as their field maps). Anything else raises the
codec's error type and nothing else escapes, because these bytes come from peers.

Supported field types: ``int``, ``float``, ``str``, ``bytes``, ``bool``, ``None``,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]``, ``enum.StrEnum`` subclasses,
nested message dataclasses, and ``Annotated[int | float, Range(lo, hi)]`` (e.g.
:data:`Timestamp`). A float is never NaN or infinite: a peer's ``inf`` would
otherwise travel into SQLite (NaN becomes NULL) and into every formatter.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack

from .errors import RemoteProtocolError, UsageError

MAX_MESSAGE_SIZE = 1 << 20


class Message:
    """Base of every wire message; subclasses are frozen dataclasses."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1


M = TypeVar("M", bound=Message)
_Check = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class Range:
    """``Annotated`` metadata: the decoded number must lie in ``[low, high]``."""

    low: float
    high: float


#: Seconds since the epoch, from 1970 to the year 3000: any later time from a peer is
#: a lie, and would overflow ``datetime`` (OverflowError, or ValueError past 9999).
MAX_TIMESTAMP = 32_503_680_000.0
Timestamp = Annotated[float, Range(0.0, MAX_TIMESTAMP)]


class _Invalid(Exception):
    """Internal: a value does not match its declared type."""


def _converter(hint: Any) -> _Check:
    """Build a function that validates a decoded value and converts it to ``hint``."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *metadata = typing.get_args(hint)
        convert = _converter(base)
        bounds = [m for m in metadata if isinstance(m, Range)]
        if base not in (int, float) or len(bounds) != 1:
            raise UsageError(f"unsupported annotation {hint!r}: one Range on int or float")
        low, high = bounds[0].low, bounds[0].high

        def in_range(value: Any) -> Any:
            number = convert(value)
            if not low <= number <= high:
                raise _Invalid
            return number

        return in_range
    if hint is type(None):
        return _exact(type(None))
    if hint is int:
        return _int64
    if hint in (str, bytes, bool):
        return _exact(hint)
    if hint is float:

        def to_float(value: Any) -> float:
            if type(value) not in (int, float):
                raise _Invalid
            number = float(value)
            if not math.isfinite(number):
                raise _Invalid
            return number

        return to_float
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        # The members by value: a lookup, where ``enum_type(value)`` goes through
        # EnumType.__call__ and Enum.__new__ for every decoded field.
        members: dict[str, enum.StrEnum] = {member.value: member for member in hint}

        def to_enum(value: Any) -> enum.StrEnum:
            member = members.get(value) if type(value) is str else None
            if member is None:
                raise _Invalid
            return member

        return to_enum
    if isinstance(hint, type) and issubclass(hint, Message):
        return _fields_converter(hint)
    if origin in (typing.Union, types.UnionType):
        options = [_converter(arg) for arg in typing.get_args(hint)]

        def to_union(value: Any) -> Any:
            for option in options:
                try:
                    return option(value)
                except _Invalid:
                    continue
            raise _Invalid

        return to_union
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise UsageError(f"only tuple[X, ...] is supported, not {hint}")
        item = _converter(args[0])

        def to_tuple(value: Any) -> tuple[Any, ...]:
            if type(value) is not list:
                raise _Invalid
            return tuple(item(element) for element in value)

        return to_tuple
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if key_type is not str:
            raise UsageError("only dict[str, X] is supported")
        item = _converter(value_type)

        def to_dict(value: Any) -> dict[str, Any]:
            if type(value) is not dict or any(type(k) is not str for k in value):
                raise _Invalid
            return {k: item(v) for k, v in value.items()}

        return to_dict
    raise UsageError(f"unsupported message field type {hint!r}")


def _int64(value: Any) -> int:
    """Integers are signed 64-bit: what SQLite stores; a larger seq or count from a
    peer would otherwise fail deep inside a query instead of at the boundary."""
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise _Invalid
    return value


def _exact(expected: type) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not expected:
            raise _Invalid
        return value

    return check


def _fields_converter(cls: type[M]) -> Callable[[Any], M]:
    fields = _field_names(cls)
    #: (name, converter) in field order, so the fields go to ``cls`` by position
    converters: list[tuple[str, _Check]] = []
    names = frozenset(fields)

    def convert(value: Any) -> M:
        if not converters:  # built lazily so messages may refer to later classes
            hints = typing.get_type_hints(cls, include_extras=True)
            converters.extend((name, _converter(hints[name])) for name in fields)
        if type(value) is not dict or value.keys() != names:
            raise _Invalid
        try:
            return cls(*[check(value[name]) for name, check in converters])
        except (TypeError, ValueError, UsageError) as exc:  # __post_init__ refused it
            raise _Invalid from exc

    return convert


#: Field names per message class: ``dataclasses.fields`` filters the class's fields
#: again on every call, and encoding an event page calls it once per event.
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _to_wire(value: Any) -> Any:
    if isinstance(value, Message):
        return {name: _to_wire(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, enum.StrEnum):
        return value.value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


class MessageCodec:
    """A closed set of message classes and the error type their decoding raises."""

    def __init__(self, error: type[RemoteProtocolError], *, max_size: int = MAX_MESSAGE_SIZE):
        self._error = error
        self._max_size = max_size
        self._classes: dict[str, type[Message]] = {}
        self._converters: dict[str, Callable[[Any], Message]] = {}

    def register(self, cls: type[M]) -> type[M]:
        """Class decorator adding ``cls`` to this codec."""
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise UsageError(f"{cls.__name__} must be a frozen dataclass")
        if any(not f.init or f.kw_only for f in dataclasses.fields(cls)):
            raise UsageError(f"{cls.__name__}: every field is decoded by position")
        if cls.KIND in self._classes:
            raise UsageError(f"message kind {cls.KIND!r} registered twice")
        self._classes[cls.KIND] = cls
        self._converters[cls.KIND] = _fields_converter(cls)
        return cls

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self._classes)

    def encode(self, message: Message) -> bytes:
        if self._classes.get(message.KIND) is not type(message):
            raise UsageError(f"{type(message).__name__} is not registered with this codec")
        data = msgpack.packb([message.KIND, message.VERSION, _to_wire(message)], use_bin_type=True)
        if len(data) > self._max_size:
            raise UsageError(f"{message.KIND} message exceeds {self._max_size} bytes")
        return data

    def decode(self, data: bytes | bytearray | memoryview) -> Message:
        """Parse untrusted bytes; raises only this codec's error type."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self._error("a message must be bytes")
        if len(data) > self._max_size:
            raise self._error(f"message exceeds {self._max_size} bytes")
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)
        except Exception as exc:  # hostile bytes make msgpack raise many types
            raise self._error("message is not valid msgpack") from exc
        if type(value) is not list or len(value) != 3:
            raise self._error("a message is [kind, version, fields]")
        kind, version, fields = value
        if type(kind) is not str or kind not in self._classes:
            raise self._error("unknown message kind")
        cls = self._classes[kind]
        if type(version) is not int or version != cls.VERSION:
            raise self._error(f"unsupported {kind} version")
        try:
            return self._converters[kind](fields)
        except _Invalid as exc:
            raise self._error(f"invalid {kind} message") from exc
        except RecursionError as exc:
            raise self._error(f"{kind} message nested too deeply") from exc

    def understands(self, data: bytes | bytearray | memoryview) -> bool:
        """Whether ``data`` claims a kind and version this codec knows, valid or not:
        what a newer peer sends is not understood; what this code should have been
        able to decode, and could not, is invalid."""
        return self.claimed_class(data) is not None

    def claimed_class(self, data: bytes | bytearray | memoryview) -> type[Message] | None:
        """The class whose kind and version ``data`` claims, without checking its
        fields (None: not a message of this codec's). For a consumer that only acts
        on a few kinds: telling the rest apart costs a msgpack parse, not a decode.
        What it then acts on, it must still :meth:`decode`."""
        if len(data) > self._max_size:
            return None
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)
        except Exception:
            return None
        if type(value) is not list or len(value) != 3:
            return None
        kind, version = value[0], value[1]
        cls = self._classes.get(kind) if type(kind) is str else None
        if cls is None or type(version) is not int or version != cls.VERSION:
            return None
        return cls

    def decode_as(self, data: bytes | bytearray | memoryview, cls: type[M]) -> M:
        """Decode and require a specific message class."""
        message = self.decode(data)
        if not isinstance(message, cls):
            raise self._error(f"expected {cls.KIND}, got {message.KIND}")
        return message
