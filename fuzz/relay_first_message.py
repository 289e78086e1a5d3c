"""Fuzz the relay's handling of a node's first message, through the sans-I/O core.

As ``relay/endpoint.py`` does: a :class:`~starmux.relay_auth.RelayAuth` sends its
challenge, then ``verify_response(parse_frame(data, max_size=4096))``. Only
:class:`~starmux.errors.FrameError`, :class:`~starmux.errors.RemoteProtocolError` and
:class:`~starmux.errors.CryptoError` may escape (the endpoint turns exactly those
into close 4001). A response it accepts must carry a correctly signed card for this
very nonce, get a welcome, and burn the nonce.

The relay's keys, nonce and clock are fixed, so the seeds hold valid signed
responses the fuzzer can mutate.

    python fuzz/relay_first_message.py [-atheris_runs=N] [libFuzzer flags] [CORPUS_DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the ``fuzz`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.harness import Target, fuzz_main
from starmux.control import CONTROL, AuthResponse, SessionStatus
from starmux.errors import CryptoError, RemoteProtocolError
from starmux.frames import FrameType, encode_frame, parse_frame
from starmux.identity import IdentityCard, NodeKeys, Role, verify_signature
from starmux.relay_auth import NONCE_SIZE, RelayAuth, auth_transcript

#: The limit ``relay/endpoint.py`` puts on the first message.
FIRST_MESSAGE_LIMIT = 4096
NOW = 1_700_000_000.0
NONCE = bytes(range(0x40, 0x40 + NONCE_SIZE))
RELAY_KEYS = NodeKeys(signing_seed=b"\x01" * 32, dh_private=b"\x02" * 32)
RELAY_CARD = IdentityCard.create(RELAY_KEYS, Role.RELAY, "relay")


def relay_auth() -> RelayAuth:
    return RelayAuth(RELAY_KEYS, RELAY_CARD, now=NOW, rng=lambda size: NONCE[:size])


def check(data: bytes) -> None:
    auth = relay_auth()
    auth.challenge_frame()
    try:
        card = auth.verify_response(parse_frame(data, max_size=FIRST_MESSAGE_LIMIT))
    except (RemoteProtocolError, CryptoError):  # FrameError is a RemoteProtocolError
        return
    assert card.role is not Role.RELAY, "a relay card logged in as a node"
    response = CONTROL.decode_as(parse_frame(data).body, AuthResponse)
    assert IdentityCard.decode(response.card) == card
    transcript = auth_transcript(
        RELAY_KEYS.sign_public, NONCE, response.client_nonce, response.card
    )
    verify_signature(card.sign_public, transcript, response.signature)  # raises if forged
    welcome = parse_frame(auth.welcome_frame(card, SessionStatus.UNPAIRED, b"", now=NOW))
    assert welcome.type is FrameType.WELCOME
    try:
        auth.verify_response(parse_frame(data))
    except CryptoError:
        pass
    else:
        raise AssertionError("the nonce was accepted twice")


def signed_response(keys: NodeKeys, card: IdentityCard, client_nonce: bytes) -> bytes:
    encoded = card.encode()
    signature = keys.sign(auth_transcript(RELAY_KEYS.sign_public, NONCE, client_nonce, encoded))
    body = CONTROL.encode(AuthResponse(encoded, client_nonce, signature))
    return encode_frame(FrameType.AUTH, b"", body)


def seeds() -> dict[str, bytes]:
    machine = NodeKeys(signing_seed=b"\x03" * 32, dh_private=b"\x04" * 32)
    controller = NodeKeys(signing_seed=b"\x05" * 32, dh_private=b"\x06" * 32)
    client_nonce = bytes(range(0x80, 0x80 + NONCE_SIZE))
    machine_card = machine.card(Role.MACHINE, "gpu-box")
    return {
        "machine": signed_response(machine, machine_card, client_nonce),
        "controller": signed_response(
            controller, controller.card(Role.CONTROLLER, "laptöp ✓"), client_nonce
        ),
        # Refused, but close to accepted: the relay's own card, a signature by another key.
        "relay-card": signed_response(RELAY_KEYS, RELAY_CARD, client_nonce),
        "wrong-signer": signed_response(controller, machine_card, client_nonce),
    }


TARGET = Target("relay_first_message", check, seeds)

if __name__ == "__main__":
    fuzz_main(TARGET)
