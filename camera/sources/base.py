"""The seam every camera source implements.

A source owns one encoder per layer it offers (:attr:`Source.layers`: the
configured stream, plus the smaller ``[video] low_*`` layer where the source can
encode it), each encoding once for every viewer. It delivers each encoded
access unit, tagged with its layer, to one sink callable, always on the event
loop thread: sources whose encoder runs on another thread (picamera2, PyAV in
an executor) cross into the loop once, with ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from camera.frames import EncodedFrame, Layer

FrameSink = Callable[[EncodedFrame], None]

LOW_SHARE_PERCENT = 15
"""The automatic low layer's bitrate, in percent of ``[video] bitrate``."""


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
    low_layer: bool = True
    """Also encode the low layer, for viewers on thin links (sources that can: the
    test pattern and picamera2; file and v4l2 offer one layer)."""
    low_width: int = 0
    """Low layer width in pixels (even); 0: half of ``width`` (640 for 1280)."""
    low_height: int = 0
    """Low layer height in pixels (even); 0: half of ``height`` (360 for 720)."""
    low_bitrate: int = 0
    """Low layer target bitrate in bit/s; 0: 15 % of ``bitrate`` (300000 for 2 Mbit/s).

    The low layer is for links too thin for the high one: its keyframes must fit
    the queue of such a link too (a quarter of 2 Mbit/s is close to a 600 kbit/s
    link, whose queue each of its IDRs overflowed)."""

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
        for name in ("low_width", "low_height", "low_bitrate"):
            if getattr(self, name) < 0:
                raise BadConfig(f"{name} {getattr(self, name)}: need 0 (automatic) or more")
        if self.low_layer and not self._low_automatic:
            width, height, bitrate = self._low_size_and_rate
            if width < 64 or height < 64 or width % 2 or height % 2:
                raise BadConfig(f"low layer size {width}x{height}: need even sides >= 64")
            if width > self.width or height > self.height or width * height >= (
                    self.width * self.height):
                raise BadConfig(f"low layer size {width}x{height}: need a smaller picture "
                                f"than {self.width}x{self.height}")
            if not 50_000 <= bitrate < self.bitrate:
                raise BadConfig(f"low_bitrate {bitrate}: need 50000 bit/s up to (not "
                                f"including) bitrate {self.bitrate}")

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.gop_seconds * self.fps))

    @property
    def _low_automatic(self) -> bool:
        return not (self.low_width or self.low_height or self.low_bitrate)

    @property
    def _low_size_and_rate(self) -> tuple[int, int, int]:
        width = self.low_width or (self.width // 2) & ~1
        height = self.low_height or (self.height // 2) & ~1
        bitrate = self.low_bitrate or max(50_000, self.bitrate * LOW_SHARE_PERCENT // 100)
        return width, height, bitrate

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers these settings ask for, best first.

        The automatic low layer (no ``low_*`` set) is left out when the picture
        is too small to halve (under 128 pixels a side) or the bitrate too low
        to share (under 200 kbit/s): there is nothing useful below it.
        """
        if not self.low_layer:
            return (Layer.HIGH,)
        width, height, _ = self._low_size_and_rate
        if self._low_automatic and (width < 64 or height < 64 or self.bitrate < 200_000):
            return (Layer.HIGH,)
        return (Layer.HIGH, Layer.LOW)

    def for_layer(self, layer: Layer) -> VideoSettings:
        """What one layer's encoder is asked to produce (a single-layer setting)."""
        if layer is Layer.HIGH:
            return dataclasses.replace(self, low_layer=False, low_width=0, low_height=0,
                                       low_bitrate=0)
        if layer not in self.layers:
            raise ValueError(f"layer {layer.label!r} is not configured")
        width, height, bitrate = self._low_size_and_rate
        return VideoSettings(width=width, height=height, fps=self.fps, bitrate=bitrate,
                             gop_seconds=self.gop_seconds, low_layer=False)


class Source(abc.ABC):
    """A camera source producing one H.264 stream per layer."""

    name: str = "source"

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers this source delivers, best first (one unless it says otherwise)."""
        return (Layer.HIGH,)

    @abc.abstractmethod
    async def start(self, sink: FrameSink) -> None:
        """Start capturing; call ``sink`` on the event loop for every access unit."""

    @abc.abstractmethod
    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        """Make ``layer``'s next access unit an IDR (SPS/PPS in front). Loop thread only.

        A layer the source does not deliver is ignored.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop capturing and release the device. Safe to call twice."""

    @property
    def frames_delivered(self) -> int:
        """Access units handed to the sink so far, all layers (for status and health)."""
        return getattr(self, "_delivered", 0)
