"""The rendezvous server: aiohttp adapter around :class:`services.routing.Router`.

Serves the camera and viewer WebSockets, the web viewer, ``/healthz`` and
``/metrics`` (Prometheus; on its own address with ``metrics_listen``). All
routing decisions are the router's; this module moves frames, owns tasks and
counts what it refuses itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import logging
import math
import os
import random
import re
import resource
import ssl
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import WSMsgType, web
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from services.cluster import ClusterRouter, ClusterSettings
from services.drain import DrainReport, PeerDrain
from services.errors import ServiceError
from services.heartbeat import HeartbeatWheel
from services.metrics import (
    Families,
    RuntimeMetrics,
    counter,
    gauge,
    metrics_handler,
    serve_metrics,
)
from services.ratelimit import TokenBucket
from services.routing import (
    Action,
    BadServerName,
    Close,
    Extension,
    Peer,
    Router,
    Send,
    parse_server_names,
)
from services.signaling import MAX_MESSAGE_BYTES, ErrorCode, Role, error

if TYPE_CHECKING:
    from services.cluster_redis import RedisCluster

logger = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html"),
    "/viewer.js": ("viewer.js", "text/javascript"),
    "/viewer.css": ("viewer.css", "text/css"),
    # The viewer's ES modules, its PWA manifest, service worker and icons.
    **{f"/{name}": (name, "text/javascript") for name in (
        "codec.mjs", "keys.mjs", "cameras.mjs", "zoom.mjs", "list.js", "player.js",
        "controls.js", "sw.js")},
    "/manifest.webmanifest": ("manifest.webmanifest", "application/manifest+json"),
    "/icon-192.png": ("icon-192.png", "image/png"),
    "/icon-512.png": ("icon-512.png", "image/png"),
}


_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def web_headers(host: str) -> dict[str, str]:
    """The headers of every web-viewer file (docs/security.md, "The web viewer").

    The policy lets the page run only its own files (no inline script, no
    eval, no HTML built from strings, script URLs only through the page's one
    Trusted Types policy, "peercam", which knows the worker's), talk only to this
    server (its WebSocket included: older WebKit does not count ws: as
    'self'), and never be framed; the Referer is never sent (a pairing link's
    secret is in the fragment, which browsers do not send anyway).
    """
    sockets = f" ws://{host} wss://{host}" if _HOST.fullmatch(host) else ""
    policy = "; ".join((
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",
        f"connect-src 'self'{sockets}",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types peercam",
    ))
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


@dataclass(frozen=True)
class RendezvousConfig:
    """How the rendezvous server behaves."""

    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    """ICE servers handed to cameras and viewers in ``hello`` (empty: host candidates only)."""
    heartbeat: float = 20.0
    """WebSocket ping interval: a connection quiet for half of it is pinged, one that
    sends nothing for a whole interval after a ping is dropped (vanished peers)."""
    answer_timeout: float = 20.0
    """Seconds a camera has to answer an offer."""
    message_rate: float = 20.0
    """Messages per second allowed per connection (sustained)."""
    message_burst: float = 40.0
    """Messages allowed in a burst per connection."""
    server_names: tuple[str, ...] = ()
    """This server's own ``host[:port]`` names, as cameras dial it (the host of
    their rendezvous URL). A registration must be signed for one of them.
    Empty: derived from a specific listen address (with a warning); listening
    on all addresses without a name refuses to start."""
    server_name: str = "peercam"
    """Name sent in ``hello`` (informational; cameras sign the host they dialled)."""
    connection_rate: float = 5.0
    """New WebSocket connections per second allowed from one IP address (sustained)."""
    connection_burst: float = 40.0
    """New connections allowed from one IP address in a burst."""
    credentials: Callable[[str], list[dict[str, Any]]] | None = None
    """Mints TURN credentials for a tag (see ``services.turn``); None: no TURN."""
    handshake_timeout: float = 5.0
    """Seconds a connection has from accept to a completed WebSocket upgrade (the
    HTTP request head included); a plain HTTP connection (the page, /healthz)
    lives at most this long."""
    register_timeout: float = 30.0
    """Seconds a camera connection may stay unregistered before it is closed."""
    max_pending: int = 512
    """Connections not yet upgraded to a WebSocket, in total."""
    max_pending_per_ip: int = 16
    """Connections not yet upgraded to a WebSocket, from one IP address."""
    max_connections: int = 0
    """Open connections in total; 0: the descriptor limit less a reserve
    (``FD_RESERVE``), after raising the soft limit to the hard one."""
    metrics_listen: tuple[str, int] | None = None
    """Serve ``/metrics`` on this (host, port) only, not on the public port;
    None: ``/metrics`` on the public port (block it at the proxy)."""
    shutdown_window: float = 1.5
    """Seconds over which a stopping server (SIGTERM) closes its connections, in
    batches, so their reconnects do not all land on one survivor at once."""
    reconnect_spread: float = 1.0
    """Each close at shutdown asks its peer to wait a random 0 to this many seconds
    before reconnecting (close code 1012, "reconnect in N ms"): the camera link
    honours it, so a fleet's reconnects spread over the window plus this."""
    gc_freeze: bool = False
    """Move long-lived objects out of the garbage collector's sight (``gc.freeze``)
    after start-up and after each burst of new connections, so a full collection
    walks only what is new since, not every connection held. It freezes the whole
    process, so only a process that is nothing but the rendezvous (the
    ``rendezvous`` command) turns it on: an embedding process (the demo's camera,
    tests) may keep cyclic garbage that freezing would keep for ever."""
    cluster: ClusterSettings | None = None
    """Share presence and routing with other nodes through Redis; None: this
    process alone (presence in memory only)."""


#: Connections per shutdown batch at least (a small fleet goes in fewer batches).
SHUTDOWN_MIN_BATCH = 500
#: Seconds a stopping server waits for its closed connections' handlers to unwind
#: (or, exiting at once, for everything it wrote to be acknowledged).
SHUTDOWN_UNWIND_TIMEOUT = 10.0
#: Exiting at once: seconds after the last close frame that the server waits for
#: its peers to end their side (their close frame, then EOF) before it settles
#: for everything it wrote being acknowledged.
SHUTDOWN_PEER_WAIT = 0.3
#: Transports closed at a time between shutdown batches, and how long before the
#: next batch is due that closing stops: their handlers unwind in the same loop.
_UNWIND_CHUNK = 64
_UNWIND_MARGIN = 0.01


def _close_frame(code: int, reason: str) -> bytes:
    """A server's close frame: unmasked, FIN + opcode 8, the length, code and reason."""
    payload = code.to_bytes(2, "big") + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


@dataclass(frozen=True)
class ShutdownReport:
    """How a stopping server closed its connections (``Rendezvous.close_all``)."""

    connections: int
    batches: tuple[tuple[float, int], ...]
    """Per batch: when it was planned (seconds after the first) and the close
    frames it wrote."""
    written_in: float
    """Seconds from the first batch until the last close frame was written."""
    late: float
    """The most a batch went out after its plan, in seconds."""
    unwound_early: int
    """Handlers that unwound before the last close frame was written (in the
    slack between batches)."""
    unwound_in: float | None
    """Seconds the rest took to unwind after that (None: not within the wait, or
    not unwound: the process exits at once)."""
    drained: DrainReport | None = None
    """Exiting at once: how the connections stood when the wait for their peers ended."""
    drained_in: float | None = None
    """Exiting at once: seconds from the last close frame until that wait ended."""


class Rendezvous:
    """One rendezvous process: presence kept in memory."""

    def __init__(self, config: RendezvousConfig | None = None) -> None:
        self.config = config or RendezvousConfig()
        router_options: dict[str, Any] = dict(
            server_names=self.config.server_names,
            server_name=self.config.server_name,
            ice_servers=self.config.ice_servers,
            credentials=self.config.credentials,
            answer_timeout=self.config.answer_timeout,
            register_timeout=self.config.register_timeout,
        )
        self.router = Router(**router_options)
        self.cluster: RedisCluster | None = None
        if self.config.cluster is not None:
            from services.cluster_redis import RedisCluster

            self.router = ClusterRouter(self.config.cluster.node_id, **router_options)
            self.cluster = RedisCluster(self.config.cluster, self.router, self._perform)
        self.budget = ConnectionBudget(
            max_connections=self.config.max_connections or descriptor_budget(),
            max_pending=self.config.max_pending,
            max_pending_per_ip=self.config.max_pending_per_ip,
        )
        self._sockets: dict[Peer, web.WebSocketResponse] = {}
        self._transports: dict[Peer, asyncio.Transport] = {}
        self.wheel: HeartbeatWheel[Peer] = HeartbeatWheel(
            self.config.heartbeat, min(1.0, self.config.heartbeat / 4))
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.freezer = GcFreezer(enabled=self.config.gc_freeze)
        self.stopping = False
        self.shutdown_report: ShutdownReport | None = None
        """How the connections were closed at shutdown (set once stopped)."""
        self._exit_when_closed = False
        self._per_ip: dict[str, TokenBucket] = {}
        self._expiry_task: asyncio.Task[None] | None = None
        self.refused: Counter[str] = Counter()
        """Refusals of this adapter's own limiters: ``connection_rate`` (HTTP 429)
        and ``message_rate`` (a message dropped); the budget counts the rest."""
        # One registry per server: tests run many in one process.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Families(lambda: _metrics(self)))
        self.runtime_metrics = RuntimeMetrics(self.registry, "rendezvous")
        self.metrics_port: int | None = None
        """The bound port of the separate ``/metrics`` listener (``metrics_listen``)."""
        self.metrics_runner: web.AppRunner | None = None
        self.app = web.Application()
        # Partials, not wrapper coroutines: one frame less held per connection.
        self.app.router.add_get("/ws/camera", functools.partial(self._serve, role=Role.CAMERA))
        self.app.router.add_get("/ws/viewer", functools.partial(self._serve, role=Role.VIEWER))
        self.app.router.add_get("/healthz", self._healthz)
        if self.config.metrics_listen is None:
            self.app.router.add_get("/metrics", metrics_handler(self.registry))
        for path in _STATIC:
            self.app.router.add_get(path, self._static)
        self.app.on_startup.append(self._startup)
        self.app.on_shutdown.append(self._shutdown)
        self.app.on_cleanup.append(self._cleanup)

    async def _startup(self, app: web.Application) -> None:
        self._expiry_task = asyncio.create_task(self._expire_loop(), name="rendezvous-expiry")
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(),
                                                   name="rendezvous-heartbeat")
        self.runtime_metrics.start()
        if self.freezer.enabled:
            self.freezer.freeze(asyncio.get_running_loop().time())
        if self.cluster is not None:
            await self.cluster.start()

    async def _shutdown(self, app: web.Application) -> None:
        logger.info("stopping: %d connections to close", len(self._sockets))
        await self.runtime_metrics.stop()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
            self.metrics_runner = None
        for task in (self._expiry_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._expiry_task = self._heartbeat_task = None
        exiting = self._exit_when_closed
        self.shutdown_report = await self.close_all(self.config.shutdown_window,
                                                    self.config.reconnect_spread,
                                                    unwind=not exiting)
        if self.cluster is not None:
            await self.cluster.stop()
        if exiting:
            _end_process()

    async def stop_process(self, runner: web.AppRunner) -> NoReturn:
        """Stop serving and end this process, which is nothing but this rendezvous (the
        ``rendezvous`` command, on SIGTERM): once every close frame is written and
        through (``close_all`` with ``unwind=False``, see ``services.drain``), and a
        cluster node has given back its presence, the process ends at once
        (``os._exit(0)``, logs flushed) instead of unwinding each connection's
        handler and then the interpreter, which at 19000 connections added 0.9 to
        2.4 s after the last close frame. An embedding process (the demo, tests) calls
        ``runner.cleanup()`` instead."""
        self._exit_when_closed = True
        # No collection from here on (a full one held 19000 connections' stop up by
        # 0.65 s without gc_freeze): what is left goes with the process.
        gc.disable()
        await runner.cleanup()  # the shutdown hook ends the process
        _end_process()

    async def _cleanup(self, app: web.Application) -> None:
        # Unfrozen only now, after the server's shutdown: the closed connections'
        # objects have gone (reference counting) with their handlers' last steps, so
        # the next full collection walks what is left, not every connection's.
        if self.freezer.enabled:
            gc.unfreeze()

    async def close_all(self, window: float, spread: float, *,
                        min_batch: int = SHUTDOWN_MIN_BATCH,
                        unwind_timeout: float = SHUTDOWN_UNWIND_TIMEOUT,
                        unwind: bool = True,
                        peer_wait: float = SHUTDOWN_PEER_WAIT) -> ShutdownReport:
        """Close every WebSocket, in batches over ``window`` seconds, each close asking
        its peer to wait a random 0 to ``spread`` s before it reconnects.

        A batch only writes: each connection gets its close frame and a FIN
        (end of our stream) and is no longer read, and nothing waits for its
        reply, so a dead peer costs nothing. Closing its transport, which makes
        its handler unwind in this loop (50 µs or more a connection), is left to
        the slack before the next batch is due, a few at a time, and whatever is
        left goes after the last batch. So batch ``n`` goes out at
        ``n * window / batches`` (the last before ``window``) whatever the
        count, late by at most one small chunk of unwinding, and the window is
        not wasted waiting.

        ``unwind=False`` is for a process that ends right after (``stop_process``):
        no transport is closed and no handler unwinds. Each connection is watched
        instead (``services.drain``), in the slack and after the last batch: what
        its peer sends is read away, and the wait ends when every peer has ended
        its side, or ``peer_wait`` s after the last batch once everything written
        is acknowledged, or after ``unwind_timeout`` s whatever is left. The
        sockets stay open for the process' exit to close, each with a FIN, no
        reset."""
        self.stopping = True
        # No automatic collection while closing: the unwinding makes objects
        # quickly, and each collection (tens of ms with many connections) would
        # hold up a batch. What the closed connections leave goes by reference
        # counting (see ``_drop_traceback``).
        collecting = gc.isenabled()
        gc.disable()
        try:
            if not unwind:
                return await self._close_all_parked(window, spread, min_batch, unwind_timeout,
                                                    peer_wait)
            return await self._close_all(window, spread, min_batch, unwind_timeout)
        finally:
            if collecting:
                gc.enable()

    async def _close_all(self, window: float, spread: float, min_batch: int,
                         unwind_timeout: float) -> ShutdownReport:
        loop = asyncio.get_running_loop()

        async def unwind(written: list[asyncio.Transport], until: float) -> None:
            """Close the transports written so far, a chunk at a time, until ``until``."""
            while written and loop.time() < until:
                for transport in written[-_UNWIND_CHUNK:]:
                    transport.close()  # after what is buffered (its close frame) is sent
                del written[-_UNWIND_CHUNK:]
                await asyncio.sleep(0)  # their handlers unwind

        peers, plan, written, written_in, late = await self._write_batches(
            window, spread, min_batch, unwind)
        unwound_early = sum(1 for peer in peers if peer not in self._sockets)
        for transport in written:
            transport.close()
        unwinding = loop.time()
        while self._sockets and loop.time() - unwinding < unwind_timeout:
            await asyncio.sleep(0.01)
        left = sum(1 for peer in peers if peer in self._sockets)
        report = ShutdownReport(len(peers), tuple(plan), written_in, late, unwound_early,
                                None if left else loop.time() - unwinding)
        logger.info("closed %d connections in %.2f s (close frames written in %d batches, "
                    "at most %.0f ms late; %d handlers unwound meanwhile); the rest unwound "
                    "in %s", len(peers), written_in, len(plan), 1000 * late, unwound_early,
                    f"{report.unwound_in:.2f} s" if report.unwound_in is not None
                    else f"more than {unwind_timeout:g} s ({left} left)")
        return report

    async def _write_batches(
        self, window: float, spread: float, min_batch: int,
        slack: Callable[[list[asyncio.Transport], float], Awaitable[None]],
    ) -> tuple[list[Peer], list[tuple[float, int]], list[asyncio.Transport], float, float]:
        """Every connection, in a random order and in batches: batch ``n`` gets its close
        frames (1012 with a reconnect hint) and FINs at ``n * window / batches``. Before
        each, ``slack(written, until)`` works on the transports written so far (taking
        out of the list those it is done with) until the loop time ``until``.

        Returns the peers, the plan (when each batch was due, how many it reached), the
        transports still in the list, the seconds until the last batch was written and
        how late the latest batch was."""
        peers = list(self._sockets)
        random.shuffle(peers)
        batches = max(1, min(-(-len(peers) // max(1, min_batch)), round(window / 0.05)))
        size = -(-len(peers) // batches) if peers else 0
        loop = asyncio.get_running_loop()
        plan: list[tuple[float, int]] = []
        written: list[asyncio.Transport] = []
        late = 0.0
        started = loop.time()
        for n in range(batches):
            at = n * window / batches
            await slack(written, started + at - _UNWIND_MARGIN)
            await asyncio.sleep(max(0.0, started + at - loop.time()))
            late = max(late, loop.time() - started - at)
            count = 0
            for peer in peers[n * size:(n + 1) * size]:
                hint = round(random.uniform(0, spread) * 1000)
                said = self._say_goodbye(peer, 1012, f"server restarting; reconnect in {hint} ms")
                if said is not None:
                    written.append(said)
                    count += 1
            plan.append((at, count))
        return peers, plan, written, loop.time() - started, late

    async def _close_all_parked(self, window: float, spread: float, min_batch: int,
                                wait: float, peer_wait: float) -> ShutdownReport:
        loop = asyncio.get_running_loop()
        drain = PeerDrain()

        async def watch(written: list[asyncio.Transport], until: float) -> None:
            """Watch what the last batches wrote, reading away what their peers answered,
            until ``until``."""
            while loop.time() < until:
                for transport in written[-_UNWIND_CHUNK:]:
                    drain.add(transport)
                del written[-_UNWIND_CHUNK:]
                drain.poll(_UNWIND_CHUNK)
                idle = until - loop.time()
                await asyncio.sleep(0 if written else max(0.0, min(0.005, idle)))

        try:
            peers, plan, written, written_in, late = await self._write_batches(
                window, spread, min_batch, watch)
            for transport in written:
                drain.add(transport)
            last = loop.time()
            checked = last
            while drain.waiting:
                await asyncio.sleep(0.005)
                drain.poll()
                now = loop.time()
                if now - last >= wait:
                    break
                if now - last >= peer_wait and now - checked >= 0.02:
                    checked = now
                    if drain.unacknowledged() == 0:
                        break
            drain.read_all()
            drained_in = loop.time() - last
            drained = drain.report()
        finally:
            drain.close()
        logger.info("closed %d connections in %.2f s (close frames written in %d batches, "
                    "at most %.0f ms late); exiting without unwinding %.2f s later: %d peers "
                    "ended their side, %d acknowledged everything, %d did not",
                    len(peers), written_in, len(plan), 1000 * late, drained_in, drained.ended,
                    drained.acknowledged, drained.unacknowledged)
        return ShutdownReport(len(peers), tuple(plan), written_in, late, 0, None,
                              drained, drained_in)

    def _say_goodbye(self, peer: Peer, code: int, reason: str) -> asyncio.Transport | None:
        """Write a close frame and a FIN and stop reading the connection, without
        closing it (``close_all`` does, later); its transport (None: already closing)."""
        transport = self._transports.get(peer)
        if transport is None or transport.is_closing():
            return None
        transport.pause_reading()
        transport.write(_close_frame(code, reason))
        if transport.can_write_eof():
            transport.write_eof()
        return transport

    def _close_now(self, peer: Peer, code: int, reason: str) -> None:
        """Write a close frame and drop the transport, without waiting for a reply."""
        transport = self._transports.get(peer)
        if transport is None or transport.is_closing():
            return
        transport.write(_close_frame(code, reason))
        transport.close()

    def _freeze_batch(self) -> None:
        """A batch of new connections is in: freeze now, not at the next second's
        tick (a registration burst brings thousands a second, and one collection of
        all of them stopped the loop for 40-60 ms)."""
        if not self.stopping:
            self.freezer.maybe_freeze(asyncio.get_running_loop().time())

    async def _expire_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            await self._perform(self.router.expire(loop.time()))
            self.freezer.maybe_freeze(loop.time())

    async def _heartbeat_loop(self) -> None:
        """One task pings every connection (see ``services.heartbeat``): no timers and
        no task per connection. Pings go out in slices, so a tick never holds the
        loop for long."""
        loop = asyncio.get_running_loop()
        wheel = self.wheel
        while True:
            await asyncio.sleep(wheel.tick_seconds)
            ping, dead = wheel.tick(loop.time())
            for peer in dead:
                logger.info("%r sent nothing since a ping: dropped", peer)
                transport = self._transports.get(peer)
                if transport is not None:
                    transport.abort()
            for n, peer in enumerate(ping, 1):
                ws = self._sockets.get(peer)
                if ws is not None and not ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.ping()
                if n % 256 == 0:
                    await asyncio.sleep(0)

    async def _healthz(self, request: web.Request) -> web.Response:
        budget = self.budget
        # Degraded (Redis unreachable) is still 200: this node serves its own cameras
        # and viewers, and a load balancer must keep sending it theirs.
        cluster = {} if self.cluster is None else {"cluster": self.cluster.health()}
        degraded = self.cluster is not None and self.cluster.degraded
        return web.json_response({
            "status": "degraded" if degraded else "ok",
            **cluster,
            **self.router.stats(),
            "connections": budget.open,
            "pending": budget.pending,
            "refused": budget.refused,
        })

    async def _static(self, request: web.Request) -> web.Response:
        name, content_type = _STATIC[request.path]
        body = resources.files("services").joinpath("web", name).read_bytes()
        return web.Response(body=body, content_type=content_type,
                            headers=web_headers(request.host))

    def _admit(self, remote: str, now: float) -> bool:
        """Per-IP connection rate limit (a reconnect storm or a scan stops here)."""
        bucket = self._per_ip.get(remote)
        if bucket is None:
            if len(self._per_ip) > 100_000:
                self._per_ip.clear()  # bounded memory under a spoofed-source flood
            bucket = self._per_ip[remote] = TokenBucket(
                self.config.connection_rate, self.config.connection_burst
            )
        return bucket.allow(now)

    async def _serve(self, request: web.Request, role: Role) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        remote = request.remote or "?"
        if not self._admit(remote, loop.time()):
            self.refused["connection_rate"] += 1
            logger.info("refused a connection from %s: too many", remote)
            return web.Response(status=429, text="too many connections\n")
        # aiohttp closes with 1009 above max_msg_size; below it, our parser answers
        # an oversized message with an error and keeps the connection.
        # No library heartbeat (two timers and a task per connection): the wheel
        # pings; pings from the peer are answered here.
        ws = web.WebSocketResponse(autoping=False, max_msg_size=4 * MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        transport = request.transport
        counted = _Counted.of(transport)
        if counted is not None:
            counted.upgraded()
        host = request.host
        _shed_request(request, ws)
        if not isinstance(transport, asyncio.Transport) or self.stopping:
            await ws.close(code=1012, message=b"server restarting")
            return ws
        peer = Peer(role, remote=remote, host=host)
        self._sockets[peer] = ws
        self._transports[peer] = transport
        self.wheel.add(peer, loop.time())
        if self.freezer.connected():
            loop.call_soon(self._freeze_batch)
        bucket = TokenBucket(self.config.message_rate, self.config.message_burst)
        warned_at = float("-inf")
        try:
            await self._perform(self.router.connected(peer, loop.time()))
            async for msg in ws:
                now = loop.time()
                peer.seen_at = now
                if msg.type is WSMsgType.PING:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.pong(msg.data)
                    continue
                if msg.type is WSMsgType.PONG:
                    continue
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                if not bucket.allow(now):
                    self.refused["message_rate"] += 1
                    if now - warned_at > 1.0:
                        warned_at = now
                        self.router.counters.errors[ErrorCode.RATE_LIMITED.value] += 1
                        await self._send(peer, error(ErrorCode.RATE_LIMITED, "slow down"))
                    continue
                await self._perform(self.router.received(peer, msg.data, now))
        finally:
            self._sockets.pop(peer, None)
            self._transports.pop(peer, None)
            self.wheel.discard(peer)
            _drop_traceback(ws.exception())
            if not self.stopping:
                # Stopping: the router goes with the process, and a cluster node gives
                # back its whole presence at once (RedisCluster.stop), not 100k times.
                await self._perform(self.router.disconnected(peer))
        return ws

    async def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                await self._send(action.peer, action.text)
            elif isinstance(action, Close):
                ws = self._sockets.get(action.peer)
                if ws is not None:
                    await ws.close(code=4000, message=action.reason.encode()[:120])
            elif isinstance(action, Extension) and self.cluster is not None:
                await self.cluster.perform(action)

    async def _send(self, peer: Peer, text: str) -> None:
        ws = self._sockets.get(peer)
        if ws is None or ws.closed:
            return
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            logger.info("could not send to %r: %s", peer, exc)


def _end_process() -> NoReturn:
    """End a stopping rendezvous process now: logs flushed, then ``os._exit(0)``. The
    kernel closes the sockets (each with a FIN: ``close_all`` left nothing unread
    in them) without the interpreter unwinding each connection and its objects."""
    logger.info("rendezvous stopped")
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
_NO_MESSAGES: tuple[()] = ()
"""Stands for an upgraded connection's queue of HTTP requests: empty, and an
append (which an upgraded connection never does) fails loudly, not silently."""


def _shed_request(request: web.Request, ws: web.WebSocketResponse) -> None:
    """Let go of what aiohttp keeps of an upgraded connection's HTTP request and
    will not use again, though it holds it as long as the WebSocket (15.4 KiB
    allocated per idle camera before, 12.2 after).

    The request's parsed headers (its raw ones stay: a tuple aiohttp's own frame
    holds), the HTTP parser and the queue of pipelined requests (the upgrade
    ends HTTP on this connection: every later byte goes to the WebSocket
    reader), the HTTP keep-alive timer, which an upgraded connection never needs
    but which stays in the loop's heap for an hour, and the response's headers,
    sent with the upgrade. Everything the server reads from the request (its
    Host, the peer's address) is read before. Each step checks that aiohttp
    still has what it lets go of, and skips it otherwise.
    """
    message = getattr(request, "_message", None)
    if isinstance(message, RawRequestMessage):
        # aiohttp's own frame keeps the parsed message (and its raw headers) to the
        # end: empty the headers it shares, then hand the request a message without.
        for held in gc.get_referents(message.headers):
            if isinstance(held, CIMultiDict):
                held.clear()
        setattr(request, "_message",  # noqa: B010
                message._replace(headers=_NO_HEADERS, raw_headers=()))
        setattr(request, "_headers", _NO_HEADERS)  # noqa: B010
        getattr(request, "_cache", {}).pop("headers", None)
    handler = request.protocol
    if getattr(handler, "_payload_parser", None) is None:
        return  # not upgraded: nothing here is unused yet
    if hasattr(handler, "_parser") and hasattr(handler, "_messages") and not handler._messages:
        setattr(handler, "_parser", None)  # noqa: B010
        setattr(handler, "_messages", _NO_MESSAGES)  # noqa: B010
    keepalive = getattr(handler, "_keepalive_handle", None)
    if isinstance(keepalive, asyncio.TimerHandle):
        keepalive.cancel()
        setattr(handler, "_keepalive_handle", None)  # noqa: B010
    ws.headers.clear()  # the response's: sent with the upgrade, never read again


def _drop_traceback(exc: BaseException | None) -> None:
    """Cut the cycle a closed WebSocket keeps: its exception's traceback holds the
    frames that hold the socket. Left alone, a dropped connection is freed only
    by a full collection, and never once it has been frozen (``GcFreezer``)."""
    seen = 0
    while exc is not None and seen < 8:
        exc.__traceback__ = None
        nxt = exc.__cause__ or exc.__context__
        exc.__cause__ = exc.__context__ = None
        exc, seen = nxt, seen + 1


class GcFreezer:
    """When to hide what is alive from the garbage collector (``gc.freeze``).

    A full collection walks every tracked object: about 75 per connection, so
    at 10k connections it stops the event loop for half a second and at 100k
    for seconds. Objects that survive a collection and are frozen are never
    walked again (``gc.freeze`` is constant time); they are still freed when
    their last reference goes, which is why every reference cycle a closed
    connection leaves behind must be cut (``_drop_traceback``).

    Not only new connections make new long-lived objects: every message an
    idle connection gets (a camera's ping every 20 s) leaves a fresh waiter and
    message behind, held by its frozen connection until the next one, so 100k
    cameras promote about 5000 connections' worth into the oldest generation
    every second. Freezing every ``period`` seconds (and after ``batch`` new
    connections, as soon as the batch is in) keeps the collection before each
    freeze, and every automatic one, bounded by what one second or one batch brings.
    """

    def __init__(self, *, enabled: bool = True, batch: int = 256, period: float = 1.0) -> None:
        self.enabled, self.batch, self.period = enabled, batch, period
        self.new = 0
        """Connections made since the last freeze."""
        self.freezes = 0
        self.last_pause_ms = 0.0
        self.largest = 0
        """The most new connections one freeze covered."""
        self._last = float("-inf")

    def connected(self) -> bool:
        """Count a new connection; True once per batch, when it is time to freeze."""
        self.new += 1
        return self.enabled and self.new == self.batch

    def maybe_freeze(self, now: float) -> bool:
        """Freeze if enough is new (call about once a second); did it?"""
        if not self.enabled:
            return False
        if self.new < self.batch and now - self._last < self.period:
            return False
        self.freeze(now)
        return True

    def freeze(self, now: float) -> None:
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        self.last_pause_ms = (time.perf_counter() - started) * 1000
        self.largest = max(self.largest, self.new)
        self.new, self._last = 0, now
        self.freezes += 1


#: Every label value a counter can have, listed so each series exists from the
#: first scrape (a rate over a series that appears mid-way misses its first count).
_SESSION_KINDS = ("offer", "pair")
_LIMITERS = ("connection_rate", "message_rate", "max_connections", "max_pending",
             "max_pending_per_ip", "handshake_timeout")
_REGISTRATION_REFUSALS = ("replayed", "stale-nonce", "bad-key", "key-mismatch",
                          "bad-signature", "timeout")


def _metrics(server: Rendezvous) -> Iterator[Metric]:
    """The router's counters, the connection budget and the adapter's refusals, read
    at scrape time: nothing is counted twice, and the router stays sans-I/O."""
    router, budget, counters = server.router, server.budget, server.router.counters
    yield gauge("peercam_rendezvous_cameras_online",
                "Cameras registered now (a proved device key each)", len(router.cameras))
    yield gauge("peercam_rendezvous_camera_connections_unregistered",
                "Camera WebSockets open that have not registered (yet)",
                len(router.unregistered))
    yield gauge("peercam_rendezvous_viewers_connected", "Viewer WebSockets open now",
                len(router.viewers))
    active = Counter(session.kind for session in router.sessions.values())
    yield gauge("peercam_rendezvous_viewer_sessions_active",
                "Viewer sessions routed and not ended, by kind (offer: watch, pair: pairing)",
                labels=["kind"], values={k: active[k] for k in _SESSION_KINDS})
    yield counter("peercam_rendezvous_viewer_sessions_started",
                  "Viewer sessions routed to an online camera, by kind", labels=["kind"],
                  values={k: counters.sessions_started[k] for k in _SESSION_KINDS})
    yield counter("peercam_rendezvous_viewer_sessions_answered",
                  "Viewer sessions the camera answered (answer or paired), by kind",
                  labels=["kind"],
                  values={k: counters.sessions_answered[k] for k in _SESSION_KINDS})
    yield counter("peercam_rendezvous_messages_received",
                  "Signaling messages received, by sender role and message type "
                  "(type invalid: did not parse)", labels=["role", "type"],
                  values=dict(sorted(counters.received.items())))
    yield counter("peercam_rendezvous_errors_sent",
                  "error messages sent to cameras and viewers, by code", labels=["code"],
                  values={code.value: counters.errors[code.value] for code in ErrorCode})
    yield counter("peercam_rendezvous_refusals",
                  "Connections or messages refused by a limiter: connection_rate (HTTP 429), "
                  "message_rate (message dropped), max_connections, max_pending, "
                  "max_pending_per_ip (HTTP 503), handshake_timeout (no WebSocket upgrade "
                  "in time: reset)", labels=["limiter"],
                  values={k: server.refused[k] + budget.refused_by[k] for k in _LIMITERS})
    yield counter("peercam_rendezvous_registrations", "Camera registrations accepted",
                  counters.registrations)
    yield counter("peercam_rendezvous_registrations_refused",
                  "Camera registrations refused, by reason", labels=["reason"],
                  values={r: counters.registrations_refused[r]
                          for r in _REGISTRATION_REFUSALS})
    yield counter("peercam_rendezvous_registrations_replaced",
                  "Registrations that closed an older connection of the same camera",
                  counters.replaced)
    yield counter("peercam_rendezvous_turn_credentials_issued",
                  "TURN credential sets minted (for registered cameras and sessions)",
                  counters.turn_credentials)
    yield counter("peercam_rendezvous_turn_credential_failures",
                  "TURN credentials that could not be minted",
                  counters.turn_credential_failures)
    yield gauge("peercam_rendezvous_open_connections",
                "TCP connections open (WebSockets, pages, scrapes)", budget.open)
    yield gauge("peercam_rendezvous_pending_connections",
                "Connections not yet upgraded to a WebSocket", budget.pending)
    yield gauge("peercam_rendezvous_max_connections",
                "Open connections allowed before new ones get HTTP 503", budget.max_connections)
    yield gauge("peercam_rendezvous_max_pending_connections",
                "Connections not yet upgraded allowed in total", budget.max_pending)
    if server.cluster is not None:
        yield from server.cluster.metrics()


class BadRendezvousConfig(ServiceError, ValueError):
    """A rendezvous setting out of its range."""


@dataclass(frozen=True)
class ConnectionSettings:
    """The connection limits and timers an operator tunes: the rendezvous' config
    file (``--config``, TOML, keys as below) and its flags (which win). The
    defaults are what a server without either uses."""

    heartbeat: float = 20.0
    connection_rate: float = 5.0
    connection_burst: float = 40.0
    max_pending: int = 512
    max_pending_per_ip: int = 16
    max_connections: int = 0
    handshake_timeout: float = 5.0
    register_timeout: float = 30.0
    shutdown_window: float = 1.5
    reconnect_spread: float = 1.0
    gc_freeze: bool = True
    """On for the ``rendezvous`` command (a process that is only the rendezvous)."""

    def merged(self, overrides: Mapping[str, object]) -> ConnectionSettings:
        """These settings with each non-None value of ``overrides`` (the flags) put in."""
        return _settings_from(
            {**{f: getattr(self, f) for f in _SETTING_TYPES},
             **{k: v for k, v in overrides.items() if v is not None}}, "flag")

    def applied_to(self, config: RendezvousConfig) -> RendezvousConfig:
        """``config`` with these settings."""
        return dataclasses.replace(
            config, heartbeat=self.heartbeat, connection_rate=self.connection_rate,
            connection_burst=self.connection_burst, max_pending=self.max_pending,
            max_pending_per_ip=self.max_pending_per_ip, max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout, register_timeout=self.register_timeout,
            shutdown_window=self.shutdown_window, reconnect_spread=self.reconnect_spread,
            gc_freeze=self.gc_freeze)


_SETTING_TYPES: dict[str, type] = {
    "heartbeat": float, "connection_rate": float, "connection_burst": float,
    "max_pending": int, "max_pending_per_ip": int, "max_connections": int,
    "handshake_timeout": float, "register_timeout": float, "shutdown_window": float,
    "reconnect_spread": float, "gc_freeze": bool,
}


def _settings_from(values: Mapping[str, object], where: str) -> ConnectionSettings:
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = _SETTING_TYPES.get(key)
        if kind is None:
            raise BadRendezvousConfig(
                f"{where}: unknown setting {key[:40]!r} (known: {', '.join(_SETTING_TYPES)})")
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            need = {bool: "true or false", int: "a whole number"}.get(kind, "a number")
            raise BadRendezvousConfig(f"{where}: {key} = {repr(value)[:40]}: need {need}")
        out[key] = kind(value)
    settings = ConnectionSettings(**out)
    for key in ("heartbeat", "connection_rate", "connection_burst", "max_pending",
                "max_pending_per_ip", "handshake_timeout", "register_timeout"):
        value = getattr(settings, key)
        if not (math.isfinite(value) and value > 0):
            raise BadRendezvousConfig(f"{where}: {key} = {value!r}: need more than 0")
    for key in ("max_connections", "shutdown_window", "reconnect_spread"):
        value = getattr(settings, key)
        if not (math.isfinite(value) and value >= 0):
            raise BadRendezvousConfig(f"{where}: {key} = {value!r}: need 0 or more")
    return settings


def load_settings(path: Path | None) -> ConnectionSettings:
    """The settings in a TOML file (missing keys: the defaults); None: the defaults."""
    if path is None:
        return ConnectionSettings()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise BadRendezvousConfig(f"config {path}: cannot read it ({exc.strerror or exc})"
                                  ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BadRendezvousConfig(f"config {path}: not TOML ({exc})") from None
    return _settings_from(data, f"config {path}")


#: Descriptors kept back from connections: the listening socket, log and web
#: files, the event loop's own, DNS, TLS; shedding starts this far from the limit.
FD_RESERVE = 64
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
            b"Connection: close\r\nRetry-After: 5\r\n\r\n")


def raise_descriptor_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a syscall filter may deny setrlimit
            logger.warning("could not raise the descriptor limit from %d: %s", soft, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def descriptor_budget() -> int:
    """Connections this process can hold: the descriptor limit less FD_RESERVE."""
    return max(16, raise_descriptor_limit() - FD_RESERVE)


@dataclass
class ConnectionBudget:
    """Connection-level accounting, no I/O: who may open a connection now."""

    max_connections: int
    max_pending: int
    max_pending_per_ip: int
    open: int = 0
    pending: int = 0
    pending_by_ip: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    refused_by: Counter[str] = field(default_factory=Counter)
    """Refusals by limiter (``max_connections``, ``max_pending``,
    ``max_pending_per_ip``), and ``handshake_timeout`` resets."""

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ``ip`` as pending, or say why it is refused."""
        reason = limiter = None
        if self.open >= self.max_connections:
            limiter = "max_connections"
            reason = f"{self.open} connections open (limit {self.max_connections})"
        elif self.pending >= self.max_pending:
            limiter = "max_pending"
            reason = f"{self.pending} connections not upgraded (limit {self.max_pending})"
        elif self.pending_by_ip.get(ip, 0) >= self.max_pending_per_ip:
            limiter = "max_pending_per_ip"
            reason = f"{self.max_pending_per_ip} connections not upgraded from {ip}"
        if reason is not None and limiter is not None:
            self.refused += 1
            self.refused_by[limiter] += 1
            return reason
        self.open += 1
        self.pending += 1
        self.pending_by_ip[ip] = self.pending_by_ip.get(ip, 0) + 1
        return None

    def upgraded(self, ip: str) -> None:
        self._unpend(ip)

    def closed(self, ip: str, pending: bool) -> None:
        self.open -= 1
        if pending:
            self._unpend(ip)

    def _unpend(self, ip: str) -> None:
        self.pending -= 1
        left = self.pending_by_ip.get(ip, 1) - 1
        if left > 0:
            self.pending_by_ip[ip] = left
        else:
            self.pending_by_ip.pop(ip, None)


class _Counted(asyncio.Protocol):
    """Wraps aiohttp's protocol for one accepted socket: admission, the handshake
    deadline and the count, then passes everything through untouched."""

    _by_transport: dict[int, _Counted] = {}

    def __init__(self, inner: Any, budget: ConnectionBudget, deadline: float) -> None:
        self.inner, self.budget, self.deadline = inner, budget, deadline
        self.ip = "?"
        self.admitted = self.pending = False
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, transport: asyncio.BaseTransport | None) -> _Counted | None:
        return cls._by_transport.get(id(transport)) if transport is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refusal = self.budget.admit(self.ip)
        if refusal is not None:
            logger.info("refused a connection from %s: %s", self.ip, refusal)
            transport.write(_REFUSED)
            transport.close()
            return
        self.admitted = self.pending = True
        self._by_transport[id(transport)] = self
        self._timer = asyncio.get_running_loop().call_later(self.deadline, self._expired)
        self.inner.connection_made(transport)

    def upgraded(self) -> None:
        if self.pending:
            self.pending = False
            self.budget.upgraded(self.ip)
            if self._timer is not None:
                self._timer.cancel()

    def _expired(self) -> None:
        if self.pending and self.transport is not None:
            self.budget.refused_by["handshake_timeout"] += 1
            logger.info("closed a connection from %s: no WebSocket upgrade within %.0f s",
                        self.ip, self.deadline)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        if self._timer is not None:
            self._timer.cancel()
        self._by_transport.pop(id(self.transport), None)
        self.budget.closed(self.ip, self.pending)
        self.pending = False
        self.inner.connection_lost(exc)
        # asyncio's socket transport keeps a bound method of itself (its read
        # callback): a cycle that only a full collection frees, and none once frozen
        # (see GcFreezer). The transport is closed and off the selector: cut it.
        if self.transport is not None and hasattr(self.transport, "_read_ready_cb"):
            setattr(self.transport, "_read_ready_cb", None)  # noqa: B010


class _BudgetSite(web.TCPSite):
    """A TCP site whose every accepted socket goes through :class:`_Counted`."""

    def __init__(self, runner: web.AppRunner, budget: ConnectionBudget, deadline: float,
                 host: str, port: int, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._budget, self._deadline = budget, deadline

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        budget, deadline = self._budget, self._deadline
        self._server = await loop.create_server(
            lambda: _Counted(server(), budget, deadline),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=deadline if self._ssl_context else None,
        )


#: Listen addresses that name no one address: a server name can't be derived from them.
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def server_names_from_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``PEERCAM_SERVER_NAME``: comma-separated ``host[:port]`` names (may be absent)."""
    text = environ.get("PEERCAM_SERVER_NAME", "")
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _own_names(
    host: str,
    port: int,
    config: RendezvousConfig,
    names_for_port: Callable[[int], Iterable[str]] | None,
) -> tuple[str, ...]:
    """The names registrations are checked against, once the port is bound."""
    if names_for_port is not None:
        return tuple(names_for_port(port))
    if config.server_names:
        return config.server_names
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logger.warning(
        "no server name configured: cameras must dial exactly %s (derived from the listen"
        " address). Behind a reverse proxy, a NAT or a DNS name, set --server-name"
        " (PEERCAM_SERVER_NAME) to the host[:port] cameras dial, or every registration"
        " is refused.", name,
    )
    return (name,)


async def start_rendezvous(
    host: str,
    port: int,
    config: RendezvousConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    *,
    names_for_port: Callable[[int], Iterable[str]] | None = None,
) -> tuple[Rendezvous, web.AppRunner, int]:
    """Start serving; returns the server, its runner (``await runner.cleanup()``) and port.

    Registrations are checked against ``config.server_names``; ``names_for_port``
    (given the bound port) replaces them when the port is only known once bound
    (port 0). With neither, the name is the listen address, if it is a specific
    one; on a wildcard address this raises :class:`BadServerName` before binding.
    """
    config = config or RendezvousConfig()
    parse_server_names(config.server_names)  # a bad name fails before binding
    for name in ("handshake_timeout", "register_timeout", "max_pending", "max_pending_per_ip",
                 "connection_rate", "connection_burst", "heartbeat"):
        if not getattr(config, name) > 0:
            raise BadRendezvousConfig(f"{name} {getattr(config, name)!r}: need more than 0")
    for name in ("shutdown_window", "reconnect_spread"):
        if not getattr(config, name) >= 0:
            raise BadRendezvousConfig(f"{name} {getattr(config, name)!r}: need 0 or more")
    if config.max_connections < 0:
        raise BadRendezvousConfig(
            f"max_connections {config.max_connections!r}: need 0 (from the descriptor limit)"
            " or more")
    if not config.server_names and names_for_port is None and host in _WILDCARDS:
        raise BadServerName(
            f"listening on all addresses ({host or '*'}:{port}) with no server name: set"
            " --server-name (or PEERCAM_SERVER_NAME) to the host[:port] cameras dial, so"
            " that a registration relayed here through another server is told apart"
        )
    server = Rendezvous(config)
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    # A restart brings every camera back at once: the default backlog (128) drops
    # SYNs at ~200 handshakes in flight, each costing the client a 1 s retry.
    site = _BudgetSite(runner, server.budget, config.handshake_timeout, host, port,
                       ssl_context=ssl_context, backlog=1024)
    await site.start()
    server_obj: Any = site._server
    sockets = server_obj.sockets if server_obj is not None else []
    bound = sockets[0].getsockname()[1] if sockets else port
    try:
        server.router.server_names = parse_server_names(
            _own_names(host, bound, config, names_for_port)
        )
        if config.metrics_listen is not None:
            metrics_host, metrics_port = config.metrics_listen
            try:
                server.metrics_runner, server.metrics_port = await serve_metrics(
                    server.registry, metrics_host, metrics_port)
            except OSError as exc:
                raise BadRendezvousConfig(
                    f"metrics_listen {metrics_host}:{metrics_port}: cannot listen"
                    f" ({exc.strerror or exc})") from None
    except (BadServerName, BadRendezvousConfig):
        await runner.cleanup()
        raise
    logger.info("rendezvous listening on %s:%d as %s", host, bound,
                ", ".join(sorted(server.router.server_names)))
    return server, runner, bound


