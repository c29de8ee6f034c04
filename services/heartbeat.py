"""One heartbeat for every connection of a server: a timing wheel, no I/O.

A WebSocket library's own heartbeat keeps two timers and a ping task per
connection; at 100k idle connections that is 200k timer handles in the event
loop's heap, a task started every few milliseconds, and memory that lives as
long as the connections. The wheel keeps none of that: each connection sits
in one of ``slots`` buckets (``interval / tick`` of them) and each ``tick``
visits one bucket, so every connection is visited once per interval and the
work of a tick is ``1/slots`` of the connections.

At a visit a connection that has said nothing since it was pinged (at the
previous visit) is dead; one that has been quiet for half an interval or more
is pinged; one that spoke recently is left alone (its own traffic, the
camera's own pings included, proves it alive). A silent peer is dropped
between one and a half and two and a half intervals after it last spoke.

The adapter owns the clock, the pings and the closing: it calls :meth:`tick`
once per ``tick`` seconds and :meth:`seen` for every frame a connection sends.
"""

from __future__ import annotations

import math
from typing import Generic, Protocol, TypeVar

from services.errors import ServiceError


class BadHeartbeat(ServiceError, ValueError):
    """A heartbeat interval or tick out of range."""


class Liveness(Protocol):
    """What the wheel keeps per connection: two times, on the connection's own record."""

    id: int
    seen_at: float
    pinged_at: float


L = TypeVar("L", bound=Liveness)


class HeartbeatWheel(Generic[L]):
    """Which connections to ping and which to drop, one bucket per tick."""

    def __init__(self, interval: float, tick: float = 1.0) -> None:
        if not (math.isfinite(interval) and interval > 0):
            raise BadHeartbeat(f"heartbeat interval {interval!r}: need a number above 0")
        if not (math.isfinite(tick) and 0 < tick <= interval):
            raise BadHeartbeat(f"heartbeat tick {tick!r}: need above 0, at most {interval!r}")
        self.interval = interval
        self.tick_seconds = tick
        self._slots: list[set[L]] = [set() for _ in range(max(1, round(interval / tick)))]
        self._next = 0

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots)

    def add(self, conn: L, now: float) -> None:
        conn.seen_at, conn.pinged_at = now, -1.0
        self._slots[conn.id % len(self._slots)].add(conn)

    def discard(self, conn: L) -> None:
        self._slots[conn.id % len(self._slots)].discard(conn)

    @staticmethod
    def seen(conn: L, now: float) -> None:
        conn.seen_at = now

    def tick(self, now: float) -> tuple[list[L], list[L]]:
        """Visit the next bucket: (connections to ping now, connections to drop).

        The dropped ones leave the wheel; the pinged ones are marked as pinged."""
        slot = self._slots[self._next]
        self._next = (self._next + 1) % len(self._slots)
        ping: list[L] = []
        dead: list[L] = []
        quiet = now - self.interval / 2
        for conn in slot:
            if conn.pinged_at >= 0 and conn.seen_at < conn.pinged_at:
                dead.append(conn)
            elif conn.seen_at <= quiet:
                conn.pinged_at = now
                ping.append(conn)
        for conn in dead:
            slot.discard(conn)
        return ping, dead
