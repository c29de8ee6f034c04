"""The CLI viewer's receiver: aiortc 1.16's, made to behave like a live viewer.

Two private hooks (made and checked through :mod:`camera.compat.receiver`;
pyproject pins ``aiortc==1.16.*``): its jitter buffer releases a frame as soon
as the packet with the RTP marker bit completes it (:class:`MarkerJitterBuffer`),
and its decoder queue is bounded, restarting at a keyframe when the decoder
falls behind (:class:`_DecoderQueue`), after handing every access unit to a tee
(arrival counting and ``--record``). Also: reading the test pattern's stamp
from a decoded picture's corner.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt
from av.video.reformatter import ColorRange

from camera.client.playout import Packet, Playout, PlayoutCounters, ReceiveSettings
from camera.compat import receiver as hooks
from camera.compat.receiver import check_receiver_hooks
from camera.h264 import is_idr
from camera.stamp import CODE_HEIGHT, CODE_WIDTH

logger = logging.getLogger(__name__)

#: Undecoded frames the CLI viewer lets queue before it drops them and restarts at
#: a keyframe: a third of a second at 30 fps, so a passing stall is absorbed but a
#: decoder that cannot keep up never builds more delay than this.
DECODER_BACKLOG = 10

Tee = Callable[[JitterFrame, bool], None]
"""Called with every access unit as it arrives, and whether it is a keyframe."""


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame when its last packet arrives.

    aiortc 1.16's :class:`JitterBuffer` ignores the RTP marker bit: it hands a
    frame over only when the first packet of the *next* frame shows a new
    timestamp, one frame interval late (33 ms at 30 fps, the first frame
    included). The marker bit is set on the last packet of an access unit (RFC
    6184 section 5.1; RFC 3550 section 5.1), so once the packets from the head of
    the buffer through a marker packet are all present, with one timestamp and no
    gap, that is the frame aiortc would release later: the same packets, released
    now. A frame with a missing packet is not touched; aiortc's own path (NACK,
    then release or PLI) handles it exactly as before.
    """

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        # The newest sequence number seen: a packet older than it may fill a gap
        # behind a marker already here. Only decides when to look, never what to release.
        self._newest: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        filled_gap = self._newest is not None and not uint16_gt(
            packet.sequence_number, self._newest
        )
        if not filled_gap:
            self._newest = packet.sequence_number
        pli_flag, frame = super().add(packet)
        # One frame per packet, as aiortc's receiver takes it: if aiortc released
        # an older frame just now, a complete newer one goes with the next packet.
        if frame is None and (packet.marker or filled_gap):
            frame = self._pop_marked_frame()
        return pli_flag, frame

    def _pop_marked_frame(self) -> JitterFrame | None:
        """The frame at the head of the buffer if it is complete through its marker packet."""
        packets: list[RtpPacket] = []
        for count, packet in enumerate(hooks.buffered(self)):
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None  # a gap (or a frame without a marker): not ours to release
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                return JitterFrame(
                    data=b"".join(hooks.payload(p) for p in packets),
                    timestamp=packet.timestamp,
                )
        return None


def h264_keyframe_start(payload: bytes) -> bool:
    """Whether an H.264 RTP payload (RFC 6184) starts an IDR picture or its parameter sets:
    a single SPS/PPS/IDR NAL, a STAP-A whose first NAL is one, or a FU-A starting an IDR."""
    if len(payload) < 2:
        return False
    kind = payload[0] & 0x1F
    if kind == 24 and len(payload) >= 4:  # STAP-A: 2-byte size, then the first NAL
        kind = payload[3] & 0x1F
    elif kind == 28:  # FU-A: the FU header's start bit and type
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return kind in (5, 7, 8)


class PlayoutJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer slot, filled by a :class:`~camera.client.playout.Playout`:
    frames go when complete, or are given up at a deadline (see that module)."""

    def __init__(self, capacity: int, playout: Playout,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(capacity, is_video=True)
        self.playout = playout
        self._clock = clock

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        now = self._clock()
        self.playout.add(Packet(seq=packet.sequence_number, timestamp=packet.timestamp,
                                marker=bool(packet.marker),
                                keyframe_start=h264_keyframe_start(packet.payload),
                                payload=hooks.payload(packet)), now)
        frame = self.playout.take()  # one per packet, as aiortc's receiver takes them
        if frame is None:
            return False, None
        return False, JitterFrame(data=frame.data, timestamp=frame.timestamp)


class ScheduledNacks:
    """Stands in for aiortc's NackGenerator: ``add`` says whether to send a NACK now and
    ``missing`` which packets (the playout's schedule: at once, then at RTT intervals)."""

    def __init__(self, playout: Playout, clock: Callable[[], float] = time.monotonic) -> None:
        self.playout = playout
        self._clock = clock
        self.missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        now = self._clock()
        self.playout.observe(packet.sequence_number, now)
        self.missing = set(self.playout.due_nacks(now))
        return bool(self.missing)


def release_frames_on_marker(receiver: RTCRtpReceiver) -> None:
    """Give an unstarted video receiver a :class:`MarkerJitterBuffer` (same size)."""
    check_receiver_hooks(receiver)
    _swap_jitter_buffer(receiver)


def _swap_jitter_buffer(receiver: RTCRtpReceiver) -> None:
    stock = hooks.jitter_buffer(receiver)
    hooks.set_jitter_buffer(receiver, MarkerJitterBuffer(stock.capacity, is_video=True))


def _is_keyframe(codec: RTCRtpCodecParameters, frame: JitterFrame) -> bool:
    if codec.name.lower() != "h264":
        return True  # the viewer negotiates H.264 only (prefer_h264); cannot tell otherwise
    try:
        return is_idr(frame.data)
    except ValueError:
        return False


class _DecoderQueue(queue.Queue):  # type: ignore[type-arg]
    """aiortc's receiver hands (codec, JitterFrame) to its decoder thread through this.

    It gives each access unit to ``tee`` first (on the loop thread: the healing
    viewer counts arrivals there and records them, so a recording keeps every
    frame that arrived). Then, live video drops: if the
    decoder is ``backlog`` frames behind, the undecoded frames are thrown away
    and nothing more is queued until a keyframe, which it asks for the way
    aiortc does after a decode error (the receiver sends a PLI with its next
    packet, RFC 4585 section 6.3.1) and asks again every ``backlog`` drops.
    """

    def __init__(
        self,
        keyframe_wanted: threading.Event,
        tee: Tee | None = None,
        backlog: int = DECODER_BACKLOG,
    ) -> None:
        super().__init__()
        self._keyframe_wanted = keyframe_wanted
        self._tee = tee
        self._backlog = backlog
        self._awaiting_keyframe = False
        self._dropped_since_ask = 0
        self.dropped = 0
        """Frames never decoded because the decoder was too far behind."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # aiortc stopping its decoder thread
            super().put(item, block, timeout)
            return
        codec, frame = item
        if self._tee is not None:
            try:
                self._tee(frame, _is_keyframe(codec, frame))
            except (av.FFmpegError, ValueError) as exc:
                logger.warning("recording: dropped a frame: %s", exc)
        overflow = not self._awaiting_keyframe and self.qsize() >= self._backlog
        if overflow:
            with self.mutex:  # the decoder thread may be taking one right now
                stale = len(self.queue)
                self.queue.clear()
            self.dropped += stale
            self._awaiting_keyframe = True
            logger.warning("decoder %d frames behind: dropped them, restarting at a keyframe",
                           stale)
        if self._awaiting_keyframe:
            if not _is_keyframe(codec, frame):
                self.dropped += 1
                self._dropped_since_ask += 1
                if overflow or self._dropped_since_ask >= self._backlog:
                    self._dropped_since_ask = 0
                    self._keyframe_wanted.set()
                return
            self._awaiting_keyframe = False
        super().put(item, block, timeout)


def _hook_receiver(receiver: RTCRtpReceiver, tee: Tee | None,
                   settings: ReceiveSettings | None = None) -> tuple[_DecoderQueue,
                                                                      PlayoutCounters | None]:
    """The CLI viewer's receiver: a bounded decoder queue, and either the playout
    (``settings.playout``: bounded waits, skipping) or frames released on the marker;
    with ``settings.nack`` the playout's NACK schedule replaces aiortc's."""
    settings = settings or ReceiveSettings()
    check_receiver_hooks(receiver)
    keyframe_wanted = hooks.decoder_error(receiver)
    counters: PlayoutCounters | None = None
    if settings.playout or settings.nack:
        playout = Playout(settings, on_keyframe_request=keyframe_wanted.set)
        counters = playout.counters
        if settings.playout:
            stock = hooks.jitter_buffer(receiver)
            hooks.set_jitter_buffer(receiver, PlayoutJitterBuffer(stock.capacity, playout))
        else:
            _swap_jitter_buffer(receiver)
        if settings.nack:
            hooks.set_nack_generator(receiver, ScheduledNacks(playout))
    else:
        _swap_jitter_buffer(receiver)
    decoder_queue = _DecoderQueue(keyframe_wanted, tee)
    hooks.set_decoder_queue(receiver, decoder_queue)
    return decoder_queue, counters


@functools.cache
def _gray_of_luma() -> npt.NDArray[np.uint8]:
    """What ``to_ndarray(format="gray")`` makes of each limited-range luma value.

    swscale stretches video-range luma to full range (16 -> 0, 235 -> 255), one
    value at a time; the table is taken from swscale itself, so the stamp reads
    exactly the numbers the whole-picture conversion would give.
    """
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 1))  # a 256 x 2 yuv420p picture
    table: npt.NDArray[np.uint8] = av.VideoFrame.from_ndarray(ramp, format="yuv420p").to_ndarray(
        format="gray"
    )[0]
    return table


def stamp_region(frame: av.VideoFrame) -> npt.NDArray[Any]:
    """The part of a decoded picture :func:`camera.stamp.read` looks at, in gray.

    Equal to the top-left of ``frame.to_ndarray(format="gray")``, but read from the
    luma plane's corner instead of converting the whole picture (at 720p about
    0.06 ms instead of 0.8 ms per frame). Other pixel formats take the whole path.
    """
    name = frame.format.name
    if name not in ("yuv420p", "yuvj420p") or frame.width < CODE_WIDTH or (
        frame.height < CODE_HEIGHT
    ):
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8, count=CODE_HEIGHT * plane.line_size)
    corner = rows.reshape(CODE_HEIGHT, plane.line_size)[:, :CODE_WIDTH]
    if name == "yuvj420p" or frame.color_range == ColorRange.JPEG:
        return corner  # already full range: gray is the luma itself
    return _gray_of_luma()[corner]
