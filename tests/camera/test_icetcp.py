"""ICE over TCP (camera.compat.icetcp): two real aioice agents on loopback with only
their TCP candidates exchanged, and hostile clients on a passive candidate's port.
Through real NATs (a network that blocks UDP): tests/lab/test_icetcp.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from aioice import Candidate, Connection, stun

from camera.compat import ensure_installed, ice, icetcp
from services.stun.server import run_stun_server
from tests.conftest import scaled


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


async def agents(stun_server: tuple[str, int] | None = None) -> tuple[Connection, Connection]:
    viewer = Connection(ice_controlling=True, components=1, stun_server=stun_server)
    camera = Connection(ice_controlling=False, components=1, stun_server=stun_server)
    await viewer.gather_candidates()
    await camera.gather_candidates()
    viewer.remote_username, viewer.remote_password = camera.local_username, camera.local_password
    camera.remote_username, camera.remote_password = viewer.local_username, viewer.local_password
    return viewer, camera


async def exchange_tcp(a: Connection, b: Connection, tcptype: str | None = None) -> None:
    """Each learns only the other's TCP candidates (of one tcptype, if given), as
    behind a UDP block."""
    for here, there in ((a, b), (b, a)):
        for candidate in there.local_candidates:
            if candidate.transport == "tcp" and tcptype in (None, candidate.tcptype):
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


async def test_a_simultaneous_open_candidate_is_learnt_over_tcp(loopback: None) -> None:
    """A server-reflexive ``so`` candidate: its address learnt from a STUN server over
    TCP, from the port it keeps bound for its checks (on loopback the mapped address
    is the bound one). Crossing SYNs need NATs that drop an early SYN instead of
    answering it with a reset, as loopback does: tests/lab/test_icetcp.py."""
    server = await run_stun_server("127.0.0.1", None, 0, 0)
    viewer, camera = await agents(server.addresses[(0, 0)])
    try:
        so = [c for c in camera.local_candidates if c.tcptype == "so"]
        assert len(so) == 1 and so[0].type == "srflx", camera.local_candidates
        assert (so[0].host, so[0].port) == (so[0].related_address, so[0].related_port)
        assert so[0].priority >> 24 == icetcp.REFLEXIVE_TYPE_PREFERENCE
        assert "tcptype so" in so[0].to_sdp()
        # It pairs with the peer's so candidate, and with nothing else.
        await exchange_tcp(viewer, camera)
        pairs = [p for p in camera._check_list if p.local_candidate.tcptype == "so"]
        assert [p.remote_candidate.tcptype for p in pairs] == ["so"]
    finally:
        await viewer.close()
        await camera.close()
        await server.close()


async def test_no_simultaneous_open_candidate_without_a_stun_answer(
        loopback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(icetcp, "STUN_TIMEOUT", 0.3)
    silent = socket.socket()  # accepts (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        viewer, camera = await agents(silent.getsockname())
        try:
            assert not [c for c in camera.local_candidates if c.tcptype == "so"]
            assert {c.tcptype for c in camera.local_candidates if c.transport == "tcp"} \
                == {"active", "passive"}
        finally:
            await viewer.close()
            await camera.close()
    finally:
        silent.close()


def test_each_tcptype_pairs_only_with_its_counterpart() -> None:
    def tcp(tcptype: str) -> Candidate:
        return icetcp.TcpCandidate("f", 1, "tcp", 1, "192.0.2.1", 9, "host", tcptype=tcptype)

    kinds = ("active", "passive", "so")
    pairs = {(local, other) for local in kinds for other in kinds
             if tcp(local).can_pair_with(tcp(other))}
    assert pairs == {("active", "passive"), ("so", "so")}
    udp = Candidate("r", 1, "udp", 1, "192.0.2.9", 5000, "host")
    assert not tcp("active").can_pair_with(udp)
