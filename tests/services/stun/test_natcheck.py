"""natcheck against our own server on loopback (no NAT), and its retransmissions."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from services.stun.message import parse
from services.stun.natcheck import (
    _hairpin,
    _measure_allocation,
    _open,
    natcheck,
    parse_hostport,
)
from services.stun.responder import BindingResponder
from services.stun.server import StunServer
from tests.conftest import scaled

from .conftest import PRIMARY, UdpClient, open_client

ROOT = Path(__file__).resolve().parents[3]


async def test_no_nat_on_loopback_is_open(rfc5780_server: StunServer) -> None:
    report = await natcheck(rfc5780_server.addresses[(0, 0)])
    assert report.nat_type == "open"
    assert report.mapping == "endpoint-independent"
    assert report.filtering == "endpoint-independent"
    assert report.mapped_address == report.local_address
    assert report.mapped_address is not None and report.mapped_address[0] == PRIMARY
    assert report.other_address == rfc5780_server.addresses[(1, 1)]
    assert report.hairpinning is None  # no NAT: nothing to hairpin through
    assert report.verdict == "direct viewing likely"
    as_dict = report.as_dict()
    assert {"mapping", "filtering", "nat_type", "hairpinning", "verdict"} <= set(as_dict)
    json.dumps(as_dict)
    # Mapping I+II, filtering I+II: four answers, none needed CHANGE-REQUEST refusals.
    assert rfc5780_server.responder.stats.answered == 4
    assert rfc5780_server.responder.stats.errors_sent == 0


async def test_allocation_is_measured_only_where_mapping_depends_on_the_destination(
        rfc5780_server: StunServer) -> None:
    primary = rfc5780_server.addresses[(0, 0)]
    report = await natcheck(primary)
    assert (report.allocation, report.mapped_ports) == (None, ())  # no NAT here
    # The measurement itself: six new flows, one socket each, answered in order.
    before = rfc5780_server.responder.stats.answered
    measured = await _measure_allocation(report, primary, "127.0.0.1", 6, 0.2, 2)
    assert rfc5780_server.responder.stats.answered - before == 6
    assert len(set(measured.mapped_ports)) == 6  # all open at once: no port reused
    assert measured.allocation == "preserving"  # loopback keeps every source port
    assert measured.as_dict()["port_deltas"] == list(measured.port_deltas)
    assert len(measured.port_deltas) == 5


async def test_server_without_rfc5780(server: StunServer) -> None:
    report = await natcheck(server.addresses[(0, 0)], local_host=PRIMARY)
    assert report.nat_type == "open"
    assert report.other_address is None
    assert (report.mapping, report.filtering) == (None, None)


async def test_silence_is_udp_blocked_after_retransmissions(client: UdpClient) -> None:
    # ``client`` never answers: a black hole at a known address.
    report = await natcheck(client.address, timeout=0.02, retries=2)
    assert report.nat_type == "udp-blocked"
    assert report.verdict == "relay likely"
    # One request, retransmitted twice, same transaction (RFC 8489 section 6.2.1).
    copies = [parse(client.received.get_nowait()[0]) for _ in range(client.received.qsize())]
    assert len(copies) == 3
    assert len({m.transaction_id for m in copies}) == 1


class LossyServer(asyncio.DatagramProtocol):
    """Drops the first copy of every transaction, answers the retransmission."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: set[bytes] = set()
        self.responder: BindingResponder | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.responder = BindingResponder({(0, 0): transport.get_extra_info("sockname")})

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        transaction_id = data[8:20]
        if transaction_id not in self.seen:
            self.seen.add(transaction_id)
            return
        assert self.responder is not None and self.transport is not None
        reply = self.responder.handle(data, (addr[0], addr[1]), (0, 0), 0.0)
        if reply is not None:
            self.transport.sendto(reply.data, addr)


@pytest.fixture
async def lossy() -> AsyncIterator[tuple[str, int]]:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        LossyServer, local_addr=(PRIMARY, 0)
    )
    yield transport.get_extra_info("sockname")
    transport.close()


async def test_retransmission_survives_a_lost_probe(lossy: tuple[str, int]) -> None:
    report = await natcheck(lossy, timeout=0.05, retries=2)
    assert report.nat_type == "open"
    assert report.mapped_address == report.local_address


async def test_hairpin_probe_reaches_the_mapping_socket() -> None:
    # On loopback the "mapped address" is the socket itself: the probe
    # mechanism of RFC 5780 section 4.5, without a NAT in the way.
    receiver = await _open(PRIMARY)
    try:
        assert await _hairpin((PRIMARY, receiver.local_port), receiver, PRIMARY, 0.05, 1)
        silent: UdpClient = await open_client()
        try:
            # Nobody reads the hairpin probe: reported as not hairpinning.
            assert not await _hairpin(silent.address, receiver, PRIMARY, 0.02, 1)
        finally:
            silent.close()
    finally:
        assert receiver.transport is not None
        receiver.transport.close()


async def test_hairpin_probe_opens_the_receivers_filter_first(
        rfc5780_server: StunServer) -> None:
    # With the server given, the receiver also sends to the sender's mapped address.
    silent: UdpClient = await open_client()
    receiver = await _open(PRIMARY)
    try:
        before = rfc5780_server.responder.stats.answered
        # The target never reads, but the sender (no NAT: its mapped address is
        # itself) gets the receiver's packet: hairpinning in the other direction.
        assert await _hairpin(silent.address, receiver, PRIMARY, 0.5, 1,
                              rfc5780_server.addresses[(0, 0)])
        assert rfc5780_server.responder.stats.answered == before + 1  # the sender's mapping
        assert silent.received.qsize() == 1
    finally:
        silent.close()
        assert receiver.transport is not None
        receiver.transport.close()


async def test_module_cli_prints_json(rfc5780_server: StunServer) -> None:
    host, port = rfc5780_server.addresses[(0, 0)]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.stun.natcheck",
        f"{host}:{port}",
        "--json",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), scaled(10))
    assert process.returncode == 0
    report = json.loads(stdout)
    assert report["nat_type"] == "open"
    assert report["mapping"] == report["filtering"] == "endpoint-independent"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stun.example.org", ("stun.example.org", 3478)),
        ("stun.example.org:19302", ("stun.example.org", 19302)),
        ("192.0.2.1:3479", ("192.0.2.1", 3479)),
        ("[2001:db8::1]:3479", ("2001:db8::1", 3479)),
        ("[2001:db8::1]", ("2001:db8::1", 3478)),
        ("2001:db8::1", ("2001:db8::1", 3478)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("host:0", "bad port '0' in 'host:0'"),
        ("host:http", "bad port 'http' in 'host:http'"),
        ("host:70000", "bad port '70000' in 'host:70000'"),
        (":3478", "bad address ':3478': no host"),
        ("[::1", "bad address '[::1': expected [IPv6]:PORT"),
    ],
)
def test_parse_hostport_errors(text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_hostport(text)
    assert str(caught.value) == error
