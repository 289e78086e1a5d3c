"""Rate limits: a token bucket, the same keyed by address or key, fixed windows.

Every structure here is bounded: keyed tables forget idle entries once they grow
past ``max_keys``, so a flood of fresh addresses or keys cannot grow them forever.
Callers pass ``now`` (a monotonic clock), so tests are exact.
"""

from __future__ import annotations

import time


class TokenBucket:
    """Classic token bucket; ``take`` is O(1) and reads a monotonic clock."""

    __slots__ = ("capacity", "last", "rate", "tokens")

    def __init__(self, rate: float, capacity: float, now: float | None = None) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = time.monotonic() if now is None else now

    def take(self, amount: float, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
            self.last = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class FrameLimiter:
    """A connection's two limits on frames it sends, checked once per frame.

    Exactly ``frames.take(1, now) and bytes_.take(size, now)`` on two
    :class:`TokenBucket` s, in one call: one refill for both (they are always read
    at the same ``now``), no ``min()``. As there, a frame refused for its bytes has
    still spent its frame token (the connection is closed for it anyway).
    """

    __slots__ = ("byte_burst", "byte_rate", "bytes", "frame_burst", "frame_rate", "frames", "last")

    def __init__(
        self,
        frame_rate: float,
        frame_burst: float,
        byte_rate: float,
        byte_burst: float,
        now: float | None = None,
    ) -> None:
        self.frame_rate = frame_rate
        self.frame_burst = frame_burst
        self.frames = frame_burst
        self.byte_rate = byte_rate
        self.byte_burst = byte_burst
        self.bytes = byte_burst
        self.last = time.monotonic() if now is None else now

    def take(self, size: float, now: float) -> bool:
        """Spend one frame and ``size`` bytes; False if either bucket is short."""
        elapsed = now - self.last
        if elapsed > 0:
            self.last = now
            frames = self.frames + elapsed * self.frame_rate
            if frames > self.frame_burst:
                frames = self.frame_burst
            byte_tokens = self.bytes + elapsed * self.byte_rate
            if byte_tokens > self.byte_burst:
                byte_tokens = self.byte_burst
            self.bytes = byte_tokens
        else:
            frames = self.frames
            byte_tokens = self.bytes
        if frames < 1:
            self.frames = frames
            return False
        self.frames = frames - 1
        if byte_tokens < size:
            return False
        self.bytes = byte_tokens - size
        return True


class KeyedBuckets:
    """One token bucket per key (an address bucket, a public key)."""

    def __init__(self, rate: float, capacity: float, *, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.capacity = capacity
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float, amount: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.capacity, now)
        return bucket.take(amount, now)

    def _forget_idle(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: drop those.
        refill = self.capacity / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.last < refill}
        if len(self._buckets) >= self.max_keys:  # still full of live abusers: start over
            self._buckets.clear()


class WindowCounter:
    """At most ``limit`` events per key in any ``window`` seconds (fixed windows)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[float, int]] = {}

    def allow(self, key: str, now: float) -> bool:
        start, count = self._counts.get(key, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return False
        self._counts[key] = (start, count + 1)
        if len(self._counts) > 100_000:  # forget old windows rather than grow forever
            self._counts = {k: v for k, v in self._counts.items() if now - v[0] < self.window}
        return True
