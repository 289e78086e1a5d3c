"""The relay's memory of device logs it verified, so a request does not verify the
whole log again.

Every request that needs an account's log (an append, ``get-device-log``, each role
check) reads the stored rows; verifying them all each time costs one signature
check per entry. What is kept here is the exact stored bytes a log was verified
from: rows identical to them reuse that log, rows that extend them verify only the
new entries (another cluster node may have appended), and anything else — rows
changed under us, a shorter log — is verified from the first entry again, so a
stored log that no longer verifies is still never accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starmux.device_log import DeviceLog, decode_entries

from .registry import DeviceLogRow

#: accounts remembered at most (least recently used dropped first)
MAX_ACCOUNTS = 10_000


@dataclass(frozen=True)
class _Verified:
    stored: tuple[bytes, ...]  # the rows' entry bytes, in order
    log: DeviceLog


class VerifiedLogs:
    def __init__(self, max_accounts: int = MAX_ACCOUNTS) -> None:
        self._max = max_accounts
        self._logs: dict[bytes, _Verified] = {}
        self.verified_entries = 0  # entries whose signatures were checked (for tests)

    def log(self, account: bytes, rows: Sequence[DeviceLogRow]) -> DeviceLog:
        """The verified log of ``rows`` (raises DeviceLogError if they do not verify)."""
        stored = tuple(row.entry for row in rows)
        known = self._logs.pop(account, None)
        if known is not None and stored[: len(known.stored)] == known.stored:
            fresh = [e for data in stored[len(known.stored) :] for e in decode_entries(data)]
            log = known.log.extend(fresh) if fresh else known.log
        else:
            fresh = [e for data in stored for e in decode_entries(data)]
            log = DeviceLog.verify(fresh, account=account)
        self.verified_entries += len(fresh)
        self._logs[account] = _Verified(stored, log)
        if len(self._logs) > self._max:
            del self._logs[next(iter(self._logs))]
        return log
