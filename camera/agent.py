"""The camera agent: registers with the rendezvous and serves each viewer.

Owns the source, the broadcaster and one :class:`ViewerSession` per viewer.
Media is peer-to-peer: when the rendezvous connection drops, live sessions go
on, and the agent reconnects with capped exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import aiohttp

from camera.broadcaster import Broadcaster
from camera.config import CameraConfig
from camera.identity import DeviceIdentity
from camera.session import SessionFailed, ViewerSession
from camera.sources.base import Source
from camera.track import check_aiortc
from services.signaling import ErrorCode, Message, ProtocolError, Role, encode, parse

logger = logging.getLogger(__name__)


class CameraAgent:
    """Serves from :meth:`start` until :meth:`close`."""

    def __init__(self, config: CameraConfig, source: Source, identity: DeviceIdentity) -> None:
        check_aiortc()
        self.config = config
        self.source = source
        self.identity = identity
        self.broadcaster = Broadcaster(source.request_keyframe)
        self.sessions: dict[str, ViewerSession] = {}
        self.registered = asyncio.Event()
        self.reconnects = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    async def start(self) -> None:
        """Start the source, then stay registered (in a task) until :meth:`close`."""
        await self.source.start(self.broadcaster.publish)
        self._runner = asyncio.create_task(self._run(), name="camera-agent")

    async def _run(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession() as http:
            while not self._closed:
                registered_at: float | None = None
                try:
                    registered_at = await self._connect_once(http)
                except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
                    logger.warning("rendezvous %s: %s", self.config.rendezvous, exc)
                finally:
                    self.registered.clear()
                    self._ws = None
                if self._closed:
                    break
                loop = asyncio.get_running_loop()
                if registered_at is not None and loop.time() - registered_at > 30:
                    attempt = 0  # it was a stable connection: start the ladder again
                cap = min(self.config.backoff_cap, self.config.backoff_base * 2**attempt)
                delay = random.uniform(0, cap)  # full jitter: no reconnect storms
                attempt += 1
                self.reconnects += 1
                logger.info("reconnecting to the rendezvous in %.2f s", delay)
                await asyncio.sleep(delay)

    async def _connect_once(self, http: aiohttp.ClientSession) -> float | None:
        timeout = self.config.connect_timeout
        async with http.ws_connect(
            self.config.camera_ws_url, heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            self._ws = ws
            hello = await self._receive(ws, timeout)
            if hello is None or hello.type != "hello":
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "expected hello")
            ice_servers = self.config.ice_servers
            if ice_servers is None:
                ice_servers = list(hello["ice_servers"])
            await ws.send_str(encode(Role.CAMERA, "register", device_id=self.device_id))
            reply = await self._receive(ws, timeout)
            if reply is None or reply.type != "registered":
                detail = reply.get("message") if reply is not None else "connection closed"
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not registered: {detail}")
            registered_at = asyncio.get_running_loop().time()
            self.registered.set()
            logger.info("registered as %s at %s", self.device_id, self.config.rendezvous)
            while True:
                message = await self._receive(ws, None)
                if message is None:
                    return registered_at
                self._handle(message, ice_servers)

    async def _receive(
        self, ws: aiohttp.ClientWebSocketResponse, timeout: float | None
    ) -> Message | None:
        """The next valid message; bad ones from the server are logged and skipped."""
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return None
            try:
                return parse(msg.data, Role.SERVER)
            except ProtocolError as exc:
                logger.warning("rendezvous sent a bad message: %s", exc.message)

    def _handle(self, message: Message, ice_servers: list[dict[str, Any]]) -> None:
        if message.type == "offer":
            self._spawn(self._serve(message["session_id"], message["sdp"], ice_servers))
        elif message.type == "bye":
            # Forget it first: the server already knows, so no bye goes back.
            session = self.sessions.pop(message["session_id"], None)
            if session is not None:
                session.close(message.get("reason") or "viewer left")
        elif message.type == "error":
            logger.warning("rendezvous error %s: %s", message["code"], message["message"])

    async def _serve(self, session_id: str, sdp: str, ice_servers: list[dict[str, Any]]) -> None:
        if session_id in self.sessions:
            return  # a duplicate offer: the router already refuses these
        if len(self.sessions) >= self.config.max_viewers:
            await self._send_bye(session_id, "camera busy: too many viewers")
            return
        session = ViewerSession(
            session_id,
            self.broadcaster,
            ice_servers,
            self._session_closed,
            ice_timeout=self.config.ice_timeout,
        )
        self.sessions[session_id] = session
        try:
            answer = await session.answer(sdp)
        except SessionFailed as exc:
            logger.info("session %s refused: %s", session_id, exc)
            await session.close(str(exc))
            return
        await self._send(encode(Role.CAMERA, "answer", session_id=session_id, sdp=answer))

    def _session_closed(self, session: ViewerSession, reason: str) -> None:
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
            if not self._closed:
                self._spawn(self._send_bye(session.session_id, reason))

    async def _send_bye(self, session_id: str, reason: str) -> None:
        await self._send(encode(Role.CAMERA, "bye", session_id=session_id, reason=reason[:200]))

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop serving: sessions, tasks, rendezvous link, source. Safe twice."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(
            *(s.close("camera shutting down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self.broadcaster.close()
        await self.source.close()
