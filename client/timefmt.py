"""Times for people: total formatting of timestamps that may come from a peer.

Every time shown by a controller command goes through :func:`local_time`, which
never raises: a timestamp a machine or the relay chose (infinite, NaN, 1e300, before
1970 on some platforms) is shown as ``?`` instead of ending the command with an
OverflowError. The decoder refuses such times already (see
:data:`starmux.codec.Timestamp`); this is the second wall, for rows written before it.
"""

from __future__ import annotations

import datetime

UNKNOWN = "?"


def local_time(timestamp: float | None, *, none: str = "never") -> str:
    """``YYYY-mm-dd HH:MM:SS`` in local time; ``none`` for None; ``?`` if unshowable."""
    if timestamp is None:
        return none
    try:
        return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError, TypeError):
        return UNKNOWN
