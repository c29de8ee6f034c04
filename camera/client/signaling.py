"""The viewer's rendezvous WebSocket: a link of its own, that comes back by itself.

Sessions only need the rendezvous to start: once answered, their media is
peer-to-peer and goes on without it. So when the link drops, nothing ends; the
link reconnects in the background with capped exponential backoff and full
jitter (a restarting server refuses connections for a moment: then the cap is
:data:`camera.link.REFUSED_CAP`, so the viewer is back within about
a second of the server listening). A request made while it is down waits for it.

Messages are routed by ``session_id`` to whoever subscribed to that session;
an ``error`` without one goes to every subscriber, except ``unknown-session``
(the answer to a bye for a session a restarted server never knew).

A viewer waiting on an offline camera asks the rendezvous to ``watch`` it: the
server's ``online`` (sent when that camera registers) is a hint to try now. It
is advice from an untrusted server and may never come (an older server refuses
``watch``; a restarted one forgot it, so it is asked again on every reconnect):
callers keep a slower retry of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from camera.client.errors import ForgedAnswer, Refused, ViewError
from camera.client.heal import Backoff
from camera.link import REFUSED_CAP, REFUSED_WINDOW, refused
from services.signaling import ErrorCode, Message, ProtocolError, Role, encode, parse
from services.signatures import (
    answer_statement,
    device_id_of,
    pair_statement,
    paired_statement,
    pairing_proof,
    sign,
    verify,
)

logger = logging.getLogger(__name__)

HEARTBEAT = 20.0
"""WebSocket ping interval (a NAT forgets an idle TCP mapping after minutes; pings keep it)."""
BACKOFF_BASE = 0.25
BACKOFF_CAP = 10.0
STABLE = 30.0
"""A connection that lasted this long resets the backoff."""

LINK_LOST: Message = Message("link-lost", {})
"""Put in every subscriber's queue when the link drops: the server forgot their requests."""


class SignalingLink:
    """Connected from :meth:`open` until :meth:`close`; reconnects on its own in between."""

    def __init__(
        self,
        url: str,
        *,
        ssl: Any = None,
        connect_timeout: float = 15.0,
        heartbeat: float = HEARTBEAT,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self._ssl = ssl
        self._timeout = connect_timeout
        self._heartbeat = heartbeat
        self._backoff = backoff or Backoff(BACKOFF_BASE, BACKOFF_CAP)
        self.connected = asyncio.Event()
        self.reconnects = 0
        """Times the link came back after dropping."""
        self.hello: Message | None = None
        self.last_error: str | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._watches: dict[str, Callable[[], None]] = {}
        """Device ID -> called when the rendezvous says it registered (``online``)."""
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """The first connection: failing here is the caller's error (a ViewError)."""
        self._http = aiohttp.ClientSession()
        try:
            ws = await self._connect()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await self._http.close()
            raise ViewError(f"cannot reach the rendezvous at {self.url}: "
                            f"{exc or type(exc).__name__}") from None
        except BaseException:
            await self._http.close()
            raise
        self._task = asyncio.create_task(self._run(ws), name="viewer-signaling")

    async def close(self) -> None:
        """Stop for good (safe twice)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        self.connected.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        """One connection through ``hello``; raises what went wrong (aiohttp, OS, timeout)."""
        assert self._http is not None
        ws = await asyncio.wait_for(self._http.ws_connect(
            self.url,
            heartbeat=self._heartbeat,
            ssl=self._ssl,
            timeout=aiohttp.ClientWSTimeout(ws_close=5),
        ), self._timeout)
        try:
            hello = await _receive(ws, self._timeout, "hello")
            if hello.type != "hello":
                raise ViewError(f"rendezvous sent {hello.type!r} instead of hello")
        except BaseException:
            await ws.close()
            raise
        self.hello = hello
        self._ws = ws
        self.connected.set()
        for device_id in self._watches:  # a restarted server forgot them
            self.send_soon(encode(Role.VIEWER, "watch", device_id=device_id))
        return ws

    async def _run(self, ws: aiohttp.ClientWebSocketResponse | None) -> None:
        loop = asyncio.get_running_loop()
        outage_since: float | None = None
        was_refused = False
        while not self._closed:
            if ws is not None:
                connected_at = loop.time()
                try:
                    await self._read(ws)
                finally:
                    self._ws = None
                    self.connected.clear()
                    for queue in self._queues.values():
                        queue.put_nowait(LINK_LOST)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(), 2.0)
                ws = None
                if self._closed:
                    return
                logger.info("lost the rendezvous connection: live video goes on; reconnecting")
                if loop.time() - connected_at > STABLE:
                    self._backoff.reset()
                outage_since = loop.time()
                was_refused = False
            assert outage_since is not None
            short = was_refused and loop.time() - outage_since < REFUSED_WINDOW
            delay = self._backoff.next(REFUSED_CAP if short else None)
            await asyncio.sleep(delay)
            try:
                ws = await self._connect()
            except (aiohttp.ClientError, OSError, TimeoutError, ViewError) as exc:
                was_refused = refused(exc)
                self.last_error = str(exc) or type(exc).__name__
                logger.info("rendezvous %s: %s", self.url, self.last_error)
                continue
            self.reconnects += 1
            logger.info("rendezvous connection back after %.1f s", loop.time() - outage_since)
            outage_since = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return
                try:
                    message = parse(msg.data, Role.SERVER)
                except ProtocolError as exc:
                    logger.warning("rendezvous sent a bad message: %s", exc.message[:200])
                    continue
                self._route(message)

    def _route(self, message: Message) -> None:
        if message.type == "online":
            callback = self._watches.pop(message["device_id"], None)
            if callback is not None:
                callback()
            return
        session_id = message.get("session_id")
        if (message.type == "error" and session_id is None
                and "'watch'" in str(message.get("message"))):
            # A server older than ``watch`` refuses it: not the sessions' business.
            logger.debug("the rendezvous does not take watch: retrying on a timer only")
            return
        if session_id is not None:
            queue = self._queues.get(session_id)
            if queue is not None:
                queue.put_nowait(message)
            return
        if message.type == "error" and message["code"] != ErrorCode.UNKNOWN_SESSION:
            for queue in self._queues.values():
                queue.put_nowait(message)

    # -- use -------------------------------------------------------------------

    def subscribe(self, session_id: str) -> asyncio.Queue[Message]:
        """Messages for ``session_id`` from now on (and :data:`LINK_LOST`)."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[session_id] = queue
        return queue

    def unsubscribe(self, session_id: str) -> None:
        self._queues.pop(session_id, None)

    def watch(self, device_id: str, online: Callable[[], None]) -> None:
        """Call ``online`` once, when the rendezvous says ``device_id`` registered (advice:
        it may never come). Asked again after every reconnect until it comes."""
        self._watches[device_id] = online
        self.send_soon(encode(Role.VIEWER, "watch", device_id=device_id))

    def unwatch(self, device_id: str) -> None:
        self._watches.pop(device_id, None)

    async def wait_connected(self, timeout: float) -> None:
        """Until the link is up; a :class:`ViewError` after ``timeout``."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            raise ViewError(f"the rendezvous at {self.url} is unreachable"
                            + (f" ({self.last_error})" if self.last_error else "")) from None

    async def send(self, text: str) -> None:
        """Send now; a link that is down is a :class:`ViewError`."""
        ws = self._ws
        if ws is None or ws.closed:
            raise ViewError("lost the rendezvous connection")
        try:
            await ws.send_str(text)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise ViewError(f"lost the rendezvous connection ({exc})") from None

    def send_soon(self, text: str) -> None:
        """Best effort, never waits, never fails (a bye for a session we closed)."""
        ws = self._ws
        if ws is None or ws.closed:
            return

        async def send() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
                await ws.send_str(text)

        task = asyncio.ensure_future(send())
        _background.add(task)
        task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()
"""Fire-and-forget sends in flight (each ends with its send: no await needed)."""


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


async def await_reply(
    queue: asyncio.Queue[Message], wanted: tuple[str, ...], timeout: float
) -> Message:
    """The first ``wanted`` message on a session's queue; bye/error is :class:`Refused`."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await queue.get()
                if message is LINK_LOST:
                    raise ViewError("the rendezvous connection dropped before the camera replied")
                if message.type in wanted:
                    return message
                if message.type in ("error", "bye"):
                    code = message.get("code", "bye")
                    detail = message.get("message") or message.get("reason") or ""
                    raise Refused(f"camera refused: {code}: {detail}", str(detail))
    except TimeoutError:
        raise ViewError(f"no {'/'.join(wanted)} from the camera in time") from None


def check_answer(device_id: str, session_id: str, offer_sdp: str, answer: Message) -> None:
    """Believe an answer only if the camera we asked for signed it, for our offer."""
    if device_id_of(answer["device_key"]) != device_id:
        raise ForgedAnswer("the answer's key is not this camera's: the server may be hostile")
    signed = answer_statement(device_id, session_id, offer_sdp, answer["sdp"])
    if not verify(answer["device_key"], signed, answer["signature"]):
        raise ForgedAnswer("the answer's signature does not verify: the server may be hostile")


async def pair(
    link: SignalingLink,
    device_id: str,
    secret: str,
    viewer_key: str,
    private_key: Any,
    name: str,
    timeout: float,
) -> None:
    """Add this viewer's key to the camera's ACL with a pairing secret."""
    session_id = secrets.token_urlsafe(18)
    timestamp = int(time.time() * 1000)
    signed = pair_statement(device_id, session_id, timestamp, viewer_key, name)
    queue = link.subscribe(session_id)
    try:
        await link.send(encode(
            Role.VIEWER,
            "pair",
            device_id=device_id,
            session_id=session_id,
            viewer_key=viewer_key,
            name=name,
            timestamp=timestamp,
            signature=sign(private_key, signed),
            proof=pairing_proof(secret, signed),  # the secret itself never leaves us
        ))
        reply = await await_reply(queue, ("paired",), timeout)
    finally:
        link.unsubscribe(session_id)
    if device_id_of(reply["device_key"]) != device_id or not verify(
        reply["device_key"],
        paired_statement(device_id, session_id, viewer_key, name),
        reply["signature"],
    ):
        raise ForgedAnswer("the pairing reply was not signed by this camera")
    logger.info("paired with %s as %r", device_id, name)
