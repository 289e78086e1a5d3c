"""The machine's tags and capacity (issue 18): what placement matches a task against.

``starmux daemon start --tag gpu --tag os=linux --capacity 2`` stores them in the
daemon's settings, like ``--name``: ``--tag`` flags replace all the stored tags
(so a tag is dropped by restarting with the others), no ``--tag`` keeps them;
the same for ``--capacity``. A controller's ``starmux machines tag NAME TAG…
[--remove]`` (a ``set-tags`` command) changes the stored set, to empty too
(:func:`store_tags`).
Changing them needs no re-pairing: they are not part of the machine's identity.

Invariants:

- What is stored was checked (:func:`starmux.placement.parse_tag`, the capacity
  range) when the flags were read; what is read back is checked again, since the
  file may have been edited: a malformed value is a :class:`ConfigError` with a
  hint, never a silently different tag set.
- Tags are stored sorted, joined by ``,`` (a tag cannot contain one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starmux.errors import ConfigError, UsageError
from starmux.placement import MAX_CAPACITY, MAX_TAGS, parse_tag

from .store import DaemonStore

__all__ = ["DEFAULT_CAPACITY", "FleetSettings", "check_flags", "settle", "store_tags"]

TAGS_SETTING = "tags"
CAPACITY_SETTING = "capacity"
#: One task at a time unless told otherwise: agent sessions are heavy.
DEFAULT_CAPACITY = 1


@dataclass(frozen=True, slots=True)
class FleetSettings:
    tags: frozenset[str]
    capacity: int


def _tags(values: Sequence[str], *, where: str) -> frozenset[str]:
    try:
        tags = frozenset(parse_tag(v) for v in values)
    except UsageError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
    if len(tags) > MAX_TAGS:
        raise ConfigError(f"{where}: at most {MAX_TAGS} tags")
    return tags


def _capacity(value: int, *, where: str) -> int:
    if not 1 <= value <= MAX_CAPACITY:
        raise ConfigError(
            f"{where}: capacity must be 1..{MAX_CAPACITY}, not {value}",
            hint="the capacity is how many tasks this machine runs at once",
        )
    return value


def check_flags(tags: Sequence[str], capacity: int | None) -> None:
    """Refuse bad ``--tag``/``--capacity`` flags before the daemon starts (or detaches)."""
    _tags(tags, where="--tag")
    if capacity is not None:
        _capacity(capacity, where="--capacity")


async def settle(
    store: DaemonStore, *, tags: Sequence[str] = (), capacity: int | None = None
) -> FleetSettings:
    """Store the given flags, then return what is in force."""
    if tags:
        checked = _tags(tags, where="--tag")
        await store.set_setting(TAGS_SETTING, ",".join(sorted(checked)))
    if capacity is not None:
        await store.set_setting(CAPACITY_SETTING, str(_capacity(capacity, where="--capacity")))
    hint = "start the daemon with --tag/--capacity to store valid ones"
    stored_tags = await store.setting(TAGS_SETTING)
    where = f"the stored tags ({store.home})"
    try:
        in_force = _tags(stored_tags.split(",") if stored_tags else (), where=where)
    except ConfigError as exc:
        raise ConfigError(exc.message, hint=hint) from exc
    stored_capacity = await store.setting(CAPACITY_SETTING)
    if stored_capacity is None:
        return FleetSettings(in_force, DEFAULT_CAPACITY)
    if not stored_capacity.isdecimal() or len(stored_capacity) > 4:
        raise ConfigError(f"the stored capacity is not a number ({store.home})", hint=hint)
    return FleetSettings(in_force, _capacity(int(stored_capacity), where="the stored capacity"))


async def store_tags(store: DaemonStore, tags: frozenset[str]) -> None:
    """Keep the tags a controller set (checked again: they came over the network)."""
    checked = _tags(sorted(tags), where="set-tags")
    await store.set_setting(TAGS_SETTING, ",".join(sorted(checked)))
