"""Fingerprints and comparison codes, checked against an independent hashlib computation."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from starmux.errors import UsageError
from starmux.fingerprint import (
    FINGERPRINT_BYTES,
    comparison_code,
    fingerprint,
    fingerprint_bytes,
    fingerprint_from_text,
    fingerprints_match,
    format_fingerprint,
    normalize_fingerprint,
)

FINGERPRINT_RE = re.compile(r"[A-Z2-7]{4}(-[A-Z2-7]{4}){7}")
CODE_RE = re.compile(r"[0-9]{3}-[0-9]{3}")
keys = st.binary(min_size=32, max_size=32)


def expected_fingerprint(key: bytes) -> str:
    digest = hashlib.blake2b(key, key=b"starmux/fingerprint/v1", digest_size=20).digest()
    text = base64.b32encode(digest).decode()
    return "-".join(text[i : i + 4] for i in range(0, 32, 4))


def expected_code(handshake_hash: bytes) -> str:
    digest = hashlib.blake2b(
        handshake_hash, key=b"starmux/comparison-code/v1", digest_size=8
    ).digest()
    number = int.from_bytes(digest, "big") % 1_000_000
    return f"{number // 1000:03d}-{number % 1000:03d}"


# --- fingerprints -------------------------------------------------------------


def test_golden_fingerprint() -> None:
    key = bytes(range(32))
    assert fingerprint(key) == "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN6"
    assert fingerprint(key) == expected_fingerprint(key)


@given(key=keys)
def test_fingerprint_matches_independent_computation(key: bytes) -> None:
    text = fingerprint(key)
    assert FINGERPRINT_RE.fullmatch(text)
    assert text == expected_fingerprint(key)
    assert fingerprint(key) == text  # stable
    assert len(fingerprint_bytes(key)) == FINGERPRINT_BYTES
    assert format_fingerprint(fingerprint_bytes(key)) == text


@given(a=keys, b=keys)
def test_different_keys_have_different_fingerprints(a: bytes, b: bytes) -> None:
    assume(a != b)
    assert fingerprint(a) != fingerprint(b)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_fingerprint_needs_a_32_byte_key(size: int) -> None:
    with pytest.raises(UsageError):
        fingerprint(b"\x01" * size)


@given(
    key=keys,
    lower=st.lists(st.booleans(), min_size=32, max_size=32),
    separators=st.lists(st.sampled_from(["", "", "-", " ", "  "]), min_size=32, max_size=32),
)
def test_normalize_accepts_retyped_spellings(
    key: bytes, lower: list[bool], separators: list[str]
) -> None:
    canonical = fingerprint(key)
    compact = canonical.replace("-", "")
    spelled = "".join(
        (ch.lower() if low else ch) + sep
        for ch, low, sep in zip(compact, lower, separators, strict=True)
    )
    assert normalize_fingerprint(spelled) == canonical
    assert fingerprints_match(spelled, canonical)


@pytest.mark.parametrize(
    "spelling",
    [
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN6",
        "bjgx-qgto-izyd-jsal-y2z3-uo7y-635a-7yn6",
        "BJGXQGTOIZYDJSALY2Z3UO7Y635A7YN6",
        "bjgx qgto izyd jsal y2z3 uo7y 635a 7yn6",
        " BJGX-qgto IZYD-JSAL Y2Z3-UO7Y 635A-7yn6 ",
    ],
)
def test_normalize_examples(spelling: str) -> None:
    assert normalize_fingerprint(spelling) == "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN6"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN",  # 31 characters
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN6A",  # 33
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN0",  # 0 is not base32
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN1",  # nor 1
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN8",  # nor 8
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN=",  # padding
        "BJGX_QGTO_IZYD_JSAL_Y2Z3_UO7Y_635A_7YN6",  # wrong separator
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YN6\n",  # only spaces and dashes are skipped
        "BJGX-QGTO-IZYD-JSAL-Y2Z3-UO7Y-635A-7YNб",  # Cyrillic look-alike
    ],
)
def test_normalize_rejects_malformed(text: str) -> None:
    with pytest.raises(UsageError, match="not a fingerprint") as info:
        normalize_fingerprint(text)
    assert info.value.hint is not None
    assert "32 base32 characters" in info.value.hint


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("ß" * 16, id="sharp-s"),  # upper-cases to "SS"
        pytest.param("ſ" * 32, id="long-s"),  # upper-cases to "S"
        pytest.param("ı" * 32, id="dotless-i"),  # upper-cases to "I"
        pytest.param("ﬀ" * 16, id="ff-ligature"),  # upper-cases to "FF"
    ],
)
def test_normalize_rejects_non_ascii_that_upper_cases_into_the_alphabet(text: str) -> None:
    # A fingerprint is ASCII base32; these are not fingerprints, whatever str.upper() does.
    with pytest.raises(UsageError):
        normalize_fingerprint(text)


@given(key=keys)
def test_fingerprint_from_text_returns_the_raw_bytes(key: bytes) -> None:
    text = fingerprint(key)
    assert fingerprint_from_text(text) == fingerprint_bytes(key)
    assert fingerprint_from_text(text.lower().replace("-", " ")) == fingerprint_bytes(key)


def test_fingerprint_from_text_refuses_malformed_text() -> None:
    with pytest.raises(UsageError):
        fingerprint_from_text("K7Q2-M4XD")


def test_fingerprints_match() -> None:
    a, b = fingerprint(bytes(32)), fingerprint(bytes(range(32)))
    assert fingerprints_match(a, a.lower().replace("-", ""))
    assert not fingerprints_match(a, b)
    with pytest.raises(UsageError):
        fingerprints_match(a, "nonsense")


# --- comparison codes -----------------------------------------------------------


def test_golden_comparison_codes() -> None:
    assert comparison_code(bytes(32)) == "117-746"
    # An input whose number is below 100000 shows the leading zero.
    assert comparison_code(hashlib.sha256(b"9").digest()) == "043-830"


@given(handshake_hash=st.binary(min_size=1, max_size=64))
def test_comparison_code_matches_independent_computation(handshake_hash: bytes) -> None:
    code = comparison_code(handshake_hash)
    assert CODE_RE.fullmatch(code)
    assert code == expected_code(handshake_hash)
    assert comparison_code(handshake_hash) == code


def test_comparison_codes_differ_for_different_hashes() -> None:
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(2000)]
    codes = {comparison_code(h) for h in hashes}
    # 2000 draws from a million values: about two collisions expected, not dozens.
    assert len(codes) >= 1990
    # One changed bit changes the code.
    assert comparison_code(b"\x00" * 32) != comparison_code(b"\x00" * 31 + b"\x01")


def test_comparison_code_is_domain_separated_from_fingerprints() -> None:
    key = bytes(range(32))
    fp_prefix = hashlib.blake2b(key, key=b"starmux/fingerprint/v1", digest_size=8).digest()
    unkeyed = hashlib.blake2b(key, digest_size=8).digest()
    code = comparison_code(key)
    for digest in (fp_prefix, unkeyed):
        number = int.from_bytes(digest, "big") % 1_000_000
        assert code != f"{number // 1000:03d}-{number % 1000:03d}"
