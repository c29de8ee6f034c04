"""Still pictures: one keyframe from a short viewer session, decoded, as a JPEG.

A snapshot session is an ordinary signed viewer session (the camera's ACL
decides) with one receive-only H.264 transceiver. The camera starts every new
viewer at an IDR, so the first picture aiortc decodes (PyAV underneath) is a
whole one; it is encoded as JPEG with FFmpeg's ``mjpeg`` encoder through PyAV,
so no imaging library is needed.

:class:`Snapshotter` is the gateway's per-camera source: pictures are served
from memory for ``cache`` seconds (a poller every few seconds opens no session
each time), concurrent requests share one grab, and with ``warm`` > 0 the
session stays open that long after a grab so the next picture comes from it
(the latest decoded frame) without a new session.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from camera.client.errors import ViewError
from camera.client.receiver import release_frames_on_marker
from camera.client.signaling import SignalingLink
from camera.client.viewer import Connection, ViewerIdentity, connect, open_session
from camera.webrtc import prefer_h264
from services.signaling import Role, encode

logger = logging.getLogger(__name__)

DEFAULT_QUALITY = 4
"""JPEG quantiser (2 best .. 31 smallest): 4 keeps the frame stamp's blocks crisp."""


@dataclass(frozen=True)
class Snapshot:
    """One picture: the JPEG, its size, and when its frame was decoded."""

    jpeg: bytes
    width: int
    height: int
    taken: float
    """``time.monotonic()`` when the frame was decoded."""


def encode_jpeg(frame: av.VideoFrame, quality: int = DEFAULT_QUALITY) -> bytes:
    """A decoded frame as a baseline JPEG (full-range 4:2:0, FFmpeg's mjpeg encoder)."""
    if not 2 <= quality <= 31:
        raise ValueError(f"JPEG quality {quality}: need 2..31")
    context = av.CodecContext.create("mjpeg", "w")
    context.width, context.height = frame.width, frame.height
    context.pix_fmt = "yuvj420p"
    context.time_base = fractions.Fraction(1, 1)
    context.qscale = True  # a fixed quantiser, not a bitrate
    context.global_quality = quality * 118  # FF_QP2LAMBDA
    context.qmin = context.qmax = quality
    picture = frame.reformat(format="yuvj420p")
    picture.pts = 0
    packets = context.encode(picture) + context.encode(None)
    return b"".join(bytes(packet) for packet in packets)


class _Receiver:
    """The receive side of one snapshot session: its track and its latest frame."""

    def __init__(self) -> None:
        self.track: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.latest: av.VideoFrame | None = None
        self.latest_at = 0.0
        self.framed = asyncio.Event()
        self.consumer: asyncio.Task[None] | None = None

    def setup(self, connection: Connection) -> None:
        pc = connection.pc
        transceiver = pc.addTransceiver("video", direction="recvonly")
        prefer_h264(transceiver)
        release_frames_on_marker(transceiver.receiver)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if not self.track.done():
                self.track.set_result(track)

    def start(self) -> None:
        self.consumer = asyncio.create_task(self._consume(), name="snapshot-frames")

    async def _consume(self) -> None:
        track = await self.track
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.latest, self.latest_at = frame, time.monotonic()
            self.framed.set()

    async def first(self, timeout: float) -> av.VideoFrame:
        try:
            async with asyncio.timeout(timeout):
                await self.framed.wait()
        except TimeoutError:
            raise ViewError(f"no picture from the camera within {timeout:.0f} s") from None
        assert self.latest is not None
        return self.latest

    async def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.consumer
        if not self.track.done():
            self.track.cancel()


async def snapshot(
    target: str,
    *,
    rendezvous: str | None = None,
    identity: ViewerIdentity | None = None,
    ice_servers: list[dict[str, Any]] | None = None,
    timeout: float = 15.0,
    quality: int = DEFAULT_QUALITY,
    tls_ca: str | None = None,
    tls_insecure: bool = False,
) -> Snapshot:
    """``peercam snapshot``: one session, its first picture as a JPEG (pairs first if the
    link carries ``pair=``). Raises :class:`ViewError` when there is no picture."""
    receiver = _Receiver()
    async with connect(target, receiver.setup, rendezvous=rendezvous, connect_timeout=timeout,
                       ice_servers=ice_servers, identity=identity, tls_ca=tls_ca,
                       tls_insecure=tls_insecure):
        receiver.start()
        try:
            frame = await receiver.first(timeout)
        finally:
            await receiver.stop()
    return Snapshot(encode_jpeg(frame, quality), frame.width, frame.height, receiver.latest_at)


class Snapshotter:
    """One camera's pictures for the gateway: cached, shared, optionally kept warm.

    ``link()`` gives the (shared) rendezvous link for the camera, ``ice_servers()``
    the list to use for a session. Every task it starts is its own and ends at
    :meth:`close`.
    """

    def __init__(
        self,
        link: Callable[[], Awaitable[SignalingLink]],
        device_id: str,
        identity: ViewerIdentity,
        *,
        ice_servers: Callable[[], Awaitable[list[dict[str, Any]]]],
        timeout: float = 15.0,
        cache: float = 3.0,
        warm: float = 0.0,
        quality: int = DEFAULT_QUALITY,
    ) -> None:
        self._link = link
        self.device_id = device_id
        self.identity = identity
        self.ice_servers = ice_servers
        self.timeout = timeout
        self.cache = cache
        self.warm = warm
        self.quality = quality
        self.sessions_opened = 0
        self._cached: Snapshot | None = None
        self._grabber: asyncio.Task[Snapshot] | None = None
        self._warm: tuple[Connection, _Receiver] | None = None
        self._cooler: asyncio.Task[None] | None = None

    async def get(self) -> tuple[Snapshot, str]:
        """A picture and how it came: ``hit`` (memory), ``shared`` (a grab under way),
        ``warm`` (an open session's latest frame) or ``miss`` (a new session)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached.taken < self.cache:
            return self._cached, "hit"
        if self._grabber is not None:
            return await asyncio.shield(self._grabber), "shared"
        how = "warm" if self._warm is not None else "miss"
        grabber = self._grabber = asyncio.create_task(self._grab(), name="snapshot-grab")
        grabber.add_done_callback(self._grabbed)
        return await asyncio.shield(grabber), how

    def _grabbed(self, task: asyncio.Task[Snapshot]) -> None:
        if self._grabber is task:
            self._grabber = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiter raises it for itself

    async def _grab(self) -> Snapshot:
        warm = self._warm
        if warm is not None and warm[1].latest is not None and (
                warm[0].pc.connectionState not in ("failed", "closed")):
            frame, taken = warm[1].latest, warm[1].latest_at
        else:
            if warm is not None:
                await self._cool()
            connection, receiver = await self._open()
            try:
                frame = await receiver.first(self.timeout)
            except BaseException:
                await self._shut(connection, receiver)
                raise
            taken = receiver.latest_at
            if self.warm > 0:
                self._warm = (connection, receiver)
            else:
                await self._shut(connection, receiver)
        picture = Snapshot(encode_jpeg(frame, self.quality), frame.width, frame.height, taken)
        self._cached = picture
        if self._warm is not None:
            self._rearm()
        return picture

    async def _open(self) -> tuple[Connection, _Receiver]:
        link = await self._link()
        receiver = _Receiver()
        if not link.connected.is_set():
            await link.wait_connected(self.timeout)
        self.sessions_opened += 1
        connection, _queue = await open_session(link, self.device_id, self.identity,
                                                receiver.setup, timeout=self.timeout,
                                                ice_servers=await self.ice_servers())
        receiver.start()
        return connection, receiver

    def _rearm(self) -> None:
        if self._cooler is not None:
            self._cooler.cancel()
        self._cooler = asyncio.create_task(self._cool_later(), name="snapshot-warm")

    async def _cool_later(self) -> None:
        await asyncio.sleep(self.warm)
        self._cooler = None  # this task is ending: _cool must not cancel it
        await self._cool()

    async def _cool(self) -> None:
        warm, self._warm = self._warm, None
        if warm is not None:
            await self._shut(*warm)

    async def _shut(self, connection: Connection, receiver: _Receiver) -> None:
        await receiver.stop()
        connection.link.unsubscribe(connection.session_id)
        connection.link.send_soon(encode(Role.VIEWER, "bye", session_id=connection.session_id))
        pc: RTCPeerConnection = connection.pc
        pc.remove_all_listeners()
        await asyncio.shield(pc.close())

    async def close(self) -> None:
        for task in (self._cooler, self._grabber):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._cooler = self._grabber = None
        await self._cool()

