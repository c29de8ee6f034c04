"""Every source's frame stream: pacing, IDRs, profile, hand-off to the loop thread."""

from __future__ import annotations

import asyncio
import threading
import time
import types
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from camera import h264, stamp
from camera.errors import BadConfig, SourceError
from camera.frames import EncodedFrame, Layer
from camera.sources.base import Source, VideoSettings
from camera.sources.file import FileSource
from camera.sources.picamera2 import Picamera2Source
from camera.sources.registry import SOURCE_NAMES, make_source
from camera.sources.testpattern import TestPatternSource
from camera.sources.v4l2 import V4L2Source
from camera.sources.x264 import X264Encoder
from tests.conftest import scaled

SMALL = VideoSettings(width=320, height=240, fps=30, bitrate=500_000, gop_seconds=60,
                      low_layer=False)
LAYERED = VideoSettings(width=640, height=360, fps=30, bitrate=1_000_000, gop_seconds=60,
                        low_width=320, low_height=180, low_bitrate=100_000)


class Collector:
    """A sink that records frames, the thread they arrived on, and can react."""

    def __init__(self, on_frame: Callable[[int, EncodedFrame], None] | None = None) -> None:
        self.frames: list[EncodedFrame] = []
        self.threads: set[int] = set()
        self.times: list[float] = []
        self._on_frame = on_frame
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __call__(self, frame: EncodedFrame) -> None:
        self.frames.append(frame)
        self.threads.add(threading.get_ident())
        self.times.append(time.monotonic())
        if self._on_frame is not None:
            self._on_frame(len(self.frames) - 1, frame)
        for count, future in self._waiters:
            if len(self.frames) >= count and not future.done():
                future.set_result(None)

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        if len(self.frames) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await asyncio.wait_for(future, scaled(timeout))


def decode_lumas(frames: list[EncodedFrame]) -> list[np.ndarray]:
    decoder = av.CodecContext.create("h264", "r")
    lumas = []
    for frame in frames:
        for picture in decoder.decode(av.Packet(frame.data)):
            lumas.append(picture.to_ndarray(format="gray"))
    return lumas


def assert_monotonic(frames: list[EncodedFrame]) -> None:
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), pts


def assert_constrained_baseline_idr(frame: EncodedFrame) -> str:
    assert frame.keyframe
    assert h264.is_idr(frame.data)
    sps = h264.find_sps(frame.data)
    assert sps is not None, "IDR without SPS in front"
    types_ = h264.nal_types(frame.data)
    assert h264.NalType.PICTURE_PARAMETER_SET in types_
    plid = h264.profile_level_id(sps)
    assert h264.is_constrained_baseline(plid), plid
    return plid


# --- test pattern -----------------------------------------------------------


async def test_testpattern_paces_at_fps_and_starts_with_a_constrained_baseline_idr() -> None:
    source = TestPatternSource(SMALL)
    sink = Collector()
    await source.start(sink)
    await asyncio.sleep(1.0)
    await source.close()
    count = len(sink.frames)
    await asyncio.sleep(0.1)
    assert len(sink.frames) == count, "frames after close()"
    assert 25 <= count <= 32, count  # 30 fps for one second, some start-up slack
    assert source.frames_delivered == count
    assert sink.threads == {threading.get_ident()}  # always on the loop thread
    plid = assert_constrained_baseline_idr(sink.frames[0])
    # x264 baseline sets constraint_set0+1; the level follows size, fps and VBV.
    assert plid == "42c00d"
    # Long GOP, nobody asked: only the first frame is an IDR.
    assert [i for i, f in enumerate(sink.frames) if f.keyframe] == [0]
    assert not any(h264.is_idr(f.data) for f in sink.frames[1:])
    assert_monotonic(sink.frames)
    assert {b.pts - a.pts for a, b in zip(sink.frames, sink.frames[1:], strict=False)} <= {
        3000,
        6000,
        9000,
    }
    # Pacing: no bursts. Frames arrive about one period apart on average.
    span = sink.times[-1] - sink.times[0]
    assert span == pytest.approx((count - 1) / 30, rel=0.2)


async def test_testpattern_moves_and_carries_the_stamp() -> None:
    source = TestPatternSource(SMALL)
    sink = Collector()
    await source.start(sink)
    await sink.wait_for(6)
    await source.close()
    lumas = decode_lumas(sink.frames[:6])
    stamps = [stamp.read(y) for y in lumas]
    assert [s[0] for s in stamps if s is not None] == [0, 1, 2, 3, 4, 5]
    for read, frame in zip(stamps, sink.frames, strict=False):
        assert read is not None
        assert read[1] == int(frame.capture_time * 1000)
    # The picture outside the stamp changes from frame to frame.
    below = [y[stamp.TEXT_BOTTOM :, :] for y in lumas]
    assert all(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(below, below[1:], strict=False))


def test_texture_pattern_spends_the_bitrate_bars_do_not_and_keeps_the_stamp() -> None:
    from camera.sources.testpattern import make_painter

    rates = {}
    for pattern in ("bars", "texture"):
        painter = make_painter(pattern, SMALL.width, SMALL.height)
        encoder = X264Encoder(SMALL)
        sizes, first = [], []
        for n in range(90):
            pictures = encoder.encode_yuv(painter.render(n, 5000 + n))
            sizes.append(sum(len(p.data) for p in pictures))
            first += [EncodedFrame(p.data, n * 3000, p.keyframe, 5.0) for p in pictures][:1]
        rates[pattern] = sum(sizes[30:]) * 8 / 2.0  # the last 60 pictures: 2 s at 30 fps
    assert abs(rates["texture"] - SMALL.bitrate) <= 0.1 * SMALL.bitrate, rates
    assert rates["bars"] < 0.5 * SMALL.bitrate, rates
    assert [stamp.read(y, 5000) for y in decode_lumas(first[:3])] == [(0, 5000), (1, 5001),
                                                                 (2, 5002)]
    with pytest.raises(BadConfig, match="'plaid'"):
        TestPatternSource(SMALL, pattern="plaid")


async def test_testpattern_keyframe_on_request_within_two_frames() -> None:
    source = TestPatternSource(SMALL)
    requested_at: list[int] = []

    def on_frame(index: int, frame: EncodedFrame) -> None:
        if index in (5, 12):
            requested_at.append(index)
            source.request_keyframe()

    sink = Collector(on_frame)
    await source.start(sink)
    await sink.wait_for(18)
    await source.close()
    await source.close()  # twice is safe
    idrs = [i for i, f in enumerate(sink.frames) if h264.is_idr(f.data)]
    assert idrs == [i for i, f in enumerate(sink.frames) if f.keyframe]
    assert idrs[0] == 0
    for asked in requested_at:
        assert any(asked < i <= asked + 2 for i in idrs), (asked, idrs)
    assert len(idrs) == 3  # the first one and one per request, nothing else
    for i in idrs:
        assert_constrained_baseline_idr(sink.frames[i])


async def test_testpattern_skips_rather_than_bursts_when_behind() -> None:
    source = TestPatternSource(SMALL)
    sink = Collector()
    await source.start(sink)
    await sink.wait_for(3)
    time.sleep(0.3)  # block the loop: ~9 picture slots go by
    stall_end = time.monotonic()
    await sink.wait_for(len(sink.frames) + 4)
    await source.close()
    gaps = [b.pts - a.pts for a, b in zip(sink.frames, sink.frames[1:], strict=False)]
    assert max(gaps) >= 6 * 3000, gaps  # slots were skipped, pts follow the clock
    # No burst to catch up: at most the picture in flight plus one fresh one
    # right after the stall (a burst would be ~9), then a period apart again.
    after = [t for t in sink.times if t >= stall_end]
    assert len([t for t in after if t < stall_end + 0.025]) <= 2, np.diff(after)
    assert np.diff(after[-3:]).min() > 0.02, np.diff(after)


async def test_testpattern_encodes_each_layer_at_its_size_and_bitrate() -> None:
    source = TestPatternSource(LAYERED)
    assert source.layers == (Layer.HIGH, Layer.LOW)
    sink = Collector()
    await source.start(sink)
    await sink.wait_for(2 * 60, timeout=10)  # two seconds of both layers
    await source.close()
    by_layer = {layer: [f for f in sink.frames if f.layer is layer] for layer in Layer}
    high, low = by_layer[Layer.HIGH], by_layer[Layer.LOW]
    # One access unit per picture and layer, the same pts on both (one timeline).
    assert abs(len(high) - len(low)) <= 1
    assert [f.pts for f in high[: len(low)]] == [f.pts for f in low[: len(high)]]
    for frames, size in ((high, (640, 360)), (low, (320, 180))):
        assert_constrained_baseline_idr(frames[0])
        assert [i for i, f in enumerate(frames) if f.keyframe] == [0]
        assert_monotonic(frames)
        decoder = av.CodecContext.create("h264", "r")
        pictures = [p for f in frames for p in decoder.decode(av.Packet(f.data))]
        assert len(pictures) == len(frames)
        assert {(p.width, p.height) for p in pictures} == {size}
    # Each layer within its own bitrate (VBV caps it; the simple pattern often
    # needs less), and the low layer far cheaper than the high one.
    seconds = len(low) / 30

    def rate(frames: list[EncodedFrame]) -> float:
        return 8 * sum(len(f.data) for f in frames) / seconds

    assert rate(high) < 1.3 * 1_000_000, rate(high)
    assert rate(low) < 1.3 * 100_000, rate(low)
    assert rate(low) < rate(high) / 2, (rate(low), rate(high))


async def test_testpattern_keyframe_request_goes_to_one_layer() -> None:
    source = TestPatternSource(LAYERED)
    asked: list[int] = []

    def on_frame(index: int, frame: EncodedFrame) -> None:
        if frame.layer is Layer.LOW and not asked and index > 10:
            asked.append(frame.pts)
            source.request_keyframe(Layer.LOW)

    sink = Collector(on_frame)
    await source.start(sink)
    await sink.wait_for(40)
    await source.close()
    low_idrs = [f.pts for f in sink.frames if f.layer is Layer.LOW and f.keyframe]
    high_idrs = [f.pts for f in sink.frames if f.layer is Layer.HIGH and f.keyframe]
    assert high_idrs == [0]  # untouched
    assert len(low_idrs) == 2 and 0 < low_idrs[1] - asked[0] <= 2 * 3000, (low_idrs, asked)
    low_idr = next(f for f in sink.frames if f.layer is Layer.LOW and f.pts == low_idrs[1])
    assert_constrained_baseline_idr(low_idr)


def test_video_settings_low_layer_defaults_and_checks() -> None:
    default = VideoSettings()
    assert default.layers == (Layer.HIGH, Layer.LOW)
    low = default.for_layer(Layer.LOW)
    assert (low.width, low.height, low.bitrate) == (640, 360, 300_000)
    assert low.layers == (Layer.HIGH,)  # a layer's encoder settings are single-layer
    assert default.for_layer(Layer.HIGH).width == 1280
    assert VideoSettings(low_layer=False).layers == (Layer.HIGH,)
    # Too small (or too thin) to halve: the automatic low layer is left out.
    assert VideoSettings(width=100, height=100).layers == (Layer.HIGH,)
    assert VideoSettings(bitrate=150_000).layers == (Layer.HIGH,)
    with pytest.raises(ValueError, match="'low' is not configured"):
        VideoSettings(low_layer=False).for_layer(Layer.LOW)
    with pytest.raises(BadConfig, match="low layer size 1280x720: need a smaller picture"):
        VideoSettings(low_width=1280, low_height=720)
    with pytest.raises(BadConfig, match="low layer size 641x360"):
        VideoSettings(low_width=641)
    with pytest.raises(BadConfig, match="low_bitrate 3000000"):
        VideoSettings(low_bitrate=3_000_000)
    with pytest.raises(BadConfig, match="low_width -2"):
        VideoSettings(low_width=-2)


def test_testpattern_rejects_a_picture_too_small_for_the_stamp() -> None:
    with pytest.raises(BadConfig, match="stamp needs at least 160x128"):
        TestPatternSource(VideoSettings(width=128, height=96))


# --- file -------------------------------------------------------------------


def write_mp4(path: Path, frames: int, fps: int, keyint: int) -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream(
        "libx264",
        rate=fps,
        options={
            "profile": "baseline",
            "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0",
        },
    )
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    for i in range(frames):
        picture = np.full((360, 320), 16 + i * 5, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = i
        frame.time_base = Fraction(1, fps)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


def write_annexb(path: Path, frames: int, fps: int, keyint_seconds: float) -> None:
    settings = VideoSettings(320, 240, fps, 300_000, gop_seconds=keyint_seconds)
    encoder = X264Encoder(settings)
    with path.open("wb") as out:
        for i in range(frames):
            for unit in encoder.encode_yuv(np.full((360, 320), 16 + i * 5, dtype=np.uint8)):
                out.write(unit.data)


@pytest.mark.parametrize("kind", ["mp4", "h264"])
async def test_file_source_loops_with_the_files_keyframes(tmp_path: Path, kind: str) -> None:
    fps = 60
    path = tmp_path / f"clip.{kind}"
    if kind == "mp4":
        write_mp4(path, frames=20, fps=fps, keyint=10)
    else:
        write_annexb(path, frames=20, fps=fps, keyint_seconds=10 / fps)
    settings = VideoSettings(320, 240, fps, 300_000)
    source = FileSource(settings, path)
    sink = Collector()
    start = time.monotonic()
    await source.start(sink)
    await sink.wait_for(45)  # more than two passes through the file
    elapsed = time.monotonic() - start
    await source.close()
    await source.close()
    frames = sink.frames[:45]
    # The file's GOP: IDRs at 0 and 10 of every 20-frame pass, nowhere else.
    assert [i for i, f in enumerate(frames) if f.keyframe] == [0, 10, 20, 30, 40]
    for i in (0, 10, 20, 30, 40):
        assert_constrained_baseline_idr(frames[i])
    assert not any(h264.is_idr(f.data) for i, f in enumerate(frames) if i % 10)
    assert_monotonic(frames)
    # Looping carries on at the same frame spacing: 1500 ticks at 60 fps.
    assert {b.pts - a.pts for a, b in zip(frames, frames[1:], strict=False)} == {1500}
    assert frames[0].pts == 0
    assert elapsed == pytest.approx(44 / fps, abs=scaled(0.25))  # paced, not a dump
    assert sink.threads == {threading.get_ident()}
    # Not re-encoded: each pass delivers the same access units.
    assert [f.data for f in frames[20:40]] == [f.data for f in frames[:20]]


async def test_file_source_request_skips_to_the_next_keyframe(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames=40, fps=60, keyint=20)
    source = FileSource(VideoSettings(320, 240, 60, 300_000), path)

    def on_frame(index: int, frame: EncodedFrame) -> None:
        if index == 3:
            source.request_keyframe()

    sink = Collector(on_frame)
    await source.start(sink)
    await sink.wait_for(8)
    await source.close()
    # Frame 4 or 5 is the file's IDR at 20 (skipped ahead), not frame 20.
    assert any(sink.frames[i].keyframe for i in (4, 5))
    assert source.keyframe_requests == 1
    assert_monotonic(sink.frames)
    skipped_to = next(i for i in (4, 5) if sink.frames[i].keyframe)
    assert sink.frames[skipped_to].pts - sink.frames[skipped_to - 1].pts == 1500


async def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot open video file"):
        await FileSource(SMALL, tmp_path / "missing.mp4").start(Collector())
    mjpeg = tmp_path / "clip.mkv"
    write_mjpeg(mjpeg, frames=2)
    source = FileSource(SMALL, mjpeg)
    with pytest.raises(SourceError, match="holds mjpeg, not H.264"):
        await source.start(Collector())
    await source.close()


# --- v4l2 -------------------------------------------------------------------


def write_mjpeg(path: Path, frames: int) -> None:
    container = av.open(str(path), "w")
    stream = container.add_stream("mjpeg", rate=30)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuvj420p"
    for i in range(frames):
        rgb = np.zeros((480, 640, 3), dtype=np.uint8)
        rgb[:, : 20 * (i + 1)] = (200, 80, 40)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, 30)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
    container.close()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_v4l2_reencodes_mjpeg_once_through_libx264(tmp_path: Path) -> None:
    path = tmp_path / "webcam.mkv"
    write_mjpeg(path, frames=12)
    # A file stands in for /dev/video0: same demux, decode and encode path.
    source = V4L2Source(SMALL, device=str(path), container_format=None, container_options={})
    sink = Collector()
    await source.start(sink)
    assert not source.passthrough
    await wait_until(lambda: source.error is not None)
    await source.close()
    await source.close()
    assert "end of stream" in str(source.error)
    assert len(sink.frames) == 12
    assert sink.threads == {threading.get_ident()}
    plid = assert_constrained_baseline_idr(sink.frames[0])
    assert plid.startswith("42c0")
    assert [f.keyframe for f in sink.frames] == [True] + [False] * 11
    assert_monotonic(sink.frames)
    # Scaled to the configured size (the "camera" gave 640x480).
    lumas = decode_lumas(sink.frames)
    assert lumas[0].shape == (240, 320)
    assert len(lumas) == 12


async def test_v4l2_request_keyframe_in_reencode_path(tmp_path: Path) -> None:
    path = tmp_path / "webcam.mkv"
    write_mjpeg(path, frames=4)
    source = V4L2Source(SMALL, device=str(path), container_format=None, container_options={})
    # Asked before the first picture: the request is kept, then consumed once.
    source.request_keyframe()
    assert source._want_idr.is_set()
    sink = Collector()
    await source.start(sink)
    await wait_until(lambda: source.error is not None)
    await source.close()
    assert not source._want_idr.is_set()
    assert [f.keyframe for f in sink.frames] == [True, False, False, False]


async def test_v4l2_passes_native_h264_through(tmp_path: Path) -> None:
    path = tmp_path / "webcam.h264"
    write_annexb(path, frames=10, fps=30, keyint_seconds=60)
    source = V4L2Source(
        SMALL,
        device=str(path),
        input_format="h264",
        container_format="h264",
        container_options={},
    )
    sink = Collector()
    await source.start(sink)
    assert source.passthrough
    await wait_until(lambda: source.error is not None)
    await source.close()
    assert len(sink.frames) == 10
    assert_constrained_baseline_idr(sink.frames[0])
    assert_monotonic(sink.frames)
    # Passthrough: the bytes are the file's own access units.
    assert b"".join(f.data for f in sink.frames) == path.read_bytes()


async def test_v4l2_missing_device_and_bad_format() -> None:
    with pytest.raises(BadConfig, match="v4l2 input format 'rgb'"):
        V4L2Source(SMALL, input_format="rgb")
    source = V4L2Source(SMALL, device="/dev/no-such-video")
    with pytest.raises(SourceError, match="cannot open camera /dev/no-such-video"):
        await source.start(Collector())
    await source.close()


# --- picamera2 (fake module) ----------------------------------------------


class FakePicamera2Module:
    """Stands in for the picamera2 package: the encoder thread is a real thread."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self.cameras: list[Any] = []
        self.encoders: list[Any] = []
        self.encoder_threads: set[int] = set()
        fake = self

        class Output:
            def __init__(self, pts: Any = None) -> None:
                self.recording = False

        class H264Encoder:
            def __init__(self, **kwargs: Any) -> None:
                self.kwargs = kwargs
                self.forced = 0
                fake.encoders.append(self)

            def force_key_frame(self) -> None:
                self.forced += 1

        class Picamera2:
            def __init__(self, camera_num: int = 0) -> None:
                self.camera_num = camera_num
                self.config: Any = None
                self.stopped = threading.Event()
                self.closed = False
                fake.cameras.append(self)

            def create_video_configuration(self, **kwargs: Any) -> dict[str, Any]:
                return kwargs

            def configure(self, config: Any) -> None:
                self.config = config

                self.started_encoders: list[tuple[Any, Any, str]] = []
                self.threads: list[threading.Thread] = []

            def start_encoder(self, encoder: Any, output: Any, name: str = "main") -> None:
                assert name in self.config, f"stream {name} is not configured"
                self.started_encoders.append((encoder, output, name))

            def start(self) -> None:
                # picamera2 runs each encoder on a thread of its own.
                for encoder, output, name in self.started_encoders:
                    thread = threading.Thread(target=self._encode, args=(encoder, output, name))
                    self.threads.append(thread)
                    thread.start()

            def _encode(self, encoder: Any, output: Any, name: str) -> None:
                fake.encoder_threads.add(threading.get_ident())
                for i in range(fake.frames):
                    if self.stopped.is_set():
                        return
                    keyframe = i == 0 or encoder.forced > 0
                    if keyframe and i:
                        encoder.forced = 0
                    nal = b"\x65" if keyframe else b"\x41"
                    tag = name[0].encode()  # b"m" or b"l": which stream it came from
                    frame = bytearray(b"\x00\x00\x00\x01" + nal + i.to_bytes(2, "big") + tag)
                    # Both streams of one request carry the same sensor timestamp.
                    output.outputframe(frame, keyframe, 5_000_000 + i * 33_333)
                    frame[:] = b"\xff" * len(frame)  # the encoder reuses its buffer
                    time.sleep(0.002)

            def stop_recording(self) -> None:
                self.stopped.set()
                for thread in self.threads:
                    thread.join()

            def close(self) -> None:
                self.closed = True

        self.Picamera2 = Picamera2
        self.encoders_module = types.SimpleNamespace(H264Encoder=H264Encoder)
        self.outputs = types.SimpleNamespace(Output=Output)


def fake_module(frames: int) -> tuple[Any, FakePicamera2Module]:
    fake = FakePicamera2Module(frames)
    module = types.SimpleNamespace(
        Picamera2=fake.Picamera2, encoders=fake.encoders_module, outputs=fake.outputs
    )
    return module, fake


async def test_picamera2_hands_frames_to_the_loop_in_order() -> None:
    module, fake = fake_module(frames=20)
    source = Picamera2Source(SMALL, picamera2_module=module)

    def on_frame(index: int, frame: EncodedFrame) -> None:
        if index == 4:
            source.request_keyframe()

    sink = Collector(on_frame)
    await source.start(sink)
    await sink.wait_for(20)
    await source.close()
    await source.close()
    (camera,) = fake.cameras
    (encoder,) = fake.encoders
    assert camera.closed and camera.stopped.is_set()
    assert camera.config["main"] == {"size": (320, 240), "format": "YUV420"}
    assert camera.config["controls"] == {"FrameRate": 30}
    assert encoder.kwargs == {
        "profile": "baseline",
        "bitrate": 500_000,
        "repeat": True,
        "iperiod": SMALL.gop_frames,
        "framerate": 30,
    }
    # Crossed once, onto the loop thread, from the encoder thread, in order.
    assert sink.threads == {threading.get_ident()}
    assert threading.get_ident() not in fake.encoder_threads
    numbers = [int.from_bytes(f.data[5:7], "big") for f in sink.frames]
    assert numbers == list(range(20))
    assert all(f.data[:4] == b"\x00\x00\x00\x01" for f in sink.frames)  # copied, not reused
    # Sensor timestamps (µs) become 90 kHz pts from zero.
    assert [f.pts for f in sink.frames[:3]] == [0, 2999, 5999]
    assert_monotonic(sink.frames)
    # force_key_frame() was called once, and the encoder's keyframe flag is kept.
    keyframes = [i for i, f in enumerate(sink.frames) if f.keyframe]
    assert keyframes[0] == 0 and len(keyframes) == 2 and keyframes[1] > 4
    assert source.frames_delivered == 20


async def test_picamera2_two_layers_main_and_lores_each_with_its_encoder() -> None:
    module, fake = fake_module(frames=20)
    source = Picamera2Source(LAYERED, picamera2_module=module)
    assert source.layers == (Layer.HIGH, Layer.LOW)

    def on_frame(index: int, frame: EncodedFrame) -> None:
        if index == 8:
            source.request_keyframe(Layer.LOW)

    sink = Collector(on_frame)
    await source.start(sink)
    await sink.wait_for(40)
    await source.close()
    (camera,) = fake.cameras
    assert camera.config["main"] == {"size": (640, 360), "format": "YUV420"}
    assert camera.config["lores"] == {"size": (320, 180), "format": "YUV420"}
    high_encoder, low_encoder = fake.encoders
    assert [name for _, _, name in camera.started_encoders] == ["main", "lores"]
    assert high_encoder.kwargs["bitrate"] == 1_000_000
    assert low_encoder.kwargs["bitrate"] == 100_000
    assert low_encoder.kwargs["profile"] == "baseline" and low_encoder.kwargs["repeat"]
    assert sink.threads == {threading.get_ident()}
    for layer, tag in ((Layer.HIGH, b"m"), (Layer.LOW, b"l")):
        frames = [f for f in sink.frames if f.layer is layer]
        assert {f.data[7:8] for f in frames} == {tag}  # main -> high, lores -> low
        assert [int.from_bytes(f.data[5:7], "big") for f in frames] == list(range(20))
        # One timeline: the same sensor timestamps give both layers the same pts.
        assert [f.pts for f in frames[:3]] == [0, 2999, 5999]
    # The request went to the low layer's encoder only.
    high_keys = [f for f in sink.frames if f.layer is Layer.HIGH and f.keyframe]
    low_keys = [f for f in sink.frames if f.layer is Layer.LOW and f.keyframe]
    assert len(high_keys) == 1 and len(low_keys) == 2


async def test_picamera2_not_installed_is_a_source_error() -> None:
    source = Picamera2Source(SMALL)
    with pytest.raises(SourceError, match="apt install python3-picamera2"):
        await source.start(Collector())
    await source.close()


# --- registry ---------------------------------------------------------------


def test_registry_builds_each_source(tmp_path: Path) -> None:
    built: dict[str, Source] = {
        "testpattern": make_source("testpattern", SMALL),
        "file": make_source("file", SMALL, path=tmp_path / "a.mp4"),
        "v4l2": make_source("v4l2", SMALL, device="/dev/video3"),
        "picamera2": make_source("picamera2", SMALL),
    }
    assert set(built) == set(SOURCE_NAMES)
    for name, source in built.items():
        assert source.name == name
    assert isinstance(built["v4l2"], V4L2Source) and built["v4l2"].device == "/dev/video3"


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(BadConfig, match="'webcam': choose one of testpattern, file, v4l2"):
        make_source("webcam", SMALL)
    with pytest.raises(BadConfig, match="source 'file' needs path="):
        make_source("file", SMALL)
    with pytest.raises(BadConfig, match="bad options for source 'testpattern'"):
        make_source("testpattern", SMALL, device="/dev/video0")
