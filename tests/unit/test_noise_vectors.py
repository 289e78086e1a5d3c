"""The published cacophony vectors for ``*_25519_ChaChaPoly_BLAKE2b``, every one of them.

Each vector lists handshake messages followed by transport messages. Messages
alternate initiator -> responder, responder -> initiator across the whole list
(the transport messages continue the handshake's alternation), except for the
one-way patterns, where every message goes initiator -> responder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from starmux.noise import HandshakeState, KeyPair, parse_protocol_name

VECTORS_FILE = Path(__file__).parent.parent / "data" / "noise-25519-chachapoly-blake2b.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text())["vectors"]


def _key_pair(vector: dict[str, Any], field: str) -> KeyPair | None:
    return KeyPair.from_private(bytes.fromhex(vector[field])) if field in vector else None


def _side(vector: dict[str, Any], prefix: str) -> HandshakeState:
    rs = vector.get(f"{prefix}_remote_static")
    return HandshakeState(
        vector["protocol_name"],
        initiator=prefix == "init",
        prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
        s=_key_pair(vector, f"{prefix}_static"),
        e=_key_pair(vector, f"{prefix}_ephemeral"),
        rs=bytes.fromhex(rs) if rs is not None else None,
        psks=[bytes.fromhex(psk) for psk in vector.get(f"{prefix}_psks", [])],
    )


def test_every_vector_is_collected() -> None:
    # Guards against a silently shrunken file: the suite promises all 59.
    assert len(VECTORS) == 59
    assert len({v["protocol_name"] for v in VECTORS}) == 59


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    initiator = _side(vector, "init")
    responder = _side(vector, "resp")
    pattern = parse_protocol_name(vector["protocol_name"])
    messages = vector["messages"]
    handshake_len = len(pattern.messages)
    assert len(messages) > handshake_len

    for index, message in enumerate(messages[:handshake_len]):
        sender, receiver = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        assert sender.is_my_turn
        assert not receiver.is_my_turn
        ciphertext = sender.write_message(bytes.fromhex(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert receiver.read_message(ciphertext).hex() == message["payload"]

    assert initiator.is_complete
    assert responder.is_complete
    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    assert responder.handshake_hash.hex() == vector["handshake_hash"]

    init_send, init_recv = initiator.split()
    resp_send, resp_recv = responder.split()
    for index, message in enumerate(messages[handshake_len:], start=handshake_len):
        from_initiator = pattern.is_one_way or index % 2 == 0
        send, recv = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
        ciphertext = send.encrypt_with_ad(b"", bytes.fromhex(message["payload"]))
        assert ciphertext.hex() == message["ciphertext"]
        assert recv.decrypt_with_ad(b"", ciphertext).hex() == message["payload"]
