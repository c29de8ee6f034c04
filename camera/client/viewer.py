"""``peercam view``: a command-line viewer that connects like the browser does.

It decodes the video (to count frames and read the test pattern's burnt-in
capture time back), and can record the stream to MP4 without transcoding by
teeing the depayloaded access units before aiortc's decoder.

Two private hooks into aiortc 1.16's receiver (made and checked through
:mod:`camera.compat.receiver`; pyproject pins ``aiortc==1.16.*``) make it behave
like a live viewer: its jitter buffer releases a frame as soon as the packet
with the RTP marker bit completes it (:class:`MarkerJitterBuffer`), and its
decoder queue is bounded, restarting at a keyframe when the decoder falls behind
(:class:`_DecoderQueue`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import secrets
import socket
import statistics
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import numpy.typing as npt
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt
from av.video.reformatter import ColorRange
from cryptography.hazmat.primitives.asymmetric import ec

from camera.client import ice as viewer_ice
from camera.compat import receiver as hooks
from camera.compat.receiver import check_receiver_hooks
from camera.config import client_ssl, ws_url
from camera.errors import PeercamError
from camera.h264 import is_idr
from camera.identity import load_or_create_key
from camera.stamp import CODE_HEIGHT, CODE_WIDTH
from camera.stamp import read as read_stamp
from camera.webrtc import (
    make_peer_connection,
    order_turn,
    prefer_h264,
    selected_pair,
    udp_blocked,
)
from services.signaling import Message, ProtocolError, Role, encode, normalize_device_id, parse
from services.signatures import (
    answer_statement,
    device_id_of,
    encode_public_key,
    offer_statement,
    pair_statement,
    paired_statement,
    pairing_proof,
    sign,
    verify,
)

logger = logging.getLogger(__name__)

#: Undecoded frames the CLI viewer lets queue before it drops them and restarts at
#: a keyframe: a third of a second at 30 fps, so a passing stall is absorbed but a
#: decoder that cannot keep up never builds more delay than this.
DECODER_BACKLOG = 10


class ViewError(PeercamError):
    """The viewer could not get video (camera offline, refused, no frames).

    ``stats`` is what was measured before it went wrong, when video had started.
    """

    def __init__(self, message: str, stats: ViewStats | None = None) -> None:
        super().__init__(message)
        self.stats = stats


class ForgedAnswer(ViewError):
    """The answer or pairing reply was not signed by the camera we asked for."""


class SessionEnded(ViewError):
    """The camera ended a session that was playing (revoked, bye, went offline)."""


class RecordingFailed(ViewError):
    """``--record``: the file cannot be written (checked before connecting, and per frame)."""


VIEWER_KEY_FILE = "viewer_key.pem"


def default_viewer_dir() -> Path:
    """Where the CLI viewer keeps its key: $PEERCAM_VIEWER_DIR or ~/.config/peercam."""
    if os.environ.get("PEERCAM_VIEWER_DIR"):
        return Path(os.environ["PEERCAM_VIEWER_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "peercam"


@dataclass(frozen=True)
class ViewerIdentity:
    """This viewer's key pair (its ACL entry on the camera) and its name."""

    private_key: ec.EllipticCurvePrivateKey
    name: str

    @property
    def key(self) -> str:
        return encode_public_key(self.private_key.public_key())

    @classmethod
    def load_or_create(
        cls, directory: Path | None = None, name: str | None = None
    ) -> ViewerIdentity:
        path = (directory or default_viewer_dir()) / VIEWER_KEY_FILE
        key, _created = load_or_create_key(path)
        return cls(key, name or f"peercam view on {socket.gethostname()}"[:64])


def parse_target(target: str, rendezvous: str | None) -> tuple[str, str, str | None]:
    """Split a link or a bare device ID into (rendezvous base URL, device ID, pair secret)."""
    secret = None
    if "://" in target:
        url = urllib.parse.urlsplit(target)
        params = urllib.parse.parse_qs(url.fragment)
        device = params.get("device", [""])[0]
        secret = params.get("pair", [None])[0]
        base = rendezvous or f"{url.scheme}://{url.netloc}"
    else:
        device, base = target, rendezvous or "ws://127.0.0.1:8080"
    return base, normalize_device_id(device), secret


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
    remote_address: str | None = None
    width: int | None = None
    height: int | None = None
    recorded_frames: int = 0
    dropped_frames: int = 0
    """Frames that arrived but were not decoded: the decoder had fallen behind."""

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
            "remote_address": self.remote_address,
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
        if self.dropped_frames:
            out["dropped_frames"] = self.dropped_frames
        return out


class Mp4Recorder:
    """Writes received H.264 access units into an MP4 without transcoding.

    The first write that fails stops the recording: ``error`` says why and
    ``on_error`` (if given) is called once, so the viewing can end with it.
    """

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.error: str | None = None
        self._on_error = on_error
        self._container: Any = None
        self._stream: Any = None
        self._first_ts: int | None = None
        self.frames = 0

    @staticmethod
    def check(path: Path) -> None:
        """Refuse a path that cannot be written before anything connects."""
        parent = path.parent
        if path.is_dir():
            raise RecordingFailed(f"cannot record to {path}: it is a directory")
        if not parent.is_dir():
            raise RecordingFailed(f"cannot record to {path}: no directory {parent}")
        if not os.access(parent, os.W_OK | os.X_OK) or (
            path.exists() and not os.access(path, os.W_OK)
        ):
            raise RecordingFailed(f"cannot record to {path}: permission denied")

    def write(self, data: bytes, timestamp: int) -> None:
        """One access unit (Annex-B) with its 90 kHz RTP timestamp; starts at an IDR."""
        if self.error is not None:
            return
        try:
            self._write(data, timestamp)
        except Exception as exc:  # any failure ends the recording, once
            self.error = f"recording to {self.path} failed: {exc}"
            logger.error("%s", self.error)
            with contextlib.suppress(Exception):
                self.close()
            if self._on_error is not None:
                self._on_error(self.error)

    def _write(self, data: bytes, timestamp: int) -> None:
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
        container, self._container = self._container, None
        if container is not None:
            container.close()


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

    It gives each access unit to the recorder first (on the loop thread), so a
    recording keeps every frame that arrived. Then, live video drops: if the
    decoder is ``backlog`` frames behind, the undecoded frames are thrown away
    and nothing more is queued until a keyframe, which it asks for the way
    aiortc does after a decode error (the receiver sends a PLI with its next
    packet, RFC 4585 section 6.3.1) and asks again every ``backlog`` drops.
    """

    def __init__(
        self,
        keyframe_wanted: threading.Event,
        recorder: Mp4Recorder | None = None,
        backlog: int = DECODER_BACKLOG,
    ) -> None:
        super().__init__()
        self._keyframe_wanted = keyframe_wanted
        self._recorder = recorder
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
        if self._recorder is not None:
            try:
                self._recorder.write(frame.data, frame.timestamp)
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


def _hook_receiver(receiver: RTCRtpReceiver, recorder: Mp4Recorder | None) -> _DecoderQueue:
    """The CLI viewer's receiver: frames released on the marker, a bounded decoder queue."""
    check_receiver_hooks(receiver)
    _swap_jitter_buffer(receiver)
    decoder_queue = _DecoderQueue(hooks.decoder_error(receiver), recorder)
    hooks.set_decoder_queue(receiver, decoder_queue)
    return decoder_queue


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


@dataclass
class Connection:
    """A viewer session the camera answered: what :func:`connect` hands its caller."""

    ws: aiohttp.ClientWebSocketResponse
    """The rendezvous link (the session ends with a bye on it)."""
    pc: RTCPeerConnection
    device_id: str
    session_id: str
    started: float
    """``time.perf_counter()`` just before the peer connection was made (TTFF origin)."""


@contextlib.asynccontextmanager
async def connect(
    target: str,
    setup: Callable[[Connection], None],
    *,
    rendezvous: str | None = None,
    connect_timeout: float = 15.0,
    ice_servers: list[dict[str, Any]] | None = None,
    identity: ViewerIdentity | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
) -> AsyncIterator[Connection]:
    """Open a session with a camera the way the browser does, and yield it.

    Pairs first if the link has ``pair=SECRET``; asks the rendezvous for ICE
    servers unless given; ``setup`` adds transceivers / data channels to the
    peer connection before the offer is made, so they are in the signed SDP. The
    answer is checked against the device ID before it is applied. Leaving the
    block normally says bye; the peer connection is closed either way.
    """
    base, device_id, secret = parse_target(target, rendezvous)
    identity = identity or ViewerIdentity.load_or_create()
    url = ws_url(base, "/ws/viewer")
    async with aiohttp.ClientSession() as http:
        try:
            ws = await asyncio.wait_for(http.ws_connect(
                url,
                heartbeat=20.0,
                ssl=client_ssl(tls_ca, tls_insecure),
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ), connect_timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ViewError(f"cannot reach the rendezvous at {url}: "
                            f"{exc or type(exc).__name__}") from None
        async with ws:
            async with _session(ws, device_id, secret, setup, identity, connect_timeout,
                                ice_servers) as connection:
                yield connection


@contextlib.asynccontextmanager
async def _session(
    ws: aiohttp.ClientWebSocketResponse,
    device_id: str,
    secret: str | None,
    setup: Callable[[Connection], None],
    identity: ViewerIdentity,
    connect_timeout: float,
    ice_servers: list[dict[str, Any]] | None,
) -> AsyncIterator[Connection]:
    """:func:`connect` once the rendezvous link is up: yields the one connection."""
    hello = await _receive(ws, connect_timeout, "hello")
    if hello.type != "hello":
        raise ViewError(f"rendezvous sent {hello.type!r} instead of hello")
    if secret is not None:
        await pair(ws, device_id, secret, identity, connect_timeout)
    session_id = secrets.token_urlsafe(18)
    servers = ice_servers
    if servers is None:
        await _send(ws, encode(Role.VIEWER, "prepare", device_id=device_id,
                               session_id=session_id))
        prepared = await _await_reply(ws, session_id, ("prepared",), connect_timeout)
        servers = list(prepared["ice_servers"])
    try:
        # aiortc uses one TURN URL: where UDP is blocked it must be TURN over TCP.
        servers = order_turn(servers, udp_blocked=await udp_blocked(servers))
        viewer_ice.install()  # the controlling agent's relay rule; idempotent
        started = time.perf_counter()
        pc = make_peer_connection(servers)
    except (ValueError, TypeError, OSError) as exc:
        raise ViewError(f"the rendezvous sent unusable ICE servers ({exc})") from None
    try:
        connection = Connection(ws, pc, device_id, session_id, started)
        setup(connection)
        try:
            await pc.setLocalDescription(await pc.createOffer())
        except (ValueError, TypeError, OSError) as exc:
            raise ViewError(f"cannot make an offer with these ICE servers ({exc})") from None
        offer_sdp = pc.localDescription.sdp
        timestamp = int(time.time() * 1000)
        signed = offer_statement(device_id, session_id, timestamp, identity.key, offer_sdp)
        await _send(ws, encode(
            Role.VIEWER,
            "offer",
            device_id=device_id,
            session_id=session_id,
            sdp=offer_sdp,
            viewer_key=identity.key,
            timestamp=timestamp,
            signature=sign(identity.private_key, signed),
        ))
        answer = await _await_reply(ws, session_id, ("answer",), connect_timeout)
        check_answer(device_id, session_id, offer_sdp, answer)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        except (ValueError, TypeError) as exc:
            raise ViewError(f"the camera's answer is not usable ({exc})") from None
        yield connection
        with contextlib.suppress(ConnectionError, RuntimeError, ViewError):
            await _send(ws, encode(Role.VIEWER, "bye", session_id=session_id))
    finally:
        await pc.close()


async def view(
    target: str,
    *,
    rendezvous: str | None = None,
    seconds: float | None = None,
    record: Path | None = None,
    connect_timeout: float = 15.0,
    ice_servers: list[dict[str, Any]] | None = None,
    stop: asyncio.Event | None = None,
    identity: ViewerIdentity | None = None,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
) -> ViewStats:
    """Watch a camera until ``seconds`` pass or ``stop`` is set; return what was measured.

    A link with ``pair=SECRET`` in its fragment pairs this viewer's key first.
    Anything but that ending raises a :class:`ViewError` carrying the stats so
    far: :class:`SessionEnded` when the camera ends a playing session (revoked,
    bye, connection lost), :class:`RecordingFailed` when ``record`` cannot be
    written (checked before connecting, and on every frame).
    """
    if record is not None:
        Mp4Recorder.check(record)
    stats = ViewStats()
    stop = stop or asyncio.Event()
    failed: asyncio.Future[ViewError] = asyncio.get_running_loop().create_future()

    def fail(error: ViewError) -> None:
        if not failed.done():
            failed.set_result(error)

    recorder = (Mp4Recorder(record, on_error=lambda text: fail(RecordingFailed(text)))
                if record is not None else None)
    first_frame = asyncio.Event()
    tasks: set[asyncio.Future[None]] = set()
    decoder_queues: list[_DecoderQueue] = []

    def setup(connection: Connection) -> None:
        pc = connection.pc
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        decoder_queues.append(_hook_receiver(transceiver.receiver, recorder))

        @pc.on("track")
        def on_track(track: Any) -> None:
            task = asyncio.ensure_future(
                _consume(track, stats, connection.started, first_frame)
            )
            tasks.add(task)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "failed":
                fail(SessionEnded("lost the camera: the connection failed (camera offline?)"))

    try:
        async with connect(
            target,
            setup,
            rendezvous=rendezvous,
            connect_timeout=connect_timeout,
            ice_servers=ice_servers,
            identity=identity,
            tls_ca=tls_ca,
            tls_insecure=tls_insecure,
        ) as connection:
            await _play(connection, stats, first_frame, stop, failed, seconds, connect_timeout,
                        tasks)
    except ViewError as exc:
        exc.stats = exc.stats or (stats if stats.frames else None)
        raise
    finally:
        stats.dropped_frames = sum(q.dropped for q in decoder_queues)
        if recorder is not None:
            try:
                recorder.close()
            except Exception as exc:  # the file's last write failed
                recorder.error = recorder.error or f"recording to {record} failed: {exc}"
            stats.recorded_frames = recorder.frames
    if recorder is not None and recorder.error is not None:
        raise RecordingFailed(recorder.error, stats)
    return stats


async def _play(
    connection: Connection,
    stats: ViewStats,
    first_frame: asyncio.Event,
    stop: asyncio.Event,
    failed: asyncio.Future[ViewError],
    seconds: float | None,
    connect_timeout: float,
    tasks: set[asyncio.Future[None]],
) -> None:
    """From the answer to the end: first frame, then until stopped, ended or failed."""
    ended: asyncio.Future[str | None] = asyncio.ensure_future(
        _watch_signaling(connection.ws, connection.session_id)
    )
    stopped = asyncio.ensure_future(stop.wait())
    framed = asyncio.ensure_future(first_frame.wait())
    try:
        # The first frame, or the camera's bye (revoked, busy) if that comes
        # first; asyncio.wait's timeout cancels nothing by itself.
        waiters: list[asyncio.Future[Any]] = [framed, ended, failed]
        await asyncio.wait(waiters, timeout=connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        (stats.local_candidate, stats.remote_candidate,
         stats.remote_address) = selected_pair(connection.pc)
        if failed.done():
            raise failed.result()
        if not first_frame.is_set():
            if ended.done():
                reason = ended.result()
                if reason is None:
                    raise ViewError("the rendezvous closed the connection before the first frame")
                raise ViewError(f"the camera ended the session before the first frame: {reason}")
            raise ViewError(f"no video within {connect_timeout:.0f} s")
        waiters = [ended, stopped, failed]
        await asyncio.wait(waiters, timeout=seconds,
                           return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            raise failed.result()
        if ended.done() and not stopped.done():
            reason = ended.result()
            if reason is None:
                raise ViewError("lost the rendezvous connection")
            raise SessionEnded(f"the camera ended the session: {reason}")
    finally:
        for waiter in (ended, stopped, framed):
            waiter.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(ended, stopped, framed, *tasks, return_exceptions=True)


def check_answer(device_id: str, session_id: str, offer_sdp: str, answer: Message) -> None:
    """Believe an answer only if the camera we asked for signed it, for our offer."""
    if device_id_of(answer["device_key"]) != device_id:
        raise ForgedAnswer("the answer's key is not this camera's: the server may be hostile")
    signed = answer_statement(device_id, session_id, offer_sdp, answer["sdp"])
    if not verify(answer["device_key"], signed, answer["signature"]):
        raise ForgedAnswer("the answer's signature does not verify: the server may be hostile")


async def pair(
    ws: aiohttp.ClientWebSocketResponse,
    device_id: str,
    secret: str,
    identity: ViewerIdentity,
    timeout: float,
) -> None:
    """Add this viewer's key to the camera's ACL with a pairing secret."""
    session_id = secrets.token_urlsafe(18)
    timestamp = int(time.time() * 1000)
    signed = pair_statement(device_id, session_id, timestamp, identity.key, identity.name)
    await _send(
        ws,
        encode(
            Role.VIEWER,
            "pair",
            device_id=device_id,
            session_id=session_id,
            viewer_key=identity.key,
            name=identity.name,
            timestamp=timestamp,
            signature=sign(identity.private_key, signed),
            proof=pairing_proof(secret, signed),  # the secret itself never leaves us
        )
    )
    reply = await _await_reply(ws, session_id, ("paired",), timeout)
    if device_id_of(reply["device_key"]) != device_id or not verify(
        reply["device_key"],
        paired_statement(device_id, session_id, identity.key, identity.name),
        reply["signature"],
    ):
        raise ForgedAnswer("the pairing reply was not signed by this camera")
    logger.info("paired with %s as %r", device_id, identity.name)


async def _send(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    """Send on the rendezvous link; a link that is gone is a :class:`ViewError`."""
    try:
        await ws.send_str(text)
    except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
        raise ViewError(f"lost the rendezvous connection ({exc})") from None


async def _receive(ws: aiohttp.ClientWebSocketResponse, timeout: float, wanted: str) -> Message:
    """The next message on the link, parsed; closed, late or malformed is a ViewError."""
    try:
        msg = await ws.receive(timeout=timeout)
    except TimeoutError:
        raise ViewError(f"no {wanted} from the rendezvous in time") from None
    except (ConnectionError, aiohttp.ClientError) as exc:
        raise ViewError(f"lost the rendezvous connection ({exc})") from None
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise ViewError("the rendezvous closed the connection")
    try:
        return parse(msg.data, Role.SERVER)
    except ProtocolError as exc:
        raise ViewError(f"the rendezvous sent a bad {wanted}: {exc.message}") from None


async def _await_reply(
    ws: aiohttp.ClientWebSocketResponse, session_id: str, wanted: tuple[str, ...], timeout: float
) -> Message:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ViewError(f"no {'/'.join(wanted)} from the camera in time")
        try:
            msg = await ws.receive(timeout=remaining)
        except TimeoutError:
            continue  # the deadline check above says so
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ViewError(f"lost the rendezvous connection ({exc})") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise ViewError("the rendezvous closed the connection")
        try:
            message = parse(msg.data, Role.SERVER)
        except ProtocolError as exc:
            logger.warning("rendezvous sent a bad message: %s", exc.message[:200])
            continue
        if message.get("session_id") not in (None, session_id):
            continue
        if message.type in wanted:
            return message
        if message.type in ("error", "bye"):
            detail = message.get("message") or message.get("reason")
            raise ViewError(f"camera refused: {message.get('code', 'bye')}: {detail}")


async def _watch_signaling(ws: aiohttp.ClientWebSocketResponse, session_id: str) -> str | None:
    """Returns the reason when the camera ends the session; None when the link closes."""
    with contextlib.suppress(ConnectionError, aiohttp.ClientError):
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                return None
            with contextlib.suppress(ProtocolError):
                message = parse(msg.data, Role.SERVER)
                if message.type == "bye" and message["session_id"] == session_id:
                    reason = str(message.get("reason") or "bye")
                    logger.info("camera ended the session: %s", reason)
                    return reason
    return None


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
        stamp = read_stamp(stamp_region(frame))
        if stamp is not None:
            _number, capture_ms = stamp
            latency = time.time() * 1000 - capture_ms
            if 0 <= latency < 60_000:
                stats.latencies_ms.append(latency)
