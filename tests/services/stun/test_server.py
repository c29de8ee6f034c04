"""The asyncio STUN server on loopback port 0: real sockets, real kernel."""

from __future__ import annotations

import asyncio
import struct

import aioice
import pytest

from services.stun.errors import BadServerConfig
from services.stun.message import ChangeRequest, Message, MessageClass, Method, parse
from services.stun.responder import ResponderConfig, SocketIndex
from services.stun.server import StunServer, run_stun_server
from tests.conftest import scaled

from .conftest import ALTERNATE, PRIMARY, UdpClient, open_client


def binding(**attributes: object) -> Message:
    return Message(Method.BINDING, MessageClass.REQUEST, attributes=dict(attributes))


async def test_binding_gets_xor_mapped_address(server: StunServer, client: UdpClient) -> None:
    request = binding()
    response, data, source = await client.request(request, server.addresses[(0, 0)])
    assert source == server.addresses[(0, 0)]
    assert response.message_class == MessageClass.SUCCESS_RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.address
    assert "OTHER-ADDRESS" not in response.attributes  # one address: no RFC 5780
    assert "SOFTWARE" not in response.attributes
    assert len(data) == 40


async def test_response_not_much_larger_than_request(
    rfc5780_server: StunServer, client: UdpClient
) -> None:
    # Bound justified in test_responder.test_no_amplification_bound: a fixed
    # 64-byte IPv4 answer to the smallest (20-byte) request.
    request = binding().encode(add_fingerprint=False)
    client.send(request, rfc5780_server.addresses[(0, 0)])
    data, _ = await client.receive()
    assert len(request) == 20
    assert len(data) <= len(request) + 44


async def test_non_binding_is_not_answered(server: StunServer, client: UdpClient) -> None:
    target = server.addresses[(0, 0)]
    client.send(Message(0x003, MessageClass.REQUEST).encode(), target)  # TURN Allocate
    client.send(Message(Method.BINDING, MessageClass.INDICATION).encode(), target)
    client.send(b"\x16\xfe\xfd garbage that is not STUN", target)
    assert await client.silent(0.2)
    # ...and the server is still alive for a real request.
    response, _, _ = await client.request(binding(), target)
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.address
    assert server.responder.stats.ignored == 2
    assert server.responder.stats.malformed == 1


async def test_flood_from_one_source_is_cut_off_others_still_served() -> None:
    stun = await run_stun_server(PRIMARY, None, 0, 0, config=ResponderConfig(rate=1, burst=5))
    flooder = await open_client(PRIMARY)
    other = await open_client("127.0.0.3")  # another source IP
    try:
        target = stun.addresses[(0, 0)]
        for _ in range(50):
            flooder.send(binding().encode(), target)
        await asyncio.sleep(0.2)
        assert flooder.received.qsize() == 5
        assert stun.responder.stats.rate_limited == 45
        response, _, _ = await other.request(binding(), target)
        assert response.attributes["XOR-MAPPED-ADDRESS"] == other.address
    finally:
        flooder.close()
        other.close()
        await stun.close()


@pytest.mark.parametrize(
    ("change", "via"),
    [
        (ChangeRequest.NONE, (0, 0)),
        (ChangeRequest.CHANGE_PORT, (0, 1)),
        (ChangeRequest.CHANGE_IP, (1, 0)),
        (ChangeRequest.CHANGE_IP | ChangeRequest.CHANGE_PORT, (1, 1)),
    ],
    ids=["none", "port", "ip", "ip+port"],
)
async def test_change_request_answered_from_the_right_socket(
    rfc5780_server: StunServer, client: UdpClient, change: ChangeRequest, via: SocketIndex
) -> None:
    addresses = rfc5780_server.addresses
    assert {a[0] for a in addresses.values()} == {PRIMARY, ALTERNATE}
    assert addresses[(0, 0)][1] != addresses[(0, 1)][1]
    response, _, source = await client.request(
        binding(**{"CHANGE-REQUEST": change}), addresses[(0, 0)]
    )
    assert source == addresses[via]
    assert response.attributes["RESPONSE-ORIGIN"] == addresses[via]
    assert response.attributes["OTHER-ADDRESS"] == addresses[(1, 1)]
    assert response.attributes["XOR-MAPPED-ADDRESS"] == client.address


async def test_tcp_framing(server: StunServer) -> None:
    """RFC 8489 section 6.2.2: two requests in one write, split by their length fields."""
    host, port = server.addresses[(0, 0)]
    reader, writer = await asyncio.open_connection(host, port)
    try:
        first, second = binding(), binding(SOFTWARE="x" * 7)
        writer.write(first.encode() + second.encode())
        await writer.drain()
        ids = []
        for _ in range(2):
            head = await asyncio.wait_for(reader.readexactly(20), scaled(2))
            length = struct.unpack("!H", head[2:4])[0]
            response = parse(head + await reader.readexactly(length))
            assert response.attributes["XOR-MAPPED-ADDRESS"] == writer.get_extra_info("sockname")
            ids.append(response.transaction_id)
        assert ids == [first.transaction_id, second.transaction_id]
        # A malformed message leaves no way to resync the stream: hang up.
        writer.write(b"\x00\x01\x00\x00" + bytes(16))
        assert await asyncio.wait_for(reader.read(), scaled(2)) == b""
    finally:
        writer.close()


async def test_close_ends_tcp_connections_and_is_idempotent() -> None:
    stun = await run_stun_server(PRIMARY, None, 0, 0)
    host, port = stun.addresses[(0, 0)]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(binding().encode())
    await asyncio.wait_for(reader.readexactly(40), scaled(2))
    assert len(stun._handlers) == 1
    await asyncio.wait_for(asyncio.gather(stun.close(), stun.close()), scaled(2))
    await stun.close()
    assert not stun._handlers
    assert await asyncio.wait_for(reader.read(), scaled(2)) == b""
    writer.close()


async def test_tcp_idle_connection_is_closed() -> None:
    stun = await run_stun_server(PRIMARY, None, 0, 0)
    stun.tcp_idle_timeout = 0.1
    try:
        host, port = stun.addresses[(0, 0)]
        reader, writer = await asyncio.open_connection(host, port)
        assert await asyncio.wait_for(reader.read(), scaled(2)) == b""
        writer.close()
    finally:
        await stun.close()


async def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alternate address 127.0.0.1 must differ"):
        await run_stun_server(PRIMARY, PRIMARY, 0, 0)
    with pytest.raises(ValueError, match="alternate port 3478 must differ from the port 3478"):
        await run_stun_server(PRIMARY, ALTERNATE, 3478, 3478)
    with pytest.raises(BadServerConfig, match="RFC 5780 needs two concrete addresses, not 0.0.0.0"):
        await run_stun_server("0.0.0.0", ALTERNATE, 0, 0)


async def test_aioice_gets_a_server_reflexive_candidate(server: StunServer) -> None:
    """aioice (what aiortc uses) as the client: it keeps a srflx candidate even
    when, on loopback, it equals the host candidate (tests/conftest.py makes
    aioice offer 127.0.0.1)."""
    connection = aioice.Connection(ice_controlling=True, stun_server=server.addresses[(0, 0)])
    try:
        await asyncio.wait_for(connection.gather_candidates(), scaled(5))
        udp = [c for c in connection.local_candidates if c.transport == "udp"]
        host = [c for c in udp if c.type == "host"]
        srflx = [c for c in udp if c.type == "srflx"]
        assert len(host) == 1 and len(srflx) == 1
        assert (srflx[0].host, srflx[0].port) == (host[0].host, host[0].port)
        assert (srflx[0].related_address, srflx[0].related_port) == (host[0].host, host[0].port)
        # Where another test installed peercam's hooks (camera.compat), its ICE-TCP
        # asked too, over TCP, for a simultaneous-open candidate.
        so = [c for c in connection.local_candidates if c.tcptype == "so"]
        assert all(c.host == host[0].host for c in so)
        assert server.responder.stats.answered == 1 + len(so)
    finally:
        await connection.close()
