"""``peercam whep serve``: a WHEP gateway that is just another paired viewer.

Players (Home Assistant's go2rtc, OBS, browser players) POST their SDP offer
to ``/<camera>/whep`` with a bearer token; the gateway signs it with its own
viewer key, sends it through the camera's rendezvous, checks the camera's
signed answer and returns it (201, ``Location``, ``ETag``). Media then flows
between the camera and the player directly: the gateway never touches RTP.
PATCH carries the player's trickled candidates (each signed and numbered as
the protocol requires), DELETE ends the session. ``/<camera>/snapshot.jpg``
serves a still (:mod:`camera.client.snapshot`), ``/metrics`` the gateway's
Prometheus metrics. The rules are :mod:`camera.client.whep_core` (sans-I/O);
this module is the aiohttp adapter and the rendezvous links.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from camera.client.errors import ForgedAnswer, Refused, ViewError
from camera.client.signaling import LINK_LOST, SignalingLink, await_reply, check_answer
from camera.client.snapshot import Snapshotter
from camera.client.viewer import ViewerIdentity
from camera.client.whep_config import CameraEntry, GatewayConfig
from camera.client.whep_core import (
    SDP_TYPE,
    SDPFRAG_TYPE,
    ClientLimits,
    Route,
    Session,
    Sessions,
    WhepError,
    bearer_token,
    check_offer,
    media_type,
    parse_fragment,
    route,
    status_for_refusal,
    token_index,
)
from camera.config import client_ssl, ws_url
from services.metrics import Families, RuntimeMetrics, counter, gauge, metrics_handler
from services.signaling import Message, ProtocolError, Role, encode
from services.signatures import candidate_statement, offer_statement, sign

logger = logging.getLogger(__name__)

SWEEP = 5.0
"""Seconds between looks for sessions past ``max_session_age`` and old tombstones."""
PREPARED_REUSE = 60.0
"""Seconds a rendezvous' ``prepared`` ICE list is reused (its TURN credentials live
for minutes: the rendezvous' ``--turn-ttl``, 600 s by default)."""
BODY_TIMEOUT = 10.0
"""A request body must arrive within this."""
CORS_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, If-Match"
CORS_EXPOSE = "Location, ETag, Link, Accept-Patch, Accept-Post, Retry-After"


def _ice_links(servers: list[dict[str, Any]]) -> list[str]:
    """RFC 9725 section 4.6 ``Link: <url>; rel="ice-server"`` values (odd characters dropped)."""
    out: list[str] = []
    for entry in servers:
        for url in entry.get("urls", []):
            if not isinstance(url, str) or any(c in url for c in '<>" \r\n,;'):
                continue
            link = f'<{url}>; rel="ice-server"'
            username, credential = entry.get("username"), entry.get("credential")
            if isinstance(username, str) and isinstance(credential, str) and not any(
                    c in username + credential for c in '"\\\r\n'):
                link += (f'; username="{username}"; credential="{credential}"; '
                         'credential-type="password"')
            out.append(link)
    return out


class Gateway:
    """The WHEP gateway: :meth:`start` to serve, :meth:`close` to stop (safe twice)."""

    def __init__(self, config: GatewayConfig, tokens: list[str],
                 identity: ViewerIdentity) -> None:
        self.config = config
        self.tokens = tokens
        self.identity = identity
        self.sessions = Sessions(config.max_sessions, config.max_session_age)
        self.limits = ClientLimits(config.rate, config.burst)
        self._links: dict[str, SignalingLink] = {}
        self._link_locks: dict[str, asyncio.Lock] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._snapshotters: dict[str, Snapshotter] = {}
        self._prepared: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        # counters, read at scrape time
        self.started = 0
        self.failed: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.snapshots: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Families(self._metrics))
        self.runtime_metrics = RuntimeMetrics(self.registry, "whep")
        self.app = web.Application(middlewares=[self._middleware],
                                   client_max_size=config.max_body + 1024)
        self.app.router.add_get("/metrics", metrics_handler(self.registry))
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen (default: the config's address); returns the bound port."""
        host = host if host is not None else self.config.listen[0]
        port = port if port is not None else self.config.listen[1]
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.runtime_metrics.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="whep-sweep")
        server: Any = site._server
        sockets = server.sockets if server is not None else []
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        logger.info("WHEP gateway on http://%s:%d/<camera>/whep (%d cameras)",
                    host, bound, len(self.config.cameras))
        return bound

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        now = asyncio.get_running_loop().time()
        byes: list[Awaitable[None]] = []
        for session in self.sessions.all():
            if self.sessions.end(session, "gateway stopped", now):
                byes.append(self._bye_now(session))
        await asyncio.gather(*byes, return_exceptions=True)
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        snapshotters = list(self._snapshotters.values())
        self._snapshotters.clear()
        await asyncio.gather(*(s.close() for s in snapshotters), return_exceptions=True)
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        await self.runtime_metrics.stop()

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP)
            for session in self.sessions.sweep(loop.time()):
                logger.info("session %s on %s: %s", session.resource[:8], session.camera,
                            session.ended)
                self._bye(session)

    # -- HTTP plumbing --------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                          ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        try:
            if request.method != "OPTIONS" and request.path != "/metrics":
                self.limits.check(request.remote or "unknown", loop.time())
            response = await handler(request)
        except WhepError as exc:
            response = self._error(exc)
        except web.HTTPException as exc:  # aiohttp's own (a body over client_max_size)
            status = exc.status
            text = ("request body too large" if status == 413 else exc.reason) or "error"
            response = self._error(WhepError(status, text))
        except (ConnectionError, asyncio.CancelledError):
            raise  # the client went away: nobody to answer
        except Exception:  # a bug: this request fails, the gateway serves on
            logger.exception("%s %s failed", request.method, request.path[:100])
            response = self._error(WhepError(500, "internal error (logged)"))
        self._cors(request, response)
        key = str(response.status)
        self.requests[key] = self.requests.get(key, 0) + 1
        return response

    def _error(self, exc: WhepError) -> web.Response:
        headers = {"Cache-Control": "no-store"}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="peercam-whep"'
        return web.Response(status=exc.status, text=exc.reason + "\n", headers=headers)

    def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        allowed = self.config.cors_origins
        if not origin or not allowed or (origin not in allowed and "*" not in allowed):
            return
        response.headers["Access-Control-Allow-Origin"] = origin if "*" not in allowed \
            else "*"
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        where = route(request.path)
        if where is None:
            raise WhepError(404, "not found: the endpoints are /<camera>/whep and "
                                 "/<camera>/snapshot.jpg")
        method = request.method
        allowed = {"whep": ("POST", "OPTIONS"), "session": ("PATCH", "DELETE", "OPTIONS"),
                   "snapshot": ("GET", "HEAD", "OPTIONS")}[where.kind]
        if method not in allowed:
            response = self._error(WhepError(405, f"{method[:16]!r} is not allowed here"))
            response.headers["Allow"] = ", ".join(allowed)
            return response
        if method == "OPTIONS":
            return self._options(where)
        # The header, or ``?token=`` for clients that cannot set one (a still-image URL,
        # go2rtc's WHEP source); the gateway keeps no access log, so URLs are not logged.
        owner = token_index(bearer_token(request.headers.get("Authorization"),
                                         request.query.get("token")), self.tokens)
        camera = self._camera(where.camera)
        if where.kind == "snapshot":
            return await self._snapshot(request, camera)
        if where.kind == "whep":
            return await self._post(request, camera, owner)
        assert where.session is not None
        session = self.sessions.find(where.session, owner, camera.name)
        if method == "DELETE":
            return self._delete(session)
        return await self._patch(request, session)

    def _options(self, where: Route) -> web.Response:
        headers = {"Access-Control-Allow-Methods": CORS_METHODS,
                   "Access-Control-Allow-Headers": CORS_HEADERS,
                   "Access-Control-Max-Age": "600"}
        if where.kind == "whep":
            headers["Accept-Post"] = SDP_TYPE
        elif where.kind == "session":
            headers["Accept-Patch"] = SDPFRAG_TYPE
        return web.Response(status=204, headers=headers)

    def _camera(self, name: str) -> CameraEntry:
        camera = self.config.camera(name)
        if camera is None:
            raise WhepError(404, f"no camera {name!r} on this gateway (peercam whep list)")
        return camera

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_body
        if request.content_length is not None and request.content_length > limit:
            raise WhepError(413, f"body of {request.content_length} bytes: the limit is {limit}")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while True:
                    chunk = await request.content.read(limit + 1 - size)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        raise WhepError(413, f"body over {limit} bytes")
        except TimeoutError:
            raise WhepError(408, f"the body did not arrive within {BODY_TIMEOUT:.0f} s") from None
        return b"".join(chunks)

    # -- links to the rendezvous -----------------------------------------------------

    async def _link(self, rendezvous: str) -> SignalingLink:
        """The gateway's one link to this rendezvous (opened on first use, then healing)."""
        link = self._links.get(rendezvous)
        if link is not None:
            return link
        lock = self._link_locks.setdefault(rendezvous, asyncio.Lock())
        async with lock:
            link = self._links.get(rendezvous)
            if link is None:
                link = SignalingLink(ws_url(rendezvous, "/ws/viewer"),
                                     ssl=client_ssl(self.config.tls_ca, False),
                                     connect_timeout=self.config.offer_timeout)
                await link.open()
                self._links[rendezvous] = link
        return link

    async def _ice_servers(self, camera: CameraEntry) -> list[dict[str, Any]]:
        """The gateway's own list if configured, else the rendezvous' (``prepare``).

        A prepared list is reused for :data:`PREPARED_REUSE` seconds: the rendezvous
        rate-limits credential requests per connection, and every player and snapshot
        shares the gateway's one connection. A refused ``prepare`` falls back to the
        last list, or to the STUN-only list of the link's ``hello``.
        """
        if self.config.ice_servers is not None:
            return list(self.config.ice_servers)
        loop = asyncio.get_running_loop()
        cached = self._prepared.get(camera.rendezvous)
        if cached is not None and loop.time() - cached[0] < PREPARED_REUSE:
            return list(cached[1])
        link = await self._link(camera.rendezvous)
        session_id = secrets.token_urlsafe(18)
        queue = link.subscribe(session_id)
        try:
            await link.send(encode(Role.VIEWER, "prepare", device_id=camera.device_id,
                                   session_id=session_id))
            prepared = await await_reply(queue, ("prepared",), self.config.offer_timeout)
        except Refused as exc:
            if "rate-limited" not in str(exc):
                raise
            hello = link.hello
            fallback = cached[1] if cached is not None else (
                list(hello["ice_servers"]) if hello is not None else [])
            logger.info("%s: prepare refused (%s): using %d ICE servers from before",
                        camera.name, exc.reason, len(fallback))
            return list(fallback)
        finally:
            link.unsubscribe(session_id)
        servers = list(prepared["ice_servers"])
        self._prepared[camera.rendezvous] = (loop.time(), servers)
        return list(servers)

    async def _bye_now(self, session: Session) -> None:
        """A bye that is sent before the link closes (shutdown), within a second."""
        camera = self.config.camera(session.camera)
        link = self._links.get(camera.rendezvous) if camera is not None else None
        if link is not None:
            with contextlib.suppress(ViewError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await link.send(encode(Role.VIEWER, "bye", session_id=session.session_id))

    def _bye(self, session: Session) -> None:
        camera = self.config.camera(session.camera)
        link = self._links.get(camera.rendezvous) if camera is not None else None
        watcher = self._watchers.pop(session.resource, None)
        if watcher is not None:
            watcher.cancel()
        if link is not None:
            link.unsubscribe(session.session_id)
            link.send_soon(encode(Role.VIEWER, "bye", session_id=session.session_id))

    # -- WHEP --------------------------------------------------------------------------

    async def _post(self, request: web.Request, camera: CameraEntry,
                    owner: int) -> web.Response:
        if media_type(request.headers.get("Content-Type")) != SDP_TYPE:
            raise WhepError(415, f"Content-Type must be {SDP_TYPE} (the player's SDP offer)")
        offer = check_offer(await self._body(request), self.config.max_body)
        try:
            self.sessions.reserve()
        except WhepError:
            self._failed("gateway-full")
            raise
        try:
            session_id, servers, answer = await self._offer(camera, offer.sdp)
        except BaseException:
            self.sessions.release()
            raise
        session = Session(secrets.token_urlsafe(24), session_id, camera.name,
                          camera.device_id, owner, offer, asyncio.get_running_loop().time())
        self.sessions.add(session)  # takes the reserved place
        self.started += 1
        link = self._links[camera.rendezvous]
        self._watchers[session.resource] = asyncio.create_task(
            self._watch(session, link), name=f"whep-session-{session.resource[:8]}")
        logger.info("session %s on %s: answered", session.resource[:8], camera.name)
        location = f"/{camera.name}/whep/{session.resource}"
        headers = {"Location": location, "ETag": session.etag, "Content-Type": SDP_TYPE,
                   "Accept-Patch": SDPFRAG_TYPE, "Cache-Control": "no-store"}
        response = web.Response(status=201, body=answer.encode("utf-8"),
                                headers=headers)
        for link_value in _ice_links(servers):
            response.headers.add("Link", link_value)
        return response

    async def _offer(self, camera: CameraEntry,
                     sdp: str) -> tuple[str, list[dict[str, Any]], str]:
        """Send the signed offer, check the signed answer; (session ID, ICE servers,
        answer SDP)."""
        timeout = self.config.offer_timeout
        try:
            link = await self._link(camera.rendezvous)
            if not link.connected.is_set():
                await link.wait_connected(min(timeout, 5.0))
        except ViewError as exc:
            self._failed("rendezvous")
            raise WhepError(503, f"the rendezvous for {camera.name!r} is unreachable: {exc}",
                            retry_after=5) from None
        session_id = secrets.token_urlsafe(18)
        queue = link.subscribe(session_id)
        offered = False
        try:
            servers = await self._ice_servers(camera)
            timestamp = int(time.time() * 1000)
            signed = offer_statement(camera.device_id, session_id, timestamp,
                                     self.identity.key, sdp)
            await link.send(encode(Role.VIEWER, "offer", device_id=camera.device_id,
                                   session_id=session_id, sdp=sdp, viewer_key=self.identity.key,
                                   timestamp=timestamp,
                                   signature=sign(self.identity.private_key, signed)))
            offered = True
            answer = await await_reply(queue, ("answer",), timeout)
            check_answer(camera.device_id, session_id, sdp, answer)
        except BaseException as exc:
            link.unsubscribe(session_id)
            if offered:
                link.send_soon(encode(Role.VIEWER, "bye", session_id=session_id))
            raise self._offer_error(camera, exc) from None
        return session_id, servers, str(answer["sdp"])

    def _offer_error(self, camera: CameraEntry, exc: BaseException, *,
                     count: bool = True) -> BaseException:
        """The HTTP answer to a failed offer (counted by reason for WHEP sessions)."""
        failed = self._failed if count else (lambda reason: None)
        if isinstance(exc, ForgedAnswer):
            failed("forged")
            logger.warning("%s: %s", camera.name, exc)
            return WhepError(502, f"camera {camera.name!r}: {exc}")
        if isinstance(exc, Refused):
            error = status_for_refusal(camera.name, str(exc))
            failed("busy" if "busy" in error.reason else
                   "offline" if "offline" in error.reason else "refused")
            logger.info("%s: %s", camera.name, exc)
            return error
        if isinstance(exc, ViewError):
            text = str(exc)
            if "in time" in text:
                failed("timeout")
                return WhepError(504, f"camera {camera.name!r} did not answer in time "
                                      f"({self.config.offer_timeout:.0f} s)")
            failed("rendezvous")
            return WhepError(503, f"camera {camera.name!r}: {text}", retry_after=5)
        if isinstance(exc, ProtocolError):
            failed("refused")
            return WhepError(400, f"the offer cannot be sent: {exc.message}")
        return exc

    async def _watch(self, session: Session, link: SignalingLink) -> None:
        """The camera's byes for a session (the camera ended it: its place is free)."""
        queue = link.subscribe(session.session_id)
        try:
            while True:
                message: Message = await queue.get()
                if message is LINK_LOST:
                    # The rendezvous forgot the session; its media may well go on.
                    return
                if message.type == "bye":
                    reason = str(message.get("reason") or "the camera ended it")
                    now = asyncio.get_running_loop().time()
                    if self.sessions.end(session, reason, now):
                        logger.info("session %s on %s ended by the camera: %s",
                                    session.resource[:8], session.camera, reason)
                    return
        finally:
            link.unsubscribe(session.session_id)
            if self._watchers.get(session.resource) is asyncio.current_task():
                del self._watchers[session.resource]

    def _delete(self, session: Session) -> web.Response:
        now = asyncio.get_running_loop().time()
        if not self.sessions.end(session, "deleted by the player", now):
            return web.Response(status=200, text=f"already ended: {session.ended}\n")
        self._bye(session)
        logger.info("session %s on %s: deleted", session.resource[:8], session.camera)
        return web.Response(status=200, text="session ended\n")

    async def _patch(self, request: web.Request, session: Session) -> web.Response:
        if media_type(request.headers.get("Content-Type")) != SDPFRAG_TYPE:
            raise WhepError(415, f"Content-Type must be {SDPFRAG_TYPE}")
        if_match = request.headers.get("If-Match")
        if if_match == "*":
            raise WhepError(422, "ICE restart is not supported: DELETE this session and "
                                 "POST a new offer")
        if if_match is not None and if_match != session.etag:
            raise WhepError(412, "If-Match does not match this session's ETag")
        fragment = parse_fragment(await self._body(request), self.config.max_body)
        if session.ended is not None:
            raise WhepError(404, f"session ended: {session.ended}")
        camera = self._camera(session.camera)
        link = self._links.get(camera.rendezvous)
        if link is None:
            raise WhepError(503, "the rendezvous link is gone", retry_after=5)
        for trickle in session.plan(fragment):
            signed = candidate_statement(session.device_id, session.session_id,
                                         session.offer.sdp, trickle.seq, trickle.candidate,
                                         trickle.sdp_mid, trickle.sdp_mline_index)
            fields: dict[str, Any] = {
                "device_id": session.device_id, "session_id": session.session_id,
                "seq": trickle.seq, "candidate": trickle.candidate,
                "signature": sign(self.identity.private_key, signed)}
            if trickle.sdp_mid is not None:
                fields["sdp_mid"] = trickle.sdp_mid
            if trickle.sdp_mline_index is not None:
                fields["sdp_mline_index"] = trickle.sdp_mline_index
            try:
                text = encode(Role.VIEWER, "candidate", **fields)
            except ProtocolError as exc:
                raise WhepError(400, f"candidate not acceptable: {exc.message}") from None
            try:
                await link.send(text)
            except ViewError as exc:
                raise WhepError(503, f"cannot forward the candidate now: {exc}",
                                retry_after=2) from None
        return web.Response(status=204, headers={"ETag": session.etag})

    def _failed(self, reason: str) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + 1

    # -- snapshots ------------------------------------------------------------------------

    def _snapshotter(self, camera: CameraEntry) -> Snapshotter:
        snapshotter = self._snapshotters.get(camera.name)
        if snapshotter is None:
            snapshotter = Snapshotter(
                lambda: self._link(camera.rendezvous), camera.device_id, self.identity,
                ice_servers=lambda: self._ice_servers(camera), timeout=self.config.offer_timeout,
                cache=self.config.snapshot_cache, warm=self.config.snapshot_warm,
                quality=self.config.snapshot_quality)
            self._snapshotters[camera.name] = snapshotter
        return snapshotter

    async def _snapshot(self, request: web.Request, camera: CameraEntry) -> web.Response:
        snapshotter = self._snapshotter(camera)
        try:
            picture, how = await snapshotter.get()
        except BaseException as exc:
            self.snapshots["error"] = self.snapshots.get("error", 0) + 1
            error = self._offer_error(camera, exc, count=False)
            if isinstance(error, WhepError):
                raise error from None
            raise
        self.snapshots[how] = self.snapshots.get(how, 0) + 1
        return web.Response(body=b"" if request.method == "HEAD" else picture.jpeg,
                            headers={"Content-Type": "image/jpeg",
                                     "Cache-Control": "no-cache",
                                     "X-Snapshot-Source": how})

    # -- metrics ---------------------------------------------------------------------------

    def snapshot_sessions(self) -> int:
        return sum(s.sessions_opened for s in self._snapshotters.values())

    def _metrics(self) -> Iterator[Metric]:
        yield counter("peercam_whep_sessions_started", "WHEP sessions the camera answered",
                      self.started)
        yield gauge("peercam_whep_sessions_active",
                    "WHEP sessions live now (not deleted, not ended by the camera)",
                    sum(s.ended is None for s in self.sessions.all()))
        yield counter("peercam_whep_sessions_failed", "WHEP offers that got no session, "
                      "by reason", labels=["reason"], values=dict(self.failed))
        yield counter("peercam_whep_http_requests", "HTTP requests answered, by status",
                      labels=["status"], values=dict(self.requests))
        yield counter("peercam_whep_snapshots", "Snapshots served, by how: hit (cache), "
                      "shared, warm, miss (new session), error", labels=["result"],
                      values=dict(self.snapshots))
        yield counter("peercam_whep_snapshot_sessions", "Viewer sessions opened for snapshots",
                      self.snapshot_sessions())
