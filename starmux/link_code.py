"""Link and join codes: what a device's QR carries and what a person can paste.

- invite, shown by an owner (``starmux devices link``), read by the new device
  (``starmux link CODE``):
  ``starmux://link/v1?relay=&rfp=&ticket=&ifp=&secret=&role=``;
- join, shown by the new device (``starmux link --show``), read by an owner
  (``starmux devices add CODE``): ``starmux://join/v1?relay=&rfp=&ticket=&dfp=&secret=``.

``relay`` where both meet, ``rfp`` the relay's fingerprint, ``ticket`` the relay's
one-time ticket held by the device showing the code, ``ifp``/``dfp`` that device's
fingerprint (the reader refuses any other), ``secret`` 32 random bytes that never
reach the relay (the XXpsk3 PSK), ``role`` the role an invite promises (in a join
the owner picks it). Parsing is strict, like :mod:`starmux.pairing_code`'s, and a
code of the other direction is refused naming the command that reads it.
"""

from __future__ import annotations

import enum
import urllib.parse
from dataclasses import dataclass, field

from .device_roles import DeviceRole
from .errors import PairingCodeError, UsageError
from .fingerprint import normalize_fingerprint
from .pairing_code import (
    MAX_CODE_LENGTH,
    SECRET_SIZE,
    TICKET_SIZE,
    _b64,
    _unb64,
    check_relay_url,
)


class Direction(enum.Enum):
    INVITE = "invite"  # the owner shows the code
    JOIN = "join"  # the new device shows the code


@dataclass(frozen=True)
class _CodeForm:
    prefix: str
    domain: bytes  # the Noise prologue's domain
    shower_param: str  # the shower's fingerprint in the code
    params: tuple[str, ...]
    shown_by: str  # the command that shows such a code
    read_by: str  # the command that reads it


FORMS = {
    Direction.INVITE: _CodeForm(
        "starmux://link/v1?",
        b"starmux/link/v1",
        "ifp",
        ("relay", "rfp", "ticket", "ifp", "secret", "role"),
        "starmux devices link",
        "starmux link CODE",
    ),
    Direction.JOIN: _CodeForm(
        "starmux://join/v1?",
        b"starmux/join/v1",
        "dfp",
        ("relay", "rfp", "ticket", "dfp", "secret"),
        "starmux link --show",
        "starmux devices add CODE",
    ),
}
LINK_DOMAIN = FORMS[Direction.INVITE].domain
JOIN_DOMAIN = FORMS[Direction.JOIN].domain


@dataclass(frozen=True)
class LinkCode:
    """A link code (invite: ``role`` set) or a join code (``role`` None)."""

    direction: Direction
    relay_url: str
    relay_fingerprint: str
    ticket: bytes
    shower_fingerprint: str  # the device that shows the code: it holds the ticket
    secret: bytes = field(repr=False)
    role: DeviceRole | None = None

    def __post_init__(self) -> None:
        check_relay_url(self.relay_url)
        if len(self.ticket) != TICKET_SIZE or len(self.secret) != SECRET_SIZE:
            raise UsageError("ticket is 16 bytes and secret 32")
        if (self.role is None) != (self.direction is Direction.JOIN):
            raise UsageError("a link code names the role; a join code does not")
        normalize_fingerprint(self.relay_fingerprint)
        normalize_fingerprint(self.shower_fingerprint)

    def to_text(self) -> str:
        form = FORMS[self.direction]
        params = {
            "relay": self.relay_url,
            "rfp": normalize_fingerprint(self.relay_fingerprint).replace("-", ""),
            "ticket": _b64(self.ticket),
            form.shower_param: normalize_fingerprint(self.shower_fingerprint).replace("-", ""),
            "secret": _b64(self.secret),
        }
        if self.role is not None:
            params["role"] = self.role.value
        return form.prefix + urllib.parse.urlencode(params, safe=":/")


def parse_link_code(text: str, expect: Direction) -> LinkCode:
    """Parse a pasted or scanned code of the ``expect`` direction; raises
    :class:`PairingCodeError` (naming the right command for a code of the other)."""
    text = text.strip() if isinstance(text, str) else ""
    form = FORMS[expect]
    hint = f"copy the whole code `{form.shown_by}` printed, starting with {form.prefix}"
    if len(text) > MAX_CODE_LENGTH or not text.startswith(form.prefix):
        other = FORMS[Direction.JOIN if expect is Direction.INVITE else Direction.INVITE]
        if text.startswith(other.prefix):
            raise PairingCodeError(
                f"this code is for `{other.read_by}` (it was shown by `{other.shown_by}`)",
                hint=f"run `{other.read_by}` with it on the other device",
            )
        if text.startswith("starmux://pair/"):
            raise PairingCodeError(
                "this is a machine pairing code, not a device code",
                hint="pair machines with `starmux pair CODE`",
            )
        raise PairingCodeError(f"this is not a starmux code for `{form.read_by}`", hint=hint)
    try:
        pairs = urllib.parse.parse_qsl(
            text[len(form.prefix) :], strict_parsing=True, max_num_fields=2 * len(form.params)
        )
    except ValueError as exc:
        raise PairingCodeError("the code's parameters are garbled", hint=hint) from exc
    params = dict(pairs)
    if len(params) != len(pairs) or set(params) != set(form.params):
        raise PairingCodeError("the code lacks or repeats a part (was it cut off?)", hint=hint)
    try:
        return LinkCode(
            expect,
            relay_url=check_relay_url(params["relay"]),
            relay_fingerprint=normalize_fingerprint(params["rfp"]),
            ticket=_unb64(params["ticket"], TICKET_SIZE, "ticket"),
            shower_fingerprint=normalize_fingerprint(params[form.shower_param]),
            secret=_unb64(params["secret"], SECRET_SIZE, "secret"),
            role=DeviceRole(params["role"]) if "role" in params else None,
        )
    except (UsageError, ValueError) as exc:
        if isinstance(exc, PairingCodeError):
            raise
        raise PairingCodeError(f"the code is malformed: {exc}", hint=hint) from exc
