"""Where a task runs: eligibility by tags, then a strategy (DESIGN.md section 13).

Pure functions over what the controller knows of each machine (:class:`Machine`:
its tags, capacity and the load it last reported, and whether it is online).

Invariants:

- A machine is eligible only if it is online and carries *every* tag of the
  target (``--to gpu,os=linux`` means gpu and os=linux). An empty target (a
  bare ``--to``) is refused; ``--machine NAME`` is not placement at all.
- Tags and loads come from machines, so they are hostile: :class:`Machine`
  refuses malformed tags, too many of them, and loads or capacities out of range.
- Deterministic: the same inputs give the same answer; ties are broken by the
  machine's id, never by dict or set order. No clock, no randomness: round-robin
  state is a value passed in and returned.
- ``count`` tasks go to distinct machines while unused eligible ones remain, then
  wrap around; each pick counts as one more queued task on its machine for the
  picks after it, so least-loaded spreads a fan-out by load.
- No eligible machine: an empty placement (the task waits in the outbox), not an error.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from .errors import UsageError

__all__ = [
    "MAX_CAPACITY",
    "MAX_TAGS",
    "Machine",
    "Placement",
    "Strategy",
    "eligible",
    "parse_tag",
    "parse_target",
    "place",
]

#: ``gpu``, ``os=linux``, ``repo=api``: a lower-case name, optionally ``=value``.
_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}(=[A-Za-z0-9_.:/+-]{1,64})?$")
MAX_TAGS = 32
MAX_CAPACITY = 1024
_MAX_LOAD = 1_000_000


class Strategy(enum.StrEnum):
    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"
    AFFINITY = "affinity"


def parse_tag(text: str) -> str:
    if not _TAG.match(text):
        raise UsageError(
            f"not a tag: {text!r}",
            hint="a tag is a lower-case name, optionally =value, e.g. gpu or os=linux",
        )
    return text


def parse_target(text: str) -> frozenset[str]:
    """``"gpu,os=linux"`` → the tags a machine must all carry."""
    tags = frozenset(parse_tag(part.strip()) for part in text.split(",") if part.strip())
    if not tags:
        raise UsageError("--to needs at least one tag", hint="e.g. --to gpu or --to gpu,os=linux")
    if len(tags) > MAX_TAGS:
        raise UsageError(f"a target has at most {MAX_TAGS} tags")
    return tags


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine as placement sees it: ``running`` and ``queued`` are its reported load."""

    id: str
    tags: frozenset[str] = frozenset()
    capacity: int = 1
    running: int = 0
    queued: int = 0
    online: bool = True

    def __post_init__(self) -> None:
        if not self.id:
            raise UsageError("a machine needs an id")
        if len(self.tags) > MAX_TAGS:
            raise UsageError(f"a machine carries at most {MAX_TAGS} tags")
        for tag in self.tags:
            parse_tag(tag)
        if not 1 <= self.capacity <= MAX_CAPACITY:
            raise UsageError(f"capacity must be 1..{MAX_CAPACITY}, not {self.capacity}")
        if not (0 <= self.running <= _MAX_LOAD and 0 <= self.queued <= _MAX_LOAD):
            raise UsageError("a machine's reported load is out of range")

    @property
    def load(self) -> Fraction:
        """Tasks per slot; exact, so two equal loads tie and the id decides."""
        return Fraction(self.running + self.queued, self.capacity)


@dataclass(frozen=True, slots=True)
class Placement:
    """The machine of each task, in order (empty: none eligible), and the new
    round-robin cursor (the id of the last machine picked, ``None`` if none)."""

    machines: tuple[str, ...]
    cursor: str | None


def eligible(machines: Iterable[Machine], target: frozenset[str]) -> list[Machine]:
    """Online machines that carry every tag of ``target``, ordered by id."""
    return sorted((m for m in machines if m.online and target <= m.tags), key=lambda m: m.id)


def _least_loaded(candidates: Sequence[Machine]) -> Machine:
    return min(candidates, key=lambda m: (m.load, m.id))


def _after(candidates: Sequence[Machine], cursor: str | None) -> Machine:
    # The cursor is an id, not an index: machines coming and going between
    # calls do not make the rotation skip or repeat anyone.
    for machine in candidates:  # ordered by id
        if cursor is None or machine.id > cursor:
            return machine
    return candidates[0]


def place(
    machines: Iterable[Machine],
    target: frozenset[str],
    *,
    strategy: Strategy = Strategy.LEAST_LOADED,
    count: int = 1,
    cursor: str | None = None,
    last_for_cwd: str | None = None,
    avoid: frozenset[str] = frozenset(),
    exclude: frozenset[str] = frozenset(),
) -> Placement:
    """Choose a machine for each of ``count`` tasks to ``target``.

    ``cursor`` is the round-robin state from the previous placement;
    ``last_for_cwd`` the machine that last ran this task's cwd (affinity);
    ``avoid`` machines (e.g. the one that did not acknowledge the last attempt)
    are used only when no other is eligible; ``exclude`` machines (the ones that
    refused this task) are never used.
    """
    if not 1 <= count <= MAX_CAPACITY:
        raise UsageError(f"--count must be 1..{MAX_CAPACITY}, not {count}")
    candidates = [m for m in eligible(machines, target) if m.id not in exclude]
    preferred = [m for m in candidates if m.id not in avoid]
    pool: dict[str, Machine] = {m.id: m for m in preferred or candidates}
    if not pool:
        return Placement((), cursor)
    chosen: list[str] = []
    for _ in range(count):
        unused = [m for m in pool.values() if m.id not in chosen] or list(pool.values())
        if strategy is Strategy.ROUND_ROBIN:
            pick = _after(sorted(unused, key=lambda m: m.id), cursor)
            cursor = pick.id
        elif strategy is Strategy.AFFINITY and last_for_cwd in pool and last_for_cwd not in chosen:
            pick = pool[last_for_cwd]
        else:
            pick = _least_loaded(unused)
        chosen.append(pick.id)
        pool[pick.id] = dataclasses.replace(pick, queued=pick.queued + 1)
    return Placement(tuple(chosen), cursor)
