"""The camera agent: registers with the rendezvous and serves each viewer.

Owns the source, the broadcaster, the gatekeeper (ACL, pairing, signatures) and
one :class:`ViewerSession` per viewer. Media is peer-to-peer: when the
rendezvous connection drops, live sessions go on, and the agent reconnects with
capped exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import random
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp

from camera import compat
from camera.acl import PairingWindows, ViewerACL
from camera.broadcaster import Broadcaster
from camera.config import CameraConfig, page_url
from camera.errors import BadConfig
from camera.gatekeeper import Gatekeeper, Refused
from camera.health import EXIT_STUCK, Action, HealthMonitor
from camera.identity import DeviceIdentity
from camera.ptz import PtzControl, open_head
from camera.sdnotify import Notifier
from camera.session import BadCandidate, SessionFailed, ViewerSession
from camera.sources.base import Source
from camera.state import DeviceFacts, device_state
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

if TYPE_CHECKING:
    from hardware.led import LedState, StatusLed

logger = logging.getLogger(__name__)

TICK = 0.25
"""Seconds between health/LED ticks on the event loop."""
NATCHECK_WAIT = 3.0
"""Longest an early offer waits for the start-up NAT check (UDP blocked or not)."""
STATS_EVERY = 2.0
"""Seconds between samples of each viewer's sender stats (bitrate, RTT)."""
_NETWORK_DOWN = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


def _network_down(exc: BaseException) -> bool:
    """The error says this device has no usable network (vs. a server problem)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, socket.gaierror):
            return True  # no DNS: as good as no network for a camera
        if isinstance(exc, OSError) and exc.errno in _NETWORK_DOWN:
            return True
        nested = getattr(exc, "os_error", None) or exc.__cause__ or exc.__context__
        if nested is None:
            return False
        exc = nested
    return False


class CameraAgent:
    """Serves from :meth:`start` until :meth:`close`."""

    def __init__(
        self,
        config: CameraConfig,
        source: Source,
        identity: DeviceIdentity,
        *,
        source_factory: Callable[[], Source] | None = None,
        led: StatusLed | None = None,
        notifier: Notifier | None = None,
        watchdog_interval: float | None = None,
    ) -> None:
        """``source_factory`` makes a fresh source for the recovery ladder (None: no
        in-process restart, a stuck source makes the agent exit). ``led`` shows
        :attr:`state`; ``notifier`` gets READY/WATCHDOG/STOPPING every
        ``watchdog_interval`` seconds (None: no watchdog pings).
        """
        compat.ensure_installed()
        self.config = config
        self.source = source
        self.identity = identity
        self._source_factory = source_factory
        self.led = led
        self.notifier = notifier or Notifier(None)
        self.watchdog_interval = watchdog_interval
        self.health = HealthMonitor(
            started_at=0.0,
            frame_stall=config.frame_stall,
            max_restarts=config.source_restarts if source_factory is not None else 0,
        )
        self.failed = asyncio.Event()
        """Set when the agent gives up (stuck source); :attr:`exit_code` says how."""
        self.exit_code = 0
        self.network_down = False
        self.reset_armed = False
        self.source_restarts = 0
        self.started_at = time.time()
        self._last_watchdog: float | None = None
        self._viewer_stats: dict[str, dict[str, Any]] = {}
        self._stats_at = 0.0
        self.acl = ViewerACL(config.state_dir)
        self.pairing = PairingWindows(config.state_dir)
        self.gatekeeper = Gatekeeper(identity, self.acl, self.pairing)
        self.broadcaster = Broadcaster(source.request_keyframe)
        # Pan/tilt over each viewer's "ptz" data channel; every message re-checks the ACL.
        self.ptz = PtzControl(
            open_head(config.hardware),
            rate=config.hardware.ptz_rate,
            authorized=lambda key: key is not None and key in self.acl,
        )
        self.sessions: dict[str, ViewerSession] = {}
        self.registered = asyncio.Event()
        self.reconnects = 0
        self.refusals = 0
        self.replaced = 0
        """Times another connection registered our ID (a cloned key) and we were closed."""
        self.nat_report: NatReport | None = None
        """RFC 5780 NAT behaviour found at start (against the rendezvous' STUN server)."""
        self._natcheck_started = False
        self._pairing_open = False
        """A single-use pairing window is open (re-read each second, not per LED tick)."""
        self._natcheck: asyncio.Task[Any] | None = None
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
        self.health.started_at = asyncio.get_running_loop().time()
        self._show_state()
        await self.source.start(self.broadcaster.publish)
        self._runner = asyncio.create_task(self._run(), name="camera-agent")
        self._spawn(self._watch_acl())
        self._spawn(self._supervise())

    async def _run(self) -> None:
        attempt = 0
        ssl_context = self.config.ssl_context()
        async with aiohttp.ClientSession() as http:
            while not self._closed:
                registered_at: float | None = None
                try:
                    registered_at = await self._connect_once(http, ssl_context)
                except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
                    self.network_down = _network_down(exc)
                    logger.warning("rendezvous %s: %s%s", self.config.rendezvous, exc,
                                   " (no network)" if self.network_down else "")
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
            self.network_down = False
            self._show_state()
            if not self._natcheck_started:
                self._natcheck_started = True
                self._natcheck = self._spawn(
                    self._check_nat(self._configured_or(reply["ice_servers"])))
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

    async def _ice_servers_for(self, message: Message) -> list[dict[str, Any]]:
        """The ICE servers for a session, once the start-up NAT check has spoken.

        An offer that arrives in the first second or two after registration must
        not try TURN over UDP on a network that blocks UDP (5 s lost, then no
        relay candidate at all): wait for the NAT check, at most NATCHECK_WAIT.
        """
        check = self._natcheck
        if check is not None and not check.done():
            await asyncio.wait([check], timeout=NATCHECK_WAIT)
        return self._ice_servers(message)

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
        elif message.type == "candidate":
            # Spawned after its offer's task, which registers the session before
            # its first await: tasks start in the order they were made.
            self._spawn(self._add_candidate(message))
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
                # unknown-session: our bye crossed the viewer's (both ended it): benign.
                level = logging.DEBUG if message["code"] == ErrorCode.UNKNOWN_SESSION else \
                    logging.WARNING
                logger.log(level, "rendezvous error %s: %s", message["code"], message["message"])

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
        self._refresh_pairing()  # a single-use window was just consumed
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
            await self._ice_servers_for(message),
            self._session_closed,
            ice_timeout=self.config.ice_timeout,
            viewer_key=viewer_key,
            ptz=self.ptz,
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

    async def _add_candidate(self, message: Message) -> None:
        """A viewer's trickled ICE candidate: signature checked, then to its session.

        Anything wrong is logged and dropped; the session goes on without it.
        """
        session_id = message["session_id"]
        session = self.sessions.get(session_id)
        if session is None or session.offer_sdp is None or session.viewer_key is None:
            logger.info("candidate for unknown session %s dropped", session_id)
            return
        try:
            self.gatekeeper.check_candidate(message, session.viewer_key, session.offer_sdp)
            await session.add_candidate(message["seq"], message["candidate"],
                                        message.get("sdp_mid"), message.get("sdp_mline_index"))
        except Refused as exc:
            self.refusals += 1
            logger.warning("candidate for session %s refused: %s", session_id, exc)
        except BadCandidate as exc:
            logger.warning("candidate for session %s dropped: %s", session_id, exc)

    async def _watch_acl(self) -> None:
        """End the live sessions of viewers revoked (over SSH) since we last looked,
        and notice pairing windows opened, used or expired by ``peercam pair``."""
        while True:
            await asyncio.sleep(1.0)
            self._refresh_pairing()
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

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("agent task failed", exc_info=task.exception())

    def open_pairing(self, ttl: float = 600.0, *, reusable: bool = False) -> str:
        """Open a pairing window in this process; returns the secret for the link."""
        secret = self.pairing.open(ttl, reusable=reusable, persist=False).secret
        self._refresh_pairing()
        self._show_state()
        return secret

    def _refresh_pairing(self) -> None:
        self._pairing_open = self.pairing.is_open(include_reusable=False)

    def pairing_link(self, secret: str) -> str:
        """The viewer link that pairs with ``secret`` (the web page of our rendezvous)."""
        return f"{page_url(self.config.rendezvous)}/#device={self.device_id}&pair={secret}"

    def open_pairing_link(self, ttl: float | None = None) -> tuple[str, float]:
        """Open a single-use window (button, console, ``peercam pair``): (link, ttl)."""
        ttl = self.config.hardware.pairing_ttl if ttl is None else ttl
        link = self.pairing_link(self.open_pairing(ttl))
        logger.info("pairing window open for %.0f s", ttl)
        return link, ttl

    def forget_viewers(self) -> int:
        """Clear the ACL and end every session (factory reset of trust); how many."""
        count = self.acl.clear()
        self.pairing.close_all()
        self._refresh_pairing()
        self.end_revoked_sessions()
        logger.warning("viewer list cleared: %d viewer(s) forgotten", count)
        return count

    # The pairing button (hardware/button.py calls these on the event loop).

    def button_short(self) -> None:
        self.open_pairing_link()

    def button_armed(self) -> None:
        self.reset_armed = True
        self._show_state()

    def button_long(self) -> None:
        self.reset_armed = False
        self.forget_viewers()
        self._show_state()

    def button_cancel(self) -> None:
        self.reset_armed = False
        self._show_state()

    # Health, state, status.

    @property
    def facts(self) -> DeviceFacts:
        now = asyncio.get_running_loop().time()
        last = self.broadcaster.last_frame_time
        # Watching: connected with video (a control-only session is not "streaming").
        connected = [s for s in self.sessions.values()
                     if s.connected.is_set() and s.track is not None]
        return DeviceFacts(
            first_frame=self.broadcaster.frames_published > 0,
            registered=self.registered.is_set(),
            network_down=self.network_down,
            viewers_relayed=[s.pair_types[0] == "relay" or s.pair_types[1] == "relay"
                             for s in connected],
            pairing=self._pairing_open,
            camera_fault=self.health.faulty(now, last) and not self.health.gave_up,
            reset_armed=self.reset_armed,
            fatal=self.health.gave_up,
        )

    @property
    def state(self) -> LedState:
        """What the LED shows (see camera/state.py for the priorities)."""
        return device_state(self.facts)

    def _show_state(self) -> None:
        if self.led is None or self.led.closed:
            return
        try:
            self.led.set(self.state)
        except Exception:  # a broken LED must never stop the camera
            logger.exception("status LED failed")

    async def _supervise(self) -> None:
        """The health tick: watchdog, recovery ladder, LED, viewer stats."""
        loop = asyncio.get_running_loop()
        expected = loop.time()
        while not self._closed:
            await asyncio.sleep(TICK)
            now = loop.time()
            if now - expected > TICK + 1.0:
                logger.warning("event loop was blocked for %.1f s", now - expected - TICK)
            expected = now + TICK
            for action in self.health.tick(now, self.broadcaster.last_frame_time,
                                           self.registered.is_set()):
                await self._act(action, now)
            self._show_state()
            if now - self._stats_at >= STATS_EVERY:
                self._stats_at = now
                await self._sample_viewer_stats(now)

    async def _act(self, action: Action, now: float) -> None:
        if action is Action.READY:
            self.notifier.ready(f"streaming as {self.device_id}")
            logger.info("ready: frames flowing and registered")
        elif action is Action.WATCHDOG:
            interval = self.watchdog_interval
            if interval is not None and (
                self._last_watchdog is None or now - self._last_watchdog >= interval
            ):
                self._last_watchdog = now
                self.notifier.watchdog()
        elif action is Action.RESTART_SOURCE:
            logger.error("no frame for %.1f s: restarting the source (%d of %d)",
                         self.config.frame_stall, self.health.restarts, self.health.max_restarts)
            self.notifier.status(f"camera stuck: restarting the source ({self.health.restarts})")
            self._show_state()
            await self.restart_source()
        elif action is Action.GIVE_UP:
            logger.critical("the source is still stuck after %d restart(s): exiting so the "
                            "service manager restarts the camera", self.health.total_restarts)
            self.notifier.status("camera stuck: exiting for a restart")
            self.exit_code = EXIT_STUCK
            self._show_state()
            self.failed.set()

    async def restart_source(self) -> None:
        """Close the source and start a fresh one from the factory (recovery ladder)."""
        if self._source_factory is None:
            return
        old = self.source
        try:
            async with asyncio.timeout(10):
                await old.close()
        except Exception:
            logger.exception("closing the stuck source failed (carrying on)")
        try:
            self.source = self._source_factory()
            await self.source.start(self.broadcaster.publish)
            self.source_restarts += 1
        except Exception as exc:
            logger.error("restarting the source failed: %s", exc)

    async def _sample_viewer_stats(self, now: float) -> None:
        for session_id, session in list(self.sessions.items()):
            if not session.connected.is_set():
                continue
            sent, rtt = 0, None
            try:
                for transceiver in session.pc.getTransceivers():
                    for stat in (await transceiver.sender.getStats()).values():
                        if stat.type == "outbound-rtp":
                            sent += stat.bytesSent
                        elif stat.type == "remote-inbound-rtp":
                            rtt = stat.roundTripTime
            except Exception:
                continue  # closing under us
            previous = self._viewer_stats.get(session_id)
            bitrate = None
            if previous is not None and now > previous["at"]:
                bitrate = 8 * (sent - previous["bytes"]) / (now - previous["at"])
            self._viewer_stats[session_id] = {"at": now, "bytes": sent, "rtt": rtt,
                                              "bitrate": bitrate}
        for gone in set(self._viewer_stats) - set(self.sessions):
            del self._viewer_stats[gone]

    def status(self) -> dict[str, Any]:
        """Everything ``peercam status`` prints (JSON-ready)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        last = self.broadcaster.last_frame_time
        viewers = []
        for session in list(self.sessions.values()):
            local, remote = session.pair_types
            viewer = self.acl.get(session.viewer_key) if session.viewer_key else None
            stats = self._viewer_stats.get(session.session_id, {})
            viewers.append({
                "session": session.session_id[:8],
                "name": viewer.name if viewer else None,
                "fingerprint": viewer.fingerprint if viewer else None,
                "connected": session.connected.is_set(),
                "pair": f"{local or '?'}->{remote or '?'}",
                "relayed": "relay" in (local, remote),
                "bitrate": None if stats.get("bitrate") is None else round(stats["bitrate"]),
                "rtt_ms": None if stats.get("rtt") is None else round(1000 * stats["rtt"], 1),
            })
        nat = self.nat_report
        return {
            "state": self.state.value,
            "device_id": self.device_id,
            "uptime": round(time.time() - self.started_at, 1),
            "rendezvous": {
                "url": self.config.rendezvous,
                "connected": self.registered.is_set(),
                "reconnects": self.reconnects,
                "network_down": self.network_down,
            },
            "nat": {
                "type": nat.nat_type if nat is not None else None,
                "summary": nat.summary() if nat is not None else None,
            },
            "source": {
                "kind": self.config.source,
                "fps": round(self.broadcaster.recent_fps(now), 1),
                "frames": self.broadcaster.frames_published,
                "last_frame_age": None if last is None else round(now - last, 2),
                "restarts": self.source_restarts,
                "size": f"{self.config.video.width}x{self.config.video.height}",
            },
            "viewers": viewers,
            "pairing_open": self.pairing.is_open(include_reusable=True),
            "viewers_paired": len(self.acl.viewers()),
            "refusals": self.refusals,
        }

    async def close(self) -> None:
        """Stop serving: sessions, tasks, rendezvous link, source. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping()
        await asyncio.gather(
            *(s.close("camera shutting down") for s in list(self.sessions.values())),
            return_exceptions=True,
        )
        await self.ptz.close()  # after the sessions: their stops go out first
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self.broadcaster.close()
        await self.source.close()
