"""The impairment model without namespaces: time and randomness are parameters."""

from __future__ import annotations

import random
import socket
import statistics
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.natlab.shaping import (
    BadImpairment,
    Impairment,
    LinkModel,
    TokenBucket,
    parse_duration,
    parse_fraction,
    parse_rate,
)
from services.natlab.wire import SO_TIMESTAMPNS, ArrivalClock, receive_stamp


def test_command_line_values() -> None:
    assert parse_fraction("5%") == pytest.approx(0.05)
    assert parse_fraction("0.2") == pytest.approx(0.2)
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1.5s") == pytest.approx(1.5)
    assert parse_duration("250us") == pytest.approx(0.00025)
    assert parse_rate("600kbit") == pytest.approx(600)
    assert parse_rate("2Mbit") == pytest.approx(2000)
    for bad, parse in (("100", parse_duration), ("fast", parse_rate), ("x%", parse_fraction)):
        with pytest.raises(BadImpairment, match=repr(bad)):
            parse(bad)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"loss": 1.5}, "loss"),
        ({"reorder": -0.1}, "reorder"),
        ({"delay": -1.0}, "delay"),
        ({"rate_kbit": 0.0}, "rate"),
        ({"rate_kbit": 100.0, "queue_bytes": 10}, "queue_bytes"),
    ],
)
def test_bad_settings_name_the_value(settings: dict[str, float], named: str) -> None:
    with pytest.raises(BadImpairment, match=named):
        Impairment(**settings)  # type: ignore[arg-type]


def test_settings_round_trip_and_reject_unknown_keys() -> None:
    settings = Impairment(loss=0.05, delay=0.1, jitter=0.03, rate_kbit=600, reorder=0.01)
    assert Impairment.from_json(settings.to_json()) == settings
    assert settings.describe() == "loss 5% delay 100ms±30ms reorder 1% rate 600kbit queue 7500B"
    assert Impairment().is_null and Impairment().describe() == "none"
    with pytest.raises(BadImpairment, match="bandwidth"):
        Impairment.from_json({"bandwidth": 3})


def test_token_bucket_serialises_at_the_rate_and_tail_drops() -> None:
    bucket = TokenBucket(rate_bytes=1000.0, burst_bytes=0, queue_bytes=3000)
    # Three 1000-byte frames at once: each leaves when it has finished serialising.
    assert [bucket.admit(0.0, 1000) for _ in range(3)] == [1.0, 2.0, 3.0]
    assert bucket.admit(0.0, 1000) is None  # the queue holds 3000 bytes
    assert bucket.backlog == 3000
    # At t=1.5 the first left, so one more fits, behind the third.
    assert bucket.admit(1.5, 1000) == 4.0
    # After an idle time the bucket holds no tokens (burst 0): one frame time again.
    assert bucket.admit(10.0, 500) == 10.5


def test_token_bucket_burst_lets_a_burst_through_at_once() -> None:
    bucket = TokenBucket(rate_bytes=1000.0, burst_bytes=2000, queue_bytes=10_000)
    assert [bucket.admit(0.0, 1000) for _ in range(3)] == [0.0, 0.0, 1.0]
    # Tokens refill at the rate, up to the burst: at t=5 the bucket is full again.
    assert [bucket.admit(5.0, 1000) for _ in range(3)] == [5.0, 5.0, 6.0]


@given(
    sizes=st.lists(st.integers(60, 1514), min_size=1, max_size=200),
    gaps=st.lists(st.floats(0, 0.05), min_size=200, max_size=200),
    burst=st.integers(0, 5000),
)
def test_token_bucket_never_exceeds_rate_plus_burst(
    sizes: list[int], gaps: list[float], burst: int
) -> None:
    """Bytes leaving in any window [t0, t1] <= burst + rate * (t1 - t0) + one frame."""
    rate = 10_000.0
    bucket = TokenBucket(rate_bytes=rate, burst_bytes=burst, queue_bytes=20_000)
    now = 0.0
    departures: list[tuple[float, int]] = []
    for size, gap in zip(sizes, gaps, strict=False):
        now += gap
        leaves = bucket.admit(now, size)
        if leaves is not None:
            assert leaves >= now
            departures.append((leaves, size))
    times = [t for t, _ in departures]
    assert times == sorted(times)  # FIFO
    for i in range(len(departures)):
        for j in range(i, len(departures)):
            sent = sum(size for _, size in departures[i : j + 1])
            window = departures[j][0] - departures[i][0]
            assert sent <= burst + rate * window + 1514 + 1e-6


def test_loss_fraction_is_the_setting() -> None:
    model = LinkModel(Impairment(loss=0.2), random.Random(1))
    results = [model.offer(i * 0.001, 100) for i in range(20_000)]
    lost = results.count(None)
    assert 0.19 < lost / 20_000 < 0.21
    assert model.counters.lost == lost and model.counters.offered == 20_000


def test_delay_and_jitter_are_uniform_and_keep_the_order() -> None:
    model = LinkModel(Impairment(delay=0.1, jitter=0.03), random.Random(2))
    # Frames 100 ms apart never catch up with each other: the delays are the draws.
    delays = []
    for i in range(5000):
        arrives = model.offer(i * 0.1, 100)
        assert arrives is not None
        delays.append(arrives - i * 0.1)
    assert 0.07 - 1e-9 <= min(delays) < 0.071 and 0.129 < max(delays) <= 0.13 + 1e-9
    assert statistics.mean(delays) == pytest.approx(0.1, abs=0.002)
    assert statistics.pstdev(delays) == pytest.approx(0.03 / 3**0.5, rel=0.05)
    # Back to back, a frame never overtakes the one before it.
    dense = LinkModel(Impairment(delay=0.1, jitter=0.05), random.Random(3))
    times = [dense.offer(i * 0.001, 100) for i in range(1000)]
    assert times == sorted(times)  # type: ignore[type-var]


def test_reorder_sends_that_fraction_past_the_delay() -> None:
    model = LinkModel(Impairment(delay=0.05, reorder=0.1), random.Random(4))
    arrivals = [model.offer(i * 0.005, 100) for i in range(10_000)]
    early = [i for i, t in enumerate(arrivals) if t == pytest.approx(i * 0.005)]
    assert 0.09 < len(early) / 10_000 < 0.11
    assert model.counters.reordered == len(early)


def test_rate_cap_in_the_model_limits_throughput_and_drops_beyond_the_queue() -> None:
    settings = Impairment(rate_kbit=800, queue_bytes=10_000)  # 100 kB/s
    model = LinkModel(settings, random.Random(5))
    # 100 frames of 1000 bytes offered at once: 10 fit in the queue.
    results = [model.offer(0.0, 1000) for _ in range(100)]
    passed = [t for t in results if t is not None]
    assert len(passed) == 10 and model.counters.overflowed == 90
    assert passed[-1] == pytest.approx(0.1)
    assert settings.queue_limit == 10_000
    assert Impairment(rate_kbit=800).queue_limit == 10_000  # 100 ms at the rate


def test_arrival_is_the_kernel_stamp_on_the_monotonic_clock_and_never_goes_back() -> None:
    wall = 1_800_000_000 * 10**9
    stamp = struct.pack("@ll", 1_799_999_999, 700_000_000)  # 0.3 s before the read
    assert receive_stamp([(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp)]) == wall - 300_000_000
    assert receive_stamp([]) is None
    clock = ArrivalClock()
    assert clock.arrival(wall - 300_000_000, 50.0, wall) == pytest.approx(49.7)
    # Read in the same wakeup, arrived later: later.
    assert clock.arrival(wall - 100_000_000, 50.0, wall) == pytest.approx(49.9)
    # No stamp, or one not believable (an hour old, or after the read): the read time...
    assert ArrivalClock().arrival(None, 50.0, wall) == 50.0
    assert ArrivalClock().arrival(wall - 3600 * 10**9, 50.0, wall) == 50.0
    assert ArrivalClock().arrival(wall + 10**6, 50.0, wall) == 50.0
    # ... and never before the frame in front of it in the same queue.
    assert clock.arrival(wall - 200_000_000, 50.0, wall) == pytest.approx(49.9)
