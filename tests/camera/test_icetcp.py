"""ICE over TCP (camera.compat.icetcp): two real aioice agents on loopback with only
their TCP candidates exchanged, and hostile clients on a passive candidate's port.
Through real NATs (a network that blocks UDP): tests/lab/test_icetcp.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from aioice import Connection, stun

from camera.compat import ensure_installed, ice, icetcp
from tests.conftest import scaled

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def loopback() -> AsyncIterator[None]:
    """aioice's agents gather on 127.0.0.1 (it skips loopback by itself)."""
    ensure_installed()
    ice.restrict_host_addresses(["127.0.0.1"])
    try:
        yield
    finally:
        ice.restrict_host_addresses(None)
        ice.set_tcp(True)


async def agents() -> tuple[Connection, Connection]:
    viewer = Connection(ice_controlling=True, components=1)
    camera = Connection(ice_controlling=False, components=1)
    await viewer.gather_candidates()
    await camera.gather_candidates()
    viewer.remote_username, viewer.remote_password = camera.local_username, camera.local_password
    camera.remote_username, camera.remote_password = viewer.local_username, viewer.local_password
    return viewer, camera


async def exchange_tcp(a: Connection, b: Connection) -> None:
    """Each learns only the other's TCP candidates, as behind a UDP block."""
    for here, there in ((a, b), (b, a)):
        for candidate in there.local_candidates:
            if candidate.transport == "tcp":
                await here.add_remote_candidate(candidate)
        await here.add_remote_candidate(None)


def passive_port(connection: Connection) -> int:
    return next(c.port for c in connection.local_candidates if c.tcptype == "passive")


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


async def test_both_kinds_are_gathered_and_ranked_below_udp_above_the_relay(
        loopback: None) -> None:
    viewer, camera = await agents()
    try:
        tcp = [c for c in camera.local_candidates if c.transport == "tcp"]
        udp = [c for c in camera.local_candidates if c.transport == "udp"]
        assert sorted(c.tcptype for c in tcp) == ["active", "passive"]
        assert next(c.port for c in tcp if c.tcptype == "active") == icetcp.ACTIVE_PORT
        assert all(t.priority < u.priority for t in tcp for u in udp)
        # A relayed UDP candidate (type preference 0) ranks below every TCP host one.
        assert all(c.priority >> 24 == icetcp.TYPE_PREFERENCE for c in tcp)
        assert "tcptype passive" in next(c.to_sdp() for c in tcp if c.tcptype == "passive")
        # A passive candidate listens: something accepts a connection on its port.
        with socket.create_connection(("127.0.0.1", passive_port(camera)), timeout=2):
            pass
    finally:
        await viewer.close()
        await camera.close()


async def test_switched_off_only_udp_is_gathered(loopback: None) -> None:
    ice.set_tcp(False)
    viewer = Connection(ice_controlling=True, components=1)
    await viewer.gather_candidates()
    try:
        assert {c.transport for c in viewer.local_candidates} == {"udp"}
    finally:
        await viewer.close()


async def test_two_agents_with_only_tcp_connect_and_carry_data_both_ways(
        loopback: None) -> None:
    viewer, camera = await agents()
    try:
        await exchange_tcp(viewer, camera)
        async with asyncio.timeout(scaled(10)):
            await asyncio.gather(viewer.connect(), camera.connect())
        pair = ice.nominated_pair(viewer)
        assert pair is not None and pair.local_candidate.transport == "tcp"
        await viewer.send(b"over tcp")
        assert await asyncio.wait_for(camera.recv(), scaled(2)) == b"over tcp"
        await camera.send(b"x" * 1200)
        assert await asyncio.wait_for(viewer.recv(), scaled(2)) == b"x" * 1200
        # The camera learned the viewer's connection as a TCP peer-reflexive candidate.
        learned = [c for c in camera.remote_candidates if c.type == "prflx"]
        assert learned and all((c.transport, c.tcptype) == ("tcp", "active") for c in learned)
    finally:
        await viewer.close()
        await camera.close()


async def test_a_viewer_prefers_udp_when_both_work(loopback: None) -> None:
    viewer, camera = await agents()
    try:
        for here, there in ((viewer, camera), (camera, viewer)):
            for candidate in there.local_candidates:
                await here.add_remote_candidate(candidate)
            await here.add_remote_candidate(None)
        async with asyncio.timeout(scaled(10)):
            await asyncio.gather(viewer.connect(), camera.connect())
        pair = ice.nominated_pair(viewer)
        assert pair is not None and pair.local_candidate.transport == "udp"
    finally:
        await viewer.close()
        await camera.close()


async def test_a_stranger_on_the_passive_port_gets_no_data_through_and_is_closed(
        loopback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icetcp, "FIRST_CHECK_WITHIN", 0.3)
    viewer, camera = await agents()
    try:
        await exchange_tcp(viewer, camera)
        reader, writer = await asyncio.open_connection("127.0.0.1", passive_port(camera))
        # Media-looking frames, a frame of garbage, an unauthenticated check.
        writer.write(frame(b"\x17\xfe\xfd" + b"\x00" * 60) + frame(b"junk" * 100))
        request = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        request.attributes["USERNAME"] = f"{camera.local_username}:stranger"
        request.add_message_integrity(b"not the password")
        writer.write(frame(bytes(request)))
        await writer.drain()
        # The check is refused (401), nothing reaches the camera's media queue ...
        length = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))[0]
        answer = stun.parse_message(await reader.readexactly(length))
        assert answer.message_class == stun.Class.ERROR
        assert answer.attributes["ERROR-CODE"][0] == 401
        await asyncio.sleep(0.2)
        assert camera._queue.empty()  # aioice's queue of received data (recv needs a pair)
        # ... and the connection is closed once its time to authenticate is up.
        assert await asyncio.wait_for(reader.read(), scaled(3)) == b""
        writer.close()
    finally:
        await viewer.close()
        await camera.close()


async def test_a_passive_candidate_holds_a_bounded_number_of_connections(
        loopback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icetcp, "MAX_CONNECTIONS", 3)
    viewer, camera = await agents()
    opened = []
    try:
        for _ in range(5):
            opened.append(await asyncio.open_connection("127.0.0.1", passive_port(camera)))
        await asyncio.sleep(0.2)
        closed = 0
        for reader, _writer in opened:
            try:
                if await asyncio.wait_for(reader.read(), 0.3) == b"":
                    closed += 1
            except TimeoutError:
                pass
        assert closed == 2  # the 4th and 5th are refused; the first 3 wait for a check
    finally:
        for _reader, writer in opened:
            writer.close()
        await viewer.close()
        await camera.close()


async def test_a_frame_longer_than_its_connection_carries_is_not_misread(
        loopback: None) -> None:
    """Frames split across reads and several frames in one read are put together
    by their length prefix (RFC 4571), whatever the kernel's segmenting."""
    viewer, camera = await agents()
    try:
        await exchange_tcp(viewer, camera)
        async with asyncio.timeout(scaled(10)):
            await asyncio.gather(viewer.connect(), camera.connect())
        payloads = [bytes([n]) * size for n, size in enumerate((1, 1400, 65535, 3, 800))]
        for payload in payloads:
            await viewer.send(payload)
        got = [await asyncio.wait_for(camera.recv(), scaled(2)) for _ in payloads]
        assert got == payloads
    finally:
        await viewer.close()
        await camera.close()
