"""The relay settings every benchmark starts its relay with.

Every load process connects from 127.0.0.1, and a benchmark pairs and connects
hundreds or thousands of machines within seconds: the relay's per-IP guards (and
the controller's per-key authentication rate, since it pairs every machine over a
connection of its own key) would refuse most of them. Those guards are raised;
the per-connection limits (frames, bytes, send queue) stay as shipped unless a
benchmark says otherwise.
"""

from __future__ import annotations

ONE_IP_GUARDS_RAISED = {
    "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE": "100000",
    "STARMUX_RELAY_CONNECTION_RATE_PER_IP": "100000",
    "STARMUX_RELAY_CONNECTION_BURST_PER_IP": "100000",
    "STARMUX_RELAY_PAIRING_REQUESTS_PER_MINUTE_PER_IP": "1000000",
    "STARMUX_RELAY_REQUESTS_PER_SECOND_PER_IP": "1000000",
    "STARMUX_RELAY_REQUEST_BURST_PER_IP": "1000000",
    "STARMUX_RELAY_REQUESTS_PER_SECOND": "1000000",
    "STARMUX_RELAY_REQUEST_BURST": "1000000",
    "STARMUX_RELAY_REGISTRATIONS_PER_MINUTE_PER_IP": "1000000",
    "STARMUX_RELAY_AUTH_RATE_PER_KEY": "1000",
    "STARMUX_RELAY_AUTH_BURST_PER_KEY": "1000",
}


def relay_env(connections_per_ip: int, **more: str) -> dict[str, str]:
    """:data:`ONE_IP_GUARDS_RAISED`, room for ``connections_per_ip`` connections from
    the one IP, and ``more`` (``FRAMES_PER_SECOND="..."`` sets
    ``STARMUX_RELAY_FRAMES_PER_SECOND``)."""
    return {
        **ONE_IP_GUARDS_RAISED,
        "STARMUX_RELAY_CONNECTIONS_PER_IP": str(connections_per_ip),
        **{f"STARMUX_RELAY_{name}": value for name, value in more.items()},
    }
