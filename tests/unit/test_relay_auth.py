"""Relay authentication, both ends in memory (sans-I/O), and the signed transcripts."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from starmux.control import CONTROL, AuthChallenge, AuthResponse, SessionStatus, Welcome
from starmux.errors import CryptoError, RemoteProtocolError, StarmuxError, UsageError
from starmux.frames import Frame, FrameType, encode_frame, parse_frame
from starmux.identity import IdentityCard, NodeKeys, Role, verify_signature
from starmux.relay_auth import (
    AUTH_DOMAIN,
    GRANT_DOMAIN,
    NONCE_SIZE,
    REVOKE_DOMAIN,
    WELCOME_DOMAIN,
    Authenticated,
    NodeAuth,
    RelayAuth,
    RelayKeyMismatch,
    grant_transcript,
    revoke_transcript,
    welcome_transcript,
)

from .deterministic import counter_rng


def lp(*items: bytes) -> bytes:
    """Length-prefixed concatenation, written out independently of starmux.transcript."""
    return b"".join(struct.pack(">I", len(item)) + item for item in items)


RELAY = NodeKeys.generate(counter_rng(b"relay"))
RELAY_CARD = RELAY.card(Role.RELAY, "relay.example.com")
IMPOSTOR = NodeKeys.generate(counter_rng(b"impostor"))
IMPOSTOR_CARD = IMPOSTOR.card(Role.RELAY, "relay.example.com")
MACHINE = NodeKeys.generate(counter_rng(b"machine"))
MACHINE_CARD = MACHINE.card(Role.MACHINE, "build-box")
CONTROLLER = NodeKeys.generate(counter_rng(b"controller"))
CONTROLLER_CARD = CONTROLLER.card(Role.CONTROLLER, "laptop")
ACCOUNT = b"\xac" * 32
NOW = 1_700_000_000.25


def new_relay(
    keys: NodeKeys = RELAY, card: IdentityCard = RELAY_CARD, seed: bytes = b"r1"
) -> RelayAuth:
    return RelayAuth(keys, card, now=NOW, rng=counter_rng(seed))


def new_node(
    keys: NodeKeys = MACHINE,
    card: IdentityCard = MACHINE_CARD,
    pin: bytes | None = RELAY.sign_public,
) -> NodeAuth:
    return NodeAuth(keys, card, pinned_relay_key=pin, rng=counter_rng(b"node"))


def frame(data: bytes) -> Frame:
    return parse_frame(data)  # every frame crosses the wire format, as in real life


def body_frame(frame_type: FrameType, body: bytes) -> Frame:
    return frame(encode_frame(frame_type, b"", body))


def run(
    node: NodeAuth, relay: RelayAuth, status: SessionStatus, account: bytes
) -> tuple[IdentityCard, Authenticated]:
    auth = frame(node.receive_challenge(frame(relay.challenge_frame())))
    card = relay.verify_response(auth)
    result = node.receive_welcome(frame(relay.welcome_frame(card, status, account, now=NOW + 1)))
    return card, result


# --- success ------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(SessionStatus))
def test_exchange_succeeds_for_each_status(status: SessionStatus) -> None:
    node, relay = new_node(), new_relay()
    account = b"" if status is SessionStatus.UNPAIRED else ACCOUNT
    card, result = run(node, relay, status, account)
    assert card == MACHINE_CARD
    assert result == Authenticated(status, account, RELAY_CARD, NOW + 1)
    assert node.result == result


def test_controller_with_first_contact_needs_no_pin() -> None:
    node = new_node(CONTROLLER, CONTROLLER_CARD, pin=None)
    card, result = run(node, new_relay(), SessionStatus.UNREGISTERED, b"")
    assert card == CONTROLLER_CARD
    assert result.relay_card.sign_public == RELAY.sign_public  # what the caller will pin


def test_frames_and_signatures_are_as_documented() -> None:
    node, relay = new_node(), new_relay()
    challenge_frame = frame(relay.challenge_frame())
    assert (challenge_frame.type, challenge_frame.peer) == (FrameType.CHALLENGE, b"")
    challenge = CONTROL.decode_as(challenge_frame.body, AuthChallenge)
    assert challenge == AuthChallenge(RELAY_CARD.encode(), relay.nonce, NOW)
    assert len(relay.nonce) == NONCE_SIZE

    auth_frame = frame(node.receive_challenge(challenge_frame))
    assert (auth_frame.type, auth_frame.peer) == (FrameType.AUTH, b"")
    response = CONTROL.decode_as(auth_frame.body, AuthResponse)
    assert response.card == MACHINE_CARD.encode()
    assert len(response.client_nonce) == NONCE_SIZE
    verify_signature(
        MACHINE.sign_public,
        lp(AUTH_DOMAIN, RELAY.sign_public, relay.nonce, response.client_nonce, response.card),
        response.signature,
    )

    relay.verify_response(auth_frame)
    welcome_frame = frame(
        relay.welcome_frame(MACHINE_CARD, SessionStatus.MACHINE, ACCOUNT, now=NOW)
    )
    assert welcome_frame.type is FrameType.WELCOME
    welcome = CONTROL.decode_as(welcome_frame.body, Welcome)
    verify_signature(
        RELAY.sign_public,
        lp(
            WELCOME_DOMAIN,
            RELAY.sign_public,
            relay.nonce,
            response.client_nonce,
            MACHINE.sign_public,
            b"machine",
            ACCOUNT,
        ),
        welcome.signature,
    )


def test_nonces_are_fresh_per_connection() -> None:
    assert (
        RelayAuth(RELAY, RELAY_CARD, now=NOW).nonce != RelayAuth(RELAY, RELAY_CARD, now=NOW).nonce
    )


# --- the node refuses a bad relay -------------------------------------------------------


def test_wrong_pinned_key_is_a_relay_key_mismatch() -> None:
    node = new_node(pin=RELAY.sign_public)
    with pytest.raises(RelayKeyMismatch) as info:
        node.receive_challenge(frame(new_relay(IMPOSTOR, IMPOSTOR_CARD).challenge_frame()))
    assert isinstance(info.value, CryptoError)
    assert RELAY.fingerprint in str(info.value)
    assert IMPOSTOR.fingerprint in str(info.value)
    assert info.value.hint is not None
    assert node.result is None


def test_a_relay_showing_the_genuine_card_without_its_key_fails_at_the_welcome() -> None:
    # The card is public, so an impostor can show it; the welcome, signed over the
    # node's fresh client nonce, is what it cannot produce without the relay's key.
    node = new_node()
    nonce = b"\x07" * NONCE_SIZE
    challenge = AuthChallenge(RELAY_CARD.encode(), nonce, NOW)
    auth = frame(node.receive_challenge(body_frame(FrameType.CHALLENGE, CONTROL.encode(challenge))))
    client_nonce = CONTROL.decode_as(auth.body, AuthResponse).client_nonce
    signed = welcome_transcript(
        RELAY.sign_public, nonce, client_nonce, MACHINE.sign_public, SessionStatus.MACHINE, ACCOUNT
    )
    welcome = Welcome(SessionStatus.MACHINE, ACCOUNT, IMPOSTOR.sign(signed), NOW)
    with pytest.raises(CryptoError):
        node.receive_welcome(body_frame(FrameType.WELCOME, CONTROL.encode(welcome)))
    assert node.result is None
    # The same welcome signed with the genuine key is accepted: the key was the only fault.
    genuine = new_node()
    genuine.receive_challenge(body_frame(FrameType.CHALLENGE, CONTROL.encode(challenge)))
    # (a fresh NodeAuth with the same deterministic rng draws the same client nonce)
    good = Welcome(SessionStatus.MACHINE, ACCOUNT, RELAY.sign(signed), NOW)
    result = genuine.receive_welcome(body_frame(FrameType.WELCOME, CONTROL.encode(good)))
    assert result.status is SessionStatus.MACHINE


def _welcome_body(relay: RelayAuth, node: NodeAuth, status: SessionStatus) -> Welcome:
    auth = frame(node.receive_challenge(frame(relay.challenge_frame())))
    card = relay.verify_response(auth)
    return CONTROL.decode_as(
        frame(relay.welcome_frame(card, status, ACCOUNT, now=NOW)).body, Welcome
    )


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(
            lambda w: replace(w, signature=bytes([w.signature[0] ^ 1]) + w.signature[1:]),
            id="signature-first-byte",
        ),
        pytest.param(
            lambda w: replace(w, signature=w.signature[:-1] + bytes([w.signature[-1] ^ 0x80])),
            id="signature-last-bit",
        ),
        pytest.param(lambda w: replace(w, signature=b"\x00" * 64), id="signature-zero"),
        pytest.param(lambda w: replace(w, signature=w.signature[:63]), id="signature-short"),
        pytest.param(lambda w: replace(w, status=SessionStatus.CONTROLLER), id="status"),
        pytest.param(lambda w: replace(w, account=b"\xff" * 32), id="account"),
    ],
)
def test_tampered_welcome_is_a_crypto_error(tamper: Callable[[Welcome], Welcome]) -> None:
    node = new_node()
    welcome = _welcome_body(new_relay(), node, SessionStatus.MACHINE)
    with pytest.raises(CryptoError):
        node.receive_welcome(body_frame(FrameType.WELCOME, CONTROL.encode(tamper(welcome))))
    assert node.result is None


def test_welcome_from_another_connection_is_refused() -> None:
    node = new_node()
    node.receive_challenge(frame(new_relay(seed=b"a").challenge_frame()))
    # A genuine welcome, but for a different node connection (other nonces).
    other_node = NodeAuth(MACHINE, MACHINE_CARD, pinned_relay_key=RELAY.sign_public)
    other_welcome = _welcome_body(new_relay(seed=b"b"), other_node, SessionStatus.MACHINE)
    with pytest.raises(CryptoError):
        node.receive_welcome(body_frame(FrameType.WELCOME, CONTROL.encode(other_welcome)))


def test_relay_time_is_reported_not_trusted() -> None:
    # relay_time is informational (unsigned); changing it does not break the exchange.
    node = new_node()
    welcome = _welcome_body(new_relay(), node, SessionStatus.MACHINE)
    result = node.receive_welcome(
        body_frame(FrameType.WELCOME, CONTROL.encode(replace(welcome, relay_time=5.0)))
    )
    assert result.relay_time == 5.0


@pytest.mark.parametrize(
    "challenge",
    [
        pytest.param(
            body_frame(
                FrameType.CHALLENGE,
                CONTROL.encode(AuthChallenge(MACHINE_CARD.encode(), b"\x01" * 32, NOW)),
            ),
            id="non-relay-card",
        ),
        pytest.param(
            body_frame(
                FrameType.CHALLENGE,
                CONTROL.encode(AuthChallenge(RELAY_CARD.encode(), b"\x01" * 31, NOW)),
            ),
            id="short-nonce",
        ),
        pytest.param(
            body_frame(
                FrameType.CHALLENGE, CONTROL.encode(AuthChallenge(b"junk", b"\x01" * 32, NOW))
            ),
            id="junk-card",
        ),
        pytest.param(body_frame(FrameType.CHALLENGE, b"\x00"), id="junk-body"),
        pytest.param(
            body_frame(
                FrameType.CHALLENGE, CONTROL.encode(Welcome(SessionStatus.MACHINE, b"", b"", 0.0))
            ),
            id="wrong-message",
        ),
        pytest.param(
            frame(encode_frame(FrameType.WELCOME, b"", new_relay().challenge_frame())),
            id="wrong-frame-type",
        ),
    ],
)
def test_malformed_challenge_is_refused_and_final(challenge: Frame) -> None:
    node = new_node()
    with pytest.raises(RemoteProtocolError):
        node.receive_challenge(challenge)
    with pytest.raises(CryptoError):
        node.receive_challenge(frame(new_relay().challenge_frame()))


def test_challenge_card_with_a_bad_signature_is_a_crypto_error() -> None:
    forged = IdentityCard(
        Role.RELAY, RELAY.sign_public, IMPOSTOR.dh_public, RELAY_CARD.name, RELAY_CARD.signature
    )
    body = CONTROL.encode(AuthChallenge(forged.encode(), b"\x01" * 32, NOW))
    with pytest.raises(CryptoError):
        new_node().receive_challenge(body_frame(FrameType.CHALLENGE, body))


def test_after_a_failure_node_auth_refuses_further_use() -> None:
    node = new_node(pin=RELAY.sign_public)
    with pytest.raises(RelayKeyMismatch):
        node.receive_challenge(frame(new_relay(IMPOSTOR, IMPOSTOR_CARD).challenge_frame()))
    relay = new_relay()
    with pytest.raises(CryptoError, match="already failed"):
        node.receive_challenge(frame(relay.challenge_frame()))
    with pytest.raises(CryptoError, match="already failed"):
        node.receive_welcome(body_frame(FrameType.WELCOME, b""))
    assert node.result is None


def test_after_a_failed_welcome_the_genuine_welcome_is_refused() -> None:
    node, relay = new_node(), new_relay()
    card = relay.verify_response(frame(node.receive_challenge(frame(relay.challenge_frame()))))
    genuine = frame(relay.welcome_frame(card, SessionStatus.MACHINE, ACCOUNT, now=NOW))
    welcome = CONTROL.decode_as(genuine.body, Welcome)
    bad = replace(welcome, account=b"")
    with pytest.raises(CryptoError):
        node.receive_welcome(body_frame(FrameType.WELCOME, CONTROL.encode(bad)))
    with pytest.raises(CryptoError):
        node.receive_welcome(genuine)
    assert node.result is None


def test_out_of_order_calls_are_usage_errors() -> None:
    node, relay = new_node(), new_relay()
    with pytest.raises(UsageError):
        node.receive_welcome(body_frame(FrameType.WELCOME, b""))
    node.receive_challenge(frame(relay.challenge_frame()))  # still usable: not a failure
    with pytest.raises(UsageError):
        node.receive_challenge(frame(relay.challenge_frame()))


def test_node_auth_refuses_a_card_of_other_keys() -> None:
    with pytest.raises(UsageError):
        NodeAuth(MACHINE, CONTROLLER_CARD, pinned_relay_key=None)


# --- the relay refuses a bad node ----------------------------------------------------------


def test_auth_replayed_onto_another_connection_is_a_crypto_error() -> None:
    first = new_relay(seed=b"first")
    auth = frame(new_node().receive_challenge(frame(first.challenge_frame())))
    second = new_relay(seed=b"second")
    assert second.nonce != first.nonce
    with pytest.raises(CryptoError):
        second.verify_response(auth)
    assert first.verify_response(auth) == MACHINE_CARD  # it was genuine for the first


def test_verify_response_is_usable_once() -> None:
    relay = new_relay()
    auth = frame(new_node().receive_challenge(frame(relay.challenge_frame())))
    assert relay.verify_response(auth) == MACHINE_CARD
    with pytest.raises(CryptoError):
        relay.verify_response(auth)


def test_verify_response_is_burnt_by_a_failure_too() -> None:
    relay = new_relay()
    auth = frame(new_node().receive_challenge(frame(relay.challenge_frame())))
    with pytest.raises(RemoteProtocolError):
        relay.verify_response(body_frame(FrameType.AUTH, b"junk"))
    with pytest.raises(CryptoError):
        relay.verify_response(auth)


def test_a_relay_card_cannot_log_in_as_a_node() -> None:
    relay = new_relay()
    node = new_node(IMPOSTOR, IMPOSTOR_CARD, pin=None)
    auth = frame(node.receive_challenge(frame(relay.challenge_frame())))
    with pytest.raises(RemoteProtocolError, match="relay"):
        relay.verify_response(auth)


def _auth_response(relay: RelayAuth) -> AuthResponse:
    auth = frame(new_node().receive_challenge(frame(relay.challenge_frame())))
    return CONTROL.decode_as(auth.body, AuthResponse)


def test_swapping_in_another_card_is_a_crypto_error() -> None:
    relay = new_relay()
    response = _auth_response(relay)
    swapped = replace(response, card=CONTROLLER_CARD.encode())
    with pytest.raises(CryptoError):
        relay.verify_response(body_frame(FrameType.AUTH, CONTROL.encode(swapped)))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param({"client_nonce": b"\x00" * 32}, CryptoError, id="client-nonce"),
        pytest.param({"client_nonce": b"\x00" * 31}, RemoteProtocolError, id="short-nonce"),
        pytest.param({"signature": b"\x00" * 64}, CryptoError, id="signature"),
        pytest.param({"card": b"junk"}, RemoteProtocolError, id="junk-card"),
    ],
)
def test_tampered_auth_response(change: dict[str, bytes], error: type[StarmuxError]) -> None:
    relay = new_relay()
    tampered = replace(_auth_response(relay), **change)
    with pytest.raises(error):
        relay.verify_response(body_frame(FrameType.AUTH, CONTROL.encode(tampered)))


def test_relay_refuses_a_non_auth_frame() -> None:
    relay = new_relay()
    auth = frame(new_node().receive_challenge(frame(relay.challenge_frame())))
    with pytest.raises(RemoteProtocolError):
        relay.verify_response(Frame(FrameType.DATA, b"", auth.body))


# --- grant and revoke transcripts -------------------------------------------------------

millis = st.integers(-(2**45), 2**45)


def test_grant_and_revoke_transcripts_are_as_documented() -> None:
    card = MACHINE_CARD.encode()
    assert grant_transcript(ACCOUNT, card, 1.5) == lp(
        GRANT_DOMAIN, ACCOUNT, card, struct.pack(">q", 1500)
    )
    assert revoke_transcript(ACCOUNT, MACHINE.sign_public, -0.25) == lp(
        REVOKE_DOMAIN, ACCOUNT, MACHINE.sign_public, struct.pack(">q", -250)
    )


@given(
    a=st.tuples(st.binary(max_size=40), st.binary(max_size=40), millis),
    b=st.tuples(st.binary(max_size=40), st.binary(max_size=40), millis),
)
def test_transcripts_differ_for_different_inputs(
    a: tuple[bytes, bytes, int], b: tuple[bytes, bytes, int]
) -> None:
    assume(a != b)
    for build in (grant_transcript, revoke_transcript):
        assert build(a[0], a[1], a[2] / 1000) != build(b[0], b[1], b[2] / 1000)


@given(account=st.binary(max_size=40), subject=st.binary(max_size=40), ms=millis)
def test_grant_and_revoke_are_domain_separated(account: bytes, subject: bytes, ms: int) -> None:
    grant = grant_transcript(account, subject, ms / 1000)
    revoke = revoke_transcript(account, subject, ms / 1000)
    assert grant != revoke
    assert grant.startswith(lp(GRANT_DOMAIN))
    assert revoke.startswith(lp(REVOKE_DOMAIN))
    # Neither can pass for a relay-auth or welcome transcript either.
    for domain in (AUTH_DOMAIN, WELCOME_DOMAIN):
        assert not grant.startswith(lp(domain))
        assert not revoke.startswith(lp(domain))


def test_a_grant_signature_does_not_verify_as_a_revocation() -> None:
    signature = CONTROLLER.sign(grant_transcript(ACCOUNT, MACHINE.sign_public, NOW))
    with pytest.raises(CryptoError):
        verify_signature(
            CONTROLLER.sign_public, revoke_transcript(ACCOUNT, MACHINE.sign_public, NOW), signature
        )


def test_unrepresentable_times_raise_a_starmux_error() -> None:
    # issued_at arrives from the peer (GrantMachine/RevokeMachine accept any float) and
    # the relay builds these transcripts from it: only a StarmuxError may escape.
    escaped: list[str] = []
    for build in (grant_transcript, revoke_transcript):
        for issued_at in (float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 2.0**63):
            try:
                build(ACCOUNT, MACHINE.sign_public, issued_at)
            except StarmuxError:
                continue
            except Exception as exc:
                escaped.append(f"{build.__name__}({issued_at!r}) -> {type(exc).__name__}")
            else:
                escaped.append(f"{build.__name__}({issued_at!r}) -> no error")
    assert not escaped, "\n".join(escaped)
