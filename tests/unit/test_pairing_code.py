"""Pairing codes: round trips, and a precise message for every way a pasted code is wrong."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from starmux.errors import PairingCodeError, UsageError
from starmux.fingerprint import fingerprint
from starmux.pairing_code import (
    MAX_CODE_LENGTH,
    PREFIX,
    SECRET_SIZE,
    TICKET_SIZE,
    PairingCode,
    parse_pairing_code,
)

RELAY_FP = fingerprint(b"\x01" * 32)
MACHINE_FP = fingerprint(b"\x02" * 32)
TICKET = bytes(range(16))
SECRET = bytes(range(100, 132))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


GOOD: dict[str, str] = {
    "relay": "wss://relay.example.com:8443/v1",
    "rfp": RELAY_FP.replace("-", ""),
    "ticket": b64(TICKET),
    "mfp": MACHINE_FP.replace("-", ""),
    "secret": b64(SECRET),
}
EXPECTED = PairingCode(GOOD["relay"], RELAY_FP, TICKET, MACHINE_FP, SECRET)


def code(
    overrides: dict[str, str] | None = None,
    *,
    prefix: str = PREFIX,
    extra: tuple[tuple[str, str], ...] = (),
    drop: tuple[str, ...] = (),
    **values: str,
) -> str:
    """A code assembled by hand (not by to_text) so each test controls every byte."""
    params = {**GOOD, **(overrides or {}), **values}
    pairs = [(k, v) for k, v in params.items() if k not in drop] + list(extra)
    return prefix + "&".join(f"{k}={v}" for k, v in pairs)


def refusal(text: str) -> PairingCodeError:
    with pytest.raises(PairingCodeError) as info:
        parse_pairing_code(text)
    assert info.value.hint is not None
    return info.value


# --- round trips ----------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
)
ports = st.one_of(st.just(""), st.integers(1, 65535).map(lambda port: f":{port}"))
paths = st.one_of(
    st.just(""),
    st.lists(st.from_regex(r"[A-Za-z0-9._~-]{0,8}", fullmatch=True), max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
relay_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["ws", "wss"]),
    hosts,
    ports,
    paths,
)
fingerprints = st.binary(min_size=32, max_size=32).map(fingerprint)


@given(
    relay_url=relay_urls,
    relay_fp=fingerprints,
    ticket=st.binary(min_size=TICKET_SIZE, max_size=TICKET_SIZE),
    machine_fp=fingerprints,
    secret=st.binary(min_size=SECRET_SIZE, max_size=SECRET_SIZE),
)
def test_round_trip(
    relay_url: str, relay_fp: str, ticket: bytes, machine_fp: str, secret: bytes
) -> None:
    original = PairingCode(relay_url, relay_fp, ticket, machine_fp, secret)
    text = original.to_text()
    assert text.startswith(PREFIX)
    assert len(text) <= MAX_CODE_LENGTH
    assert parse_pairing_code(text) == original
    assert parse_pairing_code(f"  \n{text}\r\n\t ") == original


def test_hand_built_code_parses() -> None:
    assert parse_pairing_code(code()) == EXPECTED
    assert EXPECTED.to_text() == code()


def test_parameter_order_does_not_matter() -> None:
    text = PREFIX + "&".join(f"{k}={v}" for k, v in reversed(GOOD.items()))
    assert parse_pairing_code(text) == EXPECTED


def test_lowercase_and_dashed_fingerprints_are_accepted() -> None:
    text = code(rfp=RELAY_FP.lower(), mfp=MACHINE_FP.lower().replace("-", ""))
    parsed = parse_pairing_code(text)
    assert parsed == EXPECTED
    assert parsed.relay_fingerprint == RELAY_FP  # canonical form


def test_base64_is_written_without_padding() -> None:
    query = EXPECTED.to_text().removeprefix(PREFIX)
    values = dict(pair.split("=", 1) for pair in query.split("&"))
    assert values["ticket"] == b64(TICKET)
    assert values["secret"] == b64(SECRET)
    assert not any(value.endswith("=") for value in values.values())


def test_repr_never_shows_the_secret() -> None:
    for text in (repr(EXPECTED), str(EXPECTED)):
        assert SECRET.hex() not in text
        assert repr(SECRET) not in text
        assert b64(SECRET) not in text
        assert "secret=" not in text


@given(secret=st.binary(min_size=SECRET_SIZE, max_size=SECRET_SIZE))
def test_repr_never_shows_any_secret(secret: bytes) -> None:
    pairing = PairingCode(GOOD["relay"], RELAY_FP, TICKET, MACHINE_FP, secret)
    text = repr(pairing)
    assert secret.hex() not in text
    assert repr(secret) not in text
    assert b64(secret) not in text


# --- refusals, each with its own message --------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "hello", "https://example.com/?relay=x", "starmux://other", "pair/v1?relay=x"],
)
def test_not_a_pairing_code(text: str) -> None:
    assert "not a starmux pairing code" in str(refusal(text))


@pytest.mark.parametrize("prefix", ["starmux://pair/v2?", "starmux://pair/v10?", "starmux://pair/"])
def test_code_from_another_version(prefix: str) -> None:
    error = refusal(code(prefix=prefix))
    assert "another starmux version" in str(error)
    assert error.hint is not None
    assert "update starmux" in error.hint


@pytest.mark.parametrize("part", ["relay", "rfp", "ticket", "mfp", "secret"])
def test_missing_part_is_named(part: str) -> None:
    error = refusal(code(drop=(part,)))
    assert str(error) == f"the pairing code lacks {part} (was it cut off?)"


def test_all_missing_parts_are_named() -> None:
    assert "lacks rfp, secret" in str(refusal(code(drop=("rfp", "secret"))))


def test_repeated_part_is_named() -> None:
    # Four distinct parts plus one repeat.
    text = code(drop=("relay",), extra=(("ticket", b64(TICKET)),))
    assert "repeats 'ticket'" in str(refusal(text))


def test_repeated_part_is_named_in_an_otherwise_complete_code() -> None:
    text = code(extra=(("secret", b64(bytes(32))),))
    assert "repeats 'secret'" in str(refusal(text))


def test_unknown_part_is_named() -> None:
    text = code(drop=("mfp",), extra=(("colour", "blue"),))
    assert "unknown part 'colour'" in str(refusal(text))


def test_unknown_part_is_named_in_an_otherwise_complete_code() -> None:
    # e.g. a chat app appended a tracking parameter
    text = code(extra=(("utm_source", "chat"),))
    assert "unknown part 'utm_source'" in str(refusal(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PREFIX + "relay", "the pairing code's parameters are garbled"),
        (PREFIX + "&&", "the pairing code's parameters are garbled"),
        (PREFIX + "=x", "the pairing code has an unknown part ''"),
        (PREFIX, "the pairing code lacks relay, rfp, ticket, mfp, secret (was it cut off?)"),
    ],
)
def test_garbled_parameters(text: str, message: str) -> None:
    assert str(refusal(text)) == message


@pytest.mark.parametrize(
    ("part", "value"),
    [
        ("ticket", "!!!!"),
        ("ticket", ""),
        ("ticket", b64(TICKET) + "="),
        ("ticket", base64.b64encode(b"\xfb\xff" * 8).decode()),  # standard alphabet: + and /
        ("secret", "A" * 41),  # 4k+1 characters cannot be base64
        ("secret", "é" * 43),
    ],
)
def test_bad_base64_is_named(part: str, value: str) -> None:
    assert f"the {part} in the pairing code is not base64url" in str(refusal(code({part: value})))


@pytest.mark.parametrize(
    ("part", "raw", "expected"),
    [
        ("ticket", b"\x01" * 15, 16),
        ("ticket", b"\x01" * 17, 16),
        ("ticket", b"\x01" * 32, 16),
        ("secret", b"\x01" * 31, 32),
        ("secret", b"\x01" * 33, 32),
        ("secret", b"\x01" * 16, 32),
    ],
)
def test_wrong_sizes_are_named(part: str, raw: bytes, expected: int) -> None:
    error = refusal(code({part: b64(raw)}))
    assert str(error) == f"the {part} in the pairing code is {len(raw)} bytes, expected {expected}"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "XYZ",
        GOOD["rfp"][:-1],
        GOOD["rfp"] + "A",
        GOOD["rfp"][:-1] + "0",
        GOOD["rfp"][:-1] + "=",
    ],
)
@pytest.mark.parametrize(
    ("part", "what"), [("rfp", "relay fingerprint"), ("mfp", "machine fingerprint")]
)
def test_malformed_fingerprints_are_named(part: str, what: str, value: str) -> None:
    assert str(refusal(code({part: value}))) == f"the {what} in the pairing code is malformed"


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://relay.example.com", "invalid relay URL"),
        ("https://relay.example.com", "invalid relay URL"),
        ("ftp://relay.example.com", "invalid relay URL"),
        ("relay.example.com:8765", "invalid relay URL"),
        ("ws://", "invalid relay URL"),
        ("ws://:8765", "invalid relay URL"),
        ("ws://relay.example.com:99999", "invalid relay URL"),
        ("ws://relay.example.com:port", "invalid relay URL"),
        ("ws://[::1", "invalid relay URL"),
        ("ws://user:pw@relay.example.com", "must not carry credentials"),
        ("wss://user@relay.example.com", "must not carry credentials"),
        ("wss://:pw@relay.example.com", "must not carry credentials"),
    ],
)
def test_bad_relay_url_is_named(url: str, detail: str) -> None:
    message = str(refusal(code(relay=url)))
    assert message.startswith("the pairing code's relay URL is invalid: ")
    assert detail in message


def test_relay_url_with_a_fragment_or_query_is_refused() -> None:
    for url in ("ws://relay.example.com/v1%23top", "ws://relay.example.com/v1%3Fa%3Db"):
        message = str(refusal(code(relay=url)))
        assert "must not carry a query or fragment" in message


def test_over_long_input_is_refused() -> None:
    text = code(relay="wss://" + "a" * MAX_CODE_LENGTH + ".example.com")
    assert len(text) > MAX_CODE_LENGTH
    assert f"under {MAX_CODE_LENGTH} characters" in str(refusal(text))
    assert f"under {MAX_CODE_LENGTH} characters" in str(refusal("x" * 10_000_000))


def test_whitespace_does_not_count_toward_the_length() -> None:
    assert parse_pairing_code(" " * 5000 + code() + "\n" * 5000) == EXPECTED


def test_every_truncation_is_refused() -> None:
    text = code()
    for end in range(len(text)):
        with pytest.raises(PairingCodeError):
            parse_pairing_code(text[:end])


def test_non_text_is_refused() -> None:
    refusal(code().encode())  # type: ignore[arg-type]


def test_pairing_code_error_is_a_usage_error() -> None:
    error = refusal("nonsense")
    assert isinstance(error, UsageError)
    assert error.exit_code == 2


# --- the constructor --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"relay_url": "http://x"},
        {"relay_url": "ws://u:p@x"},
        {"relay_fingerprint": "nope"},
        {"machine_fingerprint": "nope"},
        {"ticket": b"\x00" * 15},
        {"secret": b"\x00" * 31},
    ],
)
def test_constructor_checks_every_part(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "relay_url": GOOD["relay"],
        "relay_fingerprint": RELAY_FP,
        "ticket": TICKET,
        "machine_fingerprint": MACHINE_FP,
        "secret": SECRET,
        **kwargs,
    }
    with pytest.raises(UsageError):
        PairingCode(**fields)  # type: ignore[arg-type]
