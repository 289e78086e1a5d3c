"""Network-free tests of the relay's limit primitives: address buckets, proxy trust,
token buckets by key, the per-connection frame limiter, the latency histogram and the
send budget's shedding policy."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from starmux.relay.addresses import ProxyTrust, ip_bucket
from starmux.relay.metrics import LATENCY_BUCKETS, LatencyHistogram
from starmux.relay.ratelimit import FrameLimiter, KeyedBuckets, TokenBucket
from starmux.relay.send_budget import SendBudget, shed_order


def test_ipv6_counts_per_64_and_ipv4_as_itself() -> None:
    assert ip_bucket("2001:db8:1:2::1") == ip_bucket("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert ip_bucket("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert ip_bucket("2001:db8:1:3::1") != ip_bucket("2001:db8:1:2::1")
    assert ip_bucket("fe80::1%eth0") == "fe80::/64"
    assert ip_bucket("192.0.2.7") == "192.0.2.7"
    assert ip_bucket("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped: the IPv4 address
    assert ip_bucket("not-an-address") == "not-an-address"


def test_proxy_trust_is_empty_by_default_and_matches_networks() -> None:
    assert not ProxyTrust(())
    assert not ProxyTrust(()).trusts("127.0.0.1")
    trust = ProxyTrust(["10.0.0.0/8", "::1"])
    assert trust.trusts("10.1.2.3") and trust.trusts("::1") and trust.trusts("::ffff:10.0.0.1")
    assert not trust.trusts("127.0.0.1") and not trust.trusts("garbage")


def test_keyed_buckets_are_independent_and_refill() -> None:
    buckets = KeyedBuckets(rate=1.0, capacity=2)
    assert buckets.take("a", 0.0) and buckets.take("a", 0.0)
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)  # another key, its own budget
    assert buckets.take("a", 1.0)  # one token back after a second
    assert not buckets.take("a", 1.0)


def test_keyed_buckets_stay_bounded() -> None:
    buckets = KeyedBuckets(rate=1.0, capacity=1, max_keys=100)
    for index in range(1000):
        buckets.take(f"k{index}", float(index))  # each idle long enough to be forgotten
    assert len(buckets._buckets) <= 100


def test_shed_order_takes_the_biggest_first_until_the_rest_fit() -> None:
    assert shed_order({"a": 5, "b": 3, "c": 1}, 10) == []
    assert shed_order({"a": 5, "b": 3, "c": 4}, 10) == ["a"]
    assert shed_order({"a": 5, "b": 3, "c": 4}, 3) == ["a", "c"]


@dataclass(eq=False)
class FakePeer:
    budget: SendBudget
    queued_bytes: int = 0
    write_buffer: int = 0
    was_shed: bool = False

    def buffered_bytes(self) -> int:
        return self.queued_bytes + self.write_buffer

    def add(self, size: int) -> None:
        self.queued_bytes += size
        self.budget.added(self, size)

    def shed(self) -> None:
        self.was_shed = True
        size, self.queued_bytes = self.queued_bytes, 0
        self.budget.removed(self, size)


def test_send_budget_sheds_the_biggest_queue_when_exceeded() -> None:
    budget = SendBudget(100)
    big, small = FakePeer(budget), FakePeer(budget)
    big.add(60)
    small.add(30)
    assert not big.was_shed and budget.total == 90
    small.add(20)  # 110 > 100: the biggest (big, 60) goes, the rest fits
    assert big.was_shed and not small.was_shed
    assert budget.total == 50 and budget.shed_count == 1


def test_send_budget_counts_write_buffers_when_it_sheds() -> None:
    budget = SendBudget(100)
    writer, queuer = FakePeer(budget, write_buffer=70), FakePeer(budget)
    writer.add(10)  # holds 80 with its socket's buffer, though only 10 are queued
    queuer.add(40)
    queuer.add(60)  # queued total 110: over; fresh sizes are writer 80, queuer 100
    assert queuer.was_shed and not writer.was_shed


@given(
    rates=st.tuples(*(st.floats(0.5, 1e7) for _ in range(4))),
    steps=st.lists(st.tuples(st.floats(0, 2.0), st.integers(0, 70_000)), min_size=1, max_size=60),
)
def test_frame_limiter_decides_as_a_frame_bucket_then_a_byte_bucket(
    rates: tuple[float, float, float, float], steps: list[tuple[float, int]]
) -> None:
    # The relay's one check per frame: the same answers as the two buckets it
    # replaced (frames.take(1) and then bytes_.take(size)), up to the first refusal,
    # which closes the connection.
    frame_rate, frame_burst, byte_rate, byte_burst = rates
    limiter = FrameLimiter(frame_rate, frame_burst, byte_rate, byte_burst, now=0.0)
    frames = TokenBucket(frame_rate, frame_burst, now=0.0)
    bytes_ = TokenBucket(byte_rate, byte_burst, now=0.0)
    now = 0.0
    for elapsed, size in steps:
        now += elapsed
        expected = frames.take(1, now) and bytes_.take(size, now)
        assert limiter.take(size, now) is expected
        if not expected:
            break
        assert (limiter.frames, limiter.bytes) == (frames.tokens, bytes_.tokens)


def test_frame_limiter_refuses_past_either_burst_and_refills() -> None:
    limiter = FrameLimiter(10, 2, 1000, 1500, now=0.0)
    assert limiter.take(1000, 0.0)
    assert not limiter.take(1000, 0.0)  # bytes short (500 left), frames not
    limiter = FrameLimiter(10, 2, 1000, 1500, now=0.0)
    assert limiter.take(1, 0.0) and limiter.take(1, 0.0)
    assert not limiter.take(1, 0.0)  # frames short
    assert limiter.take(1, 0.1)  # one frame back after 0.1 s


@given(st.lists(st.floats(-1.0, 10.0) | st.sampled_from(LATENCY_BUCKETS), max_size=50))
def test_latency_histogram_buckets_as_bisect_left(values: list[float]) -> None:
    histogram = LatencyHistogram()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    total = 0.0
    for value in values:
        histogram.observe(value)
        expected[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        total += value
    assert histogram.counts == expected
    assert histogram.total == total
