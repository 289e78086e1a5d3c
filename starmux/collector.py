"""The cycle collector's settings for the long-lived processes: relay, machine daemon,
controller agent.

CPython's default runs a young-generation collection every 700 net allocations and,
every hundred of those, a full one over every object the process holds. Our hot
paths allocate frames, pages, events and futures that refcounting frees at once;
what survives is long-lived (modules, the app, a daemon's newest events, a
controller's machines). So the full collections walked the same objects again and
again for nothing: in ``python -m bench.e2e`` at 100 machines the daemon processes
spent about a tenth of their CPU in the collector (issue 20).

:func:`settle_collector` collects once, moves what exists at start-up out of the
collector's sight (``gc.freeze``) and collects far less often. Cycles are still
collected, later: memory a cycle holds is freed within 50,000 allocations instead
of 700.
"""

from __future__ import annotations

import gc

#: Allocations between young collections; young collections per middle one; middle
#: ones per full one (CPython's defaults: 700, 10, 10).
THRESHOLDS = (50_000, 20, 100)


def settle_collector() -> None:
    """Call once, after start-up and before serving."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


__all__ = ["THRESHOLDS", "settle_collector"]
