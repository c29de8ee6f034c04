"""The one libx264 encoder (through PyAV) that software sources share.

Settings are what WebRTC receivers need: Constrained Baseline (no B-frames, so
decode order is display order), SPS/PPS repeated in front of every IDR (a viewer
can join at any IDR), zero-latency tuning (one picture in, one access unit out).
Not thread-safe: one thread at a time calls :meth:`X264Encoder.encode`.
"""

from __future__ import annotations

import fractions
import logging
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt
from av.video.frame import PictureType

from camera.errors import SourceError
from camera.sources.base import VideoSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EncodedPicture:
    """One access unit out of the encoder."""

    data: bytes
    """Annex-B access unit."""
    keyframe: bool
    """True for an IDR."""


def x264_options(settings: VideoSettings, preset: str = "veryfast") -> dict[str, str]:
    """The libx264 options for ``settings`` (the profile MUST go here, see below)."""
    gop = settings.gop_frames
    params = ":".join(
        (
            "repeat-headers=1",  # SPS/PPS in front of every IDR
            "bframes=0",
            f"keyint={gop}",
            f"min-keyint={gop}",
            "scenecut=0",  # IDRs only on schedule or on request
            # VBV caps bursts so an IDR does not stall a thin uplink.
            f"vbv-maxrate={settings.bitrate // 1000}",
            f"vbv-bufsize={settings.bitrate // 1000}",
        )
    )
    return {
        # PyAV silently ignores CodecContext.profile for libx264: the option works.
        "profile": "baseline",
        "preset": preset,
        "tune": "zerolatency",
        # libavcodec maps a frame with pict_type I to an IDR only with this set.
        "forced-idr": "1",
        "x264-params": params,
    }


class X264Encoder:
    """Encodes yuv420p pictures of one fixed size to Constrained Baseline H.264."""

    def __init__(self, settings: VideoSettings, preset: str = "veryfast") -> None:
        self.settings = settings
        self._index = 0
        try:
            context = av.CodecContext.create("libx264", "w")
        except (av.FFmpegError, ValueError) as exc:
            raise SourceError(f"libx264 is not available in this PyAV build: {exc}") from exc
        assert isinstance(context, av.VideoCodecContext)
        context.width = settings.width
        context.height = settings.height
        context.pix_fmt = "yuv420p"
        context.time_base = fractions.Fraction(1, settings.fps)
        context.framerate = fractions.Fraction(settings.fps, 1)
        context.bit_rate = settings.bitrate
        context.options = x264_options(settings, preset)
        try:
            context.open()
        except av.FFmpegError as exc:
            raise SourceError(f"cannot open libx264 for {settings}: {exc}") from exc
        self._context: av.VideoCodecContext | None = context
        logger.debug("libx264 open: %s, options %s", settings, context.options)

    def encode_yuv(
        self, yuv: npt.NDArray[np.uint8], force_idr: bool = False
    ) -> list[EncodedPicture]:
        """Encode one I420 picture laid out as ``(height * 3 // 2, width)`` uint8."""
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return self.encode(frame, force_idr)

    def encode(self, frame: av.VideoFrame, force_idr: bool = False) -> list[EncodedPicture]:
        """Encode one picture (converted to the configured size and yuv420p if needed)."""
        if self._context is None:
            raise SourceError("encoder is closed")
        width, height = self.settings.width, self.settings.height
        if frame.format.name != "yuv420p" or frame.width != width or frame.height != height:
            frame = frame.reformat(width=width, height=height, format="yuv420p")
        frame.pts = self._index
        frame.time_base = self._context.time_base
        self._index += 1
        # An I picture with forced-idr=1 becomes an IDR at once (not at the next
        # GOP boundary); NONE leaves the choice to x264.
        frame.pict_type = PictureType.I if force_idr else PictureType.NONE
        return [
            EncodedPicture(bytes(packet), bool(packet.is_keyframe))
            for packet in self._context.encode(frame)
        ]

    def close(self) -> None:
        """Release the encoder; pending pictures are dropped. Safe twice."""
        # PyAV 18 has no CodecContext.close(): dropping the last reference frees it.
        self._context = None
