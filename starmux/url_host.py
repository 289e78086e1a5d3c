"""A host as it goes into a URL: an IPv6 address in brackets (``[::1]:8765``), any
other host as it is."""

from __future__ import annotations


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
