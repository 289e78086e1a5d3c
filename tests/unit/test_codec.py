"""MessageCodec mechanics, on a codec and message classes local to this test."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.codec import MAX_TIMESTAMP, Message, MessageCodec, Range, Timestamp
from starmux.errors import MessageError, RemoteProtocolError, UsageError

CODEC = MessageCodec(MessageError, max_size=4096)


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"


@CODEC.register
@dataclass(frozen=True)
class Point(Message):
    KIND = "point"
    x: int
    label: str


@CODEC.register
@dataclass(frozen=True)
class Names(Message):
    KIND = "names"
    names: tuple[str, ...]


@CODEC.register
@dataclass(frozen=True)
class Everything(Message):
    """One field of every supported type."""

    KIND = "everything"
    VERSION = 3
    count: int
    ratio: float
    text: str
    blob: bytes
    flag: bool
    nothing: None
    maybe: float | None
    colour: Colour
    points: tuple[Point, ...]
    tags: dict[str, int]
    inner: Names


@CODEC.register
@dataclass(frozen=True)
class Checked(Message):
    """A message whose constructor refuses some values."""

    KIND = "checked"
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != 4:
            raise UsageError("key is 4 bytes")


@CODEC.register
@dataclass(frozen=True)
class Timed(Message):
    """Bounded numbers: a timestamp, an optional one and a small int."""

    KIND = "timed"
    at: Timestamp
    until: Timestamp | None
    small: Annotated[int, Range(-5, 5)]


points = st.builds(Point, x=st.integers(-(2**63), 2**63 - 1), label=st.text(max_size=8))
everything = st.builds(
    Everything,
    count=st.integers(-(2**63), 2**63 - 1),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
    text=st.text(max_size=20),
    blob=st.binary(max_size=20),
    flag=st.booleans(),
    nothing=st.none(),
    maybe=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    colour=st.sampled_from(Colour),
    points=st.lists(points, max_size=3).map(tuple),
    tags=st.dictionaries(st.text(max_size=5), st.integers(-10, 10), max_size=3),
    inner=st.builds(Names, names=st.lists(st.text(max_size=5), max_size=3).map(tuple)),
)

SAMPLE = Everything(
    count=1,
    ratio=0.5,
    text="t",
    blob=b"b",
    flag=True,
    nothing=None,
    maybe=None,
    colour=Colour.RED,
    points=(Point(1, "a"),),
    tags={"k": 1},
    inner=Names(("n",)),
)


def wire_fields(message: Message) -> dict[str, Any]:
    value = msgpack.unpackb(CODEC.encode(message), raw=False)[2]
    assert isinstance(value, dict)
    return value


def pack(kind: object, version: object, fields: object) -> bytes:
    return msgpack.packb([kind, version, fields], use_bin_type=True)


def with_field(name: str, value: object, base: Message = SAMPLE) -> bytes:
    fields = wire_fields(base)
    fields[name] = value
    return pack(base.KIND, base.VERSION, fields)


# --- round trip and wire shape --------------------------------------------------------


@given(message=everything)
def test_round_trip(message: Everything) -> None:
    encoded = CODEC.encode(message)
    decoded = CODEC.decode(encoded)
    assert decoded == message
    assert type(decoded) is Everything
    assert type(decoded.colour) is Colour
    assert type(decoded.points) is tuple
    assert CODEC.encode(decoded) == encoded
    assert CODEC.decode_as(encoded, Everything) == message


def test_wire_shape() -> None:
    assert CODEC.encode(Point(7, "p")) == pack("point", 1, {"x": 7, "label": "p"})
    assert msgpack.unpackb(CODEC.encode(SAMPLE), raw=False) == [
        "everything",
        3,
        {
            "count": 1,
            "ratio": 0.5,
            "text": "t",
            "blob": b"b",
            "flag": True,
            "nothing": None,
            "maybe": None,
            "colour": "red",
            "points": [{"x": 1, "label": "a"}],
            "tags": {"k": 1},
            "inner": {"names": ["n"]},
        },
    ]


def test_kinds() -> None:
    assert CODEC.kinds == {"point", "everything", "names", "checked", "timed"}


def test_an_int_is_accepted_where_a_float_is_declared() -> None:
    decoded = CODEC.decode(with_field("ratio", 2))
    assert isinstance(decoded, Everything)
    assert decoded.ratio == 2.0
    assert type(decoded.ratio) is float


def timed(at: object, until: object = None, small: object = 0) -> bytes:
    return msgpack.packb(["timed", 1, {"at": at, "until": until, "small": small}])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(timed(0), id="epoch"),
        pytest.param(timed(1_700_000_000.5, 1_700_000_060), id="now-and-int"),
        pytest.param(timed(MAX_TIMESTAMP, MAX_TIMESTAMP, 5), id="year-3000"),
        pytest.param(timed(1.0, None, -5), id="lowest-small"),
    ],
)
def test_bounded_numbers_in_range_decode(data: bytes) -> None:
    decoded = CODEC.decode(data)
    assert isinstance(decoded, Timed)
    assert CODEC.decode(CODEC.encode(decoded)) == decoded


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(timed(float("inf")), id="inf"),
        pytest.param(timed(float("nan")), id="nan"),
        pytest.param(timed(1e300), id="1e300"),
        pytest.param(timed(MAX_TIMESTAMP + 1), id="after-3000"),
        pytest.param(timed(-1.0), id="before-1970"),
        pytest.param(timed(2**63 - 1), id="huge-int"),
        pytest.param(timed(1.0, float("inf")), id="optional-inf"),
        pytest.param(timed(1.0, 1e300), id="optional-1e300"),
        pytest.param(timed(1.0, None, 6), id="int-above"),
        pytest.param(timed(1.0, None, -6), id="int-below"),
        pytest.param(timed(1.0, None, 1.0), id="float-for-bounded-int"),
    ],
)
def test_bounded_numbers_out_of_range_are_refused(data: bytes) -> None:
    with pytest.raises(MessageError, match="invalid timed"):
        CODEC.decode(data)


def test_a_range_annotation_needs_a_number() -> None:
    codec = MessageCodec(MessageError)

    @codec.register
    @dataclass(frozen=True)
    class Odd(Message):
        KIND = "odd"
        name: Annotated[str, Range(0, 1)]

    with pytest.raises(UsageError, match="unsupported annotation"):
        codec.decode(msgpack.packb(["odd", 1, {"name": "x"}]))


def test_understands_tells_a_newer_peers_message_from_an_invalid_one() -> None:
    assert CODEC.understands(timed(1e300))  # known kind and version: invalid
    assert not CODEC.understands(pack("point", 2, {"x": 1, "label": "a"}))  # newer
    assert not CODEC.understands(pack("nope", 1, {}))
    assert not CODEC.understands(b"\xc1")
    assert not CODEC.understands(b"\x01" * 4097)


def test_claimed_class_names_the_kind_without_checking_its_fields() -> None:
    assert CODEC.claimed_class(CODEC.encode(Point(1, "x"))) is Point
    assert CODEC.claimed_class(timed(1e300)) is Timed  # claimed, though invalid
    assert CODEC.claimed_class(pack("point", 2, {"x": 1, "label": "a"})) is None  # newer
    assert CODEC.claimed_class(pack("nope", 1, {})) is None
    assert CODEC.claimed_class(b"\xc1") is None


def test_accepted_bytes_like_inputs() -> None:
    encoded = CODEC.encode(Point(1, "x"))
    assert CODEC.decode(bytearray(encoded)) == Point(1, "x")
    assert CODEC.decode(memoryview(encoded)) == Point(1, "x")


# --- registration and encoding refusals -----------------------------------------------


def test_register_refuses_a_non_frozen_dataclass() -> None:
    codec = MessageCodec(MessageError)

    @dataclass
    class Mutable(Message):
        KIND = "mutable"
        x: int

    with pytest.raises(UsageError, match="frozen dataclass"):
        codec.register(Mutable)
    assert codec.kinds == frozenset()


def test_register_refuses_fields_that_decoding_by_position_cannot_fill() -> None:
    codec = MessageCodec(MessageError)

    @dataclass(frozen=True, kw_only=True)
    class Keyword(Message):
        KIND = "keyword"
        x: int

    @dataclass(frozen=True)
    class Derived(Message):
        KIND = "derived"
        x: int
        y: int = dataclasses.field(init=False, default=0)

    for cls in (Keyword, Derived):
        with pytest.raises(UsageError, match="by position"):
            codec.register(cls)
    assert codec.kinds == frozenset()


def test_register_refuses_a_plain_class() -> None:
    codec = MessageCodec(MessageError)

    class Plain(Message):
        KIND = "plain"

    with pytest.raises(UsageError, match="frozen dataclass"):
        codec.register(Plain)


def test_register_refuses_a_duplicate_kind() -> None:
    codec = MessageCodec(MessageError)
    codec.register(Point)

    @dataclass(frozen=True)
    class Impostor(Message):
        KIND = "point"
        y: int

    with pytest.raises(UsageError, match="registered twice"):
        codec.register(Impostor)
    with pytest.raises(UsageError, match="registered twice"):
        codec.register(Point)
    assert codec.decode(CODEC.encode(Point(1, "a"))) == Point(1, "a")


def test_the_same_class_may_serve_two_codecs() -> None:
    other = MessageCodec(RemoteProtocolError)
    other.register(Point)
    assert other.decode(CODEC.encode(Point(3, "c"))) == Point(3, "c")


def test_encode_refuses_an_unregistered_class() -> None:
    @dataclass(frozen=True)
    class Stranger(Message):
        KIND = "stranger"
        x: int

    with pytest.raises(UsageError, match="not registered"):
        CODEC.encode(Stranger(1))


def test_encode_refuses_a_subclass_posing_as_a_registered_kind() -> None:
    @dataclass(frozen=True)
    class SubPoint(Point):
        pass

    with pytest.raises(UsageError, match="not registered"):
        CODEC.encode(SubPoint(1, "x"))


def test_encode_refuses_another_codecs_class() -> None:
    codec = MessageCodec(MessageError)
    with pytest.raises(UsageError, match="not registered"):
        codec.encode(Point(1, "x"))


def test_encode_refuses_an_oversize_message() -> None:
    CODEC.encode(Point(1, "x" * 3000))
    with pytest.raises(UsageError, match="exceeds 4096"):
        CODEC.encode(Point(1, "x" * 5000))


# --- decoding refusals ----------------------------------------------------------------

REFUSED = [
    pytest.param(pack("nope", 1, {}), id="unknown-kind"),
    pytest.param(pack(b"point", 1, {"x": 1, "label": "a"}), id="kind-as-bytes"),
    pytest.param(pack("point", 2, {"x": 1, "label": "a"}), id="wrong-version"),
    pytest.param(pack("point", 0, {"x": 1, "label": "a"}), id="version-0"),
    pytest.param(pack("point", True, {"x": 1, "label": "a"}), id="version-bool"),
    pytest.param(pack("point", 1.0, {"x": 1, "label": "a"}), id="version-float"),
    pytest.param(pack("point", "1", {"x": 1, "label": "a"}), id="version-str"),
    pytest.param(pack("point", 1, {"x": 1}), id="missing-field"),
    pytest.param(pack("point", 1, {}), id="no-fields"),
    pytest.param(pack("point", 1, {"x": 1, "label": "a", "y": 2}), id="extra-field"),
    pytest.param(pack("point", 1, [1, "a"]), id="fields-as-list"),
    pytest.param(pack("point", 1, None), id="fields-nil"),
    pytest.param(msgpack.packb(["point", 1]), id="two-elements"),
    pytest.param(msgpack.packb(["point", 1, {"x": 1, "label": "a"}, 0]), id="four-elements"),
    pytest.param(msgpack.packb({"point": 1}), id="top-level-map"),
    pytest.param(pack("point", 1, {"x": 1, "label": "a"}) + b"\x00", id="trailing-byte"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\x93\xa5point", id="truncated"),
    pytest.param(b"\x93\xa5po\xffnt\x01\x80", id="invalid-utf8"),
    pytest.param(msgpack.packb(["point", 1, {b"x": 1, "label": "a"}]), id="bytes-map-key"),
    pytest.param(msgpack.packb(["point", 1, msgpack.ExtType(1, b"x")]), id="ext"),
    pytest.param(b"\x01" * 4097, id="oversize"),
    # wrong types
    pytest.param(with_field("count", True), id="bool-for-int"),
    pytest.param(with_field("count", 1.0), id="float-for-int"),
    pytest.param(with_field("count", "1"), id="str-for-int"),
    pytest.param(with_field("count", None), id="nil-for-int"),
    pytest.param(with_field("flag", 1), id="int-for-bool"),
    pytest.param(with_field("ratio", True), id="bool-for-float"),
    pytest.param(with_field("ratio", "0.5"), id="str-for-float"),
    # a float is finite: inf would reach SQLite and every formatter (NaN becomes NULL)
    pytest.param(with_field("ratio", float("inf")), id="inf"),
    pytest.param(with_field("ratio", float("-inf")), id="minus-inf"),
    pytest.param(with_field("ratio", float("nan")), id="nan"),
    pytest.param(with_field("maybe", float("inf")), id="optional-inf"),
    pytest.param(with_field("text", b"t"), id="bytes-for-str"),
    pytest.param(with_field("blob", "b"), id="str-for-bytes"),
    pytest.param(with_field("blob", 5), id="int-for-bytes"),
    pytest.param(with_field("blob", [1, 2]), id="list-for-bytes"),
    pytest.param(with_field("nothing", 0), id="int-for-nil"),
    pytest.param(with_field("maybe", "x"), id="str-for-optional-float"),
    pytest.param(with_field("colour", "blue"), id="enum-non-member"),
    pytest.param(with_field("colour", "RED"), id="enum-name-not-value"),
    pytest.param(with_field("colour", b"red"), id="enum-as-bytes"),
    pytest.param(with_field("colour", 0), id="enum-as-int"),
    pytest.param(with_field("points", {"x": 1}), id="map-for-tuple"),
    pytest.param(with_field("points", [{"x": 1}]), id="nested-missing-field"),
    pytest.param(with_field("points", [{"x": 1, "label": "a", "z": 0}]), id="nested-extra-field"),
    pytest.param(with_field("points", [{"x": True, "label": "a"}]), id="nested-wrong-type"),
    pytest.param(with_field("points", [[1, "a"]]), id="nested-as-list"),
    pytest.param(with_field("tags", {"k": "v"}), id="dict-value-type"),
    pytest.param(with_field("tags", [["k", 1]]), id="list-for-dict"),
    pytest.param(
        msgpack.packb(["everything", 3, {**wire_fields(SAMPLE), "tags": {1: 1}}]),
        id="dict-int-key",
    ),
    pytest.param(with_field("inner", {"names": ["n", 1]}), id="tuple-element-type"),
    pytest.param(with_field("inner", None), id="nil-for-message"),
    pytest.param(pack("checked", 1, {"key": b"abc"}), id="post-init-refuses"),
]


@pytest.mark.parametrize("data", REFUSED)
def test_decode_refuses(data: bytes) -> None:
    with pytest.raises(MessageError):
        CODEC.decode(data)


def test_the_refusal_table_starts_from_valid_messages() -> None:
    # Guards the table above: the unmodified bases do decode.
    assert CODEC.decode(with_field("count", 1)) == SAMPLE
    assert CODEC.decode(pack("checked", 1, {"key": b"abcd"})) == Checked(b"abcd")


def deep(depth: int, leaf: bytes = b"\xc0") -> bytes:
    return b"\x91" * depth + leaf


@pytest.mark.parametrize("depth", [100, 5000, 100_000])
def test_decode_refuses_deep_nesting(depth: int) -> None:
    codec = MessageCodec(MessageError)
    codec.register(Names)
    header = b"\x93" + msgpack.packb("names") + b"\x01\x81" + msgpack.packb("names")
    with pytest.raises(MessageError):
        codec.decode(header + deep(depth))
    with pytest.raises(MessageError):
        codec.decode(deep(depth))


def test_decode_raises_only_the_codecs_error_type() -> None:
    other = MessageCodec(RemoteProtocolError)
    other.register(Point)
    with pytest.raises(RemoteProtocolError) as info:
        other.decode(pack("point", 1, {"x": "one", "label": "a"}))
    assert type(info.value) is RemoteProtocolError
    with pytest.raises(MessageError) as info2:
        CODEC.decode(pack("point", 1, {"x": "one", "label": "a"}))
    assert type(info2.value) is MessageError


@pytest.mark.parametrize("value", ["text", None, 7, [1, 2]])
def test_decode_refuses_non_bytes(value: object) -> None:
    with pytest.raises(MessageError, match="bytes"):
        CODEC.decode(value)  # type: ignore[arg-type]


def test_decode_as_refuses_another_kind() -> None:
    encoded = CODEC.encode(Point(1, "a"))
    with pytest.raises(MessageError, match="expected names, got point"):
        CODEC.decode_as(encoded, Names)


def test_fields_are_exactly_the_dataclass_fields() -> None:
    assert set(wire_fields(SAMPLE)) == {f.name for f in dataclasses.fields(Everything)}


FORWARD_REFERENCE_MODULE = """
from __future__ import annotations

from dataclasses import dataclass

from starmux.codec import MAX_TIMESTAMP, Message, MessageCodec, Range, Timestamp
from starmux.errors import MessageError

CODEC = MessageCodec(MessageError)


@CODEC.register
@dataclass(frozen=True)
class Outer(Message):
    KIND = "outer"
    inner: Inner
    more: tuple[Inner, ...]


@CODEC.register
@dataclass(frozen=True)
class Inner(Message):
    KIND = "inner"
    x: int
"""


def test_a_message_may_refer_to_a_class_defined_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # codec.py builds converters lazily "so messages may refer to later classes";
    # that only holds if registration does not resolve the annotations either.
    name = f"forward_ref_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(FORWARD_REFERENCE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module(name)
        message = module.Outer(module.Inner(1), (module.Inner(2),))
        assert module.CODEC.decode(module.CODEC.encode(message)) == message
    finally:
        sys.modules.pop(name, None)


def test_integers_beyond_signed_64_bit_are_refused() -> None:
    import msgpack

    wire = msgpack.packb(["point", 1, {"x": 2**63, "label": ""}])
    with pytest.raises(MessageError, match="invalid point"):
        CODEC.decode(wire)
