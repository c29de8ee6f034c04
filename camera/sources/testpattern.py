"""A synthetic moving picture, stamped and encoded by libx264: no camera needed.

Every picture carries the burnt-in stamp (:mod:`camera.stamp`) with its frame
number and capture time, so a viewer can measure latency and count lost frames.

Each picture is painted once at the configured size and encoded once per layer:
the high layer as painted, the low layer (``[video] low_*``) scaled down from the
same picture by its own libx264 encoder, with the same pts. The stamp is painted
at the high layer's size and scaled with the picture on the low one, where its
blocks are smaller than the 16 pixels a stamp reader needs: latency and lost
frames are measured on the high layer.

Two patterns: ``bars`` (the default: moving colour bars, cheap to draw, which
libx264 codes far below a 2 Mbit/s target) and ``texture`` (a panning, grainy
multi-scale texture a real scene's bitrate needs: the encoder reaches its
target, so benchmarks send the packet rate a camera really sends). The texture
is drawn from buffers made once at start; a picture costs a few array copies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time

import av
import numpy as np
import numpy.typing as npt

from camera import stamp
from camera.errors import BadConfig, SourceError
from camera.frames import VIDEO_CLOCK_RATE, EncodedFrame, Layer
from camera.sources.base import FrameSink, Source, VideoSettings
from camera.sources.x264 import EncodedPicture, X264Encoder

logger = logging.getLogger(__name__)

# Bar colours (Y, U, V), video range: white, yellow, cyan, green, magenta, red, blue.
_BARS = (
    (180, 128, 128),
    (162, 44, 142),
    (131, 156, 44),
    (112, 72, 58),
    (84, 184, 198),
    (65, 100, 212),
    (35, 212, 114),
)


class _Painter:
    """Renders picture n of the pattern into a reused I420 buffer."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        cw, ch = width // 2, height // 2
        # Twice as wide as the picture, so scrolling is one slice, no wrap logic.
        x = np.arange(2 * width)
        bar = (x * len(_BARS) // width) % len(_BARS)
        ramp = np.linspace(0.6, 1.0, height, dtype=np.float32)[:, None]
        luma = np.array([b[0] for b in _BARS], dtype=np.float32)[bar][None, :] * ramp
        self._y = np.clip(luma, 16, 235).astype(np.uint8)
        self._u = np.repeat(np.array([b[1] for b in _BARS], np.uint8)[bar[::2]][None, :], ch, 0)
        self._v = np.repeat(np.array([b[2] for b in _BARS], np.uint8)[bar[::2]][None, :], ch, 0)
        self.buffer = np.empty(width * height * 3 // 2, dtype=np.uint8)
        self.y = self.buffer[: width * height].reshape(height, width)
        self.u = self.buffer[width * height : width * height + cw * ch].reshape(ch, cw)
        self.v = self.buffer[width * height + cw * ch :].reshape(ch, cw)
        self._box = max(16, (min(width, height) // 6) & ~1)

    def render(self, n: int, capture_ms: int) -> npt.NDArray[np.uint8]:
        width = self.width
        shift = (n * 4) % width & ~1
        self.y[:] = self._y[:, shift : shift + width]
        self.u[:] = self._u[:, shift // 2 : shift // 2 + width // 2]
        self.v[:] = self._v[:, shift // 2 : shift // 2 + width // 2]
        return self._finish(n, capture_ms)

    def _finish(self, n: int, capture_ms: int) -> npt.NDArray[np.uint8]:
        """The moving box and the stamp over the background: the picture, as I420."""
        width, height = self.width, self.height
        # A box moving on a Lissajous path: motion the encoder must really code.
        box = self._box
        bx = int((width - box) * (0.5 + 0.5 * math.sin(n / 23.0))) & ~1
        by = int((height - box) * (0.5 + 0.5 * math.sin(n / 31.0))) & ~1
        self.y[by : by + box, bx : bx + box] = 235 - (n % 64)
        self.u[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 90
        self.v[by // 2 : (by + box) // 2, bx // 2 : (bx + box) // 2] = 240
        stamp.paint(self.y, n, capture_ms)
        # Grey chroma under the stamp: black and white, not tinted by the background.
        self.u[: stamp.TEXT_BOTTOM // 2, : stamp.CODE_WIDTH // 2] = 128
        self.v[: stamp.TEXT_BOTTOM // 2, : stamp.CODE_WIDTH // 2] = 128
        return self.buffer.reshape(height * 3 // 2, width)


class _TexturePainter(_Painter):
    """A panning multi-scale texture with fresh grain every picture, the moving box
    and the stamp: detail and motion that make libx264 spend its whole bitrate."""

    GRAIN_PLANES = 8
    """Grain buffers made at start and cycled (a picture adds one, shifted)."""

    def __init__(self, width: int, height: int, seed: int = 1) -> None:
        super().__init__(width, height)
        rng = np.random.default_rng(seed)
        tw, th = 2 * width, 2 * height
        luma = np.zeros((th, tw), np.float32)
        # Blobs at several scales (pixel-repeated noise): edges the encoder codes
        # at every size, motion it can track.
        for scale, weight in ((64, 0.35), (16, 0.3), (4, 0.2), (1, 0.15)):
            small = rng.random((th // scale + 1, tw // scale + 1), dtype=np.float32)
            luma += weight * np.repeat(np.repeat(small, scale, 0), scale, 1)[:th, :tw]
        self._texture = (28 + luma * 180).astype(np.uint8)
        cw, ch = tw // 2, th // 2
        chroma = rng.random((ch // 32 + 1, cw // 32 + 1, 2), dtype=np.float32)
        chroma = np.repeat(np.repeat(chroma, 32, 0), 32, 1)[:ch, :cw]
        self._tu = (88 + chroma[..., 0] * 80).astype(np.uint8)
        self._tv = (88 + chroma[..., 1] * 80).astype(np.uint8)
        self._grain = rng.integers(0, 18, (self.GRAIN_PLANES, height + 16, width + 16),
                                   dtype=np.uint8)
        self._scratch = np.empty((height, width), np.uint8)

    def render(self, n: int, capture_ms: int) -> npt.NDArray[np.uint8]:
        width, height = self.width, self.height
        # Pan along a slow ellipse (about 5 pixels a picture), never repeating a view.
        x = int((width // 2) * (1 + math.sin(n / 41.0))) & ~1
        y = int((height // 2) * (1 + math.sin(n / 53.0))) & ~1
        np.copyto(self.y, self._texture[y : y + height, x : x + width])
        grain = self._grain[n % self.GRAIN_PLANES]
        gx, gy = (n * 7) % 16, (n * 5) % 16
        np.add(self.y, grain[gy : gy + height, gx : gx + width], out=self.y)
        self.u[:] = self._tu[y // 2 : y // 2 + height // 2, x // 2 : x // 2 + width // 2]
        self.v[:] = self._tv[y // 2 : y // 2 + height // 2, x // 2 : x // 2 + width // 2]
        return self._finish(n, capture_ms)


PATTERNS = ("bars", "texture")
"""The pictures :class:`TestPatternSource` can draw."""


def make_painter(pattern: str, width: int, height: int) -> _Painter:
    """The painter for ``pattern`` (one of :data:`PATTERNS`)."""
    if pattern == "bars":
        return _Painter(width, height)
    if pattern == "texture":
        return _TexturePainter(width, height)
    raise BadConfig(f"test pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")


class TestPatternSource(Source):
    """Moving colour bars with a burnt-in stamp, encoded once per layer by libx264."""

    name = "testpattern"
    __test__ = False  # not a pytest class, despite the name

    def __init__(self, settings: VideoSettings, preset: str = "veryfast",
                 pattern: str = "bars") -> None:
        if pattern not in PATTERNS:
            raise BadConfig(f"test pattern {pattern!r}: choose one of {', '.join(PATTERNS)}")
        if settings.width < stamp.CODE_WIDTH or settings.height < stamp.CODE_HEIGHT:
            raise BadConfig(
                f"test pattern {settings.width}x{settings.height}: the stamp needs at least "
                f"{stamp.CODE_WIDTH}x{stamp.CODE_HEIGHT}"
            )
        self.settings = settings
        self._preset = preset
        self.pattern = pattern
        self._delivered = 0
        self.error: SourceError | None = None
        """Why frames stopped, if they stopped on their own."""
        self._want_idr: set[Layer] = set()
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._encoders: dict[Layer, X264Encoder] = {}
        self._closed = False

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.settings.layers

    async def start(self, sink: FrameSink) -> None:
        if self._task is not None or self._closed:
            raise RuntimeError("TestPatternSource can be started once")
        self._encoders = {layer: X264Encoder(self.settings.for_layer(layer), self._preset)
                          for layer in self.layers}
        # One dedicated thread: the encoder is used by one thread only, and a
        # slow encode never holds up the event loop.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "testpattern-x264")
        self._task = asyncio.get_running_loop().create_task(self._run(sink), name="testpattern")

    def request_keyframe(self, layer: Layer = Layer.HIGH) -> None:
        if layer in self.layers:
            self._want_idr.add(layer)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        executor, self._executor = self._executor, None
        if executor is not None:
            # Waits for an encode that is still running (at most one picture).
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        encoders, self._encoders = self._encoders, {}
        for encoder in encoders.values():
            encoder.close()

    def _encode(
        self, painter: _Painter, n: int, capture_time: float, force_idr: frozenset[Layer]
    ) -> list[tuple[Layer, EncodedPicture]]:
        """Paint picture ``n`` once; encode it once per layer (the low one scaled)."""
        yuv = painter.render(n, int(capture_time * 1000))
        picture = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return [
            (layer, encoded)
            for layer, encoder in self._encoders.items()
            for encoded in encoder.encode(picture, layer in force_idr)
        ]

    async def _run(self, sink: FrameSink) -> None:
        try:
            await self._produce(sink)
        except Exception as exc:
            # Recorded for status and health checks; the watchdog sees frames stop.
            self.error = exc if isinstance(exc, SourceError) else SourceError(str(exc))
            logger.exception("test pattern stopped")

    async def _produce(self, sink: FrameSink) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        assert self._executor is not None
        # The texture's buffers take a moment to make: not on the event loop.
        painter = await loop.run_in_executor(
            self._executor, make_painter, self.pattern, settings.width, settings.height)
        period = 1.0 / settings.fps
        ticks = VIDEO_CLOCK_RATE // settings.fps
        start = loop.time()
        slot = 0  # the time slot this picture belongs to: pts and pacing
        number = 0  # pictures made: the stamp's frame number
        while True:
            # Deadlines come from the start time, not the last wake-up: no drift.
            delay = start + slot * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -period:
                # Behind by more than a picture (slow encode, busy loop): skip
                # the missed slots and restart the grid from now, instead of
                # bursting to catch up.
                missed = int(-delay / period)
                logger.debug("test pattern behind by %d picture(s): skipping", missed)
                slot += missed
                start = loop.time() - slot * period
            force_idr, self._want_idr = frozenset(self._want_idr), set()
            capture_time = time.time()
            assert self._executor is not None
            pictures = await loop.run_in_executor(
                self._executor, self._encode, painter, number, capture_time, force_idr
            )
            number += 1
            for layer, picture in pictures:
                frame = EncodedFrame(picture.data, slot * ticks, picture.keyframe, capture_time,
                                     layer)
                self._delivered += 1
                try:
                    sink(frame)
                except Exception:
                    logger.exception("frame sink failed; the source keeps running")
            slot += 1
