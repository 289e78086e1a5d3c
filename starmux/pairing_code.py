"""The pairing code: what the daemon's QR carries and what a person can paste.

``starmux://pair/v1?relay=<ws(s) URL>&rfp=<relay fp>&ticket=<b64url>&mfp=<machine fp>``
``&secret=<b64url>``

- ``relay``: where both sides meet (``ws://`` or ``wss://``, no credentials, no fragment);
- ``rfp``: the relay's fingerprint, pinned by the controller on first contact;
- ``ticket``: the relay's one-time pairing ticket (16 bytes);
- ``mfp``: the machine's fingerprint; the controller refuses any other machine;
- ``secret``: 32 random bytes that never reach the relay: the XXpsk3 PSK.

Parsing is strict and every refusal names the part that is wrong, because people
paste these from terminals, chats and screenshots.
"""

from __future__ import annotations

import base64
import binascii
import string
import urllib.parse
from dataclasses import dataclass, field

from .errors import PairingCodeError, UsageError
from .fingerprint import normalize_fingerprint

SCHEME = "starmux"
PREFIX = "starmux://pair/v1?"
TICKET_SIZE = 16
SECRET_SIZE = 32
MAX_CODE_LENGTH = 1024
MAX_RELAY_URL = 256
_PARAMS = ("relay", "rfp", "ticket", "mfp", "secret")
#: optional: when the ticket expires (relay time, whole seconds), so a controller can
#: tell an expired code from one the relay never knew (the relay drops old tickets)
_OPTIONAL = ("exp",)
_B64URL_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")
_HINT = "copy the whole code the daemon printed, starting with starmux://pair/v1?"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str, size: int, what: str) -> bytes:
    try:
        if not text or not set(text) <= _B64URL_ALPHABET:
            raise ValueError(what)
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error) as exc:
        raise PairingCodeError(
            f"the {what} in the pairing code is not base64url", hint=_HINT
        ) from exc
    if len(raw) != size:
        raise PairingCodeError(
            f"the {what} in the pairing code is {len(raw)} bytes, expected {size}", hint=_HINT
        )
    return raw


def check_relay_url(url: str) -> str:
    """Accept only ``ws://host[:port][/path]`` or ``wss://...`` URLs; return it unchanged."""
    if len(url) > MAX_RELAY_URL or not url.isascii() or not url.isprintable() or " " in url:
        # Found by fuzzing: a lone surrogate or control characters parsed, then could
        # not be printed back (or grew past the code's size limit when quoted).
        raise UsageError(
            "the relay URL must be printable ASCII without spaces, at most "
            f"{MAX_RELAY_URL} characters",
            hint="use ws://HOST:PORT or wss://HOST[:PORT]",
        )
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        raise UsageError(f"invalid relay URL {url[:100]!r}") from exc
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(
            f"invalid relay URL {url[:100]!r}", hint="use ws://HOST:PORT or wss://HOST[:PORT]"
        )
    if parts.username or parts.password:
        # Never echo the URL here: it holds a password.
        raise UsageError("the relay URL must not carry credentials (user:password@)")
    if parts.fragment or parts.query:
        raise UsageError(f"relay URL {url[:100]!r} must not carry a query or fragment")
    del port
    return url


@dataclass(frozen=True)
class PairingCode:
    relay_url: str
    relay_fingerprint: str
    ticket: bytes
    machine_fingerprint: str
    secret: bytes = field(repr=False)
    expires_at: float | None = None

    def __post_init__(self) -> None:
        check_relay_url(self.relay_url)
        if len(self.ticket) != TICKET_SIZE or len(self.secret) != SECRET_SIZE:
            raise UsageError("ticket is 16 bytes and secret 32")
        normalize_fingerprint(self.relay_fingerprint)
        normalize_fingerprint(self.machine_fingerprint)

    def to_text(self) -> str:
        params = {
            "relay": self.relay_url,
            "rfp": normalize_fingerprint(self.relay_fingerprint).replace("-", ""),
            "ticket": _b64(self.ticket),
            "mfp": normalize_fingerprint(self.machine_fingerprint).replace("-", ""),
            "secret": _b64(self.secret),
        }
        if self.expires_at is not None:
            params["exp"] = str(int(self.expires_at))
        query = urllib.parse.urlencode(params, safe=":/")
        return PREFIX + query


def parse_pairing_code(text: str) -> PairingCode:
    """Parse a pasted or scanned code; raises :class:`PairingCodeError` naming the problem."""
    if not isinstance(text, str):
        raise PairingCodeError("a pairing code is text", hint=_HINT)
    text = text.strip()
    if len(text) > MAX_CODE_LENGTH:
        raise PairingCodeError(f"a pairing code is under {MAX_CODE_LENGTH} characters", hint=_HINT)
    if not text.startswith(PREFIX):
        if text.startswith(f"{SCHEME}://pair/"):
            raise PairingCodeError(
                "this pairing code is from another starmux version",
                hint="update starmux on this controller or on the machine so both match",
            )
        raise PairingCodeError("this is not a starmux pairing code", hint=_HINT)
    query = text[len(PREFIX) :]
    try:
        pairs = urllib.parse.parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=2 * len(_PARAMS + _OPTIONAL),
        )
    except ValueError as exc:
        raise PairingCodeError("the pairing code's parameters are garbled", hint=_HINT) from exc
    params: dict[str, str] = {}
    for key, value in pairs:
        if key not in _PARAMS and key not in _OPTIONAL:
            raise PairingCodeError(f"the pairing code has an unknown part {key[:20]!r}", hint=_HINT)
        if key in params:
            raise PairingCodeError(f"the pairing code repeats {key!r}", hint=_HINT)
        params[key] = value
    missing = [key for key in _PARAMS if key not in params]
    if missing:
        raise PairingCodeError(
            f"the pairing code lacks {', '.join(missing)} (was it cut off?)", hint=_HINT
        )
    try:
        relay_url = check_relay_url(params["relay"])
    except UsageError as exc:
        raise PairingCodeError(
            f"the pairing code's relay URL is invalid: {exc}", hint=_HINT
        ) from exc
    fingerprints = {}
    for key, what in (("rfp", "relay fingerprint"), ("mfp", "machine fingerprint")):
        try:
            fingerprints[key] = normalize_fingerprint(params[key])
        except UsageError as exc:
            raise PairingCodeError(
                f"the {what} in the pairing code is malformed", hint=_HINT
            ) from exc
    expires_at: float | None = None
    if "exp" in params:
        if not params["exp"].isdigit() or len(params["exp"]) > 12:
            raise PairingCodeError("the pairing code's expiry is malformed", hint=_HINT)
        expires_at = float(params["exp"])
    return PairingCode(
        expires_at=expires_at,
        relay_url=relay_url,
        relay_fingerprint=fingerprints["rfp"],
        ticket=_unb64(params["ticket"], TICKET_SIZE, "ticket"),
        machine_fingerprint=fingerprints["mfp"],
        secret=_unb64(params["secret"], SECRET_SIZE, "secret"),
    )
