"""Connection-level budgets under a bounded hostile load on loopback.

2,000 half-open HTTP connections, 2,000 upgraded WebSockets that never send,
a flood of malformed messages, and at the same time 20 legitimate cameras and
viewers: every legitimate session starts within 1 s, every attacker's socket
is closed by its deadline, and the process's descriptors return to baseline.
Attackers come from their own loopback addresses (127.0.0.0/8 is all local),
as they would from their own hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import aiohttp
import pytest

from camera.identity import DeviceIdentity
from services.rendezvous import (
    BadRendezvousConfig,
    ConnectionBudget,
    RendezvousConfig,
    start_rendezvous,
)
from services.signaling import Role
from tests.conftest import scaled
from tests.services.messages import legal
from tests.services.test_hostile_clients import registration, ws_frame

HANDSHAKE = 2.0
HEARTBEAT = 2.0
REGISTER = 3.0
OFFER = (Role.VIEWER, "offer")
ANSWER = (Role.CAMERA, "answer")


def descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until_eof(reader: asyncio.StreamReader) -> bytes:
    """The start of what the server sends until it closes or resets the connection
    (read, so no write of the server's ever blocks)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            data += chunk[:200] if len(data) < 200 else b""
    return data


class Attack:
    def __init__(self, port: int) -> None:
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                       local_addr=(ip, 0))
        self.writers.append(writer)
        return reader, writer

    async def half_open(self, ip: str) -> bytes:
        """Half an HTTP request head, then nothing: what comes back before the close."""
        reader, writer = await self.connect(ip)
        writer.write(b"GET /ws/viewer HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        return await until_eof(reader)

    async def upgrade(self, ip: str, path: str) -> asyncio.StreamReader | None:
        reader, writer = await self.connect(ip)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return reader if head.startswith(b"HTTP/1.1 101") else None

    async def idle(self, ip: str, count: int, upgraded: list[asyncio.StreamReader]) -> None:
        """``count`` WebSockets, one after another, that never send (nor answer pings)."""
        for i in range(count):
            reader = await self.upgrade(ip, "/ws/camera" if i % 2 else "/ws/viewer")
            if reader is not None:
                upgraded.append(reader)

    async def flood(self, ip: str, frames: int) -> bytes:
        """Malformed messages as fast as the socket takes them, then silence."""
        reader = await self.upgrade(ip, "/ws/viewer")
        assert reader is not None
        writer = self.writers[-1]
        garbage = ["{", '{"type":"offer","sdp":"\\ud800"}', "[" * 5000, "\x00" * 300,
                   json.dumps({"type": "pair", "name": "\udfff" * 100}), "x" * 4000]
        draining = asyncio.create_task(until_eof(reader))
        for i in range(frames):
            writer.write(ws_frame(garbage[i % len(garbage)]))
            await writer.drain()
        return await draining

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


class Legit:
    """A camera and its viewer over aiohttp (which answers pings), each from its own IP."""

    def __init__(self, port: int, n: int) -> None:
        self.base = f"ws://127.0.0.1:{port}"
        self.n = n
        self.http: list[aiohttp.ClientSession] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []

    async def _ws(self, ip: str, path: str) -> tuple[aiohttp.ClientWebSocketResponse,
                                                     asyncio.Queue[dict[str, Any]]]:
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(ip, 0)))
        self.http.append(http)
        ws = await http.ws_connect(self.base + path)
        self.sockets.append(ws)
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def read() -> None:  # receive() answers the server's pings
            async for msg in ws:
                inbox.put_nowait(json.loads(msg.data))

        self.readers.append(asyncio.create_task(read()))
        return ws, inbox

    @staticmethod
    async def next(inbox: asyncio.Queue[dict[str, Any]], mtype: str) -> dict[str, Any]:
        while (message := await inbox.get())["type"] != mtype:
            pass
        return message

    async def session(self, identity: Any) -> float:
        """Seconds from the camera's connect to the viewer holding the answer."""
        started = time.monotonic()
        camera, cam_in = await self._ws(f"127.0.3.{self.n}", "/ws/camera")
        nonce = (await self.next(cam_in, "hello"))["nonce"]
        await camera.send_str(registration(nonce, f"127.0.0.1:{self.base.rsplit(':', 1)[1]}",
                                           identity))
        await self.next(cam_in, "registered")
        viewer, view_in = await self._ws(f"127.0.4.{self.n}", "/ws/viewer")
        session_id = f"legit-session-{self.n:04d}"
        await viewer.send_str(json.dumps({**legal(*OFFER), "device_id": identity.device_id,
                                          "session_id": session_id}))
        assert (await self.next(cam_in, "offer"))["session_id"] == session_id
        await camera.send_str(json.dumps({**legal(*ANSWER), "session_id": session_id}))
        assert (await self.next(view_in, "answer"))["session_id"] == session_id
        return time.monotonic() - started

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        for task in self.readers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for http in self.http:
            await http.close()



async def test_budgets_hold_under_hostile_load() -> None:
    baseline = descriptors()
    config = RendezvousConfig(handshake_timeout=HANDSHAKE, heartbeat=HEARTBEAT,
                              register_timeout=REGISTER)
    server, runner, port = await start_rendezvous("127.0.0.1", 0, config)
    attack = Attack(port)
    legit = [Legit(port, n) for n in range(1, 21)]
    identities = [DeviceIdentity.generate() for _ in legit]
    try:
        budget: ConnectionBudget = server.budget
        assert budget.max_connections > 4000  # the soft limit was raised to the hard one
        half_open = [asyncio.create_task(attack.half_open(f"127.0.0.{2 + i % 8}"))
                     for i in range(2000)]
        upgraded: list[asyncio.StreamReader] = []
        async with asyncio.timeout(scaled(60)):
            await asyncio.gather(*(attack.idle(f"127.0.1.{1 + i}", 20, upgraded)
                                   for i in range(100)))
        assert len(upgraded) == 2000
        idle = [asyncio.create_task(until_eof(r)) for r in upgraded]
        flood = [asyncio.create_task(attack.flood(f"127.0.2.{1 + i}", 300)) for i in range(10)]

        # Under all of it, 20 cameras register and 20 viewers' sessions start.
        async with asyncio.timeout(scaled(30)):
            times = await asyncio.gather(*(
                pair.session(identity) for pair, identity in zip(legit, identities, strict=True)))
        # Served beside the attack, not after it: sooner than any attacker's deadline
        # would free a slot (a wall-clock bound only that loose, on a shared machine).
        assert max(times) < scaled(HANDSHAKE), sorted(times)
        assert server.router.stats()["cameras"] == 20

        # Every attacker is closed by its deadline: the head and upgrade deadline, the
        # heartbeat (no pong), the register deadline. Half-open ones beyond the
        # per-IP pending cap were refused at once with a 503.
        deadline = HANDSHAKE + 1.5 * HEARTBEAT + REGISTER + 2
        async with asyncio.timeout(scaled(deadline)):
            refusals = await asyncio.gather(*half_open)
            await asyncio.gather(*idle, *flood)
        refused = sum(r.startswith(b"HTTP/1.1 503") for r in refusals)
        assert refused >= 2000 - 8 * config.max_pending_per_ip
        assert budget.refused >= refused
        # What is left open is the legitimate clients' 40 connections, all upgraded.
        assert budget.open == 40 and budget.pending == 0 and budget.pending_by_ip == {}
        assert len(server._sockets) == 40
    finally:
        for pair in legit:
            await pair.close()
        attack.close()
        await runner.cleanup()
    for _ in range(50):
        if descriptors() <= baseline:
            break
        await asyncio.sleep(0.1)
    assert descriptors() == baseline


async def test_shedding_refuses_cleanly_at_the_connection_cap() -> None:
    baseline = descriptors()
    config = RendezvousConfig(max_connections=30, max_pending_per_ip=100)
    server, runner, port = await start_rendezvous("127.0.0.1", 0, config)
    attack = Attack(port)
    try:
        held = [await attack.upgrade("127.0.0.5", "/ws/viewer") for _ in range(30)]
        assert all(held) and server.budget.open == 30
        # The 31st socket is accepted, answered 503 and closed: no descriptor is leaked
        # and nothing hangs.
        async with asyncio.timeout(scaled(5)):
            extra = await attack.half_open("127.0.0.6")
        assert extra.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert server.budget.open == 30
        # Room again once one goes.
        attack.writers[0].close()
        async with asyncio.timeout(scaled(5)):
            while server.budget.open == 30:
                await asyncio.sleep(0.02)
            assert await attack.upgrade("127.0.0.6", "/ws/viewer") is not None
        attack.writers[1].close()
        async with asyncio.timeout(scaled(5)):
            while server.budget.open == 30:
                await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/healthz"
        ) as response:
            health = await response.json()
        assert health["refused"] == 1 and health["connections"] <= 30
    finally:
        attack.close()
        await runner.cleanup()
    for _ in range(50):
        if descriptors() <= baseline:
            break
        await asyncio.sleep(0.1)
    assert descriptors() == baseline


@pytest.mark.parametrize("pending_ip", [16, 4])
def test_the_budget_counts_pending_per_ip_and_in_total(pending_ip: int) -> None:
    budget = ConnectionBudget(max_connections=100, max_pending=20,
                              max_pending_per_ip=pending_ip)
    admitted = [budget.admit("192.0.2.1") for _ in range(pending_ip + 1)]
    assert admitted[:-1] == [None] * pending_ip and "192.0.2.1" in str(admitted[-1])
    for _ in range(pending_ip):
        budget.upgraded("192.0.2.1")
    assert budget.pending == 0 and budget.open == pending_ip
    assert budget.admit("192.0.2.1") is None  # upgraded ones do not count as pending
    budget.closed("192.0.2.1", pending=True)
    for _ in range(pending_ip):
        budget.closed("192.0.2.1", pending=False)
    assert budget.open == 0 and budget.pending == 0 and budget.pending_by_ip == {}
    for i in range(20):
        assert budget.admit(f"198.51.100.{i}") is None
    assert "not upgraded (limit 20)" in str(budget.admit("203.0.113.1"))


@pytest.mark.parametrize("setting", [{"handshake_timeout": 0.0}, {"max_pending": 0},
                                     {"max_pending_per_ip": -1}, {"max_connections": -5}])
async def test_settings_out_of_range_fail_before_binding(setting: dict[str, Any]) -> None:
    name = next(iter(setting))
    with pytest.raises(BadRendezvousConfig, match=name):
        await start_rendezvous("127.0.0.1", 0, RendezvousConfig(**setting))
