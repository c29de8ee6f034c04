"""Simulated cameras for the rendezvous scale benchmark (``python -m bench.scale_cameras``).

Each simulated camera has a real P-256 device identity and does the real
handshake of ``camera/agent.py``: connect ``/ws/camera``, take the ``hello``
nonce, send the ``register`` the camera's :class:`~camera.gatekeeper.Gatekeeper`
signs, wait for ``registered``. Then it stays idle with the agent's 20 s
heartbeat (aiohttp answers the server's pings while it reads), and answers
every ``offer`` at once with a signed ``answer``: no WebRTC, no ACL check, so
what the viewer times is the rendezvous, not a camera.

A worker process holds its share of the cameras (those whose source address
``index // per_address`` is its own modulo the worker count) and is driven over
stdin/stdout, one JSON object per line:

    {"cmd": "grow", "to": N}  register this worker's share of cameras 0..N-1
    {"cmd": "stats"}          answers sent, errors received, connections lost
    {"cmd": "rehomed"}        (with ``--reconnect``) when each lost camera lost its
                              connection and when it was registered again
    {"cmd": "quit"}           drop every connection and exit

With ``--reconnect`` a camera whose connection drops registers again on the same
URL (a load balancer's) with the agent's backoff (camera/link.py: full jitter,
the first wait at most 0.5 s, then doubling, capped at 1 s while the server side
refuses); ``--tls-ca`` trusts a private CA for ``wss://``.

Source addresses are spread over 127.0.0.0/8 (all loopback on Linux): the
rendezvous admits 40 new connections per IP address in a burst, then 5/s, and
that limit is not configurable from its command line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import random
import resource
import secrets
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import loop_probe

CAMERA_NET = 10
"""Second octet of the cameras' source addresses (127.10.x.y)."""
VIEWER_NET = 20
"""Second octet of the load generator's viewers (127.20.x.y)."""
HEARTBEAT = 20.0
"""The camera agent's WebSocket ping interval (camera/agent.py ``_connect_once``)."""
ATTEMPTS = 8
"""Connection attempts per camera; an HTTP 429 (connection rate) or 503 (too many
connections not yet upgraded from one address) backs off 1-2 s before the next,
as a real camera's link retries."""
REHOME_ATTEMPTS = 120
"""Registration attempts after a lost connection (``--reconnect``) before giving up."""
BACKOFF_BASE = 0.5
"""The agent's first reconnect wait cap (``CameraConfig.backoff_base``), doubling per attempt."""
REFUSED_CAP = 1.0
"""The agent's backoff cap while the server side refuses (camera/link.py ``REFUSED_CAP``)."""


def source_address(net: int, block: int) -> str:
    """The ``block``-th loopback source address of a network (127.<net>.x.y, y = 1..250)."""
    if not 0 <= block < 250 * 256:
        raise ValueError(f"source address block {block}: out of range")
    return f"127.{net}.{block // 250}.{block % 250 + 1}"


def raise_nofile() -> int:
    """Lift the open-file soft limit to the hard limit (children inherit it); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def fake_sdp(direction: str) -> str:
    """An SDP shaped and sized like aiortc's (one H.264 video m-line, ~1.7 KB).

    The rendezvous does not parse SDP (it checks ``v=0`` and the 32 KiB limit and
    forwards it), so only the size matters; fresh ICE and DTLS values per call.
    """
    ssrc, rtx = random.getrandbits(31), random.getrandbits(31)
    cname = secrets.token_hex(16)

    def fingerprint(n: int) -> str:
        return ":".join(f"{b:02X}" for b in os.urandom(n))

    lines = [
        "v=0",
        f"o=- {random.getrandbits(31)} {random.getrandbits(31)} IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic:WMS *",
        "m=video 52912 UDP/TLS/RTP/SAVPF 101 102 99 100",
        "c=IN IP4 127.0.0.1",
        f"a={direction}",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=mid:0",
        f"a=msid:{secrets.token_hex(18)} {secrets.token_hex(18)}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        f"a=ssrc-group:FID {ssrc} {rtx}",
        f"a=ssrc:{ssrc} cname:{cname}",
        f"a=ssrc:{rtx} cname:{cname}",
    ]
    for pt, profile in ((101, "42e01f"), (99, "42001f")):
        lines += [
            f"a=rtpmap:{pt} H264/90000",
            f"a=rtcp-fb:{pt} nack",
            f"a=rtcp-fb:{pt} nack pli",
            f"a=rtcp-fb:{pt} goog-remb",
            f"a=fmtp:{pt} level-asymmetry-allowed=1;packetization-mode=1;"
            f"profile-level-id={profile}",
            f"a=rtpmap:{pt + 1} rtx/90000",
            f"a=fmtp:{pt + 1} apt={pt}",
        ]
    lines += [
        f"a=candidate:{secrets.token_hex(16)} 1 udp 2130706431 127.0.0.1 52912 typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{secrets.token_urlsafe(3)}",
        f"a=ice-pwd:{secrets.token_urlsafe(16)}",
        f"a=fingerprint:sha-256 {fingerprint(32)}",
        f"a=fingerprint:sha-384 {fingerprint(48)}",
        f"a=fingerprint:sha-512 {fingerprint(64)}",
        "a=setup:actpass" if direction != "sendonly" else "a=setup:active",
    ]
    return "\r\n".join(lines) + "\r\n"


class Refused(Exception):
    """The rendezvous would not take a camera (the message says why)."""


class CameraWorker:
    """This process's share of the simulated cameras, from :meth:`grow` until :meth:`close`."""

    def __init__(self, url: str, index: int, workers: int, per_address: int,
                 concurrency: int, timeout: float, state_dir: Path, *,
                 tls_ca: str | None = None, reconnect: bool = False,
                 aligned_heartbeats: bool = False, tls_resume: bool = True) -> None:
        from camera.acl import PairingWindows, ViewerACL

        self.url = url.rstrip("/") + "/ws/camera"
        self.index = index
        self.workers = workers
        self.per_address = per_address
        self.timeout = timeout
        self._slots = asyncio.Semaphore(concurrency)
        # Never consulted (the simulated camera answers without an ACL check), but
        # the gatekeeper is the camera's own signer: registration() and answer().
        self._acl = ViewerACL(state_dir)
        self._pairing = PairingWindows(state_dir)
        self._http: dict[str, aiohttp.ClientSession] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._next = 0
        self._closing = False
        self.held = 0
        self.answers = 0
        self.refused = 0
        self.lost = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self._ssl: ssl.SSLContext | None = None
        if tls_ca:
            from camera.config import resuming_client_ssl

            # As the camera agent: the checks of create_default_context, and (unless
            # told not to) each new connection resumes the last TLS session. One
            # context for the process, so its cameras share the latest ticket: the
            # server's work is the same as for a ticket of each camera's own.
            made = resuming_client_ssl(tls_ca, False) if tls_resume else \
                ssl.create_default_context(cafile=tls_ca)
            assert isinstance(made, ssl.SSLContext)
            self._ssl = made
        self.tls_resumed = 0
        self.reconnect = reconnect
        self.aligned_heartbeats = aligned_heartbeats
        """aiohttp rounds a timer of 5 s or more up to a whole second of the loop's
        clock: every camera of this process would ping in the same loop iteration,
        each second (475 pings at once per 9500 cameras), a burst no fleet of
        separate devices makes. Off (the default), each camera pings 20 s after its
        own last ping, as separate devices do; on: the rounding, as before."""
        self.lost_at: list[tuple[str, float]] = []
        """(device ID, CLOCK_MONOTONIC) of each connection lost (``--reconnect``)."""
        self.back_at: list[tuple[str, float, int]] = []
        """(device ID, CLOCK_MONOTONIC, attempts) of each registration after a loss."""

    def _session(self, address: str) -> aiohttp.ClientSession:
        http = self._http.get(address)
        if http is None:
            # limit=0: a WebSocket keeps its connection, and we keep thousands.
            connector = aiohttp.TCPConnector(
                local_addr=(address, 0), limit=0,
                timeout_ceil_threshold=5 if self.aligned_heartbeats else 2 * HEARTBEAT)
            http = self._http[address] = aiohttp.ClientSession(connector=connector)
        return http

    async def grow(self, to: int) -> dict[str, Any]:
        """Register this worker's cameras among 0..to-1 not yet started; their results."""
        loop = asyncio.get_running_loop()
        refused_before = self.refused
        mine = [k for k in range(self._next, to)
                if (k // self.per_address) % self.workers == self.index]
        self._next = max(self._next, to)
        futures: list[asyncio.Future[tuple[str, float]]] = []
        for k in mine:
            done: asyncio.Future[tuple[str, float]] = loop.create_future()
            futures.append(done)
            self._tasks.append(asyncio.create_task(self._camera(k, done), name=f"camera-{k}"))
        results = await asyncio.gather(*futures, return_exceptions=True)
        ids, ms, failed = [], [], collections.Counter[str]()
        for result in results:
            if isinstance(result, BaseException):
                failed[str(result)[:200]] += 1
            else:
                ids.append(result[0])
                ms.append(round(result[1], 2))
        self.held += len(ids)
        # The client is not what is measured: keep its full collections (which would
        # walk every held connection, ~0.5 s at 5k) out of the cameras' answer times.
        gc.collect()
        gc.freeze()
        return {"ids": ids, "register_ms": ms, "failed": dict(failed), "held": self.held,
                "refused": self.refused - refused_before}

    async def _camera(self, k: int, registered: asyncio.Future[tuple[str, float]]) -> None:
        from camera.gatekeeper import Gatekeeper
        from camera.identity import DeviceIdentity

        gatekeeper = Gatekeeper(DeviceIdentity.generate(), self._acl, self._pairing)
        answer_sdp = fake_sdp("sendonly")
        http = self._session(source_address(CAMERA_NET, k // self.per_address))
        ws, why, _attempts, ms = await self._connect(http, gatekeeper, rehome=False)
        if ws is None:
            registered.set_exception(Refused(why))
            return
        registered.set_result((gatekeeper.device_id, ms))
        while ws is not None:
            # Idle: reading is what answers the server's pings; offers get an answer at once.
            try:
                await self._idle(ws, gatekeeper, answer_sdp)
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                if not self._closing:
                    self.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
            if self._closing:
                return
            self.lost += 1
            self.errors[f"connection closed ({ws.close_code})"] += 1
            if not self.reconnect:
                return
            self.lost_at.append((gatekeeper.device_id, time.monotonic()))
            ws, why, attempts, _ms = await self._connect(http, gatekeeper, rehome=True)
            if ws is None:
                self.errors[f"not registered again: {why[:80]}"] += 1
            else:
                self.back_at.append((gatekeeper.device_id, time.monotonic(), attempts))

    async def _connect(self, http: aiohttp.ClientSession, gatekeeper: Any, *,
                       rehome: bool) -> tuple[aiohttp.ClientWebSocketResponse | None, str, int,
                                              float]:
        """Register (retrying as the agent does): the socket (None: gave up), why not,
        attempts, and the successful handshake's milliseconds."""
        from services.signaling import ProtocolError

        why = "no attempt"
        for attempt in range(REHOME_ATTEMPTS if rehome else ATTEMPTS):
            if rehome:
                # The agent after a registration that lasted: full jitter, short cap.
                await asyncio.sleep(random.uniform(0, min(REFUSED_CAP,
                                                          BACKOFF_BASE * 2 ** attempt)))
                if self._closing:
                    return None, "closing", attempt, 0.0
            try:
                async with self._slots:
                    started = time.perf_counter()
                    ws = await self._register(http, gatekeeper)
                    return ws, "", attempt + 1, (time.perf_counter() - started) * 1000
            except aiohttp.WSServerHandshakeError as exc:
                why = f"HTTP {exc.status} at the WebSocket upgrade"
                if exc.status in (429, 502, 503):
                    self.refused += 1
                if rehome:
                    continue
                if exc.status not in (429, 503):
                    break
                await asyncio.sleep(random.uniform(1.0, 2.0))
            except (aiohttp.ClientError, OSError, TimeoutError, ProtocolError, Refused) as exc:
                why = f"{type(exc).__name__}: {exc}"
                if not rehome:
                    break
        return None, why, REHOME_ATTEMPTS if rehome else ATTEMPTS, 0.0

    async def _idle(self, ws: aiohttp.ClientWebSocketResponse, gatekeeper: Any,
                    answer_sdp: str) -> None:
        from services.signaling import ProtocolError, Role, encode, parse

        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            try:
                message = parse(msg.data, Role.SERVER)
            except ProtocolError as exc:
                self.errors[f"bad message from the server: {exc.message[:60]}"] += 1
                continue
            if message.type == "offer":
                fields = gatekeeper.answer(message["session_id"], message["sdp"], answer_sdp)
                await ws.send_str(encode(Role.CAMERA, "answer", **fields))
                self.answers += 1
            elif message.type == "error":
                self.errors[str(message["code"])] += 1

    async def _register(self, http: aiohttp.ClientSession,
                        gatekeeper: Any) -> aiohttp.ClientWebSocketResponse:
        """The agent's handshake (camera/agent.py ``_connect_once``); the open socket."""
        from services.signaling import Role, encode, parse

        tls: dict[str, Any] = {"ssl": self._ssl} if self._ssl is not None else {}
        ws = await http.ws_connect(self.url, heartbeat=HEARTBEAT, timeout=aiohttp.ClientWSTimeout(
            ws_receive=None, ws_close=5.0), **tls)
        try:
            hello = await ws.receive(timeout=self.timeout)
            if hello.type is not aiohttp.WSMsgType.TEXT:
                raise Refused(f"no hello (got {hello.type.name})")
            nonce = parse(hello.data, Role.SERVER)["nonce"]
            if hasattr(self._ssl, "remember"):
                self.tls_resumed += self._ssl.remember(ws.get_extra_info("ssl_object"))
            await ws.send_str(encode(Role.CAMERA, "register",
                                     **gatekeeper.registration(self.url, nonce)))
            reply = await ws.receive(timeout=self.timeout)
            if reply.type is not aiohttp.WSMsgType.TEXT:
                raise Refused(f"closed before registered ({ws.close_code})")
            message = parse(reply.data, Role.SERVER)
            if message.type != "registered":
                raise Refused(f"not registered: {message.get('message', message.type)}")
        except BaseException:
            await ws.close()
            raise
        return ws

    def stats(self) -> dict[str, Any]:
        return {"held": self.held, "answers": self.answers, "refused": self.refused,
                "lost": self.lost, "errors": dict(self.errors), "tls_resumed": self.tls_resumed}

    def rehomed(self) -> dict[str, Any]:
        return {"lost": self.lost_at, "back": self.back_at}

    async def close(self) -> None:
        """Drop every connection (abruptly: the benchmark is over); safe to call twice."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for http in self._http.values():
            await http.close()
        self._http.clear()


async def worker_main(args: argparse.Namespace) -> None:
    import camera.gatekeeper  # noqa: F401  (imported before "ready": the ramp times handshakes)
    import camera.identity  # noqa: F401

    raise_nofile()
    if args.ssl_buffer:
        from asyncio import sslproto

        # asyncio gives every TLS connection a 256 KiB read buffer, zeroed as it is
        # made (~0.2 ms of page faults each, 2.4 GiB for 9600): one camera holds one
        # connection, this process thousands. A TLS record is at most ~16.7 KiB.
        sslproto.SSLProtocol.max_size = args.ssl_buffer * 1024
    if args.loop_log:
        loop_probe.install(Path(args.loop_log))
    worker = CameraWorker(args.url, args.index, args.workers, args.per_address,
                          args.concurrency, args.timeout, Path(args.state_dir),
                          tls_ca=args.tls_ca, reconnect=args.reconnect,
                          aligned_heartbeats=args.aligned_heartbeats,
                          tls_resume=args.tls_resume)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "grow":
                reply(await worker.grow(int(command["to"])))
            elif command["cmd"] == "stats":
                reply(worker.stats())
            elif command["cmd"] == "rehomed":
                reply(worker.rehomed())
            elif command["cmd"] == "quit":
                break
            else:
                reply({"error": f"unknown command {command['cmd']!r}"})
    finally:
        await worker.close()
    with contextlib.suppress(BrokenPipeError):
        reply({"bye": True})


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.scale_cameras")
    p.add_argument("--url", required=True, help="rendezvous base URL, ws://host:port")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--per-address", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=100, help="handshakes in flight")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per handshake step")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--tls-ca", help="CA file to trust for a wss:// URL")
    p.add_argument("--reconnect", action="store_true",
                   help="register again (the agent's backoff) when a connection drops")
    p.add_argument("--loop-log", help="note this worker's event-loop stalls here")
    p.add_argument("--tls-resume", action=argparse.BooleanOptionalAction, default=True,
                   help="resume the last TLS session on each new connection, as the agent")
    p.add_argument("--ssl-buffer", type=int, default=32,
                   help="KiB of TLS read buffer per connection (0: asyncio's 256)")
    p.add_argument("--aligned-heartbeats", action="store_true",
                   help="aiohttp's whole-second heartbeat timers: every camera of this "
                        "worker pings in the same loop iteration (for comparison)")
    asyncio.run(worker_main(p.parse_args()))


if __name__ == "__main__":
    main()
