"""How a controller device hands a machine the account's device log.

Two paths, one rule (the machine's :class:`~starmux.device_log.DeviceLog` copy
decides, never the messenger):

- Inside Noise_KK, right after each handshake, the device sends
  :class:`DeviceLogSync` with the whole log it holds; the machine verifies it as
  a continuation of its copy (or, holding none yet, takes it as its first copy:
  only from a device it already trusts, over this authenticated channel) and
  answers with its own when the device is the one behind.
- Before a handshake, a device sends the same entries in clear
  (:attr:`~starmux.e2e.Kind.DEVICE_LOG`): a device the machine does not know yet
  (it missed the ``add``) could not finish KK otherwise. Entries are signed by
  owners and chained to the machine's copy, so in clear they can only extend it;
  a machine without a copy ignores them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Message
from .messages import APP


@APP.register
@dataclass(frozen=True)
class DeviceLogSync(Message):
    """Either side over KK: the device log I hold (``device_log.encode_entries``)."""

    KIND = "device-log-sync"
    entries: bytes


@APP.register
@dataclass(frozen=True)
class LinkWelcome(Message):
    """Inviter → new device, inside the link's XXpsk3 channel (see device_link):
    the account, its device log (already naming the new device) and the cards of
    the account's machines."""

    KIND = "link-welcome"
    account: bytes
    log: bytes
    machines: tuple[bytes, ...]
