"""Whether a machine must believe it was revoked.

Invariants:

- Only a revocation signed by a controller the machine paired with (same account,
  key among its paired controllers) and naming this machine's own key counts.
- The relay's word alone (a REVOKED notice, close code 4003, a WELCOME saying
  "unpaired") never makes a machine delete its keys or forget its controllers: a
  relay can refuse to route, which is visible and recoverable, but it cannot make
  a machine discard the identity its controllers pinned.
- A replayed revocation can only ever name a key that was already revoked: after a
  verified revocation the machine makes a new identity, so an old statement never
  matches again.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from .control import MachineRevocation
from .errors import CryptoError
from .identity import verify_signature
from .relay_auth import revoke_transcript


def revoking_controller(
    revocation: MachineRevocation,
    *,
    machine_key: bytes,
    controllers: Iterable[tuple[bytes, bytes]],
) -> bytes | None:
    """The key of the paired controller that signed ``revocation``, or None if it
    does not prove this machine was revoked. ``controllers`` are (key, account)."""
    if not hmac.compare_digest(revocation.machine_key, machine_key):
        return None
    for key, account in controllers:
        if not hmac.compare_digest(key, revocation.revoked_by):
            continue
        if not hmac.compare_digest(account, revocation.account):
            return None
        try:
            verify_signature(
                key,
                revoke_transcript(account, machine_key, revocation.issued_at),
                revocation.signature,
            )
        except CryptoError:
            return None
        return key
    return None
