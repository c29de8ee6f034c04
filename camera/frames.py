"""The unit every source produces and every viewer consumes."""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: RTP clock rate for video (RFC 6184 section 8.2.1): pts are in these ticks.
VIDEO_CLOCK_RATE = 90_000


class Layer(enum.IntEnum):
    """One rung of the quality ladder: the same pictures, encoded at another size.

    Ordered from the best: ``HIGH`` is the configured ``[video]`` stream, ``LOW``
    the optional smaller one (``[video] low_*``). Both are encoded once for all
    viewers; each viewer is on one of them (camera/ladder.py decides which).
    """

    HIGH = 0
    LOW = 1

    @property
    def label(self) -> str:
        """The name status and the ``quality`` data channel use: "high" or "low"."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One H.264 access unit as it leaves the encoder."""

    data: bytes
    """The access unit in Annex-B form (start codes), SPS/PPS in front of each IDR."""
    pts: int
    """Presentation time in 90 kHz ticks, monotonic within one source run."""
    keyframe: bool
    """True for an IDR access unit a decoder can start from."""
    capture_time: float
    """Wall-clock time (``time.time()``) at which the picture was captured."""
    layer: Layer = Layer.HIGH
    """The ladder rung this access unit belongs to (one encoder per layer)."""
