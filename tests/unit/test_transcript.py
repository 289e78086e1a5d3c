"""transcript(): length-prefixed, domain-separated, unambiguous."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from starmux.errors import UsageError
from starmux.transcript import transcript

domains = st.binary(max_size=24).map(lambda tail: b"starmux/" + tail)
field_lists = st.lists(st.binary(max_size=16), max_size=6)


def parse(encoded: bytes) -> tuple[bytes, list[bytes]]:
    """Reference decoder: a left inverse of transcript() proves it is injective."""
    items: list[bytes] = []
    offset = 0
    while offset < len(encoded):
        assert offset + 4 <= len(encoded), "truncated length prefix"
        size = int.from_bytes(encoded[offset : offset + 4], "big")
        offset += 4
        assert offset + size <= len(encoded), "length prefix runs past the end"
        items.append(encoded[offset : offset + size])
        offset += size
    assert items, "no domain"
    return items[0], items[1:]


def test_exact_encoding() -> None:
    assert transcript(b"starmux/x", b"ab", b"") == (
        b"\x00\x00\x00\x09starmux/x\x00\x00\x00\x02ab\x00\x00\x00\x00"
    )


def test_no_fields_is_just_the_domain() -> None:
    assert transcript(b"starmux/d") == b"\x00\x00\x00\x09starmux/d"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((b"ab", b"c"), (b"a", b"bc")),
        ((b"abc",), (b"a", b"b", b"c")),
        ((), (b"",)),
        ((b"",), (b"", b"")),
        ((b"a", b""), (b"", b"a")),
        # a field that looks like a length prefix followed by data
        ((b"\x00\x00\x00\x01a",), (b"", b"a")),
    ],
)
def test_boundaries_are_unambiguous(left: tuple[bytes, ...], right: tuple[bytes, ...]) -> None:
    assert transcript(b"starmux/t", *left) != transcript(b"starmux/t", *right)


def test_domain_is_separated_from_fields() -> None:
    assert transcript(b"starmux/a", b"x") != transcript(b"starmux/b", b"x")
    assert transcript(b"starmux/ab") != transcript(b"starmux/a", b"b")
    assert transcript(b"starmux/identity-card/v1", b"x") != transcript(
        b"starmux/relay-auth/v1", b"x"
    )


@given(domain=domains, fields=field_lists)
def test_reference_decoder_inverts_it(domain: bytes, fields: list[bytes]) -> None:
    assert parse(transcript(domain, *fields)) == (domain, fields)


@given(a=st.tuples(domains, field_lists), b=st.tuples(domains, field_lists))
def test_distinct_inputs_encode_distinctly(
    a: tuple[bytes, list[bytes]], b: tuple[bytes, list[bytes]]
) -> None:
    assume(a != b)
    assert transcript(a[0], *a[1]) != transcript(b[0], *b[1])


@st.composite
def same_concatenation(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Two different splits of one byte string: the classic separator-free ambiguity."""
    data = draw(st.binary(max_size=12))
    cuts = st.lists(st.integers(0, len(data)), max_size=5).map(sorted)
    first, second = draw(cuts), draw(cuts)
    assume(first != second)

    def split(points: list[int]) -> list[bytes]:
        edges = [0, *points, len(data)]
        return [data[i:j] for i, j in itertools.pairwise(edges)]

    return split(first), split(second)


@given(pair=same_concatenation())
def test_resplitting_the_same_bytes_changes_the_encoding(
    pair: tuple[list[bytes], list[bytes]],
) -> None:
    first, second = pair
    assert b"".join(first) == b"".join(second)
    assert transcript(b"starmux/t", *first) != transcript(b"starmux/t", *second)


@pytest.mark.parametrize(
    "domain", [b"", b"starmux", b"Starmux/x", b"other/x", b"xstarmux/", b" starmux/x"]
)
def test_non_starmux_domain_is_refused(domain: bytes) -> None:
    with pytest.raises(UsageError, match="starmux/"):
        transcript(domain, b"field")
