"""Reconnect delays: exponential, capped, with full jitter (sans-I/O: rng is a parameter).

Full jitter (a uniform draw in ``[0, min(cap, base * 2**attempt)]``) spreads a crowd
of clients that lost the same relay at the same instant across the whole window,
instead of having them retry in lock-step waves.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.base = base
        self.cap = cap
        self._uniform = uniform
        self.attempt = 0
        self.refusal_window = 60.0
        self._first_refusal: float | None = None

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self._uniform(0.0, ceiling)

    def hinted_delay(self, retry_after: float) -> float:
        """The relay said when to come back (a restart notice): honour it, jittered."""
        return retry_after + self._uniform(0.0, min(1.0, self.base))

    def after_refusal(self, now: float) -> float:
        """Nothing listens at the relay's address (connection refused): it is restarting.

        Retry within a second, without growing the delay, for ``refusal_window``
        seconds from the first refusal; after that it is an outage like any other.
        Escalating here made a graceful restart slower than a crash: the relay's own
        shutdown outlasted the hinted delay and every refusal doubled the wait.
        """
        if self._first_refusal is None:
            self._first_refusal = now
        if now - self._first_refusal < self.refusal_window:
            return self._uniform(0.2, 1.0)
        return self.next_delay()

    def reset(self) -> None:
        self.attempt = 0
        self._first_refusal = None
