"""The unit every source produces and every viewer consumes."""

from __future__ import annotations

from dataclasses import dataclass

#: RTP clock rate for video (RFC 6184 section 8.2.1): pts are in these ticks.
VIDEO_CLOCK_RATE = 90_000


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
