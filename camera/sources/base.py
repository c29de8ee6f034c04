"""The seam every camera source implements.

A source owns exactly one encoder. It delivers each encoded access unit to one
sink callable, always on the event loop thread: sources whose encoder runs on
another thread (picamera2, PyAV in an executor) cross into the loop once, with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from camera.frames import EncodedFrame

FrameSink = Callable[[EncodedFrame], None]


@dataclass(frozen=True, slots=True)
class VideoSettings:
    """What the encoder is asked to produce."""

    width: int = 1280
    """Picture width in pixels (even)."""
    height: int = 720
    """Picture height in pixels (even)."""
    fps: int = 30
    """Frames per second."""
    bitrate: int = 2_000_000
    """Target bitrate in bits per second."""
    gop_seconds: float = 2.0
    """Longest time between IDRs when nobody asks for one (a safety net)."""

    def __post_init__(self) -> None:
        from camera.errors import BadConfig

        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise BadConfig(f"video size {self.width}x{self.height}: need even sides >= 64")
        if not 1 <= self.fps <= 120:
            raise BadConfig(f"fps {self.fps}: need 1..120")
        if not 50_000 <= self.bitrate <= 50_000_000:
            raise BadConfig(f"bitrate {self.bitrate}: need 50000..50000000 bit/s")
        if not 0.1 <= self.gop_seconds <= 60:
            raise BadConfig(f"gop_seconds {self.gop_seconds}: need 0.1..60")

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_seconds * self.fps))


class Source(abc.ABC):
    """A camera source producing one H.264 stream."""

    name: str = "source"

    @abc.abstractmethod
    async def start(self, sink: FrameSink) -> None:
        """Start capturing; call ``sink`` on the event loop for every access unit."""

    @abc.abstractmethod
    def request_keyframe(self) -> None:
        """Make the next access unit an IDR (with SPS/PPS in front). Loop thread only."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop capturing and release the device. Safe to call twice."""

    @property
    def frames_delivered(self) -> int:
        """Access units handed to the sink so far (for status and health)."""
        return getattr(self, "_delivered", 0)
