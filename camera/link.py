"""The camera's link to the rendezvous: connect, register, receive, send, reconnect.

A thin adapter: every frame received after registration goes to a callback
(the agent hands it to its core); the link only knows the handshake
(``hello`` → signed ``register`` → ``registered``) and how to come back.
Reconnects use capped exponential backoff with full jitter, so a server restart
does not bring every camera back in the same second.

The link never dies of what it receives: the callback is the core, which
never raises for a peer's input, and any unexpected error in an attempt is
logged, counted as an *internal* failure, and followed by the next attempt.
The supervisor (``camera.health``) watches the counters and the task: a link
task that ended, hangs, or keeps failing inside our own code is restarted,
then rebuilt, then left to systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from camera.config import CameraConfig, ResumingContext, ws_url
from camera.core import printable
from camera.gatekeeper import Gatekeeper
from services.signaling import ErrorCode, Message, ProtocolError, Role, encode, parse

logger = logging.getLogger(__name__)

HEARTBEAT = 20.0
"""WebSocket ping interval: under the 30 s after which Linux forgets an idle UDP/TCP NAT entry."""
STABLE = 30.0
"""A registration that lasted this long resets the backoff."""
REFUSED_CAP = 1.0
"""Backoff cap while the server's host refuses connections (its process is restarting),
and for the first wait after a registration that lasted at least ``SETTLED`` dropped."""
SETTLED = 5.0
"""A registration shorter than this that drops keeps the full backoff (a flapping server)."""
REFUSED_WINDOW = 60.0
"""How long into an outage refusals keep the short cap; after that, the normal backoff."""

RESTART_CODE = 1012
"""WebSocket close code "service restart": a rendezvous node that is stopping."""
MAX_HINT = 30.0
"""The longest reconnect wait a stopping server may ask for (s); longer is cut to this."""
_HINT = re.compile(r"reconnect in ([0-9]{1,6}) ms")


def reconnect_hint(code: int | None, reason: str) -> float | None:
    """Seconds a closing server asked us to wait before reconnecting, or None.

    A rendezvous node stopping (SIGTERM) closes its cameras with code 1012 and
    ``reconnect in N ms``, N random per camera: waiting that long spreads a
    fleet's reconnects over the survivors instead of landing them all at once."""
    if code != RESTART_CODE:
        return None
    match = _HINT.search(reason)
    return min(MAX_HINT, int(match.group(1)) / 1000) if match else None


_NETWORK_DOWN = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN}


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = getattr(current, "os_error", None) or current.__cause__ or current.__context__
    return out


def network_down(exc: BaseException) -> bool:
    """The error says this device has no usable network (vs. a server problem)."""
    return any(isinstance(e, socket.gaierror)  # no DNS: as good as no network for a camera
               or (isinstance(e, OSError) and e.errno in _NETWORK_DOWN) for e in _causes(exc))


def refused(exc: BaseException) -> bool:
    """The server's host answered with a reset: it is up, its server process is not."""
    return any(isinstance(e, ConnectionRefusedError) for e in _causes(exc))


class RendezvousUrls:
    """Which of several rendezvous URLs to dial next: each in order until one works,
    then round robin, one step per attempt (the link's backoff between them)."""

    def __init__(self, urls: tuple[str, ...]) -> None:
        self.urls = urls or ("",)
        self.index = 0
        self._untried = len(self.urls) - 1
        """URLs of the first pass not tried yet: those are dialled without a wait."""

    @property
    def current(self) -> str:
        return self.urls[self.index]

    def registered(self) -> None:
        """The current URL worked: the first pass is over."""
        self._untried = 0

    def advance(self) -> bool:
        """The attempt at the current URL ended: move on. True if the next one is
        still untried (first pass): dial it without waiting."""
        self.index = (self.index + 1) % len(self.urls)
        if self._untried > 0:
            self._untried -= 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class LinkFacts:
    """What the supervisor needs to judge the link."""

    running: bool
    """The link task exists and has not ended."""
    registered: bool
    network_down: bool
    internal_failures: int
    """Attempts that ended in an unexpected error of ours since the last registration."""
    last_activity: float
    """Loop time of the last sign of life: an attempt started, a frame received."""


class RendezvousLink:
    """Stays registered from :meth:`start` until :meth:`close`; :meth:`restart` on demand."""

    def __init__(
        self,
        config: CameraConfig,
        gatekeeper: Gatekeeper,
        on_registered: Callable[[list[dict[str, Any]]], None],
        on_frame: Callable[[str | bytes], None],
        *,
        on_change: Callable[[], None] | None = None,
        registered: asyncio.Event | None = None,
        http: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
    ) -> None:
        """``on_registered`` gets the ICE servers of ``registered``; ``on_frame`` every
        later frame; ``on_change`` is called when registration comes or goes, and
        ``registered`` (made here if not given) is set while registered. ``http``
        makes the HTTP client session (one per run of the link; a benchmark binds
        each simulated camera to its own source address there)."""
        self.config = config
        self.gatekeeper = gatekeeper
        self._on_registered = on_registered
        self._on_frame = on_frame
        self._on_change = on_change or (lambda: None)
        self._http = http
        self.urls = RendezvousUrls(config.rendezvous_urls)
        self.registered = registered or asyncio.Event()
        self.registered.clear()
        self.network_down = False
        self.reconnects = 0
        self.tls_resumed = 0
        """Connections whose TLS session was resumed (the server took our ticket)."""
        self.internal_failures = 0
        self.last_error: str | None = None
        self.last_activity = 0.0
        self._replaced = False
        self._hint: float | None = None
        """Seconds the server asked us to wait when it closed the link (code 1012)."""
        self._wake = asyncio.Event()
        """Set when the network changed: skip the backoff wait, start the ladder again."""
        self._outage_since: float | None = None
        self._restarting: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ssl_context: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self.last_activity = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name="rendezvous-link")

    async def nudge(self) -> None:
        """Send a ping on the connection now, instead of at the next heartbeat.

        When a viewer's media goes quiet its page or CLI heals with a new offer,
        which the server pushes down this connection. If our NAT forgot the
        connection (rebooted, flushed), the push is dropped until we send
        something: the ping makes the NAT map the connection again, or, where it
        picks another port, draws the server's reset, and the link reconnects at
        once. A connection that cannot even send is restarted.
        """
        ws = self._ws
        if ws is None or ws.closed:
            return
        try:
            await ws.ping()
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            logger.info("rendezvous connection failed a ping (%s): reconnecting",
                        printable(str(exc) or type(exc).__name__, 200))
            await self.restart()

    async def restart(self) -> None:
        """Drop the connection and start again at once (backoff reset)."""
        await self._stop_task()
        self.start()

    async def close(self) -> None:
        """Stop for good. Safe twice."""
        self._closed = True
        if self._restarting is not None:
            self._restarting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarting
        await self._stop_task()

    def network_changed(self, online: bool, old: frozenset[str], new: frozenset[str]) -> None:
        """The device's network changed (``old``/``new``: its global addresses).

        Waiting out a backoff is for a server that refuses, not for a network that
        just came back: the next attempt starts now. A connection whose local
        address went away is dead whatever TCP thinks: it is replaced at once.
        """
        if not online:
            self.network_down = True
            self._on_change()
        self._wake.set()
        ws = self._ws
        if ws is None or ws.closed or self._closed:
            return
        sockname = ws.get_extra_info("sockname")
        local = sockname[0] if isinstance(sockname, tuple) and sockname else None
        if local in old and (not online or local not in new):
            logger.info("rendezvous connection was on %s, which is gone: reconnecting", local)
            if self._restarting is None or self._restarting.done():
                self._restarting = asyncio.create_task(self.restart(), name="link-restart")

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_registered(False)
        self._ws = None

    def facts(self) -> LinkFacts:
        return LinkFacts(
            running=self._task is not None and not self._task.done(),
            registered=self.registered.is_set(),
            network_down=self.network_down,
            internal_failures=self.internal_failures,
            last_activity=self.last_activity,
        )

    def replaced(self) -> None:
        """The rendezvous says another connection registered our ID: back off fully."""
        self._replaced = True

    # -- sending -------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Send if connected; dropped otherwise (live sessions don't need the link)."""
        ws = self._ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(text)

    # -- the loop --------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        if self._ssl_context is None:
            # Kept across runs: a restarted link still resumes its TLS session.
            self._ssl_context = self.config.ssl_context()
        ssl_context = self._ssl_context
        async with self._http() as http:
            while not self._closed:
                self.last_activity = loop.time()
                self._wake.clear()  # a change from now on cuts the next wait short
                registered_at: float | None = None
                was_refused = False
                try:
                    registered_at = await self._connect_once(http, ssl_context)
                except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError) as exc:
                    self.network_down = network_down(exc)
                    was_refused = refused(exc)
                    self.last_error = printable(exc) or type(exc).__name__
                    logger.warning("rendezvous %s: %s%s", self.urls.current,
                                   self.last_error, " (no network)" if self.network_down else "")
                except Exception as exc:
                    # Our own bug, or a library's: logged with its type, never fatal here.
                    self.internal_failures += 1
                    self.last_error = f"{type(exc).__name__}: {printable(exc)}"
                    logger.error("rendezvous link failed unexpectedly: %s", self.last_error)
                finally:
                    self._ws = None
                    self._set_registered(False)
                if self._closed:
                    break
                now = loop.time()
                dropped = False
                if registered_at is not None:
                    self._outage_since = now
                    if now - registered_at > STABLE:
                        attempt = 0  # it was a stable connection: start the ladder again
                    # A working registration that ends is a server restarting (or a
                    # path that broke): the first wait is short whatever came before.
                    dropped = now - registered_at > SETTLED
                elif self._outage_since is None:
                    self._outage_since = now
                cap = min(self.config.backoff_cap, self.config.backoff_base * 2**attempt)
                if dropped or (was_refused and now - self._outage_since < REFUSED_WINDOW):
                    # A server restart: come back within a second of it listening again
                    # (still jittered, so a fleet spreads its reconnects over the cap).
                    cap = min(cap, REFUSED_CAP)
                delay = random.uniform(0, cap)  # full jitter: no reconnect storms
                if self.urls.advance():
                    delay = 0.0  # several URLs: the first pass tries each at once
                if self._hint is not None:
                    # A stopping node spreads its cameras' returns: its wait, not ours.
                    delay, self._hint = self._hint, None
                if self._replaced:
                    # Two devices with one key would replace each other forever: back
                    # off fully so the newer one keeps working, and say why loudly.
                    self._replaced = False
                    delay = self.config.backoff_cap
                attempt += 1
                self.reconnects += 1
                logger.info("reconnecting to the rendezvous in %.2f s", delay)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                    attempt = 0  # the network changed: the next attempt is a first one
                    logger.info("network changed: reconnecting now")

    async def _connect_once(self, http: aiohttp.ClientSession, ssl_context: Any) -> float | None:
        loop = asyncio.get_running_loop()
        timeout = self.config.connect_timeout
        url = ws_url(self.urls.current, "/ws/camera")
        async with http.ws_connect(
            url, heartbeat=HEARTBEAT, ssl=ssl_context, timeout=aiohttp.ClientWSTimeout(ws_close=5)
        ) as ws:
            self._ws = ws
            hello = await self._handshake_message(ws, timeout)
            if hello is None or hello.type != "hello":
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "expected hello")
            if isinstance(ssl_context, ResumingContext):
                # The server's ticket arrives after the TLS handshake: by now it is read.
                self.tls_resumed += ssl_context.remember(ws.get_extra_info("ssl_object"))
            fields = self.gatekeeper.registration(url, hello["nonce"])
            await ws.send_str(encode(Role.CAMERA, "register", **fields))
            reply = await self._handshake_message(ws, timeout)
            if reply is None or reply.type != "registered":
                detail = reply.get("message") if reply is not None else "connection closed"
                raise ProtocolError(ErrorCode.BAD_MESSAGE,
                                    f"not registered: {printable(detail)}")
            registered_at = loop.time()
            self._outage_since = None
            self.network_down = False
            self.internal_failures = 0
            self.last_error = None
            self._set_registered(True)
            self.urls.registered()
            logger.info("registered as %s at %s", self.gatekeeper.device_id,
                        self.urls.current)
            self._on_registered(list(reply["ice_servers"]))
            while True:
                msg = await ws.receive()
                self.last_activity = loop.time()
                if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    if msg.type is aiohttp.WSMsgType.CLOSE:
                        self._hint = reconnect_hint(msg.data, str(msg.extra or ""))
                    return registered_at
                self._on_frame(msg.data)

    async def _handshake_message(
        self, ws: aiohttp.ClientWebSocketResponse, timeout: float
    ) -> Message | None:
        """The next valid handshake message; bad ones are logged and skipped."""
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                return None
            try:
                return parse(msg.data, Role.SERVER)
            except ProtocolError as exc:
                logger.warning("rendezvous sent a bad message: %s", printable(exc.message))

    def _set_registered(self, value: bool) -> None:
        if value == self.registered.is_set():
            return
        if value:
            self.registered.set()
        else:
            self.registered.clear()
        self._on_change()
