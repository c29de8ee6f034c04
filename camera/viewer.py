"""``peercam view``: a command-line viewer that connects like the browser does.

It decodes the video (to count frames and read the test pattern's burnt-in
capture time back), and can record the stream to MP4 without transcoding by
teeing the depayloaded access units before aiortc's decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import secrets
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from camera.config import ws_url
from camera.h264 import is_idr
from camera.stamp import read as read_stamp
from camera.webrtc import make_peer_connection, prefer_h264, selected_pair_types
from services.signaling import ProtocolError, Role, encode, normalize_device_id, parse

logger = logging.getLogger(__name__)

_DECODER_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


class ViewError(Exception):
    """The viewer could not get video (camera offline, refused, no frames)."""


def parse_target(target: str, rendezvous: str | None) -> tuple[str, str]:
    """Split a viewer link or a bare device ID into (rendezvous base URL, device ID)."""
    if "://" in target:
        url = urllib.parse.urlsplit(target)
        params = urllib.parse.parse_qs(url.fragment)
        device = params.get("device", [""])[0]
        base = rendezvous or f"{url.scheme}://{url.netloc}"
    else:
        device, base = target, rendezvous or "ws://127.0.0.1:8080"
    return base, normalize_device_id(device)


@dataclass
class ViewStats:
    """What one viewing measured."""

    ttff_ms: float | None = None
    frames: int = 0
    first_frame_at: float | None = None
    last_frame_at: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    local_candidate: str | None = None
    remote_candidate: str | None = None
    width: int | None = None
    height: int | None = None
    recorded_frames: int = 0

    def as_dict(self) -> dict[str, Any]:
        span = (
            (self.last_frame_at - self.first_frame_at)
            if self.first_frame_at is not None and self.last_frame_at is not None
            else 0.0
        )
        fps = (self.frames - 1) / span if self.frames > 1 and span > 0 else 0.0
        out: dict[str, Any] = {
            "ttff_ms": None if self.ttff_ms is None else round(self.ttff_ms, 1),
            "frames": self.frames,
            "fps": round(fps, 2),
            "local_candidate": self.local_candidate,
            "remote_candidate": self.remote_candidate,
            "width": self.width,
            "height": self.height,
            "latency_ms_p50": None,
        }
        if self.latencies_ms:
            ordered = sorted(self.latencies_ms)
            out["latency_ms_p50"] = round(statistics.median(ordered), 1)
            out["latency_ms_p95"] = round(ordered[int(0.95 * (len(ordered) - 1))], 1)
        if self.recorded_frames:
            out["recorded_frames"] = self.recorded_frames
        return out


class Mp4Recorder:
    """Writes received H.264 access units into an MP4 without transcoding."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._container: Any = None
        self._stream: Any = None
        self._first_ts: int | None = None
        self.frames = 0

    def write(self, data: bytes, timestamp: int) -> None:
        """One access unit (Annex-B) with its 90 kHz RTP timestamp; starts at an IDR."""
        if self._container is None:
            if not is_idr(data):
                return
            self._container = av.open(str(self.path), mode="w", format="mp4")
            self._stream = self._container.add_stream("h264", rate=30)
            self._stream.time_base = Fraction(1, 90_000)
            self._first_ts = timestamp
        assert self._first_ts is not None
        packet = av.Packet(data)
        packet.pts = packet.dts = (timestamp - self._first_ts) % (1 << 32)
        packet.time_base = Fraction(1, 90_000)
        packet.stream = self._stream
        packet.is_keyframe = is_idr(data)
        self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class _TeeQueue(queue.Queue):  # type: ignore[type-arg]
    """aiortc's receiver hands (codec, JitterFrame) to its decoder thread through a
    queue; this one also gives each access unit to the recorder (on the loop thread)."""

    def __init__(self, recorder: Mp4Recorder) -> None:
        super().__init__()
        self._recorder = recorder

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            _codec, frame = item
            try:
                self._recorder.write(frame.data, frame.timestamp)
            except (av.FFmpegError, ValueError) as exc:
                logger.warning("recording: dropped a frame: %s", exc)
        super().put(item, block, timeout)


async def view(
    target: str,
    *,
    rendezvous: str | None = None,
    seconds: float | None = None,
    record: Path | None = None,
    connect_timeout: float = 15.0,
    ice_servers: list[dict[str, Any]] | None = None,
    stop: asyncio.Event | None = None,
) -> ViewStats:
    """Watch a camera until ``seconds`` pass or ``stop`` is set; return what was measured."""
    base, device_id = parse_target(target, rendezvous)
    stats = ViewStats()
    recorder = Mp4Recorder(record) if record is not None else None
    stop = stop or asyncio.Event()
    session_id = secrets.token_urlsafe(18)
    async with aiohttp.ClientSession() as http, http.ws_connect(
        ws_url(base, "/ws/viewer"), heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
    ) as ws:
        hello = parse((await ws.receive_str(timeout=connect_timeout)), Role.SERVER)
        if hello.type != "hello":
            raise ViewError(f"rendezvous sent {hello.type!r} instead of hello")
        servers = ice_servers if ice_servers is not None else list(hello["ice_servers"])
        started = time.perf_counter()
        pc = make_peer_connection(servers)
        try:
            transceiver = pc.addTransceiver("video", direction="recvonly")
            prefer_h264(transceiver)
            if recorder is not None:
                setattr(transceiver.receiver, _DECODER_QUEUE_ATTR, _TeeQueue(recorder))
            first_frame = asyncio.Event()

            @pc.on("track")
            def on_track(track: Any) -> None:
                task = asyncio.ensure_future(_consume(track, stats, started, first_frame))
                tasks.add(task)

            tasks: set[asyncio.Future[None]] = set()
            await pc.setLocalDescription(await pc.createOffer())
            await ws.send_str(
                encode(
                    Role.VIEWER,
                    "offer",
                    device_id=device_id,
                    session_id=session_id,
                    sdp=pc.localDescription.sdp,
                )
            )
            answer = await _await_answer(ws, session_id, connect_timeout)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            ended = asyncio.ensure_future(_watch_signaling(ws, session_id))
            try:
                await asyncio.wait_for(first_frame.wait(), connect_timeout)
            except TimeoutError:
                raise ViewError(f"no video within {connect_timeout:.0f} s") from None
            finally:
                stats.local_candidate, stats.remote_candidate = selected_pair_types(pc)
            waiters = [ended, asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(encode(Role.VIEWER, "bye", session_id=session_id))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pc.close()
            if recorder is not None:
                recorder.close()
                stats.recorded_frames = recorder.frames
    return stats


async def _await_answer(
    ws: aiohttp.ClientWebSocketResponse, session_id: str, timeout: float
) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ViewError("no answer from the camera in time")
        msg = await ws.receive(timeout=remaining)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ViewError("the rendezvous closed the connection")
        try:
            message = parse(msg.data, Role.SERVER)
        except ProtocolError as exc:
            logger.warning("rendezvous sent a bad message: %s", exc.message)
            continue
        if message.get("session_id") not in (None, session_id):
            continue
        if message.type == "answer":
            return str(message["sdp"])
        if message.type in ("error", "bye"):
            detail = message.get("message") or message.get("reason")
            raise ViewError(f"camera refused: {message.get('code', 'bye')}: {detail}")


async def _watch_signaling(ws: aiohttp.ClientWebSocketResponse, session_id: str) -> None:
    """Returns when the camera ends the session or the rendezvous link closes."""
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            return
        with contextlib.suppress(ProtocolError):
            message = parse(msg.data, Role.SERVER)
            if message.type == "bye" and message["session_id"] == session_id:
                logger.info("camera ended the session: %s", message.get("reason"))
                return


async def _consume(track: Any, stats: ViewStats, started: float, first: asyncio.Event) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.perf_counter()
        if stats.first_frame_at is None:
            stats.ttff_ms = (now - started) * 1000
            stats.first_frame_at = now
            stats.width, stats.height = frame.width, frame.height
            first.set()
        stats.last_frame_at = now
        stats.frames += 1
        stamp = read_stamp(frame.to_ndarray(format="gray"))
        if stamp is not None:
            _number, capture_ms = stamp
            latency = time.time() * 1000 - capture_ms
            if 0 <= latency < 60_000:
                stats.latencies_ms.append(latency)
