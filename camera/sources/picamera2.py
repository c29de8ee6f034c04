"""The Raspberry Pi camera through picamera2 and the Pi's hardware H.264 encoder.

picamera2 comes from apt on the Pi (python3-picamera2) and is not a pip
dependency: it is imported inside :meth:`Picamera2Source.start`, never at import
time, and the module can be injected so tests run with a fake.

picamera2 calls ``Output.outputframe`` on its encoder thread; each access unit
crosses into the event loop exactly once, through ``loop.call_soon_threadsafe``.

Two layers when ``[video]`` asks for the low one: the ISP's ``main`` stream at the
configured size and its ``lores`` stream at the low size, each with its own
``H264Encoder`` (the hardware encoder runs two sessions), started with
``start_encoder(..., name=...)``. Both streams come from the same requests, so
their sensor timestamps (and so their pts) are the same. The two-encoder set-up
is exercised here with a fake picamera2 module; it needs checking on a Pi.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
import time
from types import ModuleType
from typing import Any

from camera.errors import SourceError
from camera.frames import VIDEO_CLOCK_RATE, EncodedFrame, Layer
from camera.sources.base import FrameSink, Source, VideoSettings

logger = logging.getLogger(__name__)


def import_picamera2() -> ModuleType:
    """The real picamera2 package with its encoders and outputs subpackages."""
    try:
        module = importlib.import_module("picamera2")
        importlib.import_module("picamera2.encoders")
        importlib.import_module("picamera2.outputs")
    except ImportError as exc:
        raise SourceError(
            f"picamera2 is not available ({exc}); on Raspberry Pi OS: apt install python3-picamera2"
        ) from exc
    return module


def _make_output(base: type[Any], handoff: Any) -> Any:
    """An instance of a picamera2 ``Output`` subclass that forwards to ``handoff``."""

    class LoopOutput(base):  # type: ignore[misc]
        """Runs on picamera2's encoder thread: copies the frame and hands it off."""

        def outputframe(
            self,
            frame: bytes,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            if audio:
                return
            # bytes() copies: the encoder reuses its buffer once we return.
            handoff(bytes(frame), bool(keyframe), timestamp)

    return LoopOutput()


def _capture_time(timestamp_us: int | None) -> float:
    """Wall-clock capture time from the sensor timestamp (CLOCK_BOOTTIME, µs)."""
    now = time.time()
    if timestamp_us is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return now
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - timestamp_us / 1e6
    # A fake or another clock gives nonsense ages: then "now" is the best guess.
    return now - age if 0.0 <= age < 1.0 else now


class Picamera2Source(Source):
    """A Pi camera module, encoded once by the hardware H.264 encoder."""

    name = "picamera2"

    def __init__(
        self,
        settings: VideoSettings,
        *,
        camera_num: int = 0,
        picamera2_module: ModuleType | Any | None = None,
    ) -> None:
        self.settings = settings
        self.camera_num = camera_num
        self._module = picamera2_module
        self._delivered = 0
        self._camera: Any = None
        self._encoders: dict[Layer, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: FrameSink | None = None
        self._first_ts: int | None = None
        """The first sensor timestamp of either stream: pts 0 for both layers."""
        self._first_lock = threading.Lock()
        self._last_pts: dict[Layer, int] = {}
        self._count: dict[Layer, int] = {}
        self._closed = False

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.settings.layers

    async def start(self, sink: FrameSink) -> None:
        if self._camera is not None or self._closed:
            raise RuntimeError("Picamera2Source can be started once")
        module = self._module if self._module is not None else import_picamera2()
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        # Opening and starting the camera blocks for a few hundred ms.
        await self._loop.run_in_executor(None, self._start_camera, module)

    def _encoder_for(self, module: Any, layer: Layer) -> Any:
        s = self.settings.for_layer(layer)
        kwargs: dict[str, Any] = {
            "bitrate": s.bitrate,
            "repeat": True,  # SPS/PPS in front of every IDR
            "iperiod": s.gop_frames,
            "framerate": s.fps,
        }
        try:
            return module.encoders.H264Encoder(profile="baseline", **kwargs)
        except TypeError:
            # picamera2 before 0.3.17 has no profile argument.
            logger.warning("this picamera2 cannot set the H.264 profile; using its default")
            return module.encoders.H264Encoder(**kwargs)

    def _start_camera(self, module: Any) -> None:
        s = self.settings
        camera = module.Picamera2(self.camera_num)
        try:
            streams: dict[str, Any] = {"main": {"size": (s.width, s.height), "format": "YUV420"}}
            if Layer.LOW in self.layers:
                low = s.for_layer(Layer.LOW)
                streams["lores"] = {"size": (low.width, low.height), "format": "YUV420"}
            config = camera.create_video_configuration(**streams, controls={"FrameRate": s.fps})
            camera.configure(config)
            encoders: dict[Layer, Any] = {}
            for layer, stream in zip(self.layers, ("main", "lores"), strict=False):
                encoders[layer] = self._encoder_for(module, layer)
                output = _make_output(module.outputs.Output, self._handoff_for(layer))
                camera.start_encoder(encoders[layer], output, name=stream)
            camera.start()
        except Exception as exc:
            camera.close()
            raise SourceError(f"picamera2 camera {self.camera_num} failed to start: {exc}") from exc
        self._camera, self._encoders = camera, encoders
        logger.info("picamera2 camera %d recording %s (layers: %s)", self.camera_num, s,
                    ", ".join(layer.label for layer in self.layers))

    def _handoff_for(self, layer: Layer) -> Any:
        def handoff(data: bytes, keyframe: bool, timestamp_us: int | None) -> None:
            self._handoff(layer, data, keyframe, timestamp_us)

        return handoff

    def _handoff(
        self, layer: Layer, data: bytes, keyframe: bool, timestamp_us: int | None
    ) -> None:
        # Encoder thread: compute what needs the capture moment, then cross once.
        loop = self._loop
        if loop is None or self._closed:
            return
        capture_time = _capture_time(timestamp_us)
        count = self._count.get(layer, 0)
        if timestamp_us is not None:
            with self._first_lock:  # either layer's encoder thread may be first
                if self._first_ts is None:
                    self._first_ts = timestamp_us
                first = self._first_ts
            pts = max(0, timestamp_us - first) * VIDEO_CLOCK_RATE // 1_000_000
        else:
            pts = count * (VIDEO_CLOCK_RATE // self.settings.fps)
        self._count[layer] = count + 1
        pts = max(pts, self._last_pts.get(layer, -1) + 1)
        self._last_pts[layer] = pts
        frame = EncodedFrame(data, pts, keyframe, capture_time, layer)
        try:
            loop.call_soon_threadsafe(self._deliver, frame)
        except RuntimeError:
            pass  # the loop is closed: we are shutting down

    def _deliver(self, frame: EncodedFrame) -> None:
        if self._closed or self._sink is None:
            return
        self._delivered += 1
        try:
            self._sink(frame)
        except Exception:
            logger.exception("frame sink failed; the source keeps running")

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        encoder = self._encoders.get(layer)
        if encoder is None:
            return
        try:
            encoder.force_key_frame()
        except (AttributeError, OSError) as exc:
            logger.warning("picamera2 could not force a keyframe: %s", exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        camera, self._camera = self._camera, None
        self._encoders = {}
        if camera is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop_camera, camera)

    @staticmethod
    def _stop_camera(camera: Any) -> None:
        try:
            camera.stop_recording()  # stops the camera and every encoder
        finally:
            camera.close()
