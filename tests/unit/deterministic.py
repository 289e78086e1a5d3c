"""Deterministic stand-ins for the tests of code that takes an ``rng``."""

from __future__ import annotations

import hashlib
from collections.abc import Callable


def counter_rng(seed: bytes) -> Callable[[int], bytes]:
    """Deterministic stand-in for nacl.utils.random: the same seed, the same bytes."""
    counter = 0

    def rng(size: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.blake2b(counter.to_bytes(8, "big"), key=seed, digest_size=size).digest()

    return rng
