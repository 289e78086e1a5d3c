"""Placement (DESIGN.md section 13): eligibility by tags and online status, the three
strategies, ``--count`` fan-out, and hostile machine reports. Deterministic, no I/O."""

from __future__ import annotations

import pytest

from starmux.errors import UsageError
from starmux.placement import MAX_TAGS, Machine, Strategy, eligible, parse_target, place

GPU = frozenset({"gpu"})


def fleet() -> list[Machine]:
    return [
        Machine("c-gpu", frozenset({"gpu", "os=linux"}), capacity=2, running=2),
        Machine("a-gpu", frozenset({"gpu", "os=linux"}), capacity=1),
        Machine("b-mac", frozenset({"os=macos"}), capacity=4),
        Machine("d-gpu-off", frozenset({"gpu", "os=linux"}), online=False),
        Machine("e-gpu-win", frozenset({"gpu", "os=windows"}), capacity=1, queued=1),
    ]


def test_a_target_means_every_one_of_its_tags() -> None:
    assert parse_target("gpu,os=linux") == {"gpu", "os=linux"}
    assert parse_target(" gpu , gpu ") == GPU
    ids = [m.id for m in eligible(fleet(), parse_target("gpu,os=linux"))]
    assert ids == ["a-gpu", "c-gpu"]  # online, both tags; ordered by id
    assert [m.id for m in eligible(fleet(), GPU)] == ["a-gpu", "c-gpu", "e-gpu-win"]
    assert eligible(fleet(), parse_target("tpu")) == []


@pytest.mark.parametrize("text", ["", ",", "GPU", "os=", "=linux", "gpu;rm", "a" * 40, "x=\x1b[2J"])
def test_malformed_targets_are_refused(text: str) -> None:
    with pytest.raises(UsageError):
        parse_target(text)


def test_no_eligible_machine_is_an_empty_placement_not_an_error() -> None:
    result = place(fleet(), parse_target("tpu"), count=3, cursor="x")
    assert result.machines == () and result.cursor == "x"


def test_least_loaded_uses_the_reported_load_per_slot() -> None:
    # a-gpu: 0/1, c-gpu: 2/2 busy, e-gpu-win: 1/1.
    assert place(fleet(), GPU).machines == ("a-gpu",)
    busy = [
        Machine("a", GPU, capacity=1, running=1),
        Machine("b", GPU, capacity=4, running=1, queued=1),  # 1/2 per slot
        Machine("c", GPU, capacity=2, running=2),
    ]
    assert place(busy, GPU).machines == ("b",)


def test_equal_loads_tie_on_the_id() -> None:
    machines = [Machine("b", GPU, capacity=3, running=1), Machine("a", GPU, capacity=6, running=2)]
    assert place(machines, GPU).machines == ("a",)  # 1/3 == 2/6 exactly


def test_round_robin_alternates_and_returns_its_state() -> None:
    machines = [Machine("a", GPU), Machine("b", GPU, running=1)]
    cursor: str | None = None
    picks: list[str] = []
    for _ in range(4):
        result = place(machines, GPU, strategy=Strategy.ROUND_ROBIN, cursor=cursor)
        cursor = result.cursor
        picks += result.machines
    assert picks == ["a", "b", "a", "b"]


def test_round_robin_survives_machines_coming_and_going() -> None:
    # The cursor names the last machine, so a newcomer is not skipped and nobody repeats.
    three = [Machine("a", GPU), Machine("b", GPU), Machine("c", GPU)]
    result = place(three, GPU, strategy=Strategy.ROUND_ROBIN, cursor="a")
    assert result.machines == ("b",)
    without_b = [three[0], three[2]]
    assert place(without_b, GPU, strategy=Strategy.ROUND_ROBIN, cursor="a").machines == ("c",)
    assert place(without_b, GPU, strategy=Strategy.ROUND_ROBIN, cursor="c").machines == ("a",)


def test_affinity_returns_to_the_machine_that_last_ran_the_cwd() -> None:
    machines = [Machine("a", GPU), Machine("b", GPU, running=1)]
    result = place(machines, GPU, strategy=Strategy.AFFINITY, last_for_cwd="b")
    assert result.machines == ("b",)  # although busier


def test_affinity_falls_back_to_least_loaded() -> None:
    machines = [Machine("a", GPU, running=1), Machine("b", GPU), Machine("z", GPU, online=False)]
    for last in (None, "z", "unknown"):
        result = place(machines, GPU, strategy=Strategy.AFFINITY, last_for_cwd=last)
        assert result.machines == ("b",)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_fan_out_uses_distinct_machines_while_it_can(strategy: Strategy) -> None:
    machines = [Machine("a", GPU), Machine("b", GPU), Machine("c", GPU, running=5)]
    result = place(machines, GPU, strategy=strategy, count=3, last_for_cwd="c")
    assert sorted(result.machines) == ["a", "b", "c"]


def test_fan_out_beyond_the_machines_wraps_by_load() -> None:
    machines = [Machine("a", GPU, capacity=2), Machine("b", GPU, capacity=1)]
    # Picks add load: a(0/2), b(0/1), then a(1/2) < b(1/1), then a(2/2) == b(1/1): a by id.
    assert place(machines, GPU, count=4).machines == ("a", "b", "a", "a")
    rr = place(machines, GPU, strategy=Strategy.ROUND_ROBIN, count=5)
    assert rr.machines == ("a", "b", "a", "b", "a") and rr.cursor == "a"


def test_affinity_fan_out_puts_the_first_on_the_affine_machine() -> None:
    machines = [Machine("a", GPU), Machine("b", GPU), Machine("c", GPU, running=3)]
    result = place(machines, GPU, strategy=Strategy.AFFINITY, count=2, last_for_cwd="c")
    assert result.machines == ("c", "a")


def test_placement_is_deterministic_whatever_the_input_order() -> None:
    machines = fleet()
    for strategy in Strategy:
        forward = place(machines, GPU, strategy=strategy, count=3)
        backward = place(list(reversed(machines)), GPU, strategy=strategy, count=3)
        assert forward == backward


@pytest.mark.parametrize(
    "fields",
    [
        {"id": ""},
        {"id": "m", "capacity": 0},
        {"id": "m", "capacity": 5000},
        {"id": "m", "running": -1},
        {"id": "m", "queued": 10**9},
        {"id": "m", "tags": frozenset({"Bad Tag"})},
        {"id": "m", "tags": frozenset({"\x1b]0;pwned\x07"})},
        {"id": "m", "tags": frozenset(f"t{i}" for i in range(MAX_TAGS + 1))},
    ],
)
def test_hostile_machine_reports_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Machine(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -1, 10**6])
def test_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(UsageError, match="--count"):
        place(fleet(), GPU, count=count)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_an_avoided_machine_is_used_only_when_it_is_the_only_one(strategy: Strategy) -> None:
    machines = [Machine("a", GPU), Machine("b", GPU, running=1)]
    avoid = frozenset({"a"})
    for pool, expected in ((machines, "b"), (machines[:1], "a")):
        result = place(pool, GPU, strategy=strategy, last_for_cwd="a", cursor="b", avoid=avoid)
        assert result.machines == (expected,)
