"""The other wire tables: frames, crypto (transcripts, fingerprints, cards, relay
auth, a device log), comparison and pairing codes, the join flow, the live window."""

from __future__ import annotations

import dataclasses
from typing import Any

from starmux.control import SessionStatus
from starmux.decisions import decision_transcript
from starmux.device_log import DeviceLog, Op, encode_entries
from starmux.device_roles import DeviceRole
from starmux.errors import StarmuxError
from starmux.fingerprint import comparison_code, fingerprint, fingerprint_bytes
from starmux.frames import Frame, FrameType, encode_frame
from starmux.identity import NodeKeys, Role
from starmux.link_code import Direction, LinkCode
from starmux.live_window import NO_EPOCH, page_cost, window_for
from starmux.messages import EventPage, LoggedEvent
from starmux.padding import padded_size
from starmux.pairing_code import PairingCode
from starmux.relay_auth import (
    NodeAuth,
    RelayAuth,
    grant_transcript,
    revoke_transcript,
)
from starmux.transcript import signed_time, transcript

from .messages import KEY, pack

# --- everything else ------------------------------------------------------------------


def _keys(n: int) -> NodeKeys:
    return NodeKeys(signing_seed=bytes([n]) * 32, dh_private=bytes([n + 100]) * 32)


def frames_golden() -> dict[str, Any]:
    good = [
        Frame(FrameType.DATA, b"", b""),
        Frame(FrameType.CHALLENGE, b"", b"\x01\x02"),
        Frame(FrameType.NOTICE, b"", b"hi"),
        Frame(FrameType.DATA, KEY, b"hi"),
        Frame(FrameType.REQUEST, b"", b"\xab" * 255),
        Frame(FrameType.RESPONSE, b"", b"\xab" * 256),
        Frame(FrameType.PRESENCE, KEY, b"\x05" * 65535),
    ]
    bad = [
        b"",
        b"\x93",
        bytes.fromhex("9310c400c400") + b"\x00",
        pack([0, b"", b""]),
        pack([4, b"", b""]),
        pack([-16, b"", b""]),
        pack([True, b"", b""]),
        pack([16.0, b"", b""]),
        pack(["DATA", b"", b""]),
        pack([16, b"\x01" * 31, b""]),
        pack([16, "k" * 32, b""]),
        pack([16, None, b""]),
        pack([16, b"", "body"]),
        pack([16, b"", b"", b""]),
        pack([16, b""]),
        pack({"type": 16}),
        encode_frame(FrameType.DATA, b"", b"\x00" * 65536),
    ]
    return {
        "good": [
            {
                "type": int(f.type),
                "peer": f.peer.hex(),
                "body": f.body.hex(),
                "wire": f.encode().hex(),
            }
            for f in good
        ],
        "bad": [data.hex() for data in bad],
        "types": {t.name: int(t) for t in FrameType},
    }


def crypto_golden() -> dict[str, Any]:
    relay, node, owner, second = _keys(1), _keys(2), _keys(3), _keys(4)
    cards = {
        "relay": relay.card(Role.RELAY, "relay"),
        "machine": node.card(Role.MACHINE, "büro-01"),
        "owner": owner.card(Role.CONTROLLER, "laptop"),
        "second": second.card(Role.CONTROLLER, "phone"),
    }
    # A relay-auth exchange with fixed nonces.
    relay_side = RelayAuth(relay, cards["relay"], now=1700000000.25, rng=lambda n: b"\x11" * n)
    challenge = relay_side.challenge_frame()
    node_side = NodeAuth(
        owner, cards["owner"], pinned_relay_key=relay.sign_public, rng=lambda n: b"\x22" * n
    )
    from starmux.frames import parse_frame

    auth = node_side.receive_challenge(parse_frame(challenge))
    card = relay_side.verify_response(parse_frame(auth))
    welcome = relay_side.welcome_frame(
        card, SessionStatus.CONTROLLER, b"\x33" * 16, now=1700000001.5
    )
    node_side.receive_welcome(parse_frame(welcome))

    account = b"\x44" * 16
    log = DeviceLog.genesis(owner, cards["owner"], account, at=1700000000.0)
    log, _ = log.append(
        owner,
        Op.ADD,
        second.sign_public,
        card=cards["second"],
        role=DeviceRole.OPERATOR,
        at=1700000100.5,
    )
    log, _ = log.append(
        owner, Op.SET_ROLE, second.sign_public, role=DeviceRole.VIEWER, at=1700000200.0
    )
    log, _ = log.append(owner, Op.REMOVE, second.sign_public, at=1700000300.0)

    hashes = [bytes([i]) * 64 for i in range(4)]
    return {
        "keys": {
            name: {
                "signing_seed": keys.signing_seed.hex(),
                "dh_private": keys.dh_private.hex(),
                "sign_public": keys.sign_public.hex(),
                "dh_public": keys.dh_public.hex(),
                "fingerprint": keys.fingerprint,
                "fingerprint_bytes": fingerprint_bytes(keys.sign_public).hex(),
            }
            for name, keys in (
                ("relay", relay),
                ("machine", node),
                ("owner", owner),
                ("second", second),
            )
        },
        "cards": {name: card.encode().hex() for name, card in cards.items()},
        "transcripts": [
            {"domain": "starmux/x/v1", "fields": [], "out": transcript(b"starmux/x/v1").hex()},
            {
                "domain": "starmux/relay-auth/v1",
                "fields": ["", "00ff", "61" * 300],
                "out": transcript(b"starmux/relay-auth/v1", b"", b"\x00\xff", b"a" * 300).hex(),
            },
        ],
        "signed_times": [
            {"seconds": s, "out": signed_time(s).hex()}
            for s in (0.0, 1.5, 1700000000.1234, -2.0005, 0.0004, 0.0005, 2.5e-3, 9e15)
        ],
        "grant": grant_transcript(account, cards["machine"].encode(), 1700000000.5).hex(),
        "revoke": revoke_transcript(account, node.sign_public, 1700000000.5).hex(),
        "decision": {
            "transcript": decision_transcript(
                node.sign_public, "cp-1", False, "not on friday", 1700000000.25
            ).hex(),
            "signature": owner.sign(
                decision_transcript(node.sign_public, "cp-1", False, "not on friday", 1700000000.25)
            ).hex(),
        },
        "comparison_codes": [{"hash": h.hex(), "code": comparison_code(h)} for h in hashes],
        "fingerprints": [
            {"key": (bytes([i]) * 32).hex(), "text": fingerprint(bytes([i]) * 32)} for i in range(3)
        ],
        "relay_auth": {
            "relay_nonce": (b"\x11" * 32).hex(),
            "client_nonce": (b"\x22" * 32).hex(),
            "challenge": challenge.hex(),
            "auth": auth.hex(),
            "welcome": welcome.hex(),
            "account": (b"\x33" * 16).hex(),
        },
        "device_log": {
            "account": account.hex(),
            "entries": encode_entries(log.entries).hex(),
            "hashes": [e.hash.hex() for e in log.entries],
            "prefixes": [encode_entries(log.entries[:n]).hex() for n in range(1, 4)],
        },
        "padding": [
            {"length": n, "padded": padded_size(n)}
            for n in (0, 1, 100, 253, 254, 255, 300, 1000, 4096, 16384, 16385, 40000, 65516)
        ],
    }


def codes_golden() -> dict[str, Any]:
    relay_fp, machine_fp = _keys(1).fingerprint, _keys(2).fingerprint
    pair = PairingCode("ws://127.0.0.1:8765", relay_fp, b"\x01" * 16, machine_fp, b"\x02" * 32)
    pair_exp = dataclasses.replace(
        pair, relay_url="wss://relay.example/sub", expires_at=1700000000.0
    )
    link = LinkCode(
        Direction.INVITE,
        "wss://r.example:9/x",
        relay_fp,
        b"\x03" * 16,
        machine_fp,
        b"\xfe" * 32,
        DeviceRole.OPERATOR,
    )
    join = LinkCode(
        Direction.JOIN, "ws://127.0.0.1:8765", relay_fp, b"\x04" * 16, machine_fp, b"\xfd" * 32
    )
    return {
        "verdicts": _code_verdicts(pair.to_text(), link.to_text(), join.to_text()),
        "pair": [pair.to_text(), pair_exp.to_text()],
        "link": [link.to_text()],
        "join": [join.to_text()],
        "pair_fields": {
            "relay": pair.relay_url,
            "rfp": pair.relay_fingerprint,
            "ticket": pair.ticket.hex(),
            "mfp": pair.machine_fingerprint,
            "secret": pair.secret.hex(),
        },
        "link_fields": {
            "relay": link.relay_url,
            "rfp": link.relay_fingerprint,
            "ticket": link.ticket.hex(),
            "ifp": link.shower_fingerprint,
            "secret": link.secret.hex(),
            "role": DeviceRole.OPERATOR.value,
        },
        "join_fields": {
            "relay": join.relay_url,
            "rfp": join.relay_fingerprint,
            "ticket": join.ticket.hex(),
            "dfp": join.shower_fingerprint,
            "secret": join.secret.hex(),
        },
    }


def join_golden() -> dict[str, Any]:
    """A whole join (the new device shows the code, an owner reads it) made by the
    Python core with fixed randomness: the JS new device, given the same keys and
    randomness, must answer each owner message with exactly these bytes."""
    from starmux.device_link import LinkAttempt
    from starmux.device_log import DeviceLog, Op

    relay, owner, device, machine = _keys(1), _keys(5), _keys(6), _keys(2)
    owner_card = owner.card(Role.CONTROLLER, "laptop")
    device_card = device.card(Role.CONTROLLER, "browser")
    account = b"\x47" * 16
    code = LinkCode(
        Direction.JOIN,
        "ws://127.0.0.1:8765",
        relay.fingerprint,
        b"\x08" * 16,
        device.fingerprint,
        b"\x09" * 32,
    )
    shower = LinkAttempt(
        device,
        device_card,
        code,
        shows=True,
        relay_key=relay.sign_public,
        rng=lambda n: b"\x61" * n,
    )
    reader = LinkAttempt(
        owner,
        owner_card,
        code,
        shows=False,
        relay_key=relay.sign_public,
        account=account,
        role=DeviceRole.VIEWER,
        rng=lambda n: b"\x62" * n,
    )
    messages = [reader.start()]
    messages.append(shower.receive(messages[0]) or b"")
    assert reader.receive(messages[1]) is None
    messages.append(reader.accept() or b"")
    assert shower.receive(messages[2]) is None
    messages.append(shower.accept() or b"")
    assert reader.receive(messages[3]) is None
    log = DeviceLog.genesis(owner, owner_card, account, at=1700000000.0)
    log, _ = log.append(
        owner, Op.ADD, device.sign_public, card=device_card, role=DeviceRole.VIEWER, at=1700000001.0
    )
    machine_card = machine.card(Role.MACHINE, "box").encode()
    messages.append(reader.welcome(log, (machine_card,)))
    messages.append(shower.receive(messages[4]) or b"")
    assert reader.receive(messages[5]) is None and shower.comparison_code
    return {
        "code": code.to_text(),
        "relay_key": relay.sign_public.hex(),
        "device": {
            "signing_seed": (bytes([6]) * 32).hex(),
            "dh_private": (bytes([106]) * 32).hex(),
        },
        "device_rng": "61",
        "account": account.hex(),
        "messages": [m.hex() for m in messages],
        "comparison_code": shower.comparison_code,
        "owner_name": owner_card.name,
        "role": DeviceRole.VIEWER.value,
    }


def _code_verdicts(pair: str, link: str, join: str) -> list[dict[str, Any]]:
    """Pasted codes, good and garbled, with whether each Python parser takes them:
    ``pair`` the pairing code's, ``link`` a link code's (an owner shows it), ``join``
    a join code's (a new device shows it)."""
    from starmux.link_code import parse_link_code
    from starmux.pairing_code import parse_pairing_code

    def parse_link(text: str) -> object:
        return parse_link_code(text, Direction.INVITE)

    def parse_join(text: str) -> object:
        return parse_link_code(text, Direction.JOIN)

    candidates = []
    for code in (pair, link, join):
        prefix, query = code.split("?", 1)
        parts = query.split("&")
        candidates += [
            code,
            f"  {code}\n",
            code.upper(),
            code + "&",
            code + "&x=1",
            code + "&" + parts[0],
            prefix + "?" + "&".join(parts[1:]),
            prefix + "?" + "&".join(reversed(parts)),
            code.replace("ws://", "wss://"),
            code.replace("ws://", "http://"),
            code.replace("127.0.0.1:8765", "user:pw@127.0.0.1:8765"),
            code.replace("127.0.0.1:8765", "127.0.0.1:99999"),
            code.replace("=", "=%41", 1),
            code.replace("role=operator", "role=owner"),
            code.replace("role=operator", "role="),
            code + "&exp=1700000000",
            code + "&exp=-1",
            code + "&exp=1234567890123",
            prefix.replace("v1", "v2") + "?" + query,
            code[:-3],
            code + "AAAA",
        ]
        for index, part in enumerate(parts):
            key, _, value = part.partition("=")
            for changed in (value.lower(), value[:-1], value + "A", "", value.replace("A", "-")):
                mutated = [*parts]
                mutated[index] = f"{key}={changed}"
                candidates.append(prefix + "?" + "&".join(mutated))
    table = []
    for text in candidates:
        verdict: dict[str, Any] = {"text": text}
        parsers = (("pair", parse_pairing_code), ("link", parse_link), ("join", parse_join))
        for name, parse in parsers:
            try:
                parse(text)
                verdict[name] = True
            except StarmuxError:
                verdict[name] = False
        table.append(verdict)
    return table


def live_window_golden() -> dict[str, Any]:
    """Each machine's window for a number of open channels, and page costs: the
    browser's live-acks must give what the Python controller gives."""
    page = EventPage(
        "e-1",
        (LoggedEvent(1, 0.0, "s-1", b"x" * 100), LoggedEvent(2, 0.0, "s-22", b"")),
        False,
        True,
    )
    return {
        "windows": [
            [n, *dataclasses.astuple(window_for(n))]
            for n in (0, 1, 2, 3, 7, 100, 191, 192, 193, 10_000)
        ],
        "page": {"sessions": ["s-1", "s-22"], "bodies": [100, 0], "cost": page_cost(page)},
        "no_epoch": NO_EPOCH,
    }
