"""Which address a per-IP limit counts, and whether a proxy's word is believed.

An IPv6 host usually owns a whole /64 (SLAAC, privacy addresses): counting single
addresses would give one host 2^64 budgets. So IPv6 addresses count per /64, and
IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPV6_AGGREGATE_PREFIX = 64


def ip_bucket(host: str) -> str:
    """The key per-IP limits count ``host`` under (a /64 for IPv6)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an address (a Unix socket, a test client): count as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_AGGREGATE_PREFIX), strict=False)
        return str(network)
    return str(address)


class ProxyTrust:
    """The proxies (addresses or networks) whose ``X-Forwarded-For`` is believed."""

    def __init__(self, proxies: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
