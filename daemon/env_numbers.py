"""A number the daemon reads from its environment once, at start: bounded, and a bad
value stops the daemon with a hint instead of being guessed at."""

from __future__ import annotations

import math
from collections.abc import Mapping

from starmux.errors import ConfigError

#: Longer text is refused unparsed: no number the daemon takes needs more.
MAX_TEXT = 32


def positive_number(
    environ: Mapping[str, str], name: str, *, default: float, upper: float, what: str, hint: str
) -> float:
    """``environ[name]`` as a number in (0, ``upper``]; ``default`` when unset or
    empty. Anything else (not a number, nan, out of range, over ``MAX_TEXT``
    characters) is a :class:`ConfigError` saying the value is not ``what``."""
    text = environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text) if len(text) <= MAX_TEXT else math.nan
    except ValueError:
        value = math.nan
    if not 0 < value <= upper:  # False for nan too
        raise ConfigError(f"{name}={text[:40]!r} is not {what}", hint=hint)
    return value
