"""The camera agent: registers with the rendezvous and serves each viewer.

Owns the source, the broadcaster, the gatekeeper (ACL, pairing, signatures) and
one :class:`ViewerSession` per viewer. Media is peer-to-peer: when the
rendezvous connection drops, live sessions go on, and the agent reconnects with
capped exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Coroutine
from typing import Any

import aiohttp

from camera.acl import PairingWindows, ViewerACL
from camera.broadcaster import Broadcaster
from camera.config import CameraConfig
from camera.errors import BadConfig
from camera.gatekeeper import Gatekeeper, Refused
from camera.identity import DeviceIdentity
from camera.session import SessionFailed, ViewerSession
from camera.sources.base import Source
from camera.track import check_aiortc
from camera.webrtc import order_turn, stun_server_of
from services.signaling import (
    ErrorCode,
    Message,
    ProtocolError,
    Role,
    encode,
    normalize_session_id,
    parse,
)
from services.stun.discovery import NatReport
from services.stun.natcheck import natcheck

logger = logging.getLogger(__name__)


class CameraAgent:
    """Serves from :meth:`start` until :meth:`close`."""

    def __init__(self, config: CameraConfig, source: Source, identity: DeviceIdentity) -> None:
        check_aiortc()
        self.config = config
        self.source = source
        self.identity = identity
        self.acl = ViewerACL(config.state_dir)
        self.pairing = PairingWindows(config.state_dir)
        self.gatekeeper = Gatekeeper(identity, self.acl, self.pairing)
        self.broadcaster = Broadcaster(source.request_keyframe)
        self.sessions: dict[str, ViewerSession] = {}
        self.registered = asyncio.Event()
        self.reconnects = 0
        self.refusals = 0
        self.replaced = 0
        """Times another connection registered our ID (a cloned key) and we were closed."""
        self.nat_report: NatReport | None = None
        """RFC 5780 NAT behaviour found at start (against the rendezvous' STUN server)."""
        self._natcheck_started = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._was_replaced = False
        self._closed = False

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    async def start(self) -> None:
        """Start the source, then stay registered (in a task) until :meth:`close`."""
        await self.source.start(self.broadcaster.publish)
        self._runner = asyncio.create_task(self._run(), name="camera-agent")
        self._spawn(self._watch_acl())

    async def _run(self) -> None:
        attempt = 0
        ssl_context = self.config.ssl_context()
        async with aiohttp.ClientSession() as http:
            while not self._closed:
                registered_at: float | None = None
                try:
                    registered_at = await self._connect_once(http, ssl_context)
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
                if self._was_replaced:
                    # Two devices with one key would replace each other forever: back
                    # off fully so the newer one keeps working, and say why loudly.
                    self._was_replaced = False
                    delay = self.config.backoff_cap
                attempt += 1
                self.reconnects += 1
                logger.info("reconnecting to the rendezvous in %.2f s", delay)
                await asyncio.sleep(delay)

    async def _connect_once(self, http: aiohttp.ClientSession, ssl_context: Any) -> float | None:
        timeout = self.config.connect_timeout
        url = self.config.camera_ws_url
        async with http.ws_connect(
            url, heartbeat=20.0, ssl=ssl_context, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            self._ws = ws
            hello = await self._receive(ws, timeout)
            if hello is None or hello.type != "hello":
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "expected hello")
            fields = self.gatekeeper.registration(url, hello["nonce"])
            await ws.send_str(encode(Role.CAMERA, "register", **fields))
            reply = await self._receive(ws, timeout)
            if reply is None or reply.type != "registered":
                detail = reply.get("message") if reply is not None else "connection closed"
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not registered: {detail}")
            registered_at = asyncio.get_running_loop().time()
            self.registered.set()
            if not self._natcheck_started:
                self._natcheck_started = True
                self._spawn(self._check_nat(self._configured_or(reply["ice_servers"])))
            logger.info("registered as %s at %s", self.device_id, self.config.rendezvous)
            while True:
                message = await self._receive(ws, None)
                if message is None:
                    return registered_at
                self._handle(message)

    async def _receive(
        self, ws: aiohttp.ClientWebSocketResponse, timeout: float | None
    ) -> Message | None:
        """The next valid message; bad ones from the server are logged and refused."""
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return None
            try:
                return parse(msg.data, Role.SERVER)
            except ProtocolError as exc:
                logger.warning("rendezvous sent a bad message: %s", exc.message)
                self._refuse_unparsed(msg.data, exc.message)

    def _refuse_unparsed(self, data: str, why: str) -> None:
        """A malformed request that names a session still gets a bye, so the viewer knows."""
        try:
            obj = json.loads(data)
            session_id = normalize_session_id(obj.get("session_id"))
        except (ValueError, AttributeError):
            return
        if obj.get("type") in ("offer", "pair") and session_id not in self.sessions:
            self.refusals += 1
            self._spawn(self._send_bye(session_id, f"not authorized: {why}"))

    def _configured_or(self, offered: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.config.ice_servers is not None:
            return list(self.config.ice_servers)
        return list(offered)

    def _ice_servers(self, message: Message) -> list[dict[str, Any]]:
        blocked = self.nat_report is not None and self.nat_report.nat_type == "udp-blocked"
        return order_turn(self._configured_or(message["ice_servers"]), udp_blocked=blocked)

    async def _check_nat(self, ice_servers: list[dict[str, Any]]) -> None:
        """Learn this network's NAT type once (logged, and shown by status)."""
        server = stun_server_of(ice_servers)
        if server is None:
            logger.info("no STUN server configured: NAT type unknown")
            return
        self.nat_report = await natcheck(server)
        logger.info("NAT check against %s:%d: %s", *server, self.nat_report.summary())

    def _handle(self, message: Message) -> None:
        if message.type == "offer":
            self._spawn(self._serve(message))
        elif message.type == "pair":
            self._pair(message)
        elif message.type == "bye":
            # Forget it first: the server already knows, so no bye goes back.
            session = self.sessions.pop(message["session_id"], None)
            if session is not None:
                session.close(message.get("reason") or "viewer left")
        elif message.type == "error":
            if message["code"] == ErrorCode.REPLACED:
                self.replaced += 1
                self._was_replaced = True
                logger.error("another connection registered %s: is this key on two devices?",
                             self.device_id)
            else:
                logger.warning("rendezvous error %s: %s", message["code"], message["message"])

    def _pair(self, message: Message) -> None:
        session_id = message["session_id"]
        try:
            fields = self.gatekeeper.check_pair(message)
        except Refused as exc:
            self.refusals += 1
            logger.warning("pairing request refused: %s", exc)
            self._spawn(self._send_bye(session_id, str(exc)))
            return
        except BadConfig as exc:
            logger.error("cannot pair: %s", exc)
            self._spawn(self._send_bye(session_id, "pairing failed on the camera"))
            return
        self._spawn(self._send(encode(Role.CAMERA, "paired", **fields)))

    async def _serve(self, message: Message) -> None:
        session_id, sdp = message["session_id"], message["sdp"]
        if session_id in self.sessions:
            return  # a duplicate offer: the router already refuses these
        try:
            viewer_key = self.gatekeeper.check_offer(message)
        except (Refused, BadConfig) as exc:
            self.refusals += 1
            logger.warning("offer %s refused: %s", session_id, exc)
            await self._send_bye(session_id, str(exc))
            return
        if len(self.sessions) >= self.config.max_viewers:
            await self._send_bye(session_id, "camera busy: too many viewers")
            return
        session = ViewerSession(
            session_id,
            self.broadcaster,
            self._ice_servers(message),
            self._session_closed,
            ice_timeout=self.config.ice_timeout,
            viewer_key=viewer_key,
        )
        self.sessions[session_id] = session
        try:
            answer = await session.answer(sdp)
        except SessionFailed as exc:
            logger.info("session %s refused: %s", session_id, exc)
            await session.close(str(exc))
            return
        fields = self.gatekeeper.answer(session_id, sdp, answer)
        await self._send(encode(Role.CAMERA, "answer", **fields))

    async def _watch_acl(self) -> None:
        """End the live sessions of viewers revoked (over SSH) since we last looked."""
        while True:
            await asyncio.sleep(1.0)
            try:
                self.acl.reload()
            except BadConfig as exc:
                logger.error("%s", exc)
                continue
            self.end_revoked_sessions()

    def end_revoked_sessions(self) -> int:
        """Close every session whose viewer key is no longer in the ACL; how many."""
        ended = 0
        for session in list(self.sessions.values()):
            if session.viewer_key is not None and session.viewer_key not in self.acl:
                logger.info("viewer revoked: ending session %s", session.session_id)
                session.close("not authorized: this viewer was revoked")
                ended += 1
        return ended

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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent task failed", exc_info=task.exception())

    def open_pairing(self, ttl: float = 600.0, *, reusable: bool = False) -> str:
        """Open a pairing window in this process; returns the secret for the link."""
        return self.pairing.open(ttl, reusable=reusable, persist=False).secret

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
