"""A USB (UVC) webcam through V4L2, read with PyAV.

Two paths, chosen by what the device delivers:

* H.264 passthrough: the camera's own stream is forwarded untouched (SPS/PPS
  re-inserted in front of IDRs that lack them). ``request_keyframe`` is best
  effort there: V4L2 through libavdevice cannot ask a UVC camera for an IDR, so
  viewers wait for the camera's own GOP.
* MJPEG or raw: each picture is decoded and encoded ONCE by the shared libx264
  encoder (:mod:`camera.sources.x264`); keyframe requests are exact.

The device is read on a thread of its own (reads block); each access unit
crosses into the event loop once, through ``loop.call_soon_threadsafe``. The
device path, demuxer and its options are parameters so tests can feed a file
through the same code.

One layer only (``[video] low_*`` does not apply): a passthrough stream cannot
be scaled without re-encoding, and a USB camera's host is usually short of CPU
for a second libx264 encode.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import av

from camera import h264
from camera.errors import BadConfig, SourceError
from camera.frames import VIDEO_CLOCK_RATE, EncodedFrame, Layer
from camera.sources.base import FrameSink, Source, VideoSettings
from camera.sources.x264 import X264Encoder

logger = logging.getLogger(__name__)

INPUT_FORMATS = ("h264", "mjpeg", "yuyv422")


class V4L2Source(Source):
    """A V4L2 webcam: native H.264 passed through, anything else re-encoded once."""

    name = "v4l2"

    def __init__(
        self,
        settings: VideoSettings,
        device: str = "/dev/video0",
        input_format: str = "mjpeg",
        *,
        container_format: str | None = "v4l2",
        container_options: dict[str, str] | None = None,
        join_timeout: float = 2.0,
    ) -> None:
        if input_format not in INPUT_FORMATS:
            raise BadConfig(f"v4l2 input format {input_format!r}: need one of {INPUT_FORMATS}")
        self.settings = settings
        self.device = device
        self.input_format = input_format
        self._container_format = container_format
        if container_options is None:
            container_options = {
                "input_format": input_format,
                "video_size": f"{settings.width}x{settings.height}",
                "framerate": str(settings.fps),
            }
        self._container_options = container_options
        self._join_timeout = join_timeout
        self._delivered = 0
        self._want_idr = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._container: av.container.InputContainer | None = None
        self._sink: FrameSink | None = None
        self.passthrough = False
        self.error: SourceError | None = None
        """Why the reader thread stopped, if it stopped on its own."""

    async def start(self, sink: FrameSink) -> None:
        if self._thread is not None:
            raise RuntimeError("V4L2Source can be started once")
        loop = asyncio.get_running_loop()
        self._container = await loop.run_in_executor(None, self._open)
        stream = self._container.streams.video[0]
        self.passthrough = stream.codec_context.name == "h264"
        logger.info(
            "%s: %s %dx%d, %s",
            self.device,
            stream.codec_context.name,
            stream.codec_context.width,
            stream.codec_context.height,
            "passthrough" if self.passthrough else "re-encoded by libx264",
        )
        encoder = None if self.passthrough else X264Encoder(self.settings)
        self._sink = sink
        self._thread = threading.Thread(
            target=self._read_loop, args=(loop, encoder), name="v4l2-reader", daemon=True
        )
        self._thread.start()

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(
                self.device, format=self._container_format, options=self._container_options
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open camera {self.device}: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.device} has no video stream")
        return container

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        if layer is not Layer.HIGH:
            return  # one layer only
        if self.passthrough:
            logger.debug("%s: keyframe request ignored (camera H.264 passthrough)", self.device)
        self._want_idr.set()

    async def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # A blocked read returns within one frame period of the device.
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self._join_timeout)
            if thread.is_alive():
                logger.warning("%s: reader thread did not stop in time", self.device)
        container, self._container = self._container, None
        if container is not None and (thread is None or not thread.is_alive()):
            container.close()

    def _deliver(self, frame: EncodedFrame) -> None:
        # Runs on the event loop thread.
        if self._stop.is_set() or self._sink is None:
            return
        self._delivered += 1
        try:
            self._sink(frame)
        except Exception:
            logger.exception("frame sink failed; the source keeps running")

    def _read_loop(self, loop: asyncio.AbstractEventLoop, encoder: X264Encoder | None) -> None:
        assert self._container is not None
        stream = self._container.streams.video[0]
        params = h264.ParameterSetInserter()
        ticks = VIDEO_CLOCK_RATE // self.settings.fps
        time_base = stream.time_base
        first_ts: int | None = None
        last_pts = -1
        try:
            for packet in self._container.demux(stream):
                if self._stop.is_set():
                    return
                if not packet.size:
                    continue
                capture_time = time.time()
                # The device's own timestamps keep real frame spacing (a webcam
                # slows down in the dark); counted frames stand in without them.
                if packet.pts is not None and time_base is not None:
                    ts = int(packet.pts * time_base * VIDEO_CLOCK_RATE)
                    first_ts = ts if first_ts is None else first_ts
                    pts = ts - first_ts
                else:
                    pts = last_pts + ticks
                if encoder is None:
                    try:
                        data = params.process(bytes(packet))
                        units = [(data, h264.is_idr(data))]
                    except ValueError as exc:
                        logger.warning("%s: dropping a malformed access unit: %s", self.device, exc)
                        continue
                else:
                    units = []
                    for picture in packet.decode():
                        force = self._want_idr.is_set()
                        self._want_idr.clear()
                        units.extend((p.data, p.keyframe) for p in encoder.encode(picture, force))
                for data, keyframe in units:
                    pts = max(pts, last_pts + 1)  # monotonic, whatever the device says
                    last_pts = pts
                    frame = EncodedFrame(data, pts, keyframe, capture_time)
                    loop.call_soon_threadsafe(self._deliver, frame)
            error = SourceError(f"{self.device}: end of stream")
        except (av.FFmpegError, OSError) as exc:
            error = SourceError(f"{self.device}: {exc}")
        except RuntimeError as exc:  # the loop closed under us
            logger.debug("%s: reader stopping: %s", self.device, exc)
            return
        finally:
            if encoder is not None:
                encoder.close()
        if self._stop.is_set():
            return
        # Through the loop too, so that once ``error`` is set every frame read
        # before it has reached the sink.
        try:
            loop.call_soon_threadsafe(self._finish, error)
        except RuntimeError:
            self.error = error

    def _finish(self, error: SourceError) -> None:
        self.error = error
        if not self._stop.is_set():
            logger.error("camera stopped: %s", error)
