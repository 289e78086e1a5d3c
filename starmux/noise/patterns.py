"""Noise handshake patterns as data, and protocol-name parsing (spec rev 34).

A pattern is a :class:`HandshakePattern`: two pre-message token tuples and the
message token tuples. Messages alternate, starting with the initiator: message 0
is ``->``, message 1 is ``<-``, and so on. The engine in ``handshake.py`` knows
nothing about any particular pattern; everything pattern-specific lives here.

The table holds the one-way patterns (7.4), the fundamental interactive
patterns (7.5) and the deferred interactive patterns (18.1), each transcribed
from the spec. The published test vectors cover every entry.

Only the ``psk`` modifier is supported (section 9): ``psk0`` puts a ``psk`` token
at the start of the first message, ``pskN`` (N >= 1) at the end of message N.
Pre-message ephemerals (used only by ``fallback`` patterns) are not supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starmux.errors import UsageError

__all__ = [
    "PATTERNS",
    "SUPPORTED_CIPHER",
    "SUPPORTED_DH",
    "SUPPORTED_HASH",
    "HandshakePattern",
    "Tokens",
    "parse_protocol_name",
]

Tokens = tuple[str, ...]

SUPPORTED_DH = "25519"
SUPPORTED_CIPHER = "ChaChaPoly"
SUPPORTED_HASH = "BLAKE2b"

_MESSAGE_TOKENS = frozenset({"e", "s", "ee", "es", "se", "ss", "psk"})
_PRE_MESSAGES: frozenset[Tokens] = frozenset({(), ("s",)})


@dataclass(frozen=True)
class HandshakePattern:
    """One handshake pattern; ``name`` includes any modifiers (``"XXpsk3"``)."""

    name: str
    initiator_pre: Tokens
    responder_pre: Tokens
    messages: tuple[Tokens, ...]

    def __post_init__(self) -> None:
        if self.initiator_pre not in _PRE_MESSAGES or self.responder_pre not in _PRE_MESSAGES:
            raise UsageError(f"pattern {self.name}: pre-messages may only hold 's'")
        if not self.messages:
            raise UsageError(f"pattern {self.name}: no messages")
        for tokens in self.messages:
            unknown = set(tokens) - _MESSAGE_TOKENS
            if unknown:
                raise UsageError(f"pattern {self.name}: unknown tokens {sorted(unknown)}")

    @property
    def is_one_way(self) -> bool:
        """One-way patterns (N, K, X) carry a single message; only the initiator sends."""
        return len(self.messages) == 1

    @property
    def psk_count(self) -> int:
        return sum(tokens.count("psk") for tokens in self.messages)

    def sends(self, initiator: bool, token: str) -> bool:
        """Whether the given side writes ``token`` in any of its messages."""
        first = 0 if initiator else 1
        return any(token in tokens for tokens in self.messages[first::2])


def _pattern(
    name: str, *messages: str, initiator_pre: str = "", responder_pre: str = ""
) -> HandshakePattern:
    # Spec notation without the arrows: "e, ee, s, es" -> ("e", "ee", "s", "es").
    def tokens(text: str) -> Tokens:
        return tuple(token.strip() for token in text.split(",") if token.strip())

    return HandshakePattern(
        name, tokens(initiator_pre), tokens(responder_pre), tuple(tokens(m) for m in messages)
    )


_TABLE = (
    # One-way (7.4).
    _pattern("N", "e, es", responder_pre="s"),
    _pattern("K", "e, es, ss", initiator_pre="s", responder_pre="s"),
    _pattern("X", "e, es, s, ss", responder_pre="s"),
    # Fundamental interactive (7.5).
    _pattern("NN", "e", "e, ee"),
    _pattern("NK", "e, es", "e, ee", responder_pre="s"),
    _pattern("NX", "e", "e, ee, s, es"),
    _pattern("KN", "e", "e, ee, se", initiator_pre="s"),
    _pattern("KK", "e, es, ss", "e, ee, se", initiator_pre="s", responder_pre="s"),
    _pattern("KX", "e", "e, ee, se, s, es", initiator_pre="s"),
    _pattern("XN", "e", "e, ee", "s, se"),
    _pattern("XK", "e, es", "e, ee", "s, se", responder_pre="s"),
    _pattern("XX", "e", "e, ee, s, es", "s, se"),
    _pattern("IN", "e, s", "e, ee, se"),
    _pattern("IK", "e, es, s, ss", "e, ee, se", responder_pre="s"),
    _pattern("IX", "e, s", "e, ee, se, s, es"),
    # Deferred interactive (18.1).
    _pattern("NK1", "e", "e, ee, es", responder_pre="s"),
    _pattern("NX1", "e", "e, ee, s", "es"),
    _pattern("X1N", "e", "e, ee", "s", "se"),
    _pattern("X1K", "e, es", "e, ee", "s", "se", responder_pre="s"),
    _pattern("XK1", "e", "e, ee, es", "s, se", responder_pre="s"),
    _pattern("X1K1", "e", "e, ee, es", "s", "se", responder_pre="s"),
    _pattern("X1X", "e", "e, ee, s, es", "s", "se"),
    _pattern("XX1", "e", "e, ee, s", "es, s, se"),
    _pattern("X1X1", "e", "e, ee, s", "es, s", "se"),
    _pattern("K1N", "e", "e, ee", "se", initiator_pre="s"),
    _pattern("K1K", "e, es", "e, ee", "se", initiator_pre="s", responder_pre="s"),
    _pattern("KK1", "e", "e, ee, se, es", initiator_pre="s", responder_pre="s"),
    _pattern("K1K1", "e", "e, ee, es", "se", initiator_pre="s", responder_pre="s"),
    _pattern("K1X", "e", "e, ee, s, es", "se", initiator_pre="s"),
    _pattern("KX1", "e", "e, ee, se, s", "es", initiator_pre="s"),
    _pattern("K1X1", "e", "e, ee, s", "se, es", initiator_pre="s"),
    _pattern("I1N", "e, s", "e, ee", "se"),
    _pattern("I1K", "e, es, s", "e, ee", "se", responder_pre="s"),
    _pattern("IK1", "e, s", "e, ee, se, es", responder_pre="s"),
    _pattern("I1K1", "e, s", "e, ee, es", "se", responder_pre="s"),
    _pattern("I1X", "e, s", "e, ee, s, es", "se"),
    _pattern("IX1", "e, s", "e, ee, se, s", "es"),
    _pattern("I1X1", "e, s", "e, ee, s", "se, es"),
)

#: Every supported base pattern by name.
PATTERNS: dict[str, HandshakePattern] = {p.name: p for p in _TABLE}

# A base name is capitals and "1"s (X1K1); modifiers start at the first lowercase letter.
_PATTERN_PART = re.compile(r"([A-Z1]+)([a-z].*)?")
_PSK_MODIFIER = re.compile(r"psk([0-9]|[1-9][0-9]+)")


def _apply_psk(pattern: HandshakePattern, positions: list[int], modifiers: str) -> HandshakePattern:
    messages = [list(tokens) for tokens in pattern.messages]
    for position in positions:
        if position > len(messages):
            raise UsageError(
                f"psk{position} needs a message {position}; {pattern.name} has {len(messages)}"
            )
        if position == 0:
            messages[0].insert(0, "psk")
        else:
            messages[position - 1].append("psk")
    return HandshakePattern(
        pattern.name + modifiers,
        pattern.initiator_pre,
        pattern.responder_pre,
        tuple(tuple(tokens) for tokens in messages),
    )


def parse_protocol_name(protocol_name: str) -> HandshakePattern:
    """The pattern named by ``Noise_<pattern>_25519_ChaChaPoly_BLAKE2b``, modifiers applied.

    Raises :class:`UsageError` naming the part that is malformed or unsupported.
    """
    parts = protocol_name.split("_")
    if len(parts) != 5 or parts[0] != "Noise":
        raise UsageError(
            f"not a Noise protocol name: {protocol_name!r}",
            hint="expected Noise_<pattern>_<dh>_<cipher>_<hash>",
        )
    _, pattern_part, dh_name, cipher_name, hash_name = parts
    for kind, got, supported in (
        ("DH function", dh_name, SUPPORTED_DH),
        ("cipher", cipher_name, SUPPORTED_CIPHER),
        ("hash", hash_name, SUPPORTED_HASH),
    ):
        if got != supported:
            raise UsageError(f"unsupported Noise {kind} {got!r}", hint=f"only {supported!r}")

    match = _PATTERN_PART.fullmatch(pattern_part)
    if match is None or match.group(1) not in PATTERNS:
        raise UsageError(f"unsupported Noise handshake pattern {pattern_part!r}")
    base = PATTERNS[match.group(1)]
    modifiers = match.group(2) or ""
    if not modifiers:
        return base

    positions: list[int] = []
    for modifier in modifiers.split("+"):
        psk = _PSK_MODIFIER.fullmatch(modifier)
        if psk is None:
            raise UsageError(f"unsupported Noise pattern modifier {modifier!r}", hint="only pskN")
        position = int(psk.group(1))
        if position in positions:
            raise UsageError(f"Noise pattern modifier {modifier!r} appears twice")
        positions.append(position)
    return _apply_psk(base, positions, modifiers)
