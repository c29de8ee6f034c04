"""Fixtures for the STUN tests: servers on loopback port 0 and a bare UDP client.

Linux loopback answers on every 127/8 address, so 127.0.0.1 and 127.0.0.2 stand
in for the two public addresses an RFC 5780 server needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from services.stun.message import Message, parse
from services.stun.server import StunServer, run_stun_server
from tests.conftest import scaled

PRIMARY = "127.0.0.1"
ALTERNATE = "127.0.0.2"


class UdpClient(asyncio.DatagramProtocol):
    """A UDP socket that queues whatever arrives, with its source."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.put_nowait((data, (addr[0], addr[1])))

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def send(self, data: bytes, destination: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, destination)

    async def receive(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.received.get(), scaled(timeout))

    async def request(
        self, message: Message, destination: tuple[str, int]
    ) -> tuple[Message, bytes, tuple[str, int]]:
        data = message.encode()
        self.send(data, destination)
        reply, source = await self.receive()
        return parse(reply), reply, source

    async def silent(self, wait: float = 0.2) -> bool:
        """True if nothing arrives within ``wait`` seconds."""
        try:
            await asyncio.wait_for(self.received.get(), wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_client(host: str = PRIMARY) -> UdpClient:
    _, client = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpClient, local_addr=(host, 0)
    )
    return client


@pytest.fixture
async def client() -> AsyncIterator[UdpClient]:
    udp = await open_client()
    yield udp
    udp.close()


@pytest.fixture
async def server() -> AsyncIterator[StunServer]:
    """One address: plain RFC 8489 Binding server."""
    stun = await run_stun_server(PRIMARY, None, 0, 0)
    yield stun
    await stun.close()


@pytest.fixture
async def rfc5780_server() -> AsyncIterator[StunServer]:
    """Two addresses times two ports: RFC 5780 behaviour discovery."""
    stun = await run_stun_server(PRIMARY, ALTERNATE, 0, 0)
    yield stun
    await stun.close()
