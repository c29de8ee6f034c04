"""Reading a NAT's port allocator from consecutive mappings (sans-I/O)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.stun.allocation import (
    BadSequence,
    classify_allocation,
    port_delta,
)

#: Mapped ports natcheck recorded in the NAT lab (six new flows, one after the
#: other, to the STUN server), two runs behind the sequential symmetric NAT
#: ("symmetric-seq": the second run starts five ports on, which natcheck's other
#: flows took), and behind the random ones ("symmetric", and the symmetric CGNAT
#: "cgnat-sym").
RECORDED_SEQUENTIAL = [
    (20009, 20010, 20011, 20012, 20013, 20014),
    (20020, 20021, 20022, 20023, 20024, 20025),
]
RECORDED_RANDOM = [
    (12115, 45682, 50039, 30123, 62135, 25849),
    (3702, 41263, 50188, 7337, 61912, 38309),
    (11854, 38908, 46858, 10283, 27035, 49469),
]


def sequential_ports(start: int, steps: list[int]) -> list[int]:
    ports = [start]
    for step in steps:
        ports.append(1024 + (ports[-1] + step - 1024) % (65536 - 1024))
    return ports


def test_port_delta_wraps_around_the_port_circle() -> None:
    assert port_delta(65535, 1025) == 1026
    assert port_delta(1025, 65535) == -1026
    assert port_delta(20000, 20001) == 1
    assert port_delta(20001, 20000) == -1


@pytest.mark.parametrize("ports", RECORDED_SEQUENTIAL)
def test_recorded_sequential_nat(ports: tuple[int, ...]) -> None:
    report = classify_allocation(ports)
    assert report.pattern == "sequential"
    assert report.step == 1
    assert report.deltas == (1, 1, 1, 1, 1)


@pytest.mark.parametrize("ports", RECORDED_RANDOM)
def test_recorded_random_nat(ports: tuple[int, ...]) -> None:
    assert classify_allocation(ports).pattern == "random"


def test_a_nat_that_keeps_the_ports_is_preserving() -> None:
    assert classify_allocation([40000, 40007, 40100], [40000, 40007, 40100]).pattern \
        == "preserving"


def test_too_few_mappings_say_nothing() -> None:
    assert classify_allocation([20000, 20001]).pattern == "unknown"
    assert classify_allocation([]).pattern == "unknown"


@pytest.mark.parametrize(("mapped", "local", "needle"), [
    ([0, 1, 2], None, "port 0"),
    ([1, 2, 70000], None, "port 70000"),
    ([1, 2, 3], [1, 2], "2 local ports for 3"),
])
def test_bad_sequences_are_named(mapped: list[int], local: list[int] | None,
                                 needle: str) -> None:
    with pytest.raises(BadSequence, match=needle):
        classify_allocation(mapped, local)


@given(start=st.integers(2048, 60000),
       step=st.sampled_from([1, 2, 4, -1]),
       count=st.integers(3, 12),
       others=st.lists(st.integers(0, 3), min_size=11, max_size=11),
       data=st.data())
def test_sequential_allocators_are_recognised(start: int, step: int, count: int,
                                              others: list[int], data: st.DataObject) -> None:
    # Other traffic takes a few ports between our flows; with five or more flows, one
    # big jump (a burst of other flows, the counter wrapping) is allowed.
    steps = [step * (1 + others[i]) for i in range(count - 1)]
    if count >= 5:
        burst = data.draw(st.integers(0, count - 2))
        steps[burst] = data.draw(st.integers(1000, 30000))
    report = classify_allocation(sequential_ports(start, steps))
    assert report.pattern == "sequential", report
    assert report.step is not None and report.step * step > 0


@settings(derandomize=True)
@given(seed=st.integers(0, 2**32), count=st.integers(4, 12))
def test_random_allocators_are_recognised(seed: int, count: int) -> None:
    rng = random.Random(seed)
    ports = rng.sample(range(1024, 65536), count)
    assert classify_allocation(ports).pattern == "random"
