"""What an impaired link does to each frame: loss, a rate cap with a queue, delay,
jitter and reordering. Sans-I/O: every method takes the time as an argument and
the randomness comes from an injected ``random.Random``; ``services.natlab.wire``
moves the frames.

The stages, per direction, in the order a frame meets them:

1. loss: the frame is dropped with probability ``loss``;
2. rate cap: a token bucket (``rate_kbit``, ``burst_bytes``) in front of a FIFO
   queue of at most ``queue_bytes``; a frame that does not fit is dropped (tail
   drop, as a router's interface queue does). With ``burst_bytes`` 0 a frame
   leaves when it would have finished serialising on a link of that rate;
3. reordering: with probability ``reorder`` the frame skips the delay stage and
   so overtakes the frames still delayed (needs ``delay`` > 0 to do anything);
4. delay and jitter: every other frame is delayed by a value drawn uniformly from
   [delay - jitter, delay + jitter] (at least 0), but never leaves before the frame
   in front of it: jitter alone keeps the order, as on a real link's FIFO.
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from dataclasses import asdict, dataclass

from services.natlab.errors import NatLabError

MAX_FRAME_BYTES = 1514
"""An Ethernet frame of a 1500-byte MTU, without the FCS."""

DEFAULT_QUEUE_SECONDS = 0.1
"""With no ``queue_bytes``, the queue holds this much time at the capped rate."""


class BadImpairment(NatLabError, ValueError):
    """An impairment setting out of range or not understood."""


@dataclass(frozen=True)
class Impairment:
    """One direction's impairment; the default impairs nothing."""

    loss: float = 0.0
    """Fraction of frames dropped at random, 0..1."""

    delay: float = 0.0
    """Seconds added to every frame (the one-way delay of the link)."""

    jitter: float = 0.0
    """Seconds; each frame's delay is uniform in [delay - jitter, delay + jitter]."""

    rate_kbit: float | None = None
    """Rate cap in kbit/s (1 kbit = 1000 bit) over whole Ethernet frames; None: no cap."""

    reorder: float = 0.0
    """Fraction of frames that skip the delay and overtake the frames in flight."""

    queue_bytes: int | None = None
    """Bytes the rate cap may queue; None: ``DEFAULT_QUEUE_SECONDS`` at the rate."""

    burst_bytes: int = 0
    """Token bucket depth: bytes that may leave at once after an idle time."""

    def __post_init__(self) -> None:
        for name in ("loss", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or math.isnan(value):
                raise BadImpairment(f"{name} must be a fraction between 0 and 1, not {value!r}")
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0 or math.isnan(value):
                raise BadImpairment(f"{name} must be between 0 and 60 seconds, not {value!r}")
        if self.rate_kbit is not None and not 1.0 <= self.rate_kbit <= 10_000_000:
            raise BadImpairment(
                f"rate must be between 1 kbit/s and 10 Gbit/s, not {self.rate_kbit!r} kbit/s"
            )
        if self.queue_bytes is not None and self.queue_bytes < MAX_FRAME_BYTES:
            raise BadImpairment(
                f"queue_bytes must hold a full frame ({MAX_FRAME_BYTES}), not {self.queue_bytes}"
            )
        if self.burst_bytes < 0:
            raise BadImpairment(f"burst_bytes must be >= 0, not {self.burst_bytes}")

    @property
    def is_null(self) -> bool:
        """Whether this passes every frame at once, untouched."""
        return self == Impairment()

    @property
    def rate_bytes(self) -> float | None:
        """The cap in bytes per second."""
        return None if self.rate_kbit is None else self.rate_kbit * 1000 / 8

    @property
    def queue_limit(self) -> int | None:
        """The queue size in bytes that the cap uses."""
        if self.rate_bytes is None:
            return None
        if self.queue_bytes is not None:
            return self.queue_bytes
        return max(int(self.rate_bytes * DEFAULT_QUEUE_SECONDS), 2 * MAX_FRAME_BYTES)

    def to_json(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Impairment:
        if not isinstance(data, dict):
            raise BadImpairment(f"an impairment is a JSON object, not {data!r}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise BadImpairment(f"unknown impairment settings: {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise BadImpairment(f"bad impairment {data!r}: {exc}") from None

    def describe(self) -> str:
        """A short human form, e.g. "loss 5% delay 100ms±30ms rate 600kbit"."""
        if self.is_null:
            return "none"
        parts = []
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}%")
        if self.delay or self.jitter:
            jitter = f"±{self.jitter * 1000:g}ms" if self.jitter else ""
            parts.append(f"delay {self.delay * 1000:g}ms{jitter}")
        if self.reorder:
            parts.append(f"reorder {self.reorder * 100:g}%")
        if self.rate_kbit is not None:
            parts.append(f"rate {self.rate_kbit:g}kbit queue {self.queue_limit}B")
            if self.burst_bytes:
                parts.append(f"burst {self.burst_bytes}B")
        return " ".join(parts)


# -- command-line values -------------------------------------------------------------

_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(_NUMBER + r"\s*(?P<unit>us|ms|s)", re.IGNORECASE)
_RATE = re.compile(_NUMBER + r"\s*(?P<unit>bit|kbit|mbit|gbit)", re.IGNORECASE)
_PERCENT = re.compile(_NUMBER + r"\s*%")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"bit": 1e-3, "kbit": 1.0, "mbit": 1e3, "gbit": 1e6}


def parse_fraction(text: str) -> float:
    """ "5%" or "0.05" -> 0.05."""
    text = text.strip()
    if (match := _PERCENT.fullmatch(text)) is not None:
        return float(match["number"]) / 100
    try:
        return float(text)
    except ValueError:
        raise BadImpairment(f"not a fraction or percentage: {text!r} (say 5% or 0.05)") from None


def parse_duration(text: str) -> float:
    """ "100ms", "0.1s", "500us" -> seconds. A unit is required."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise BadImpairment(f"not a duration: {text!r} (say 100ms, 0.1s or 500us)")
    return float(match["number"]) * _DURATION_UNITS[match["unit"].lower()]


def parse_rate(text: str) -> float:
    """ "600kbit", "2mbit" -> kbit/s (decimal units, as tc(8) uses)."""
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise BadImpairment(f"not a rate: {text!r} (say 600kbit or 2mbit)")
    return float(match["number"]) * _RATE_UNITS[match["unit"].lower()]


# -- the model ---------------------------------------------------------------------


class TokenBucket:
    """A token bucket shaping a FIFO queue of bounded size, computed per frame.

    The queue is FIFO and the bucket deterministic, so each frame's departure time
    is known when it arrives: ``admit`` returns it (or None: the queue is full).
    """

    def __init__(self, rate_bytes: float, burst_bytes: int, queue_bytes: int) -> None:
        if rate_bytes <= 0:
            raise BadImpairment(f"rate must be > 0 bytes/s, not {rate_bytes}")
        self.rate = rate_bytes
        self.burst = burst_bytes
        self.queue_bytes = queue_bytes
        self._tokens = float(burst_bytes)
        self._updated: float | None = None  # when _tokens was right
        self._queued: deque[tuple[float, int]] = deque()  # (departure, size) still waiting
        self._backlog = 0

    @property
    def backlog(self) -> int:
        """Bytes waiting in the queue as of the last call."""
        return self._backlog

    def admit(self, now: float, size: int) -> float | None:
        """When a frame of ``size`` bytes arriving at ``now`` leaves; None if dropped."""
        while self._queued and self._queued[0][0] <= now:
            self._backlog -= self._queued.popleft()[1]
        if self._backlog + size > self.queue_bytes:
            return None
        # A frame starts to take tokens once the one in front of it has left.
        start = now if not self._queued else max(now, self._queued[-1][0])
        if self._updated is None:
            tokens = float(self.burst)
        else:
            tokens = min(float(self.burst), self._tokens + (start - self._updated) * self.rate)
        if tokens >= size:
            departure = start
            self._tokens = tokens - size
        else:
            departure = start + (size - tokens) / self.rate
            self._tokens = 0.0
        self._updated = departure
        self._queued.append((departure, size))
        self._backlog += size
        return departure


@dataclass(frozen=True)
class LinkCounters:
    """What a ``LinkModel`` did so far."""

    offered: int = 0
    lost: int = 0
    """Dropped by ``loss``."""
    overflowed: int = 0
    """Dropped because the rate cap's queue was full."""
    reordered: int = 0
    """Sent past the delay stage."""
    bytes_passed: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> LinkCounters:
        if not isinstance(data, dict):
            raise ValueError(f"bad link counters: {data!r}")
        return cls(**{key: int(data[key]) for key in cls.__dataclass_fields__})


class LinkModel:
    """One direction of an impaired link: ``offer`` says when a frame arrives, if ever."""

    def __init__(self, settings: Impairment, rng: random.Random) -> None:
        self.settings = settings
        self._rng = rng
        rate = settings.rate_bytes
        limit = settings.queue_limit
        self._bucket = None
        if rate is not None and limit is not None:
            self._bucket = TokenBucket(rate, settings.burst_bytes, limit)
        self._last_in_order = -math.inf
        self._offered = self._lost = self._overflowed = self._reordered = self._bytes = 0

    @property
    def counters(self) -> LinkCounters:
        return LinkCounters(
            offered=self._offered,
            lost=self._lost,
            overflowed=self._overflowed,
            reordered=self._reordered,
            bytes_passed=self._bytes,
        )

    def offer(self, now: float, size: int) -> float | None:
        """The time a frame of ``size`` bytes offered at ``now`` comes out; None: dropped."""
        s = self.settings
        self._offered += 1
        if s.loss and self._rng.random() < s.loss:
            self._lost += 1
            return None
        leaves = now
        if self._bucket is not None:
            admitted = self._bucket.admit(now, size)
            if admitted is None:
                self._overflowed += 1
                return None
            leaves = admitted
        self._bytes += size
        if s.reorder and self._rng.random() < s.reorder:
            self._reordered += 1
            return leaves
        delay = s.delay
        if s.jitter:
            delay = max(0.0, delay + self._rng.uniform(-s.jitter, s.jitter))
        arrives = max(leaves + delay, self._last_in_order)
        self._last_in_order = arrives
        return arrives
