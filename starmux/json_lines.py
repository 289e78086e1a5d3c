"""Strict JSON lines, for the local protocols (the daemon's local API, the controller
agent's socket): one object per line of UTF-8, size-checked before parsing, no
duplicate fields (the last would silently win), no NaN or infinities.

Each protocol keeps its own error types: the caller passes the class to raise, and
any error it raises from inside the parse passes through unchanged.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["parse_object"]


def parse_object(
    line: bytes,
    *,
    limit: int,
    error: type[Exception],
    too_large: type[Exception] | None = None,
) -> dict[str, Any]:
    """``line`` (without its newline) as a JSON object, or ``error`` saying why not
    (``too_large`` for a line over ``limit`` bytes, ``error`` when not given)."""
    if len(line) > limit:
        raise (too_large or error)(f"a line is longer than {limit} bytes")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        fields = dict(pairs)
        if len(fields) != len(pairs):
            raise error("a field appears twice")
        return fields

    def finite(text: str) -> float:
        value = float(text)  # also NaN, Infinity: parse_constant gets those by name
        if not math.isfinite(value):
            raise error(f"numbers must be finite, not {text[:20]}")
        return value

    try:
        message = json.loads(
            line.decode("utf-8"),
            object_pairs_hook=no_duplicates,
            parse_float=finite,
            parse_constant=finite,
        )
    except error:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert.
        raise error("not one JSON object on one line of UTF-8") from exc
    if not isinstance(message, dict):
        raise error("a line must be a JSON object")
    return message
