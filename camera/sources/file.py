"""Loops a recorded H.264 file (MP4 or raw Annex-B) without re-encoding.

Keyframe requests: a file cannot make a new IDR. Rather than make a joining
viewer wait up to a whole GOP, a request skips forward to the file's next
keyframe: the packets in between are dropped (not decoded) and that IDR is sent
at the next picture time. Viewers see the picture jump ahead a little; pts stay
monotonic. At end of file the source starts again from the first keyframe.

One layer only: the file is sent as recorded, never re-encoded, so there is no
smaller layer for viewers on thin links (``[video] low_*`` does not apply).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import av.bitstream

from camera import h264
from camera.errors import SourceError
from camera.frames import VIDEO_CLOCK_RATE, EncodedFrame, Layer
from camera.sources.base import FrameSink, Source, VideoSettings

logger = logging.getLogger(__name__)

#: Fall this far behind the file's clock and pacing restarts from now, so a
#: stall (suspended process, slow disk) never turns into a burst of frames.
_RESYNC_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class _Unit:
    data: bytes
    keyframe: bool
    pts: int
    """Output pts in 90 kHz ticks, monotonic across loops and skips."""


class _Reader:
    """Blocking demuxer: Annex-B access units with continuous 90 kHz pts."""

    def __init__(self, path: str, default_duration: int) -> None:
        self.path = path
        self._params = h264.ParameterSetInserter()
        self._default_duration = default_duration
        self._last_file_ts: int | None = None
        self._last_pts = -default_duration
        self._restart_pending = False
        self._open()

    def _open(self) -> None:
        path = self.path
        try:
            self._container = av.open(path)
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open video file {path!r}: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{path!r} has no video stream")
        self._stream = self._container.streams.video[0]
        codec = self._stream.codec_context.name
        if codec != "h264":
            self._container.close()
            raise SourceError(f"{path!r} holds {codec}, not H.264: re-encode it first")
        extradata = self._stream.codec_context.extradata or b""
        # avcC extradata (ISO 14496-15) starts with configurationVersion 1: the
        # packets are length-prefixed and the SPS/PPS live only in extradata.
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        if extradata[:1] == b"\x01":
            self._bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", self._stream)
        self._time_base: Fraction = self._stream.time_base or Fraction(1, VIDEO_CLOCK_RATE)
        self._packets: Iterator[av.Packet[Any]] = self._container.demux(self._stream)

    def _ticks(self, value: int | None) -> int | None:
        if value is None:
            return None
        return int(value * self._time_base * VIDEO_CLOCK_RATE)

    def _next_packet(self) -> av.Packet[Any]:
        for _attempt in range(2):
            for packet in self._packets:
                if packet.size:  # the demuxer ends with an empty flush packet
                    return packet
            # End of file: start over. Reopening works for every container
            # (a raw .h264 stream cannot seek). The next picture follows on at
            # one frame duration, whatever the file's own timestamps say.
            self._container.close()
            self._open()
            self._restart_pending = True
        raise SourceError(f"{self.path!r} has no video packets")

    def read(self, skip_to_keyframe: bool) -> _Unit:
        """The next access unit; with ``skip_to_keyframe``, the next IDR."""
        while True:
            packet = self._next_packet()
            packets = self._bsf.filter(packet) if self._bsf is not None else [packet]
            data = b"".join(bytes(p) for p in packets)
            if not data:
                continue
            try:
                data = self._params.process(data)
                keyframe = h264.is_idr(data)
            except ValueError as exc:
                logger.warning("skipping a malformed packet in %s: %s", self.path, exc)
                continue
            file_ts = self._ticks(packet.dts if packet.dts is not None else packet.pts)
            jump = skip_to_keyframe or self._restart_pending
            if skip_to_keyframe and not keyframe:
                self._last_file_ts = None
                continue
            step = self._default_duration
            if not jump and file_ts is not None and self._last_file_ts is not None:
                delta = file_ts - self._last_file_ts
                if delta > 0:
                    step = delta
            self._last_file_ts = file_ts
            self._restart_pending = False
            self._last_pts += step
            return _Unit(data, keyframe, self._last_pts)

    def close(self) -> None:
        self._container.close()


class FileSource(Source):
    """Plays an H.264 file in a loop at its own pace, as a camera would."""

    name = "file"

    def __init__(self, settings: VideoSettings, path: str | os.PathLike[str]) -> None:
        self.settings = settings
        self.path = os.fspath(path)
        self._delivered = 0
        self.error: SourceError | None = None
        """Why frames stopped, if they stopped on their own."""
        self._skip_requested = False
        self.keyframe_requests = 0
        self._reader: _Reader | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, sink: FrameSink) -> None:
        if self._task is not None or self._closed:
            raise RuntimeError("FileSource can be started once")
        loop = asyncio.get_running_loop()
        # Demuxing is blocking file I/O: it runs on one thread of its own.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "file-source")
        duration = VIDEO_CLOCK_RATE // self.settings.fps
        self._reader = await loop.run_in_executor(self._executor, _Reader, self.path, duration)
        logger.info("playing %s in a loop", self.path)
        self._task = loop.create_task(self._run(sink), name="file-source")

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        if layer is not Layer.HIGH:
            return  # one layer only
        self.keyframe_requests += 1
        self._skip_requested = True

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    async def _run(self, sink: FrameSink) -> None:
        try:
            await self._produce(sink)
        except Exception as exc:
            # Recorded for status and health checks; the watchdog sees frames stop.
            self.error = exc if isinstance(exc, SourceError) else SourceError(str(exc))
            logger.exception("file source stopped")

    async def _produce(self, sink: FrameSink) -> None:
        loop = asyncio.get_running_loop()
        assert self._reader is not None and self._executor is not None
        origin: float | None = None  # loop time at which output pts 0 is due
        while True:
            skip, self._skip_requested = self._skip_requested, False
            unit = await loop.run_in_executor(self._executor, self._reader.read, skip)
            due_in = unit.pts / VIDEO_CLOCK_RATE
            if origin is None or loop.time() - (origin + due_in) > _RESYNC_SECONDS:
                origin = loop.time() - due_in
            delay = origin + due_in - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._delivered += 1
            try:
                sink(EncodedFrame(unit.data, unit.pts, unit.keyframe, time.time()))
            except Exception:
                logger.exception("frame sink failed; the source keeps running")
