"""How a NAT picks the external port of each new flow, from a recorded sequence. No I/O.

Behind a symmetric NAT every new destination gets a new external port. Whether
a peer can guess that port decides between port prediction (a sequential
allocator: the next flow takes the last port plus a small step) and the
birthday technique (a random allocator). ``natcheck`` records the mapped ports
of several sockets that each send one Binding request to the same STUN server,
one after the other, and :func:`classify_allocation` names the pattern.

Other traffic through the same NAT takes ports in between, so a sequential
allocator shows small positive (or, for a NAT counting down, negative) gaps
rather than exactly one step every time; a random one shows gaps spread over
the whole port range. Two or more deltas at most ``max_gap`` apart in one
direction by chance, from a random allocator over ~64,000 ports, happen about
once in four million runs with the default ``max_gap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Allocation = Literal["sequential", "random", "preserving", "unknown"]

PORTS = 65536
DEFAULT_MAX_GAP = 32
"""Largest delta between consecutive mappings still read as "the next port"."""
MIN_SAMPLES = 3
"""Fewer mappings than this (two deltas) say nothing."""


class BadSequence(ValueError):
    """A recorded mapping sequence that cannot be classified (names the bad value)."""


@dataclass(frozen=True)
class AllocationReport:
    """What a sequence of consecutive mappings says about the NAT's port allocator."""

    pattern: Allocation
    deltas: tuple[int, ...]
    """Signed differences between consecutive mapped ports, wrapped to ±32768."""
    step: int | None
    """For "sequential": the smallest delta seen (the allocator's step; other flows
    taking ports in between only make deltas larger)."""
    outliers: int
    """For "sequential": deltas that were not small steps (other traffic, a wrap)."""


def port_delta(before: int, after: int) -> int:
    """``after - before`` on the 16-bit port circle, in (-32768, 32768]."""
    delta = (after - before) % PORTS
    return delta - PORTS if delta > PORTS // 2 else delta


def _check(ports: Sequence[int], what: str) -> None:
    for port in ports:
        if not 0 < port < PORTS:
            raise BadSequence(f"{what}: port {port!r} is outside 1-65535")


def classify_allocation(
    mapped: Sequence[int],
    local: Sequence[int] | None = None,
    *,
    max_gap: int = DEFAULT_MAX_GAP,
) -> AllocationReport:
    """Name the allocation pattern of ``mapped``: external ports of consecutive new
    flows, in the order they were made. ``local``: the flows' own source ports,
    if known (a NAT that keeps them is "preserving")."""
    _check(mapped, "mapped ports")
    if local is not None:
        _check(local, "local ports")
        if len(local) != len(mapped):
            raise BadSequence(f"{len(local)} local ports for {len(mapped)} mapped ports")
    if max_gap < 1:
        raise BadSequence(f"max_gap must be at least 1, not {max_gap!r}")
    deltas = tuple(port_delta(a, b) for a, b in zip(mapped, mapped[1:], strict=False))
    if len(mapped) < MIN_SAMPLES:
        return AllocationReport("unknown", deltas, None, 0)
    if local is not None and list(local) == list(mapped):
        return AllocationReport("preserving", deltas, None, 0)
    for sign in (1, -1):
        small = [d for d in deltas if 1 <= sign * d <= max_gap]
        # Most deltas, and at least two, are small steps the same way.
        if len(small) >= 2 and 4 * len(small) >= 3 * len(deltas):
            step = min(small, key=abs)
            return AllocationReport("sequential", deltas, step, len(deltas) - len(small))
    return AllocationReport("random", deltas, None, 0)
